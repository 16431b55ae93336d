"""The smallest Kappa function: entrypoint `hello.main`."""


def main():
    return "Hello, world!\n"
