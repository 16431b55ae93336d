"""Sleeps for ?s=SECONDS (float, default 5) and returns "done".

The X-Slow-Start / X-Slow-End response headers carry time.time() before and after the sleep,
so tests can check that calls overlapped without asserting wall-clock durations."""

import time

from flask import request


def main():
    seconds = float(request.args.get("s", "5"))
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    return "done", 200, {"X-Slow-Start": repr(start), "X-Slow-End": repr(end)}
