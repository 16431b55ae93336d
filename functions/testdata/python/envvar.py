"""Returns the value of the environment variable named by ?name=NAME (404 when unset)."""

import os

from flask import request


def main():
    name = request.args.get("name", "")
    value = os.environ.get(name)
    if value is None:
        return "environment variable %r is not set\n" % name, 404
    return value
