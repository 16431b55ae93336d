"""A WebSocket function (Python runtime): echoes every message back, text as text and binary
as binary, until the client closes; the message "bye" makes the function close the socket.

    kappa fn create --name ws-echo --env python --code echo.py --entrypoint echo.main
    kappa route create --function ws-echo --url /ws
    # then connect a WebSocket client to ws://<router>/ws

A plain HTTP request gets 426 (Upgrade Required).
"""


def main(ws):
    if not hasattr(ws, "receive"):  # a plain HTTP request: the argument is the request
        return "connect with a WebSocket\n", 426
    for message in ws:
        if message == "bye":
            ws.close(1000, "bye")
            return None
        ws.send(message)
    return None
