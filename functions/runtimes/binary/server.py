#!/usr/bin/env python3
"""Kappa binary runtime server (Fission environment protocol v2), standard library only.

    python3 server.py [--host HOST] [--port PORT]

Runs any executable (a shell script, a compiled program) once per request, CGI-style: the
request body on stdin, the request in environment variables (REQUEST_METHOD, REQUEST_URI,
PATH_INFO, QUERY_STRING, CONTENT_LENGTH, CONTENT_TYPE, HTTP_<HEADER>), stdout as the response
body after an optional CGI header block. The user-facing contract is docs/runtimes/binary.md.

Design notes:
- Start-up imports only builtin C modules (_socket, _thread, _signal); subprocess is imported
  at specialization, so a generic instance is healthy about as fast as a bare python3.
- One thread per connection parses HTTP/1.1 (keep-alive, chunked request bodies); a FIFO
  semaphore of KAPPA_CONCURRENCY permits bounds the children running at once, so /healthz
  answers while the function is busy.
- While a child runs, the connection is watched: a client that goes away gets its child (and
  the child's process group) killed.
- Output up to STREAM_THRESHOLD bytes is buffered so that a non-zero exit can still become a
  500; beyond that the rest is streamed with chunked encoding, and a failure after that point
  ends the response without its last chunk (a truncated response, never a complete one).
"""

import sys
import os
import _socket
import _thread
import _signal
from time import monotonic as _monotonic, sleep as _sleep, time as _now, gmtime as _gmtime


def _env_int(name, default, minimum=None):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        val = int(raw)
    except ValueError:
        sys.stderr.write("kappa: ignoring %s=%r: not an integer\n" % (name, raw))
        return default
    if minimum is not None and val < minimum:
        sys.stderr.write("kappa: ignoring %s=%r: must be >= %d\n" % (name, raw, minimum))
        return default
    return val


_CONCURRENCY = _env_int("KAPPA_CONCURRENCY", 1, 1)
_GRACE = _env_int("KAPPA_GRACE_PERIOD", 30, 0)
_MAX_BODY = _env_int("KAPPA_MAX_BODY_BYTES", 0, 0)        # 0 = no limit
_IDLE_TIMEOUT = _env_int("KAPPA_KEEPALIVE_TIMEOUT", 900, 0)  # 0 = never time out
_MAX_HEAD = 65536
_SPECIALIZE_MAX_BODY = 1 << 20
STREAM_THRESHOLD = 1 << 20   # buffered output before switching to a streamed response
STDERR_TAIL = 4096           # bytes of the child's stderr kept for the error message
_V1_PATH = "/userfunc/user"

_exe = None                  # [argv prefix] once specialized
_spec_lock = _thread.allocate_lock()
_active = []                 # one item per request being handled (list ops are atomic)
_stopping = False
_subprocess = None


class _Sem:
    """FIFO counting semaphore on _thread locks."""

    def __init__(self, n):
        self._n = n
        self._mu = _thread.allocate_lock()
        self._waiters = []

    def acquire(self):
        with self._mu:
            if self._n > 0:
                self._n -= 1
                return
            w = _thread.allocate_lock()
            w.acquire()
            self._waiters.append(w)
        w.acquire()  # released by the thread handing its permit over

    def release(self):
        with self._mu:
            if self._waiters:
                self._waiters.pop(0).release()
            else:
                self._n += 1


_sem = _Sem(_CONCURRENCY)

# --------------------------------------------------------------------------------------------
# HTTP helpers

_REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Entity", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def _date():
    g = _gmtime(_now())
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon], g.tm_year, g.tm_hour, g.tm_min, g.tm_sec)


def _json_str(s):
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif o < 0x20 or o > 0x7e:
            if o > 0xffff:
                o -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xd800 + (o >> 10), 0xdc00 + (o & 0x3ff)))
            else:
                out.append("\\u%04x" % o)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _error_body(code, message, **extra):
    fields = [("code", code), ("message", message)] + [
        (k, v) for k, v in extra.items() if v]
    inner = ",".join("%s:%s" % (_json_str(k), _json_str(v)) for k, v in fields)
    return ('{"error":{%s}}\n' % inner).encode("ascii")


def _head(status, headers, length, ka, http10):
    """Status line and header block; length None means chunked (HTTP/1.1) or close (1.0)."""
    lines = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Status")), "Date: " + _date()]
    lines.extend("%s: %s" % (k, v) for k, v in headers)
    if status < 200 or status in (204, 304):
        pass
    elif length is not None:
        lines.append("Content-Length: %d" % length)
    elif not http10:
        lines.append("Transfer-Encoding: chunked")
    if not ka:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    data = "\r\n".join(lines) + "\r\n\r\n"
    try:
        return data.encode("latin-1")
    except UnicodeEncodeError:
        return data.encode("utf-8")


def _send(sock, status, headers, body, ka, head_only=False, http10=False):
    out = _head(status, headers, len(body), ka, http10)
    if body and not head_only and not (status < 200 or status in (204, 304)):
        out += body
    sock.sendall(out)


def _send_error(sock, status, code, message, ka, head_only=False, http10=False, **extra):
    _send(sock, status, [("Content-Type", "application/json")],
          _error_body(code, message, **extra), ka, head_only, http10)


def _log(text):
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# Specialization


def _specialize(body, v1):
    """-> (status, JSON body bytes)."""
    global _exe, _subprocess
    with _spec_lock:
        if _exe is not None:
            return 400, _error_body("already_specialized",
                                    "not a generic container: already specialized")
        env = None
        if v1:
            filepath, entry = _V1_PATH, ""
        else:
            import json
            try:
                payload = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                return 400, _error_body("bad_request", "invalid specialize request: %s" % e)
            if not isinstance(payload, dict):
                return 400, _error_body("bad_request",
                                        "invalid specialize request: expected a JSON object")
            filepath = payload.get("filepath")
            entry = payload.get("functionName") or ""
            env = payload.get("env")
            if not isinstance(filepath, str) or not filepath:
                return 400, _error_body("bad_request", "invalid specialize request: "
                                        "'filepath' must be a non-empty string")
            if not isinstance(entry, str):
                return 400, _error_body("bad_request", "invalid specialize request: "
                                        "'functionName' must be a string")
            if env is not None and (not isinstance(env, dict) or not all(
                    isinstance(k, str) and k and "=" not in k and
                    isinstance(v, (str, int, float, bool)) for k, v in env.items())):
                return 400, _error_body("bad_request", "invalid specialize request: 'env' "
                                        "must map names to strings")
        entry = entry.strip()
        if os.path.isdir(filepath):
            if not entry:
                try:
                    names = sorted(os.listdir(filepath))[:20]
                except OSError:
                    names = []
                return 500, _error_body(
                    "specialize_failed", "the code is a directory (%s), so the entrypoint must "
                    "name the executable in it; it holds: %s" % (
                        filepath, ", ".join(names) or "nothing"))
            path = os.path.normpath(os.path.join(filepath, entry))
            if not (path + "/").startswith(os.path.normpath(filepath) + "/"):
                return 500, _error_body("specialize_failed", "entrypoint %r names a file "
                                        "outside the package" % entry)
        else:
            path = filepath
        if not os.path.isfile(path):
            what = "is not a regular file" if os.path.exists(path) else "does not exist"
            where = "" if path == filepath else " (entrypoint %r in %s)" % (entry, filepath)
            return 500, _error_body("specialize_failed", "executable %s %s%s" % (
                path, what, where))
        if env:
            for k, v in env.items():
                os.environ[k] = str(v).lower() if isinstance(v, bool) else str(v)
        import subprocess
        _subprocess = subprocess
        # Code is placed read-only and may have lost its mode bits on the way: what is not
        # executable runs with /bin/sh, as in Fission.
        argv = [path] if os.access(path, os.X_OK) else ["/bin/sh", path]
        _exe = argv
        _log("kappa: specialized %s (run as %s)" % (path, " ".join(argv)))
        return 202, b'{"status":"ok"}\n'


# --------------------------------------------------------------------------------------------
# Invocation


def _cgi_env(method, target, hdrs, body_len, local, peer):
    env = dict(os.environ)
    path, _, query = target.partition("?")
    env.update({
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "kappa-binary-runtime",
        "REQUEST_METHOD": method,
        "REQUEST_URI": target,
        "PATH_INFO": _unquote(path),
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "SCRIPT_FILENAME": _exe[-1],
        "CONTENT_LENGTH": str(body_len),
        "SERVER_NAME": str(local[0]),
        "SERVER_PORT": str(local[1]),
        "REMOTE_ADDR": str(peer[0]) if peer else "",
    })
    seen = {}
    for name, value in hdrs:
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            env["CONTENT_TYPE"] = value
            continue
        if key == "CONTENT_LENGTH" or key == "PROXY" or not key.replace("_", "").isalnum():
            continue  # HTTP_PROXY would be taken for a proxy setting ("httpoxy")
        key = "HTTP_" + key
        seen[key] = seen[key] + ", " + value if key in seen else value
    env.update(seen)
    return env


def _unquote(s):
    if "%" not in s:
        return s
    parts = s.encode("latin-1", "replace").split(b"%")
    out = [parts[0]]
    for p in parts[1:]:
        try:
            out.append(bytes((int(p[:2], 16),)) + p[2:] if len(p) >= 2 else b"%" + p)
        except ValueError:
            out.append(b"%" + p)
    return b"".join(out).decode("utf-8", "replace")


def _parse_cgi_head(data):
    """-> (status, headers, body offset) when output opens with a CGI header block, else None."""
    first_end = data.find(b"\n")
    first = data[:first_end if first_end >= 0 else len(data)].rstrip(b"\r")
    name, sep, _ = first.partition(b":")
    if not sep or not name or not all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      b"0123456789-_" for c in name):
        return None
    i, status, headers = 0, None, []
    while True:
        j = data.find(b"\n", i)
        if j < 0 or i > _MAX_HEAD:
            return None  # never terminated by a blank line: not a header block
        line = data[i:j].rstrip(b"\r")
        i = j + 1
        if not line:
            break
        k, sep, v = line.partition(b":")
        if not sep or not k.strip():
            return None
        k = k.strip().decode("latin-1")
        v = v.strip().decode("latin-1")
        lk = k.lower()
        if lk == "status":
            code = v.split(" ", 1)[0]
            if not (code.isdigit() and 100 <= int(code) <= 999):
                return None
            status = int(code)
        elif lk in ("content-length", "transfer-encoding", "connection"):
            continue
        else:
            headers.append((k, v))
    if status is None:
        status = 302 if any(k.lower() == "location" for k, _ in headers) else 200
    return status, headers, i


def _default_type(body, partial=False):
    """text/plain for UTF-8 output, else application/octet-stream; `partial` allows a
    character cut at the end (a prefix of the output)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (partial and e.reason == "unexpected end of data"):
            return "application/octet-stream"
    return "text/plain; charset=utf-8"


def _tail(buf):
    return bytes(buf[-STDERR_TAIL:]).decode("utf-8", "replace")


def _failure_message(rc, tail):
    how = "was killed by signal %d" % -rc if rc < 0 else "exited with code %d" % rc
    last = tail.strip()[-1000:]
    name = os.path.basename(_exe[-1])
    return "%s %s%s" % (name, how, ": " + " | ".join(last.splitlines()) if last else
                        " (no output on stderr)")


def _run(sock, method, target, version, hdrs, body, ka, local, peer):
    """Runs the executable for one request and sends its response. -> keep-alive."""
    import select
    sp = _subprocess
    http10 = version == "HTTP/1.0"
    head_only = method == "HEAD"
    inv = None
    for k, v in hdrs:
        if k.lower() == "x-kappa-invocation-id":
            inv = v
    try:
        proc = sp.Popen(_exe, stdin=sp.PIPE if body else sp.DEVNULL, stdout=sp.PIPE,
                        stderr=sp.PIPE,
                        env=_cgi_env(method, target, hdrs, len(body), local, peer),
                        start_new_session=True, close_fds=True)
    except OSError as e:
        msg = "could not run %s: %s" % (" ".join(_exe), e)
        _log("kappa: function error%s: %s" % (" (invocation %s)" % inv if inv else "", msg))
        _send_error(sock, 500, "function_error", msg, ka, head_only, http10, invocation_id=inv)
        return ka
    err_tail = bytearray()

    def pump_stderr():
        for line in iter(proc.stderr.readline, b""):
            err_tail.extend(line)
            if len(err_tail) > 2 * STDERR_TAIL:
                del err_tail[:len(err_tail) - STDERR_TAIL]
            try:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
            except Exception:
                pass
        proc.stderr.close()

    def feed_stdin():
        try:
            proc.stdin.write(body)
        except OSError:
            pass  # the program did not read it all: its choice
        try:
            proc.stdin.close()
        except OSError:
            pass

    err_thread = _start(pump_stderr)
    if body:
        _start(feed_stdin)
    out = proc.stdout
    ofd = out.fileno()
    watch_client = True
    buf = bytearray()
    streaming = False
    gone = False
    try:
        while True:
            fds = [ofd, sock.fileno()] if watch_client else [ofd]
            ready, _, _ = select.select(fds, [], [])
            if watch_client and sock.fileno() in ready:
                try:
                    peek = sock.recv(1, _socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    gone = True
                    break
                watch_client = False  # a pipelined request: not a hang-up
            if ofd not in ready:
                continue
            data = os.read(ofd, 65536)
            if not data:
                break
            if not streaming:
                buf += data
                if len(buf) > STREAM_THRESHOLD:
                    streaming = True
                    parsed = _parse_cgi_head(bytes(buf))
                    status, headers, off = parsed if parsed else (200, [], 0)
                    if not any(k.lower() == "content-type" for k, _ in headers):
                        headers.append(("Content-Type",
                                        _default_type(bytes(buf[off:off + 4096]), True)))
                    ka = ka and not http10
                    sock.sendall(_head(status, headers, None, ka, http10))
                    if not head_only:
                        _send_chunk(sock, bytes(buf[off:]), http10)
                    buf = None
            elif not head_only:
                _send_chunk(sock, data, http10)
    except OSError:
        gone = True
    if gone:
        _kill(proc)
        proc.wait()
        err_thread.join(5)
        _log("kappa: client went away%s: killed %s (pid %d)" % (
            " (invocation %s)" % inv if inv else "", _exe[-1], proc.pid))
        return False
    rc = proc.wait()
    err_thread.join(5)
    out.close()
    if streaming:
        if rc != 0:
            _log("kappa: function error after streaming began%s: %s" % (
                " (invocation %s)" % inv if inv else "", _failure_message(rc, _tail(err_tail))))
            return False  # no last chunk: the client sees a truncated response
        if not head_only and not http10:
            sock.sendall(b"0\r\n\r\n")
        return ka
    data = bytes(buf)
    if rc != 0:
        tail = _tail(err_tail)
        msg = _failure_message(rc, tail)
        _log("kappa: function error%s: %s" % (" (invocation %s)" % inv if inv else "", msg))
        _send_error(sock, 500, "function_error", msg, ka, head_only, http10, stderr=tail,
                    invocation_id=inv)
        return ka
    parsed = _parse_cgi_head(data)
    if parsed:
        status, headers, off = parsed
        data = data[off:]
    else:
        status, headers = 200, []
    if not any(k.lower() == "content-type" for k, _ in headers) and data:
        headers.append(("Content-Type", _default_type(data)))
    _send(sock, status, headers, data, ka, head_only, http10)
    return ka


def _send_chunk(sock, data, http10):
    if not data:
        return
    if http10:
        sock.sendall(data)
    else:
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))


def _kill(proc):
    try:
        os.killpg(proc.pid, _signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def _start(target):
    import threading
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------------------------
# Connections


class _BadRequest(Exception):
    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status


def _read_exact(sock, buf, n):
    """-> (n bytes, rest of buf)."""
    parts = bytearray(buf)
    while len(parts) < n:
        data = sock.recv(min(max(n - len(parts), 65536), 4 << 20))
        if not data:
            raise _BadRequest(400, "connection closed in the middle of the request body")
        parts += data
    data = bytes(parts)
    return data[:n], data[n:]


def _read_line(sock, buf):
    i = buf.find(b"\r\n")
    while i < 0:
        if len(buf) > _MAX_HEAD:
            raise _BadRequest(400, "chunk line too long")
        data = sock.recv(65536)
        if not data:
            raise _BadRequest(400, "connection closed in the middle of the request body")
        buf += data
        i = buf.find(b"\r\n")
    return buf[:i], buf[i + 2:]


def _read_chunked(sock, buf, limit):
    out = []
    total = 0
    while True:
        line, buf = _read_line(sock, buf)
        size = line.split(b";", 1)[0].strip()
        try:
            size = int(size, 16)
        except ValueError:
            raise _BadRequest(400, "invalid chunk size") from None
        if size == 0:
            while True:
                line, buf = _read_line(sock, buf)
                if not line:
                    return b"".join(out), buf
        total += size
        if limit and total > limit:
            raise _BadRequest(413, "request body larger than %d bytes" % limit)
        data, buf = _read_exact(sock, buf, size + 2)
        if data[-2:] != b"\r\n":
            raise _BadRequest(400, "invalid chunk framing")
        out.append(data[:-2])


_NOT_SPECIALIZED = _error_body("not_specialized", "this runtime instance has no function "
                               "loaded yet (POST /v2/specialize first)")


def _serve_conn(sock, peer, local):
    buf = b""
    try:
        if _IDLE_TIMEOUT:
            sock.settimeout(_IDLE_TIMEOUT)
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    _send_error(sock, 431, "request_header_fields_too_large",
                                "request head larger than %d bytes" % _MAX_HEAD, False)
                    return
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                buf = buf.lstrip(b"\r\n")
                end = buf.find(b"\r\n\r\n")
            lines = buf[:end].decode("latin-1").split("\r\n")
            buf = buf[end + 4:]
            _active.append(None)
            try:
                rl = lines[0].split(" ")
                if len(rl) != 3:
                    raise _BadRequest(400, "malformed request line")
                method, target, version = rl
                if version not in ("HTTP/1.1", "HTTP/1.0"):
                    raise _BadRequest(505, "unsupported protocol version %r" % version)
                hdrs = []
                clen, chunked, conn, expect = -1, False, None, False
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if not sep or not name or name != name.strip():
                        raise _BadRequest(400, "malformed header line")
                    value = value.strip()
                    hdrs.append((name, value))
                    ln = name.lower()
                    if ln == "content-length":
                        if not value.isdigit() or (clen >= 0 and int(value) != clen):
                            raise _BadRequest(400, "invalid Content-Length")
                        clen = int(value)
                    elif ln == "transfer-encoding":
                        if value.lower().rpartition(",")[2].strip() != "chunked":
                            raise _BadRequest(501, "unsupported Transfer-Encoding %r" % value)
                        chunked = True
                    elif ln == "connection":
                        conn = value.lower()
                    elif ln == "expect":
                        expect = value.lower() == "100-continue"
                http10 = version == "HTTP/1.0"
                ka = ("keep-alive" in conn) if http10 and conn else (
                    not http10 and (conn is None or "close" not in conn))
                if chunked or clen > 0:
                    if expect and not http10 and not buf:
                        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                # KAPPA_MAX_BODY_BYTES bounds the function's requests, not the platform's.
                limit = _SPECIALIZE_MAX_BODY if target.endswith("specialize") else _MAX_BODY
                if chunked:
                    ka = ka and clen < 0
                    body, buf = _read_chunked(sock, buf, limit)
                elif clen > 0:
                    if limit and clen > limit:
                        raise _BadRequest(413, "request body larger than %d bytes" % limit)
                    body, buf = _read_exact(sock, buf, clen)
                else:
                    body = b""
                if _stopping:
                    ka = False
                if target.split("?", 1)[0] == "/healthz" and method in ("GET", "HEAD"):
                    _send(sock, 503 if _stopping else 200, [("Content-Type", "application/json")],
                          b'{"status":"stopping"}\n' if _stopping else b'{"status":"ok"}\n',
                          ka, method == "HEAD", http10)
                elif method == "POST" and target in ("/v2/specialize", "/specialize"):
                    status, out = _specialize(body, target == "/specialize")
                    _send(sock, status, [("Content-Type", "application/json")], out, ka,
                          False, http10)
                elif _exe is None:
                    _send(sock, 500, [("Content-Type", "application/json")], _NOT_SPECIALIZED,
                          ka, method == "HEAD", http10)
                else:
                    _sem.acquire()
                    try:
                        ka = _run(sock, method, target, version, hdrs, body, ka, local, peer)
                    finally:
                        _sem.release()
            except _BadRequest as e:
                try:
                    _send_error(sock, e.status, "bad_request" if e.status == 400 else
                                _REASONS.get(e.status, "error").lower().replace(" ", "_"),
                                str(e), False)
                except OSError:
                    pass
                return
            except OSError:
                return
            finally:
                _active.pop()
            if not ka or _stopping:
                return
    except BaseException as e:  # never let a connection thread die noisily
        if not isinstance(e, (OSError, SystemExit)):
            _log("kappa: internal error on a connection: %s: %s" % (type(e).__name__, e))
    finally:
        try:
            sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        sock.close()


# --------------------------------------------------------------------------------------------
# Process

_listener = None


def _on_signal(signum, frame):
    global _stopping
    if _stopping:
        if signum == _signal.SIGINT:
            os._exit(130)
        return
    _stopping = True
    try:
        _listener.shutdown(_socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


_USAGE = """usage: server.py [--host HOST] [--port PORT]

Kappa binary runtime server (Fission environment protocol v2): runs an executable per request,
CGI-style.
  --host HOST   listen address (env HOST; default 127.0.0.1)
  --port PORT   listen port (env PORT, then RUNTIME_PORT; default 8888; 0 picks a free port)
Environment: KAPPA_CONCURRENCY (default 1), KAPPA_GRACE_PERIOD (s, default 30),
KAPPA_MAX_BODY_BYTES (default 0 = no limit), KAPPA_KEEPALIVE_TIMEOUT (s, default 900).
"""


def _parse_args(argv):
    host = port = None
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in ("--port", "-p", "--host") and not eq:
            if i + 1 >= len(argv):
                sys.stderr.write("kappa: %s needs a value\n%s" % (a, _USAGE))
                sys.exit(2)
            val = argv[i + 1]
            i += 1
        if key in ("--port", "-p"):
            port = val
        elif key == "--host":
            host = val
        elif a in ("-h", "--help"):
            sys.stdout.write(_USAGE)
            sys.exit(0)
        else:
            sys.stderr.write("kappa: ignoring unknown argument %r\n" % a)
        i += 1
    if host is None:
        host = os.environ.get("HOST") or "127.0.0.1"
    if port is None:
        port = os.environ.get("PORT") or os.environ.get("RUNTIME_PORT") or "8888"
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        sys.stderr.write("kappa: invalid port %r: expected 0-65535\n" % (port,))
        sys.exit(2)
    return host, port


def main():
    global _listener, _stopping
    host, port = _parse_args(sys.argv[1:])
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    ls = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        ls.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        ls.bind((host.strip("[]"), port))
        ls.listen(1024)
    except OSError as e:
        sys.stderr.write("kappa: cannot listen on %s:%d: %s\n" % (host, port, e))
        sys.exit(1)
    port = ls.getsockname()[1]
    # A process-directed signal may land on a worker thread; the timeout bounds how long the
    # main thread takes to notice.
    ls.settimeout(1.0)
    _listener = ls
    _signal.signal(_signal.SIGTERM, _on_signal)
    _signal.signal(_signal.SIGINT, _on_signal)
    shown = "[%s]" % host.strip("[]") if family == _socket.AF_INET6 else host
    sys.stdout.write("kappa binary runtime listening on %s:%d\n" % (shown, port))
    sys.stdout.flush()
    local = ls.getsockname()
    while not _stopping:
        try:
            fd, peer = ls._accept()
        except TimeoutError:
            continue
        except OSError as e:
            if not _stopping:
                _log("kappa: accept failed: %s" % e)
                _sleep(0.05)
            continue
        s = _socket.socket(ls.family, ls.type, 0, fd)
        try:
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        _thread.start_new_thread(_serve_conn, (s, peer, local))
    _stopping = True
    try:
        ls.close()
    except OSError:
        pass
    if _active:
        _log("kappa: shutting down: draining %d in-flight request(s), grace %ds" % (
            len(_active), _GRACE))
    deadline = _monotonic() + _GRACE
    while _active and _monotonic() < deadline:
        _sleep(0.005)
    if _active:
        _log("kappa: exiting with %d request(s) still in flight after %ds" % (
            len(_active), _GRACE))
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
