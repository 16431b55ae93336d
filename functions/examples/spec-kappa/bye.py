"""A second function of the Kappa-format spec example."""


def main():
    return "Bye!\n"
