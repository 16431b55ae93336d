"""A Fission-style function deployed by `kappa spec apply` from Fission's spec format
(`specs/`): entrypoint `hello.main`, reading the `{name}` path parameter of its route."""

from flask import request

import greet


def main():
    name = (
        request.headers.get("X-Fission-Params-Name")
        or request.headers.get("X-Kappa-Params-Name")
        or "world"
    )
    return greet.greeting(name)
