"""A second function of the spec example; also the target of its time and message-queue
triggers."""


def main():
    return "Goodbye!\n"
