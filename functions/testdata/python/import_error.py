"""Fails at import: specialization must report the ModuleNotFoundError and this file's line."""

import does_not_exist_module  # noqa: F401


def main():
    return "unreachable"
