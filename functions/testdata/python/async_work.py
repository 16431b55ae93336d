"""For asynchronous invocation tests: answers 200 with the body echoed, or 500 when the body
starts with "fail"."""


def main(request):
    body = request.get_data(as_text=True)
    if body.startswith("fail"):
        return "failing on purpose: %s\n" % body, 500
    return "done %s\n" % body
