"""Connects to each port of `?ports=` on the instance's own 127.0.0.1, sends a line and
reports, per port, the answer, "refused" or the error (JSON): how a function reaches a host
service it was allowed (`hostPorts`) in development."""

import json
import socket

from flask import request


def _echo(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ping\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip() if data else "closed"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error: " + str(e)


def main():
    ports = [int(p) for p in request.args.get("ports", "").split(",") if p.isdigit()]
    return json.dumps({str(p): _echo(p) for p in ports}) + "\n"
