"""Returns a generator: the response is streamed in 5 chunks ("chunk 0\n" ... "chunk 4\n").

?delay=SECONDS (float, default 0) sleeps between chunks."""

import time

from flask import request


def main():
    delay = float(request.args.get("delay", "0"))

    def chunks():
        for i in range(5):
            if i and delay:
                time.sleep(delay)
            yield "chunk %d\n" % i

    return chunks()
