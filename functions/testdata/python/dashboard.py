"""The dashboard system test's function (entrypoint `dashboard.main`).

`?say=<text>` prints "dashboard says <text>" to stdout (a live log line); `?fail=1` answers
500; anything else answers 200 "ok".
"""

from flask import request


def main():
    say = request.args.get("say")
    if say:
        print("dashboard says", say, flush=True)
    if request.args.get("fail"):
        return "failing on purpose\n", 500
    return "ok\n"
