"""Echo the request back as JSON (entrypoint `echo.main`).

Written Fission-style: a zero-argument handler that reads the Flask-compatible `request`.
Response fields:
  method, path, query (name -> list of values), headers (lower-case name -> value),
  params (path parameters from the route template, from the X-Kappa-Params-<name> headers,
  names lower-cased), body (the request body as text), function (X-Kappa-Function-Name),
  invocation_id (X-Kappa-Invocation-Id).
"""

from flask import request

PARAM_PREFIX = "x-kappa-params-"


def main():
    headers = {}
    params = {}
    for name, value in request.headers.items():
        lname = name.lower()
        headers[lname] = value
        if lname.startswith(PARAM_PREFIX):
            params[lname[len(PARAM_PREFIX):]] = value
    return {
        "method": request.method,
        "path": request.path,
        "query": request.args.to_dict(flat=False),
        "headers": headers,
        "params": params,
        "body": request.get_data(as_text=True),
        "function": request.headers.get("X-Kappa-Function-Name"),
        "invocation_id": request.headers.get("X-Kappa-Invocation-Id"),
    }
