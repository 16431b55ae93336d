"""A Python function with a dependency that the package build installs.

Deploy it with one command (the build runs `pip install -r requirements.txt` into the package):

    kappa env create --name python --image python
    kappa fn create --name py-deps --env python --src functions/examples/python-deps \
        --entrypoint app.main --url /py-deps
    curl http://127.0.0.1:8888/py-deps
"""

import six


def main():
    # `six` is not part of Python: it is importable because the build installed it into the
    # package next to this file.
    return "six %s says: %s\n" % (six.__version__, six.ensure_str(b"hello from a built package"))
