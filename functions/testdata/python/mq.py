"""Functions for the event trigger system tests; deploy with entrypoint mq.<name>.

- mq.echo: answers with the request body. A request header X-Sleep (seconds) delays it.
- mq.flaky: the body is JSON {"id": ..., "succeedAt": N}; answers 503 while the delivery
  attempt (X-Kappa-Delivery-Attempt) is lower than N, then {"id": ..., "attempt": a}. The
  attempt comes from the platform, so this works across instances.
- mq.fail: always answers 500.
- mq.tick: for time triggers; logs "tick <timer> <scheduled time> <method> <path>" and answers.
"""

import json
import time

from flask import request


def echo():
    delay = float(request.headers.get("X-Sleep", "0") or 0)
    if delay > 0:
        time.sleep(delay)
    return request.get_data(), 200, {"Content-Type": "application/json"}


def flaky():
    msg = json.loads(request.get_data() or b"{}")
    attempt = int(request.headers.get("X-Kappa-Delivery-Attempt", "0"))
    if attempt < int(msg.get("succeedAt", 3)):
        return "not yet (attempt %d)" % attempt, 503
    return json.dumps({"id": msg.get("id"), "attempt": attempt}), 200, {
        "Content-Type": "application/json"
    }


def fail():
    return "always failing", 500


def tick():
    print(
        "tick",
        request.headers.get("X-Kappa-Timer-Name"),
        request.headers.get("X-Kappa-Scheduled-Time"),
        request.method,
        request.path,
        flush=True,
    )
    return "tick\n"
