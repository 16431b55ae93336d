"""Reads its configuration the way Fission functions do (entrypoint `config.main`).

- a Secret `db-creds`, key `password`:  /secrets/default/db-creds/password
- a ConfigMap `app-config`, key `mode`: /configs/default/app-config/mode
- an environment variable `GREETING` (the function's `env`)

Deploy:
    kappa secret create --name db-creds --from-literal password=s3cr3t
    kappa configmap create --name app-config --from-literal mode=fast
    kappa fn create --name config --env python --code config.py \
        --secret db-creds --configmap app-config --envvar GREETING=hello --url /config

Under Kappa's sandbox the files are at those absolute paths; when instances run without a
sandbox, `KAPPA_SECRETS_DIR` / `KAPPA_CONFIGS_DIR` name the directories instead, so reading
them through the variables (with the Fission paths as defaults) works everywhere.

It answers with the values it read, which only makes sense in an example: a real function
uses its secrets and never sends them back.
"""

import json
import os

SECRETS = os.environ.get("KAPPA_SECRETS_DIR", "/secrets")
CONFIGS = os.environ.get("KAPPA_CONFIGS_DIR", "/configs")


def _read(base, namespace, name, key):
    """The value of `key`, or None when it is not there (not referenced, or no such key)."""
    try:
        with open(os.path.join(base, namespace, name, key)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def main():
    # Read at every request: after an update, Kappa replaces the instances, but reading late
    # costs nothing and keeps the function correct on platforms that update files in place.
    return json.dumps({
        "password": _read(SECRETS, "default", "db-creds", "password"),
        "mode": _read(CONFIGS, "default", "app-config", "mode"),
        "greeting": os.environ.get("GREETING"),
    }) + "\n"
