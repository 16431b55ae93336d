#!/bin/sh
# A CGI header block with a non-200 status and a custom header; echoes stdin and headers.
printf 'Status: 201 Created\n'
printf 'Content-Type: application/json\n'
printf 'X-Custom: %s\n' "$HTTP_X_CUSTOM"
printf '\n'
printf '{"method":"%s","uri":"%s","query":"%s","length":"%s","type":"%s","body":"%s"}\n' \
  "$REQUEST_METHOD" "$REQUEST_URI" "$QUERY_STRING" "$CONTENT_LENGTH" "$CONTENT_TYPE" "$(cat)"
