#!/bin/sh
# Writes a little output, complains on stderr and exits 3: the caller gets a 500 whose body
# carries the exit code and the end of stderr.
echo "partial output that must not be sent"
echo "starting up" >&2
echo "fatal: the widget is broken" >&2
exit 3
