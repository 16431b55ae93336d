"""Deployed by `kappa spec apply` from Kappa's own spec format (`specs/`): entrypoint
`hello.main`, taking the request and reading the `{name}` path parameter of its route."""

import greet


def main(request):
    return greet.greeting(request.headers.get("X-Kappa-Params-Name", "world"))
