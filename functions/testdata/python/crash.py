"""Kills its own process in the middle of a request.

  ?how=exit (default)  os._exit(code) with ?code=N (default 3)
  ?how=kill            SIGKILL itself (os.kill(os.getpid(), 9))
"""

import os
import signal

from flask import request


def main():
    how = request.args.get("how", "exit")
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(int(request.args.get("code", "3")))
