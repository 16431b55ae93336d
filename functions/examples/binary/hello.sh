#!/bin/sh
# A CGI-style shell function for Kappa's binary runtime: the request body arrives on stdin,
# the request in environment variables, and stdout is the response (a header block, a blank
# line, then the body).
body=$(cat)
printf 'Status: 200 OK\r\n'
printf 'Content-Type: text/plain; charset=utf-8\r\n'
printf 'X-Request-Method: %s\r\n' "$REQUEST_METHOD"
printf '\r\n'
echo "Hello from a shell script! You sent a $REQUEST_METHOD request to $PATH_INFO."
if [ -n "$QUERY_STRING" ]; then
  echo "Query: $QUERY_STRING"
fi
if [ -n "$body" ]; then
  echo "Body (${CONTENT_LENGTH} bytes): $body"
fi
