"""Stand-in for Fission's Python environment server (see ../README.md)."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standin_dep  # from the virtual environment's site-packages
from standin_loader import load_function  # from this directory

USERFUNCVOL = os.environ.get("USERFUNCVOL", "/userfunc")
FUNCTION = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("standin-python: " + fmt % args, flush=True)

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        global FUNCTION
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/v2/specialize":
            return self.call()
        if FUNCTION is not None:
            return self.answer(400, "Not a generic container")
        request = json.loads(body or b"{}")
        try:
            FUNCTION = load_function(request["filepath"], request["functionName"])
        except Exception as e:  # noqa: BLE001 - reported to the platform as Fission does
            return self.answer(500, f"Failed to load function: {e!r}")
        with open(os.path.join(USERFUNCVOL, "state.json"), "w") as f:
            json.dump({"functionName": request["functionName"], "dep": standin_dep.NAME}, f)
        print("specialized " + request["functionName"], flush=True)
        return self.answer(202, "")

    def do_GET(self):
        self.call()

    def call(self):
        if FUNCTION is None:
            return self.answer(500, "Generic container: no requests supported")
        return self.answer(200, str(FUNCTION()))


if __name__ == "__main__":
    print(f"standin-python on 8888 ({sys.executable})", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 8888), Handler).serve_forever()
