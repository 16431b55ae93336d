"""A function written for Fission's Python environment, deployed unchanged: it reads the route's
path parameter from X-Fission-Params-User and uses Flask's request, g, current_app.logger,
jsonify, make_response and abort (real Flask where it is installed, Kappa's stand-in otherwise).
"""

from flask import abort, current_app, g, jsonify, make_response, request


def main():
    user = request.headers.get("X-Fission-Params-User")
    if not user:
        abort(400)
    g.user = user
    current_app.logger.info("greeting %s", g.user)
    body = jsonify(
        user=g.user,
        method=request.method,
        args=request.args.to_dict(),
        json=request.get_json(silent=True),
        function=request.headers.get("X-Fission-Function-Name"),
    )
    response = make_response(body, 200)
    response.headers["X-Greeted"] = g.user
    return response
