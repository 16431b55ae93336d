#!/bin/sh
# Records its pid, then sleeps: for the test that a client going away kills the child.
echo $$ > "$HTTP_X_PIDFILE"
exec sleep 60
