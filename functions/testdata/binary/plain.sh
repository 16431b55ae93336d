#!/bin/sh
# No header block: all of stdout is the body (the first line only looks like a header when it
# is followed by a blank line).
echo "time: $(date +%s) is not a header"
echo "second line"
