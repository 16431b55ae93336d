"""Allocates ?mb=N megabytes (default 512), touching every page, then returns.

Used to check memory limits: under a limit smaller than N the instance is OOM-killed."""

from flask import request


def main():
    mb = int(request.args.get("mb", "512"))
    data = bytearray(mb * 1024 * 1024)
    for i in range(0, len(data), 4096):  # write every page so it is really resident
        data[i] = 1
    return "allocated %d MB\n" % mb
