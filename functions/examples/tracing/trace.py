"""Trace context in a function (docs/observability.md, "Trace context in functions").

The router passes the invocation's W3C trace context in the `traceparent` header. This
function starts a span of its own as a child of it (a new span id in the same trace, no
library needed), logs the ids so `kappa fn logs` lines can be matched with the trace, and
sends the child context downstream when DOWNSTREAM_URL is set. It answers with what it saw.

    kappa fn create --name trace --env python --code functions/examples/tracing/trace.py
    kappa route create --name trace --url /trace --function trace --method GET
    curl -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' \
        http://127.0.0.1:8888/trace
"""

import json
import os
import urllib.request

from flask import request


def main():
    parent = request.traceparent  # None when the invocation carries no trace context
    child = request.child_traceparent()  # our own span: same trace id, new span id
    print("invocation %s trace %s: handling %s %s" % (
        request.invocation_id, request.trace_id, request.method, request.path), flush=True)
    downstream = os.environ.get("DOWNSTREAM_URL")
    status = None
    if downstream:
        headers = {"traceparent": child} if child else {}
        with urllib.request.urlopen(urllib.request.Request(downstream, headers=headers),
                                    timeout=5) as r:
            status = r.status
    body = {
        "traceparent": parent,
        "tracestate": request.headers.get("tracestate"),
        "trace_id": request.trace_id,
        "child_traceparent": child,
        "invocation_id": request.invocation_id,
        "downstream_status": status,
    }
    return json.dumps(body), 200, {"Content-Type": "application/json"}
