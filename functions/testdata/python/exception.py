"""Raises on every call: the runtime must answer 500 function_error with the traceback."""


def main():
    raise ValueError("boom")
