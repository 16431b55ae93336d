#!/usr/bin/env python3
"""Kappa Python runtime server (Fission environment protocol v2), standard library only.

    python3 server.py [--host HOST] [--port PORT]

One process serves one function. It starts generic (only /healthz answers), is specialized
once with POST /v2/specialize {"filepath", "functionName", "env"?}, and from then on every
other method and path calls the function. The user-facing contract is docs/runtimes/python.md.

Design notes (this file is on the measured hot path: "healthy within 1.5x a bare python3"):
- Python compiles a script run as __main__ from source on every start and never caches it;
  for this file that alone took 11-16 ms, as long as the whole interpreter start. So the
  implementation is the raw string _IMPL below: the tokenizer skips it in well under a
  millisecond, and _load_impl() compiles it once (with its real line numbers, so tracebacks
  and linecache point into this file) and caches the code object in __pycache__/ next to
  this file, keyed by this file's path, mtime and size and the interpreter's bytecode magic.
  KAPPA_RUNTIME_CACHE=0 disables the cache; an unwritable directory just means no cache.
- Start-up imports only builtin C modules (_socket, _thread, _signal, time, marshal);
  everything else is imported on first use. JSON goes through the C scanner/encoder in
  `_json` directly, because `import json` pulls in `re` and costs milliseconds.
- Idle keep-alive connections wait in one epoll; one poller thread reads the requests and runs
  sync handlers itself for the simple ones, and a watchdog hands the poller's role to a new
  thread when a handler blocks (see "The poller" below); the specialization runs there too.
  Unusual requests (chunked bodies, bodies still arriving, WebSockets) move their connection to
  a thread of its own, which parses HTTP/1.1 (keep-alive, pipelining, chunked bodies). A FIFO
  semaphore of KAPPA_CONCURRENCY permits bounds the calls into the function, so /healthz keeps
  answering while the function is busy. Async handlers run on one shared event loop thread
  (module-level async clients stay bound to one loop).
- A small response is written with one send (status line, headers and body together) and every
  accepted socket has TCP_NODELAY.
"""

import sys
import os


_impl_cache = ["disabled", None]  # (status, cache path): hit | written | not written: ...


def _load_impl(src, first_line):
    """The compiled implementation: from the cache when it is current, else compiled (and
    cached when the directory is writable).

    The key is this file's mtime and size and the bytecode magic, not its path, so a cache
    written on the host stays valid when the directory is bind-mounted elsewhere read-only
    (the local backend's sandbox mounts it at /runtime)."""
    import marshal
    path = os.path.abspath(__file__)
    code = key = cache = None
    if os.environ.get("KAPPA_RUNTIME_CACHE", "1") != "0":
        try:
            st = os.stat(path)
            magic = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
            key = b"KAPPA-RUNTIME\x02" + magic + b"%d:%d\n" % (st.st_mtime_ns, st.st_size)
            cache = os.path.join(os.path.dirname(path), "__pycache__", "%s.%s.kappa" % (
                os.path.basename(path).rpartition(".")[0] or "server",
                sys.implementation.cache_tag))
            _impl_cache[1] = cache
            with open(cache, "rb") as f:
                data = f.read()
            if data.startswith(key):
                code = marshal.loads(data[len(key):])
                _impl_cache[0] = "hit"
        except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            pass
    if code is None:
        code = compile("\n" * (first_line - 1) + src, path, "exec", dont_inherit=True)
        if key is not None:
            try:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                tmp = "%s.%d.tmp" % (cache, os.getpid())
                with open(tmp, "wb") as f:
                    f.write(key + marshal.dumps(code))
                os.replace(tmp, cache)
                _impl_cache[0] = "written"
            except OSError as e:
                _impl_cache[0] = "not written: %s" % e
    return code


# The implementation (see the module docstring for why it is a string). Its first line is
# the line after this one; it runs in this module's namespace.
_IMPL = r'''
import sys
import os
import _socket
import _thread
import _signal
from time import time as _now, monotonic as _monotonic, gmtime as _gmtime, sleep as _sleep, \
    perf_counter as _perf

# --------------------------------------------------------------------------------------------
# Configuration


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
_V1_PATH = "/userfunc/user"

# --------------------------------------------------------------------------------------------
# Shared state

_state = None              # (fn, takes_request, is_async) once specialized
_flask_app = None          # a real flask.Flask when the function imports real Flask
_spec_lock = _thread.allocate_lock()
_active = []               # one item per request being handled (list ops are atomic)
_stopping = False
_SERVER_FILE = _env_int.__code__.co_filename


class _Sem:
    """FIFO counting semaphore on _thread locks (threading is not imported at start-up)."""

    __slots__ = ("_n", "_mu", "_waiters")

    def __init__(self, n):
        self._n = n
        self._mu = _thread.allocate_lock()
        self._waiters = []

    def acquire(self):
        mu = self._mu
        mu.acquire()
        if self._n > 0:
            self._n -= 1
            mu.release()
            return
        w = _thread.allocate_lock()
        w.acquire()
        self._waiters.append(w)
        mu.release()
        w.acquire()  # the releasing thread hands its permit over by releasing w

    def release(self):
        mu = self._mu
        mu.acquire()
        if self._waiters:
            w = self._waiters.pop(0)
            mu.release()
            w.release()
        else:
            self._n += 1
            mu.release()


_sem = _Sem(_CONCURRENCY)

# --------------------------------------------------------------------------------------------
# JSON through the C accelerator (falls back to the json module where _json is missing)

_scanner = None


def _json_const(name):
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def _json_loads(s):
    global _scanner
    if isinstance(s, (bytes, bytearray)):
        s = bytes(s).decode("utf-8-sig" if s[:3] == b"\xef\xbb\xbf" else "utf-8")
    if _scanner is None:
        try:
            import _json

            class _Ctx:
                strict = True
                object_hook = None
                object_pairs_hook = None
                parse_float = float
                parse_int = int
                parse_constant = staticmethod(_json_const)
                memo = {}

            _scanner = _json.make_scanner(_Ctx())
        except Exception:
            import json
            _scanner = False
            return json.loads(s)
    if _scanner is False:
        import json
        return json.loads(s)
    n = len(s)
    i = 0
    while i < n and s[i] in " \t\n\r":
        i += 1
    try:
        obj, end = _scanner(s, i)
    except StopIteration as e:
        raise ValueError("invalid JSON at character %d" % e.value) from None
    except SystemError:
        # The C scanner builds its error from json.decoder.JSONDecodeError and fails like
        # this while json.decoder is not imported: let the json module explain the error.
        import json
        json.loads(s)
        raise ValueError("invalid JSON") from None
    while end < n and s[end] in " \t\n\r":
        end += 1
    if end != n:
        raise ValueError("invalid JSON: extra data at character %d" % end)
    return obj


def _json_default(o):
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(o)
    if type(o).__name__ in ("Decimal", "UUID"):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return list(o)
    if hasattr(o, "__html__"):
        return str(o.__html__())
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


_encoder_ok = None


def _json_dumps(o):
    """Compact JSON text (ASCII-escaped, like json.dumps with separators=(',', ':'))."""
    global _encoder_ok
    if _encoder_ok is None:
        try:
            import _json
            _json.make_encoder({}, _json_default, _json.encode_basestring_ascii, None,
                               ":", ",", False, False, True)
            _encoder_ok = True
        except Exception:
            _encoder_ok = False
    if _encoder_ok:
        import _json
        enc = _json.make_encoder({}, _json_default, _json.encode_basestring_ascii, None,
                                 ":", ",", False, False, True)
        return "".join(enc(o, 0))
    import json
    return json.dumps(o, separators=(",", ":"), default=_json_default)


# Work every specialization does the first time in a process, done at start instead: while
# the instance waits in a warm pool, or once in the template before the fork (zygote.py), so
# not on a first request's path. The implementation is usually unmarshalled from its cache, so
# the function's import would be this process's first compile(), and the first compile sets up
# the compiler (about 0.8 ms of CPU here, against 0.2 ms for compiling a small module). And the
# specialize request is the first JSON it reads: load `_json` (a shared library) and make the
# scanner.
compile("pass", "<kappa warm-up>", "exec", dont_inherit=True)
try:
    _json_loads(b"{}")
except Exception:  # pragma: no cover - an interpreter without _json falls back on first use
    _scanner = None


# --------------------------------------------------------------------------------------------
# HTTP helpers

_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content", 205: "Reset Content",
    206: "Partial Content", 207: "Multi-Status", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 418: "I'm a Teapot", 422: "Unprocessable Entity", 423: "Locked",
    424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
_status_lines = {}


def _status_line(code):
    line = _status_lines.get(code)
    if line is None:
        line = ("HTTP/1.1 %d %s\r\n" % (code, _REASONS.get(code, "Status"))).encode("ascii")
        _status_lines[code] = line
    return line


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")
_date = [0, b""]


def _date_header():
    t = int(_now())
    if t != _date[0]:
        g = _gmtime(t)
        _date[1] = ("Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n" % (
            _DAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon], g.tm_year, g.tm_hour, g.tm_min,
            g.tm_sec)).encode("ascii")
        _date[0] = t
    return _date[1]


def _conn_header(ka, http10):
    if ka:
        return "Connection: keep-alive\r\n" if http10 else ""
    return "Connection: close\r\n"


def _encode_head(s):
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


def _build(status, hstr, data, ka, head_only, http10):
    """Whole response as bytes: hstr holds the header lines (Content-Type etc.)."""
    if status < 200 or status == 204 or status == 304:
        head = "%s%s\r\n" % (hstr, _conn_header(ka, http10))
        data = b""
    else:
        head = "%sContent-Length: %d\r\n%s\r\n" % (hstr, len(data), _conn_header(ka, http10))
    out = _status_line(status) + _date_header() + _encode_head(head)
    if head_only or not data:
        return out
    return out + data


_CT_TEXT = "text/plain; charset=utf-8"
_CT_BIN = "application/octet-stream"
_CT_JSON = "application/json"
_H_TEXT = "Content-Type: text/plain; charset=utf-8\r\n"
_H_BIN = "Content-Type: application/octet-stream\r\n"
_H_JSON = "Content-Type: application/json\r\n"


def _reason_code(status):
    r = _REASONS.get(status, "error %d" % status)
    return "".join(c if c.isalnum() else "_" for c in r.lower().replace("'", "")).strip("_")


def _error_body(code, message, traceback=None, invocation_id=None):
    err = {"code": code, "message": message}
    if traceback:
        err["traceback"] = traceback
    if invocation_id:
        err["invocation_id"] = invocation_id
    return (_json_dumps({"error": err}) + "\n").encode("utf-8")


def _error_response(status, code, message, ka, head_only=False, http10=False, traceback=None,
                    invocation_id=None):
    return _build(status, _H_JSON, _error_body(code, message, traceback, invocation_id), ka,
                  head_only, http10)


_HEALTH_BODY = b'{"status":"ok"}\n'
_STOPPING_BODY = b'{"status":"stopping"}\n'
_NOT_SPECIALIZED = (b'{"error":{"code":"not_specialized","message":"this runtime instance has no '
                    b'function loaded yet (POST /v2/specialize first)"}}\n')

_HEX = b"0123456789abcdefABCDEF"


def _unquote(s, plus=False):
    """Percent-decode a str holding raw (latin-1 decoded) URL bytes; the result is UTF-8 text."""
    if plus and "+" in s:
        s = s.replace("+", " ")
    if "%" not in s:
        if s.isascii():
            return s
        return s.encode("latin-1", "replace").decode("utf-8", "replace")
    parts = s.encode("latin-1", "replace").split(b"%")
    res = [parts[0]]
    for p in parts[1:]:
        if len(p) >= 2 and p[0] in _HEX and p[1] in _HEX:
            res.append(bytes((int(p[:2], 16),)))
            res.append(p[2:])
        else:
            res.append(b"%")
            res.append(p)
    return b"".join(res).decode("utf-8", "replace")


def _parse_qs(qs):
    out = []
    for part in qs.split("&"):
        if part:
            k, _, v = part.partition("=")
            out.append((_unquote(k, True), _unquote(v, True)))
    return out


def _parse_options(value):
    """'text/plain; charset="utf-8"; a=b' -> ('text/plain', {'charset': 'utf-8', 'a': 'b'})."""
    main, _, rest = value.partition(";")
    params = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        key = rest[i:j].strip().lower()
        val = ""
        if j < n and rest[j] == "=":
            j += 1
            while j < n and rest[j] in " \t":
                j += 1
            if j < n and rest[j] == '"':
                j += 1
                buf = []
                while j < n and rest[j] != '"':
                    if rest[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(rest[j])
                    j += 1
                j += 1
                val = "".join(buf)
            else:
                k = j
                while j < n and rest[j] != ";":
                    j += 1
                val = rest[k:j].strip()
        if key:
            params[key] = val
        i = j + 1
    return main.strip().lower(), params


# --------------------------------------------------------------------------------------------
# Flask-compatible request and response objects


class _BadRequestKeyError(KeyError):
    code = 400
    description = None

    def get_response(self, environ=None):
        return Response(_error_body("bad_request", "missing key %s in the request" % (
            self.args[0] if self.args else "",)), 400, mimetype=_CT_JSON)


class MultiDict(dict):
    """dict of first values plus every value per key (werkzeug.MultiDict subset)."""

    def __init__(self, pairs=()):
        dict.__init__(self)
        self._lists = {}
        if hasattr(pairs, "items"):
            pairs = pairs.items()
        for k, v in pairs:
            self.add(k, v)

    def add(self, key, value):
        lst = self._lists.get(key)
        if lst is None:
            self._lists[key] = [value]
            dict.__setitem__(self, key, value)
        else:
            lst.append(value)

    def __getitem__(self, key):
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise _BadRequestKeyError(key) from None

    def __setitem__(self, key, value):
        self._lists[key] = [value]
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        del self._lists[key]

    def get(self, key, default=None, type=None):
        try:
            v = dict.__getitem__(self, key)
        except KeyError:
            return default
        if type is not None:
            try:
                return type(v)
            except (ValueError, TypeError):
                return default
        return v

    def getlist(self, key, type=None):
        vals = self._lists.get(key, ())
        if type is None:
            return list(vals)
        out = []
        for v in vals:
            try:
                out.append(type(v))
            except (ValueError, TypeError):
                pass
        return out

    def setlist(self, key, values):
        values = list(values)
        if values:
            self._lists[key] = values
            dict.__setitem__(self, key, values[0])
        else:
            self.pop(key, None)

    def pop(self, key, *default):
        self._lists.pop(key, None)
        return dict.pop(self, key, *default)

    def items(self, multi=False):
        if multi:
            return [(k, v) for k, vs in self._lists.items() for v in vs]
        return dict.items(self)

    def lists(self):
        return [(k, list(vs)) for k, vs in self._lists.items()]

    def to_dict(self, flat=True):
        if flat:
            return dict(dict.items(self))
        return {k: list(vs) for k, vs in self._lists.items()}

    def copy(self):
        return MultiDict(self.items(multi=True))

    def __repr__(self):
        return "MultiDict(%r)" % (self.items(multi=True),)


class Headers:
    """Ordered, case-insensitive, multi-valued headers (werkzeug.Headers subset).

    Iterating yields (name, value) pairs, like werkzeug."""

    __slots__ = ("_list", "_map")

    def __init__(self, defaults=None):
        self._list = []
        self._map = None
        if defaults:
            self.extend(defaults)

    @classmethod
    def _from_list(cls, pairs):
        h = cls.__new__(cls)
        h._list = pairs
        h._map = None
        return h

    def _lookup(self):
        m = self._map
        if m is None:
            m = {}
            for k, v in self._list:
                m.setdefault(k.lower(), v)
            self._map = m
        return m

    def get(self, key, default=None, type=None):
        v = self._lookup().get(key.lower())
        if v is None:
            return default
        if type is not None:
            try:
                return type(v)
            except (ValueError, TypeError):
                return default
        return v

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._list[key]
        v = self._lookup().get(key.lower())
        if v is None:
            raise _BadRequestKeyError(key)
        return v

    def __contains__(self, key):
        return key.lower() in self._lookup()

    def getlist(self, key, type=None):
        lk = key.lower()
        vals = [v for k, v in self._list if k.lower() == lk]
        if type is not None:
            out = []
            for v in vals:
                try:
                    out.append(type(v))
                except (ValueError, TypeError):
                    pass
            return out
        return vals

    get_all = getlist

    def __iter__(self):
        return iter(list(self._list))

    def __len__(self):
        return len(self._list)

    def __bool__(self):
        return bool(self._list)

    def keys(self, lower=False):
        return [k.lower() if lower else k for k, _ in self._list]

    def values(self):
        return [v for _, v in self._list]

    def items(self, lower=False):
        if lower:
            return [(k.lower(), v) for k, v in self._list]
        return list(self._list)

    def to_wsgi_list(self):
        return list(self._list)

    def add(self, key, value, **params):
        if params:
            value = str(value) + "".join('; %s="%s"' % (k.replace("_", "-"), v)
                                         for k, v in params.items())
        self._list.append((str(key), str(value)))
        self._map = None

    def extend(self, other=None, **kwargs):
        if other is not None:
            if isinstance(other, Headers):
                other = other._list
            elif hasattr(other, "items"):
                other = other.items()
            for k, v in other:
                if isinstance(v, (list, tuple)):
                    for x in v:
                        self.add(k, x)
                else:
                    self.add(k, v)
        for k, v in kwargs.items():
            self.add(k, v)

    def remove(self, key):
        lk = key.lower()
        self._list = [(k, v) for k, v in self._list if k.lower() != lk]
        self._map = None

    __delitem__ = remove

    def set(self, key, value, **params):
        self.remove(key)
        self.add(key, value, **params)

    def __setitem__(self, key, value):
        self.set(key, value)

    def setdefault(self, key, default):
        if key in self:
            return self[key]
        self.add(key, default)
        return default

    def update(self, other=None, **kwargs):
        """Replace the named headers (werkzeug semantics)."""
        pairs = []
        if other is not None:
            if isinstance(other, Headers):
                pairs = other._list
            elif hasattr(other, "items"):
                pairs = list(other.items())
            else:
                pairs = list(other)
        pairs = pairs + list(kwargs.items())
        for k in {k.lower(): k for k, _ in pairs}.values():
            self.remove(k)
        self.extend(pairs)

    def pop(self, key, *default):
        if key in self:
            v = self[key]
            self.remove(key)
            return v
        if default:
            return default[0]
        raise KeyError(key)

    def clear(self):
        self._list = []
        self._map = None

    def copy(self):
        return Headers._from_list(list(self._list))

    def __eq__(self, other):
        if isinstance(other, Headers):
            return self._list == other._list
        return NotImplemented

    def __repr__(self):
        return "Headers(%r)" % (self._list,)

    def __str__(self):
        return "".join("%s: %s\r\n" % kv for kv in self._list) + "\r\n"


class _CIDict(dict):
    """dict with lower-case keys whose lookups ignore case (path parameters)."""

    def __getitem__(self, key):
        return dict.__getitem__(self, key.lower())

    def get(self, key, default=None):
        return dict.get(self, key.lower(), default)

    def __contains__(self, key):
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class FileStorage:
    """An uploaded file from a multipart/form-data body (werkzeug.FileStorage subset)."""

    def __init__(self, stream, filename, name, content_type, headers):
        self.stream = stream
        self.filename = filename
        self.name = name
        self.content_type = content_type
        self.mimetype = (content_type or "").partition(";")[0].strip().lower()
        self.headers = headers

    def read(self, *args):
        return self.stream.read(*args)

    def save(self, dst):
        data = self.stream.getvalue()
        if isinstance(dst, (str, bytes, os.PathLike)):
            with open(dst, "wb") as f:
                f.write(data)
        else:
            dst.write(data)

    def __bool__(self):
        return bool(self.filename)

    def __repr__(self):
        return "<FileStorage: %r (%r)>" % (self.filename, self.content_type)


def _parse_multipart(body, boundary):
    from io import BytesIO
    form, files = MultiDict(), MultiDict()
    delim = b"--" + boundary.encode("latin-1")
    for part in body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        if part.endswith(b"\r\n"):
            part = part[:-2]
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        hdrs = []
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, s, v = line.partition(":")
            if s:
                hdrs.append((k.strip(), v.strip()))
        h = Headers._from_list(hdrs)
        _, opts = _parse_options(h.get("Content-Disposition", ""))
        name = opts.get("name")
        if name is None:
            continue
        if "filename" in opts:
            files.add(name, FileStorage(BytesIO(data), opts["filename"], name,
                                        h.get("Content-Type", _CT_BIN), h))
        else:
            form.add(name, data.decode("utf-8", "replace"))
    return form, files


class _G:
    """Per-request scratch namespace (flask.g)."""

    def get(self, name, default=None):
        return self.__dict__.get(name, default)

    def pop(self, name, *default):
        return self.__dict__.pop(name, *default)

    def setdefault(self, name, default=None):
        return self.__dict__.setdefault(name, default)

    def __contains__(self, name):
        return name in self.__dict__


_UNSET = object()


class Request:
    """The incoming request: a Flask-compatible subset plus Kappa extras.

    Passed to `def main(request)` handlers and behind `flask.request` for `def main()`."""

    charset = "utf-8"
    script_root = ""
    root_path = ""
    endpoint = None
    blueprint = None
    url_rule = None
    max_content_length = None

    def __init__(self, method, target, version, headers, body, peer, local=None):
        self.method = method
        self._target = target
        self.environ_protocol = version
        self._raw = headers
        self._body = body
        self._peer = peer
        self._local = local
        self._headers = None
        self._args = None
        self._form = None
        self._files = None
        self._json = _UNSET
        self._path = None
        self._g = None
        self._environ = None

    # --- URL
    @property
    def _raw_path(self):
        raw = self._target.partition("?")[0]
        if raw[:1] != "/" and "://" in raw:  # absolute-form request target
            raw = "/" + raw.partition("://")[2].partition("/")[2]
        return raw

    @property
    def path(self):
        p = self._path
        if p is None:
            raw = self._raw_path
            p = self._path = raw if (raw.isascii() and "%" not in raw) else _unquote(raw)
        return p

    @property
    def query_string(self):
        return self._target.partition("?")[2].encode("latin-1")

    @property
    def full_path(self):
        return self.path + "?" + self._target.partition("?")[2]

    @property
    def scheme(self):
        return "http"

    @property
    def is_secure(self):
        return False

    @property
    def host(self):
        h = self.headers.get("Host")
        if h:
            return h
        if self._local:
            return "%s:%d" % (self._local[0], self._local[1])
        return "localhost"

    @property
    def host_url(self):
        return "http://%s/" % self.host

    url_root = host_url

    @property
    def base_url(self):
        return "http://%s%s" % (self.host, self._raw_path)

    @property
    def url(self):
        q = self._target.partition("?")[2]
        return self.base_url + ("?" + q if q else "")

    @property
    def args(self):
        a = self._args
        if a is None:
            q = self._target.partition("?")[2]
            a = self._args = MultiDict(_parse_qs(q) if q else ())
        return a

    # --- headers
    @property
    def headers(self):
        h = self._headers
        if h is None:
            h = self._headers = Headers._from_list(self._raw)
        return h

    @property
    def content_type(self):
        return self.headers.get("Content-Type")

    @property
    def mimetype(self):
        return (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()

    @property
    def mimetype_params(self):
        return _parse_options(self.headers.get("Content-Type") or "")[1]

    @property
    def content_length(self):
        return self.headers.get("Content-Length", type=int)

    @property
    def user_agent(self):
        return self.headers.get("User-Agent", "")

    @property
    def referrer(self):
        return self.headers.get("Referer")

    @property
    def origin(self):
        return self.headers.get("Origin")

    @property
    def cookies(self):
        c = MultiDict()
        for line in self.headers.getlist("Cookie"):
            for part in line.split(";"):
                k, sep, v = part.partition("=")
                if sep:
                    v = v.strip()
                    if len(v) >= 2 and v[0] == v[-1] == '"':
                        v = v[1:-1]
                    c.add(k.strip(), v)
        return c

    @property
    def remote_addr(self):
        return self._peer[0] if self._peer else None

    @property
    def access_route(self):
        xff = self.headers.get("X-Forwarded-For")
        if xff:
            return [x.strip() for x in xff.split(",") if x.strip()]
        return [self.remote_addr] if self.remote_addr else []

    # --- body
    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        if as_text:
            return self._body.decode("utf-8", "replace")
        return self._body

    @property
    def data(self):
        return self._body

    @property
    def body(self):
        return self._body

    @property
    def text(self):
        return self._body.decode("utf-8", "replace")

    @property
    def stream(self):
        from io import BytesIO
        return BytesIO(self._body)

    input_stream = stream

    @property
    def is_json(self):
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and
                                            mt.endswith("+json"))

    def get_json(self, force=False, silent=False, cache=True):
        if cache and self._json is not _UNSET:
            return self._json
        if not (force or self.is_json):
            if silent:
                return None
            raise _http_error(415, "Did not attempt to load JSON data because the request "
                                   "Content-Type was not 'application/json'.")
        try:
            rv = _json_loads(self._body)
        except ValueError as e:
            if silent:
                rv = None
            else:
                raise _http_error(400, "Failed to decode JSON object: %s" % (e,)) from None
        if cache:
            self._json = rv
        return rv

    @property
    def json(self):
        return self.get_json()

    def _load_form(self):
        if self._form is not None:
            return
        mt, opts = _parse_options(self.headers.get("Content-Type") or "")
        if mt == "application/x-www-form-urlencoded":
            self._form = MultiDict(_parse_qs(self._body.decode("latin-1")))
            self._files = MultiDict()
        elif mt == "multipart/form-data" and opts.get("boundary"):
            self._form, self._files = _parse_multipart(self._body, opts["boundary"])
        else:
            self._form = MultiDict()
            self._files = MultiDict()

    @property
    def form(self):
        self._load_form()
        return self._form

    @property
    def files(self):
        self._load_form()
        return self._files

    @property
    def values(self):
        v = MultiDict(self.args.items(multi=True))
        if self.method != "GET":
            for k, x in self.form.items(multi=True):
                v.add(k, x)
        return v

    # --- Kappa extras
    @property
    def params(self):
        """Path parameters from the route template (X-Kappa-Params-<name> headers)."""
        out = _CIDict()
        for k, v in self._raw:
            if len(k) > 15 and k[:15].lower() == "x-kappa-params-":
                out[k[15:].lower()] = v
        return out

    view_args = params

    @property
    def function_name(self):
        return self.headers.get("X-Kappa-Function-Name")

    @property
    def invocation_id(self):
        return self.headers.get("X-Kappa-Invocation-Id")

    @property
    def traceparent(self):
        """The W3C trace context of this invocation (`traceparent` header), or None."""
        return _valid_traceparent(self.headers.get("traceparent"))

    @property
    def trace_id(self):
        tp = self.traceparent
        return tp[3:35] if tp else None

    def child_traceparent(self):
        """A `traceparent` for a span of the function's own, child of the invocation's: the
        same trace id and flags, a new span id. Send it downstream (and report the span
        under that id); None when the invocation carries no trace context."""
        tp = self.traceparent
        if not tp:
            return None
        return "00-%s-%s-%s" % (tp[3:35], os.urandom(8).hex(), tp[53:55])

    @property
    def environ(self):
        """A WSGI environ for this request (built on first use)."""
        e = self._environ
        if e is None:
            from io import BytesIO
            host = self.headers.get("Host") or ""
            sname, _, sport = host.rpartition(":") if ":" in host else (host, "", "80")
            e = {
                "REQUEST_METHOD": self.method,
                "SCRIPT_NAME": "",
                "PATH_INFO": self.path.encode("utf-8").decode("latin-1"),
                "QUERY_STRING": self._target.partition("?")[2],
                "RAW_URI": self._target,
                "REQUEST_URI": self._target,
                "SERVER_NAME": sname or (self._local[0] if self._local else "localhost"),
                "SERVER_PORT": sport or (str(self._local[1]) if self._local else "80"),
                "SERVER_PROTOCOL": self.environ_protocol,
                "REMOTE_ADDR": self._peer[0] if self._peer else "",
                "REMOTE_PORT": str(self._peer[1]) if self._peer else "",
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.input": BytesIO(self._body),
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
                "wsgi.input_terminated": True,
            }
            for k, v in self._raw:
                key = k.upper().replace("-", "_")
                if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                    e[key] = v
                    continue
                key = "HTTP_" + key
                if key in e:
                    e[key] += "," + v
                else:
                    e[key] = v
            if "CONTENT_LENGTH" not in e and self._body:
                e["CONTENT_LENGTH"] = str(len(self._body))
            self._environ = e
        return e

    def __repr__(self):
        return "<Request %s %r>" % (self.method, self._target)


class HTTPException(Exception):
    """Raised by abort(); becomes a response with its status code."""

    code = 500
    description = None

    def __init__(self, description=None, response=None):
        Exception.__init__(self, description)
        if description is not None:
            self.description = description
        self.response = response

    @property
    def name(self):
        return _REASONS.get(self.code, "Error")

    def get_response(self, environ=None):
        if self.response is not None:
            return self.response
        return Response(_error_body(_reason_code(self.code), self.description or self.name),
                        self.code, mimetype=_CT_JSON)

    def __str__(self):
        return "%d %s: %s" % (self.code, self.name, self.description or "")


def _http_error(code, description=None):
    e = HTTPException(description)
    e.code = code
    return e


def abort(status, *args, **kwargs):
    if isinstance(status, int):
        raise _http_error(status, args[0] if args else kwargs.get("description"))
    raise HTTPException(response=status)


def _status_code(status):
    if isinstance(status, bool):
        raise TypeError("the status must be an int such as 200, not a bool")
    if isinstance(status, int):
        code = status
    elif isinstance(status, str) and status.strip()[:3].isdigit():
        code = int(status.strip()[:3])
    elif isinstance(status, bytes):
        return _status_code(status.decode("latin-1"))
    else:
        raise TypeError("the status must be an int such as 200, got %r" % (status,))
    if not 100 <= code <= 599:
        raise ValueError("the status must be between 100 and 599, got %d" % code)
    return code


class Response:
    """An HTTP response (flask.Response subset). The body may be str, bytes or an iterable of
    str/bytes chunks (streamed)."""

    default_mimetype = "text/html"
    default_status = 200

    def __init__(self, response=None, status=None, headers=None, mimetype=None,
                 content_type=None, direct_passthrough=False):
        self.headers = Headers(headers)
        if content_type is None:
            if mimetype is None and "content-type" not in self.headers:
                mimetype = self.default_mimetype
            if mimetype is not None:
                content_type = _with_charset(mimetype)
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.status_code = _status_code(status) if status is not None else self.default_status
        self.set_data(response)

    def set_data(self, value):
        if value is None:
            value = b""
        if isinstance(value, str):
            self.response = [value.encode("utf-8")]
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self.response = [bytes(value)]
        else:
            self.response = value

    @property
    def is_streamed(self):
        r = self.response
        return not (isinstance(r, list) and len(r) <= 1 and
                    all(isinstance(x, bytes) for x in r))

    def get_data(self, as_text=False):
        r = self.response
        if not (isinstance(r, list) and all(isinstance(x, bytes) for x in r)):
            r = self.response = [c.encode("utf-8") if isinstance(c, str) else bytes(c)
                                 for c in r]
        data = b"".join(r)
        return data.decode("utf-8", "replace") if as_text else data

    data = property(get_data, set_data)

    @property
    def json(self):
        return _json_loads(self.get_data())

    @property
    def status(self):
        return "%d %s" % (self.status_code, _REASONS.get(self.status_code, "").upper())

    @status.setter
    def status(self, value):
        self.status_code = _status_code(value)

    @property
    def content_type(self):
        return self.headers.get("Content-Type")

    @content_type.setter
    def content_type(self, value):
        self.headers["Content-Type"] = value

    @property
    def mimetype(self):
        return (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()

    @mimetype.setter
    def mimetype(self, value):
        self.headers["Content-Type"] = _with_charset(value)

    @property
    def content_length(self):
        return None if self.is_streamed else len(self.get_data())

    @property
    def location(self):
        return self.headers.get("Location")

    @location.setter
    def location(self, value):
        self.headers["Location"] = value

    def set_cookie(self, key, value="", max_age=None, expires=None, path="/", domain=None,
                   secure=False, httponly=False, samesite=None):
        parts = ["%s=%s" % (key, value)]
        if max_age is not None:
            parts.append("Max-Age=%d" % int(getattr(max_age, "total_seconds", lambda: max_age)()))
        if expires is not None:
            if hasattr(expires, "strftime"):
                expires = expires.strftime("%a, %d %b %Y %H:%M:%S GMT")
            elif isinstance(expires, (int, float)):
                g = _gmtime(expires)
                expires = "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
                    _DAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon], g.tm_year, g.tm_hour,
                    g.tm_min, g.tm_sec)
            parts.append("Expires=%s" % expires)
        if domain:
            parts.append("Domain=%s" % domain)
        if path:
            parts.append("Path=%s" % path)
        if secure:
            parts.append("Secure")
        if httponly:
            parts.append("HttpOnly")
        if samesite:
            parts.append("SameSite=%s" % samesite)
        self.headers.add("Set-Cookie", "; ".join(parts))

    def delete_cookie(self, key, path="/", domain=None, secure=False, httponly=False,
                      samesite=None):
        self.set_cookie(key, "", max_age=0, expires=0, path=path, domain=domain, secure=secure,
                        httponly=httponly, samesite=samesite)

    def __repr__(self):
        return "<Response [%d]>" % self.status_code


def _with_charset(mimetype):
    if "charset=" not in mimetype and (mimetype.startswith("text/") or mimetype in (
            "application/xml", "application/javascript", "application/ecmascript")):
        return mimetype + "; charset=utf-8"
    return mimetype


def jsonify(*args, **kwargs):
    if args and kwargs:
        raise TypeError("jsonify() takes positional or keyword arguments, not both")
    data = args[0] if len(args) == 1 else (list(args) if args else kwargs)
    return Response(_json_dumps(data) + "\n", mimetype=_CT_JSON)


def make_response(*args):
    if not args:
        return Response()
    rv = args[0] if len(args) == 1 else args
    if isinstance(rv, Response):
        return rv
    status, ct, hdrs, data, stream = _prepare(rv)
    resp = Response(data if stream is None else stream, status, hdrs,
                    content_type=ct if ct else None)
    if ct is None and not any(k.lower() == "content-type" for k, _ in hdrs or ()):
        resp.headers.remove("Content-Type")
    return resp


def redirect(location, code=302, Response=None):
    r = (Response or globals()["Response"])("", code, mimetype="text/plain")
    r.headers["Location"] = location
    return r


def stream_with_context(gen):
    return gen


class _RequestProxy:
    """`flask.request`: the request the calling thread (or task) is handling."""

    __slots__ = ()

    def _get_current_object(self):
        r = _cur.get(None)
        if r is None:
            raise RuntimeError("Working outside of request context: flask.request is only "
                               "available while the function is handling a request")
        return r

    def __getattr__(self, name):
        return getattr(self._get_current_object(), name)

    def __bool__(self):
        return _cur.get(None) is not None

    def __repr__(self):
        r = _cur.get(None)
        return "<LocalProxy unbound>" if r is None else repr(r)


class _GProxy:
    __slots__ = ()

    def _obj(self):
        r = _RequestProxy._get_current_object(None)
        if r._g is None:
            r._g = _G()
        return r._g

    def __getattr__(self, name):
        try:
            return getattr(self._obj(), name)
        except AttributeError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        setattr(self._obj(), name, value)

    def __delattr__(self, name):
        delattr(self._obj(), name)

    def __contains__(self, name):
        return name in self._obj()


class _ShimApp:
    """`flask.current_app` of the stand-in: the function's app, with Flask's `name`, `config`,
    `debug`, `extensions` and a `logger` (at INFO, to the instance log: stderr)."""

    def __init__(self):
        self.name = self.import_name = "kappa_function"
        self.config = {"DEBUG": False, "TESTING": False, "PROPAGATE_EXCEPTIONS": None}
        self.debug = False
        self.testing = False
        self.extensions = {}
        self._logger = None

    @property
    def logger(self):
        lg = self._logger
        if lg is None:
            import logging
            lg = logging.getLogger(self.name)
            if not lg.handlers:
                h = logging.StreamHandler(sys.stderr)
                h.setFormatter(logging.Formatter(
                    "[%(asctime)s] %(levelname)s in %(module)s: %(message)s"))
                lg.addHandler(h)
            if lg.level == logging.NOTSET:
                lg.setLevel(logging.INFO)
            self._logger = lg
        return lg

    def __repr__(self):
        return "<Flask %r (Kappa stand-in)>" % self.name


_shim_app = _ShimApp()


def has_request_context():
    return _cur.get(None) is not None


def _make_flask_shim():
    m = type(sys)("flask")
    m.__doc__ = "Kappa's Flask compatibility shim (real Flask is not loaded)."
    m.__version__ = "0+kappa.shim"
    m.__kappa_shim__ = True
    m.request = _RequestProxy()
    m.g = _GProxy()
    m.Request = Request
    m.Response = Response
    m.Headers = Headers
    m.MultiDict = MultiDict
    m.HTTPException = HTTPException
    m.jsonify = jsonify
    m.make_response = make_response
    m.abort = abort
    m.redirect = redirect
    m.stream_with_context = stream_with_context
    m.current_app = _shim_app
    m.has_request_context = has_request_context
    m.has_app_context = lambda: True
    return m


# --------------------------------------------------------------------------------------------
# Calling the function and turning its result into HTTP

try:
    from _contextvars import ContextVar as _ContextVar
except ImportError:  # pragma: no cover
    from contextvars import ContextVar as _ContextVar
_cur = _ContextVar("kappa_request", default=None)


def _bind(req):
    _cur.set(req)
    app = _flask_app
    if app is not None:
        ctx = app.request_context(req.environ)
        ctx.push()
        return ctx
    return None


def _unbind(ctx):
    if ctx is not None:
        try:
            ctx.pop()
        except Exception:
            pass
    _cur.set(None)


_loop = None
_loop_lock = _thread.allocate_lock()


def _get_loop():
    global _loop
    if _loop is None:
        with _loop_lock:
            if _loop is None:
                import asyncio
                loop = asyncio.new_event_loop()
                started = _thread.allocate_lock()
                started.acquire()

                def run():
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.release)
                    loop.run_forever()

                _thread.start_new_thread(run, ())
                started.acquire()
                _loop = loop
    return _loop


def _await(aw, req):
    """Run an awaitable on the shared event loop with `req` bound, and wait for its result."""
    import asyncio

    async def runner():
        ctx = _bind(req)
        try:
            return await aw
        finally:
            _unbind(ctx)

    return asyncio.run_coroutine_threadsafe(runner(), _get_loop()).result()


def _header_pairs(headers):
    if headers is None:
        return []
    if isinstance(headers, Headers):
        return list(headers._list)
    if hasattr(headers, "items"):
        items = headers.items()
    else:
        items = headers
    out = []
    for k, v in items:
        if isinstance(v, (list, tuple)):
            for x in v:
                out.append((str(k), str(x)))
        else:
            out.append((str(k), str(v)))
    return out


def _merge_headers(base, extra):
    """`extra` replaces same-named headers of `base` (like Flask's headers.update)."""
    if not base:
        return extra
    names = {k.lower() for k, _ in extra}
    return [kv for kv in base if kv[0].lower() not in names] + extra


_STR_TYPES = (str, bytes, bytearray, memoryview, dict, list, tuple)


def _prepare(rv):
    """Normalize a handler's return value to (status, content_type, headers, body, stream).

    content_type is a default that a Content-Type in headers overrides; exactly one of body
    (bytes) and stream (an iterator, or an async iterator) is not None."""
    t = type(rv)
    if t is str:
        return 200, _CT_TEXT, None, rv.encode("utf-8"), None
    if t is bytes:
        return 200, _CT_BIN, None, rv, None
    if t is dict or t is list:
        return 200, _CT_JSON, None, (_json_dumps(rv) + "\n").encode("utf-8"), None
    if rv is None:
        return 200, None, None, b"", None
    if t is tuple:
        n = len(rv)
        status = headers = None
        if n == 2:
            if isinstance(rv[1], (Headers, dict, list, tuple)) or hasattr(rv[1], "items"):
                headers = rv[1]
            else:
                status = rv[1]
        elif n == 3:
            status, headers = rv[1], rv[2]
        else:
            raise TypeError("a returned tuple must be (body, status), (body, headers) or "
                            "(body, status, headers), got a tuple of %d items" % n)
        if type(rv[0]) is tuple:
            raise TypeError("the body in a returned tuple cannot be a tuple")
        code, ct, hdrs, body, stream = _prepare(rv[0])
        if status is not None:
            code = _status_code(status)
        if headers is not None:
            hdrs = _merge_headers(hdrs, _header_pairs(headers))
        return code, ct, hdrs, body, stream
    if isinstance(rv, Response):
        r = rv.response
        if isinstance(r, list) and all(isinstance(x, bytes) for x in r):
            return rv.status_code, None, list(rv.headers._list), b"".join(r), None
        return rv.status_code, None, list(rv.headers._list), None, iter(r)
    if isinstance(rv, str):
        return _prepare(str(rv))
    if isinstance(rv, (bytes, bytearray, memoryview)):
        return 200, _CT_BIN, None, bytes(rv), None
    if isinstance(rv, (dict, list)):
        return 200, _CT_JSON, None, (_json_dumps(rv) + "\n").encode("utf-8"), None
    if hasattr(rv, "status_code") and hasattr(rv, "headers") and hasattr(rv, "get_data"):
        # A werkzeug/Flask response (the function bundles real Flask).
        hdrs = [(str(k), str(v)) for k, v in rv.headers.items()]
        if getattr(rv, "is_streamed", False) and hasattr(rv, "iter_encoded"):
            return rv.status_code, None, hdrs, None, rv.iter_encoded()
        return rv.status_code, None, hdrs, rv.get_data(), None
    if hasattr(rv, "__aiter__"):
        return 200, None, None, None, rv
    if hasattr(rv, "__iter__") and not isinstance(rv, _STR_TYPES):
        return 200, None, None, None, iter(rv)
    raise TypeError("the function returned a %s; return str, bytes, dict, list, None, a "
                    "Response, a (body, status[, headers]) tuple or a generator" %
                    type(rv).__name__)


def _render_headers(ct, hdrs):
    """-> (header lines, close): validated; Content-Length/Transfer-Encoding are ours."""
    if not hdrs:
        if ct is None:
            return "", False
        if ct is _CT_TEXT:
            return _H_TEXT, False
        if ct is _CT_JSON:
            return _H_JSON, False
        if ct is _CT_BIN:
            return _H_BIN, False
        return "Content-Type: %s\r\n" % ct, False
    out = []
    close = False
    have_ct = False
    for k, v in hdrs:
        lk = k.lower()
        if lk == "content-length" or lk == "transfer-encoding":
            continue
        if lk == "connection":
            close = close or "close" in v.lower()
            continue
        if lk == "content-type":
            have_ct = True
        if "\n" in v or "\r" in v or "\n" in k or "\r" in k or ":" in k or not k:
            raise ValueError("invalid response header %r: %r (names and values must not "
                             "contain CR or LF)" % (k, v))
        out.append("%s: %s\r\n" % (k, v))
    if ct is not None and not have_ct:
        out.insert(0, "Content-Type: %s\r\n" % ct)
    return "".join(out), close


def _describe(e):
    """(one-line message, traceback text without the server's own frames)."""
    import traceback
    tb = e.__traceback__
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if fn == _SERVER_FILE or fn.startswith("<frozen importlib"):
            tb = tb.tb_next
        else:
            break
    text = "".join(traceback.format_exception(type(e), e, tb))
    if isinstance(e, SyntaxError):
        msg = "%s: %s (%s, line %s)" % (type(e).__name__, e.msg, e.filename, e.lineno)
    else:
        last = traceback.format_exception_only(type(e), e)
        msg = last[-1].strip() if last else type(e).__name__
    msg = " ".join(msg.split("\n"))
    return msg, text


def _log(text):
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _valid_traceparent(tp):
    """`tp` when it is a version-00 W3C traceparent with non-zero ids, else None."""
    if not tp or len(tp) < 55 or tp[:3] != "00-" or tp[35] != "-" or tp[52] != "-":
        return None
    tp = tp[:55].lower()
    try:
        int(tp[3:35], 16), int(tp[36:52], 16), int(tp[53:55], 16)
    except ValueError:
        return None
    if tp[3:35] == "0" * 32 or tp[36:52] == "0" * 16:
        return None
    return tp


def _request_traceparent(self):
    return _valid_traceparent(self.headers.get("traceparent"))


def _request_trace_id(self):
    tp = _request_traceparent(self)
    return tp[3:35] if tp else None


def _request_child_traceparent(self):
    tp = _request_traceparent(self)
    if not tp:
        return None
    return "00-%s-%s-%s" % (tp[3:35], os.urandom(8).hex(), tp[53:55])


def _add_trace_helpers(cls):
    """The real Flask's request class gets the stand-in's trace helpers (traceparent, trace_id,
    child_traceparent()), so functions use them with either."""
    if cls is None:
        return
    for name, value in (("traceparent", property(_request_traceparent)),
                        ("trace_id", property(_request_trace_id)),
                        ("child_traceparent", _request_child_traceparent)):
        if not hasattr(cls, name):
            try:
                setattr(cls, name, value)
            except (AttributeError, TypeError):
                pass


def _trace_note(hdrs):
    """ " (invocation ID, trace TRACEID)" for log lines, from the request headers."""
    inv = tp = None
    for k, v in hdrs:
        lk = k.lower()
        if lk == "x-kappa-invocation-id":
            inv = v
        elif lk == "traceparent":
            tp = _valid_traceparent(v)
    parts = []
    if inv:
        parts.append("invocation %s" % inv)
    if tp:
        parts.append("trace %s" % tp[3:35])
    return " (%s)" % ", ".join(parts) if parts else ""


def _invocation_id(hdrs):
    for k, v in hdrs:
        if len(k) == 21 and k.lower() == "x-kappa-invocation-id":
            return v
    return None


def _function_error(e, hdrs, ka, head_only, http10):
    msg, tb = _describe(e)
    inv = _invocation_id(hdrs)
    _log("kappa: function error%s: %s\n%s" % (_trace_note(hdrs), msg, tb))
    return _error_response(500, "function_error", msg, ka, head_only, http10, tb, inv)


def _exception_response(e, hdrs, ka, head_only, http10):
    """An exception from the handler -> response bytes (HTTP errors keep their status)."""
    if hasattr(e, "get_response") and isinstance(getattr(e, "code", None), int):
        try:
            status, ct, uh, data, stream = _prepare(e.get_response())
            if stream is not None:
                data = b"".join(c.encode("utf-8") if isinstance(c, str) else bytes(c)
                                for c in stream)
            hstr, close = _render_headers(ct, uh)
            return _build(status, hstr, data, ka and not close, head_only, http10)
        except BaseException as e2:
            e = e2
    return _function_error(e, hdrs, ka, head_only, http10)


_END = object()


def _chunk_bytes(c):
    if type(c) is bytes:
        return c
    if isinstance(c, str):
        return c.encode("utf-8")
    if isinstance(c, (bytes, bytearray, memoryview)):
        return bytes(c)
    raise TypeError("a streamed chunk must be str or bytes, got %s" % type(c).__name__)


def _handle_function(sock, method, target, version, hdrs, body, peer, ka, local):
    """Call the function; send its response. Returns whether the connection stays open."""
    st = _state
    http10 = version == "HTTP/1.0"
    head_only = method == "HEAD"
    if st is None:
        sock.sendall(_build(500, _H_JSON, _NOT_SPECIALIZED, ka, head_only, http10))
        return ka
    fn, takes, _ = st
    req = Request(method, target, version, hdrs, body, peer, local)
    stream = None
    is_async_stream = False
    _sem.acquire()
    ctx = None
    try:
        try:
            ctx = _bind(req)
            rv = fn(req) if takes else fn()
            if type(rv) is not str and hasattr(rv, "__await__"):
                rv = _await(rv, req)
            status, ct, uh, data, stream = _prepare(rv)
            if stream is not None:
                is_async_stream = hasattr(stream, "__aiter__")
                if head_only:
                    first = _END  # _send_stream closes the stream unread
                else:
                    first = _next_chunk(stream, is_async_stream, req)
                if ct is None and not any(k.lower() == "content-type" for k, _ in uh or ()):
                    ct = _CT_BIN if isinstance(first, (bytes, bytearray, memoryview)) else \
                        _CT_TEXT
                if first is not _END:
                    first = _chunk_bytes(first)
            if status == 204 or status == 304:
                ct = None
            hstr, close = _render_headers(ct, uh)
        except BaseException as e:
            if stream is not None:
                _close_stream(stream, is_async_stream, req)
            sock.sendall(_exception_response(e, hdrs, ka, head_only, http10))
            return ka
        if close:
            ka = False
        if stream is None:
            sock.sendall(_build(status, hstr, data, ka, head_only, http10))
            return ka
        return _send_stream(sock, status, hstr, stream, first, is_async_stream, req, hdrs, ka,
                            head_only, http10)
    finally:
        _unbind(ctx)
        _sem.release()


def _next_chunk(stream, is_async, req):
    if is_async:
        async def step():
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return _END
        return _await(step(), req)
    return next(stream, _END)


def _close_stream(stream, is_async, req):
    try:
        if is_async:
            if hasattr(stream, "aclose"):
                _await(stream.aclose(), req)
        elif hasattr(stream, "close"):
            stream.close()
    except BaseException:
        pass


def _send_stream(sock, status, hstr, stream, first, is_async, req, hdrs, ka, head_only,
                 http10):
    if stream is None or head_only or status < 200 or status in (204, 304):
        if stream is not None:
            _close_stream(stream, is_async, req)
        head = "%s%s%s\r\n" % (hstr, "" if http10 or head_only or status < 200 or status in (
            204, 304) else "Transfer-Encoding: chunked\r\n", _conn_header(ka, http10))
        sock.sendall(_status_line(status) + _date_header() + _encode_head(head))
        return ka
    chunked = not http10
    if not chunked:
        ka = False  # HTTP/1.0: the body ends when the connection closes
    head = _status_line(status) + _date_header() + _encode_head("%s%s%s\r\n" % (
        hstr, "Transfer-Encoding: chunked\r\n" if chunked else "", _conn_header(ka, http10)))
    try:
        if first is _END:
            sock.sendall(head + (b"0\r\n\r\n" if chunked else b""))
            return ka
        sock.sendall(head + ((b"%x\r\n" % len(first) + first + b"\r\n") if chunked else first))
        while True:
            try:
                c = _next_chunk(stream, is_async, req)
                if c is _END:
                    break
                c = _chunk_bytes(c)
            except BaseException as e:
                msg, tb = _describe(e)
                _log("kappa: function error while streaming%s: %s\n%s" % (
                    _trace_note(hdrs), msg, tb))
                return False  # end the response abruptly: the client sees it incomplete
            if c:
                sock.sendall((b"%x\r\n" % len(c) + c + b"\r\n") if chunked else c)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return ka
    except OSError:
        return False  # the client went away
    finally:
        _close_stream(stream, is_async, req)


# --------------------------------------------------------------------------------------------
# Specialization


class _LoadError(Exception):
    """A specialization failure explained by its message alone (no user traceback)."""


def _is_dotted_name(s):
    return bool(s) and all(p.isidentifier() for p in s.split("."))


class _ShimLoader:
    """Loads `flask` as Kappa's stand-in."""

    @staticmethod
    def create_module(spec):
        return _make_flask_shim()

    @staticmethod
    def exec_module(module):
        pass


class _RealFlaskLoader:
    """Loads the real Flask through its own loader, then makes the app whose request context
    each call runs in. When Flask is there but cannot be imported (a dependency missing), auto
    mode falls back to the stand-in with a log line; KAPPA_FLASK=real fails the import, naming
    what is missing."""

    def __init__(self, loader, mode):
        self._loader = loader
        self._mode = mode

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        global _flask_app
        try:
            self._loader.exec_module(module)
            app = _new_flask_app(module, "kappa_function")
            _add_trace_helpers(getattr(module, "Request", None))
        except Exception as e:
            for name in [n for n in sys.modules if n.startswith("flask.")]:
                del sys.modules[name]
            where = os.path.dirname(getattr(module, "__file__", None) or "") or "?"
            missing = e.name if isinstance(e, ModuleNotFoundError) and e.name else None
            what = ("the package %r it needs is not installed" % missing if missing
                    else "%s: %s" % (type(e).__name__, e))
            if self._mode == "real":
                raise ImportError(
                    "KAPPA_FLASK=real, but Flask (at %s) could not be imported: %s; install "
                    "Flask with its dependencies (add flask to the function's requirements.txt)"
                    % (where, what), name=missing or "flask") from e
            _log("kappa: Flask at %s could not be imported (%s); using Kappa's Flask stand-in"
                 % (where, what))
            sys.modules["flask"] = _make_flask_shim()
            return
        _flask_app = app

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _FlaskFinder:
    """`import flask` in the function (a sys.meta_path hook for that one name): the real Flask
    whenever it is importable (from the function's package, first on sys.path, else the
    interpreter's site-packages), otherwise Kappa's stand-in. KAPPA_FLASK=shim or =real forces
    either. Deciding at the import rather than at specialization means a function that never
    imports flask never pays for importing it."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "flask":
            return None
        bs = sys.modules["_frozen_importlib"]
        mode = (os.environ.get("KAPPA_FLASK") or "auto").strip().lower()
        if mode not in ("auto", "shim", "real"):
            raise ImportError("KAPPA_FLASK=%r is not a choice: expected auto, shim or real"
                              % mode, name="flask")
        real = None
        if mode != "shim":
            real = sys.modules["_frozen_importlib_external"].PathFinder.find_spec("flask")
            if real is None and mode == "real":
                raise ModuleNotFoundError(
                    "KAPPA_FLASK=real, but the flask package is not installed: it is neither in "
                    "the function's package nor importable by %s; add flask to the function's "
                    "requirements.txt (or install it for that interpreter), or unset KAPPA_FLASK "
                    "to use Kappa's built-in Flask stand-in" % sys.executable, name="flask")
        if real is None or real.loader is None:
            return bs.spec_from_loader("flask", _ShimLoader)
        real.loader = _RealFlaskLoader(real.loader, mode)
        return real


def _setup_flask(code_dir):
    """Make `import flask` in the function pick real Flask or the stand-in (see
    _FlaskFinder); the choice is made when the function imports it."""
    if "flask" in sys.modules or _FlaskFinder in sys.meta_path:
        return
    sys.meta_path.insert(0, _FlaskFinder)


def _new_flask_app(flask, name):
    """A real Flask app for the function, its logger at INFO (Flask's default, WARNING, would
    drop `current_app.logger.info(...)`) so its lines reach the instance log."""
    app = flask.Flask(name)
    logger = app.logger
    if logger.level == 0:
        logger.setLevel(20)
    return app


def _read_source(path):
    """The file's bytes: one open, fstat and read (the import system's reader also checks for
    a terminal and seeks, and its loader first probes for a bytecode cache)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        parts = []
        while True:
            data = os.read(fd, max(size + 1, 65536))
            if not data:
                return b"".join(parts)
            parts.append(data)
    finally:
        os.close(fd)


def _load_file(path, source=None):
    """Imports one file as a module (named after the file) the way `import` would, with the
    module's spec, loader, `__file__` and `__cached__` set, without the loader's bytecode
    cache: the runtime writes none (PYTHONDONTWRITEBYTECODE) and one compile of one file is
    what a cache lookup would replace. `source` (bytes) skips the read (_rehearse)."""
    base = os.path.basename(path)
    name = base[:-3] if base.endswith(".py") else base
    name = name or "user"
    if name in sys.modules:
        name = "kappa_user_" + name
    bs = sys.modules["_frozen_importlib"]
    be = sys.modules["_frozen_importlib_external"]
    loader = be.SourceFileLoader(name, path)
    spec = bs.spec_from_loader(name, loader)
    module = bs.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if source is None:
            source = _read_source(path)
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load(filepath, entry):
    try:
        is_dir = (os.stat(filepath).st_mode & 0o170000) == 0o040000  # S_ISDIR
    except (OSError, ValueError):
        raise _LoadError("FileNotFoundError: function code not found at %s" % filepath) \
            from None
    if is_dir:
        if not entry:
            mod, attr = "main", "main"
        elif "." not in entry:
            mod, attr = "main", entry
        else:
            mod, _, attr = entry.rpartition(".")
        if not _is_dotted_name(mod) or not attr.isidentifier():
            raise _LoadError("ValueError: invalid entrypoint %r: expected module.function, "
                             "e.g. main.main" % entry)
        if filepath not in sys.path:
            sys.path.insert(0, filepath)
        _setup_flask(filepath)
        try:
            __import__(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                try:
                    found = sorted(os.listdir(filepath))
                except OSError:
                    found = []
                shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
                raise _LoadError("ModuleNotFoundError: No module named %r (entrypoint %r; %s "
                                 "contains: %s)" % (e.name, entry or "main.main", filepath,
                                                   shown or "nothing")) from None
            raise
        module = sys.modules[mod]
    else:
        attr = entry.rpartition(".")[2] or "main"
        if not attr.isidentifier():
            raise _LoadError("ValueError: invalid entrypoint %r" % entry)
        mod = None
        _setup_flask(None)
        module = _load_file(filepath)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise _LoadError("AttributeError: module %r (%s) has no attribute %r (entrypoint %r)" % (
            module.__name__, getattr(module, "__file__", filepath), attr,
            entry or "main.main")) from None
    if not callable(fn):
        raise _LoadError("TypeError: entrypoint %r is a %s, not a function" % (
            entry or attr, type(fn).__name__))
    return fn, module


def _analyze(fn):
    """-> (takes_request, is_async). Plain functions are read from their code object; other
    callables (decorated, partials, classes, bound methods) go through inspect.signature."""
    code = getattr(fn, "__code__", None)
    if code is not None and type(fn).__name__ == "function" and not hasattr(fn, "__wrapped__"):
        takes = code.co_argcount > 0 or bool(code.co_flags & 0x04)  # CO_VARARGS
        return takes, bool(code.co_flags & (0x80 | 0x200))  # CO_COROUTINE | CO_ASYNC_GENERATOR
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
        takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                    for p in params)
    except (TypeError, ValueError):
        takes = False
    target = inspect.unwrap(fn)
    is_async = (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target) or
                inspect.iscoroutinefunction(getattr(target, "__call__", None)))
    return takes, is_async


def _specialize(body, v1):
    """-> (status, JSON body bytes)."""
    global _state, _flask_app
    with _spec_lock:
        if _state is not None:
            return 400, _error_body("already_specialized",
                                    "not a generic container: already specialized")
        env = None
        if v1:
            filepath, entry = _V1_PATH, ""
        else:
            try:
                payload = _json_loads(body)
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
            if env is not None:
                if not isinstance(env, dict) or not all(
                        isinstance(k, str) and k and "=" not in k and
                        isinstance(v, (str, int, float, bool)) for k, v in env.items()):
                    return 400, _error_body("bad_request", "invalid specialize request: 'env' "
                                                           "must map names to strings")
        filepath = os.path.abspath(filepath)
        t0 = _perf()
        try:
            if env:
                for k, v in env.items():
                    os.environ[k] = v if isinstance(v, str) else _json_dumps(v)
            fn, module = _load(filepath, entry)
            takes, is_async = _analyze(fn)
            if _flask_app is not None and getattr(module, "__name__", None):
                import flask
                try:
                    _flask_app = _new_flask_app(flask, module.__name__)
                except Exception:
                    pass
            _shim_app.name = _shim_app.import_name = getattr(module, "__name__", None) or "main"
            if is_async:
                _get_loop()
        except BaseException as e:
            if isinstance(e, _LoadError):
                msg, tb = str(e), ""
            else:
                msg, tb = _describe(e)
            _log("kappa: specialize failed (%s, entrypoint %r): %s\n%s" % (
                filepath, entry, msg, tb))
            return 500, _error_body("specialize_failed", msg, tb)
        _state = (fn, takes, is_async)
        # Logged by the caller once the answer is sent (the platform reads this process's
        # stderr: a write before the answer wakes it on the specialization's path).
        _spec_note[0] = "kappa: specialized %s (entrypoint %r, %s%shandler) in %.1f ms" % (
            filepath, entry or "main.main", "async " if is_async else "",
            "request-argument " if takes else "flask-style ", (_perf() - t0) * 1000)
        return 200, b'{"status":"ok"}\n'


_spec_note = [None]  # the success line of the specialization, logged after its answer


# How long the listener is idle before the runtime rehearses (seconds).
_REHEARSE_WHEN_IDLE = 0.05
# A module like a user's smallest function, for _rehearse.
_REHEARSAL_SOURCE = b'"""Kappa runtime rehearsal."""\n\n\ndef main():\n    return "ok"\n'


def _rehearse():
    """Runs the steps of a specialization once on the module above (read the request's JSON,
    compile and import a module through _load_file, inspect its entrypoint), leaving no trace:
    called by main() once the listener is idle, while the instance waits in a warm pool.

    The first run of these steps in a process costs several times a later one: in an instance
    forked from the template (zygote.py) each page they write (reference counts, the import
    system's state, the compiler's, the allocator's) is first copied, ~200 copy-on-write
    faults; in a fresh interpreter their code and data are cold. Paid here, it is not paid on
    the first request's path, and the pages it copies are the ones the specialization would
    copy anyway, so a specialized instance does not grow. Never fails: the real
    specialization does the same steps and reports their errors. Does nothing once the
    runtime is specialized."""
    global _state
    if _state is not None:
        return
    with _spec_lock:
        if _state is not None:
            return
        t0 = _perf()
        name = None
        try:
            body = _json_dumps({"filepath": "/kappa-rehearsal/kappa_rehearsal.py",
                                "functionName": "kappa_rehearsal.main", "env": {}})
            payload = _json_loads(body.encode())
            path = os.path.abspath(payload["filepath"])
            os.stat(os.devnull)
            _read_source(os.devnull)
            _setup_flask(None)  # what every specialization does first, idempotent
            module = _load_file(path, _REHEARSAL_SOURCE)
            name = module.__name__
            fn = getattr(module, payload["functionName"].rpartition(".")[2])
            _analyze(fn)
            # The first request's own steps on this function (the request object, the call,
            # the response's head and bytes), called here rather than through
            # _handle_function, which only calls a specialized runtime's function. In a
            # forked instance their first run copied ~18 pages on the first request's path.
            req = Request("GET", "/", "HTTP/1.1", [("Host", "kappa-rehearsal")], b"",
                          ("127.0.0.1", 0), ("127.0.0.1", 0))
            ctx = _bind(req)
            try:
                status, ct, uh, data, _stream = _prepare(fn())
                hstr, _close_after = _render_headers(ct, uh)
                _build(status, hstr, data, True, False, False)
            finally:
                _unbind(ctx)
            # The success line's formatting, as the specialization logs it.
            "%s %r %s%s %.1f" % (path, payload["functionName"], "", "", (_perf() - t0) * 1000)
            # The specialization's writes to the runtime's own state, each with the value it
            # has now (a generic runtime's): in a forked instance the pages they land on (the
            # module's globals, the shim app's attributes, the note's slot) are copied here.
            _state = _state
            _shim_app.name = _shim_app.name
            _shim_app.import_name = _shim_app.import_name
            _spec_note[0] = _spec_note[0]
            # And the note's way out, with nothing to write (_log: stderr's text layer).
            sys.stderr.write("")
            sys.stderr.flush()
        except Exception:
            pass
        finally:
            if name is not None:
                sys.modules.pop(name, None)
        # And one request on a connection of its own, answered "not specialized": under the
        # lock, so no specialization can end meanwhile and let it reach a function.
        try:
            a, b = _socket.socketpair()
            try:
                b.sendall(b"GET / HTTP/1.1\r\nHost: kappa-rehearsal\r\n\r\n")
                b.shutdown(_socket.SHUT_WR)
                _serve_conn(a, ("127.0.0.1", 0), ("127.0.0.1", 0))
                b.recv(65536)
            finally:
                b.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# Connection handling


class _BadRequest(Exception):
    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status


# --------------------------------------------------------------------------------------------
# WebSockets (RFC 6455)
#
# A WebSocket upgrade request calls the function with one argument, a WebSocket (below), on
# the connection's own thread; the socket is closed when the function returns. The connection
# holds one of the KAPPA_CONCURRENCY slots until then. See docs/runtimes/python.md.

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WS_MAX_MESSAGE = _MAX_BODY or 16 * 1024 * 1024


class WebSocketClosed(Exception):
    """Raised by WebSocket.send on a closed socket."""


class WebSocket:
    """One WebSocket connection: receive() -> str (text) | bytes (binary) | None (closed),
    send(str | bytes), close(code=1000, reason=""), ping(data=b""); iterating yields messages
    until the peer closes. `request` is the handshake request; after the close, `close_code`
    and `close_reason` say how it ended. send() may be called from other threads."""

    def __init__(self, sock, buf, request):
        self._sock = sock
        self._buf = buf
        self._send_lock = _thread.allocate_lock()
        self._close_sent = False
        self.request = request
        self.closed = False
        self.close_code = None
        self.close_reason = ""

    def _frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
        return head + payload

    def _write(self, opcode, payload):
        with self._send_lock:
            self._sock.sendall(self._frame(opcode, payload))

    def send(self, data):
        if self.closed or self._close_sent:
            raise WebSocketClosed("the WebSocket is closed")
        if isinstance(data, str):
            self._write(0x1, data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self._write(0x2, bytes(data))
        else:
            raise TypeError("WebSocket.send takes str or bytes, not %s" % type(data).__name__)

    def ping(self, data=b""):
        if not (self.closed or self._close_sent):
            self._write(0x9, bytes(data))

    def _send_close(self, code, reason):
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._write(0x8, int(code).to_bytes(2, "big") + str(reason).encode("utf-8"))
        except OSError:
            pass

    def close(self, code=1000, reason=""):
        """Sends a close frame and waits (briefly) for the peer's."""
        if self.closed:
            return
        self._send_close(code, reason)
        try:
            self._sock.settimeout(5)
            while self._read_frame() is not None:
                pass
        except (OSError, _BadRequest):
            pass
        self._finish(code, reason)

    def _finish(self, code, reason):
        if not self.closed:
            self.closed = True
            self.close_code = code
            self.close_reason = reason

    def _need(self, n):
        while len(self._buf) < n:
            data = self._sock.recv(65536)
            if not data:
                raise _BadRequest(400, "connection closed")
            self._buf += data

    def _read_frame(self):
        """-> (fin, opcode, payload), or None once a close frame was handled."""
        self._need(2)
        b0, b1 = self._buf[0], self._buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4)
            n = int.from_bytes(self._buf[2:4], "big")
            off = 4
        elif n == 127:
            self._need(10)
            n = int.from_bytes(self._buf[2:10], "big")
            off = 10
        if not b1 & 0x80:
            self._send_close(1002, "client frames must be masked")
            raise _BadRequest(400, "unmasked client frame")
        if n > _WS_MAX_MESSAGE:
            self._send_close(1009, "message too big")
            raise _BadRequest(400, "message too big")
        self._need(off + 4 + n)
        mask = self._buf[off:off + 4]
        raw = self._buf[off + 4:off + 4 + n]
        self._buf = self._buf[off + 4 + n:]
        # XOR with the repeated mask, a whole integer at a time.
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(raw, "big") ^ m).to_bytes(n, "big") if n else b""
        opcode = b0 & 0x0F
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            self._send_close(1000 if code == 1005 else code, "")
            self._finish(code, reason)
            return None
        return (b0 & 0x80 != 0, opcode, payload)

    def receive(self):
        """The next message: str for text, bytes for binary, None once the socket closed."""
        if self.closed:
            return None
        parts = None
        kind = None
        try:
            while True:
                frame = self._read_frame()
                if frame is None:
                    return None
                fin, opcode, payload = frame
                if opcode == 0x9:
                    if not self._close_sent:
                        self._write(0xA, payload)
                    continue
                if opcode == 0xA:
                    continue
                if opcode in (0x1, 0x2):
                    if parts is not None:
                        self._send_close(1002, "new message inside a fragmented one")
                        raise _BadRequest(400, "protocol error")
                    kind, parts = opcode, [payload]
                elif opcode == 0x0 and parts is not None:
                    parts.append(payload)
                    if sum(len(p) for p in parts) > _WS_MAX_MESSAGE:
                        self._send_close(1009, "message too big")
                        raise _BadRequest(400, "message too big")
                else:
                    self._send_close(1002, "unexpected opcode %d" % opcode)
                    raise _BadRequest(400, "protocol error")
                if fin:
                    data = b"".join(parts)
                    return data.decode("utf-8", "replace") if kind == 0x1 else data
        except (OSError, _BadRequest):
            self._finish(1006, "")
            return None

    def __iter__(self):
        while True:
            msg = self.receive()
            if msg is None:
                return
            yield msg

    def __repr__(self):
        return "<WebSocket %s>" % ("closed" if self.closed else "open")


def _serve_websocket(sock, method, target, version, hdrs, buf, peer, local):
    """Completes a WebSocket handshake and runs the function on it until it returns."""
    key = None
    wsver = None
    for k, v in hdrs:
        lk = k.lower()
        if lk == "sec-websocket-key":
            key = v
        elif lk == "sec-websocket-version":
            wsver = v
    st = _state
    if st is None:
        sock.sendall(_build(500, _H_JSON, _NOT_SPECIALIZED, False, False, False))
        return
    if method != "GET" or key is None or wsver != "13":
        sock.sendall(_error_response(
            400, "bad_request",
            "a WebSocket handshake is a GET with Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
            False))
        return
    fn, takes, is_async = st
    if not takes or is_async:
        sock.sendall(_error_response(
            500, "function_error",
            "a WebSocket function is a plain (not async) function taking one argument, "
            "the WebSocket", False))
        return
    import hashlib
    import binascii
    accept = binascii.b2a_base64(hashlib.sha1(key.encode("latin-1") + _WS_GUID).digest(),
                                 newline=False)
    req = Request(method, target, version, hdrs, b"", peer, local)
    ws = WebSocket(sock, buf, req)
    _sem.acquire()
    try:
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        ctx = _bind(req)
        try:
            fn(ws)
        except BaseException as e:
            msg, tb = _describe(e)
            inv = _invocation_id(hdrs)
            _log("kappa: function error on a WebSocket%s: %s\n%s" % (
                " (invocation %s)" % inv if inv else "", msg, tb))
            ws.close(1011, "function error")
        finally:
            _unbind(ctx)
        ws.close()
    finally:
        _sem.release()


def _recv_more(sock, buf):
    data = sock.recv(262144)
    if not data:
        raise _BadRequest(400, "connection closed in the middle of the request body")
    return buf + data if buf else data


def _read_exact(sock, buf, n):
    """-> (n bytes, rest of buf)."""
    if len(buf) >= n:
        return buf[:n], buf[n:]
    parts = bytearray(buf)
    while len(parts) < n:
        data = sock.recv(min(max(n - len(parts), 65536), 4 << 20))
        if not data:
            raise _BadRequest(400, "connection closed in the middle of the request body")
        parts += data
    if len(parts) == n:
        return bytes(parts), b""
    data = bytes(parts)
    return data[:n], data[n:]


def _read_chunked(sock, buf):
    """Decode a chunked request body. -> (body, rest of buf)."""
    out = []
    total = 0
    while True:
        i = buf.find(b"\r\n")
        while i < 0:
            if len(buf) > 4096:
                raise _BadRequest(400, "chunk size line too long")
            buf = _recv_more(sock, buf)
            i = buf.find(b"\r\n")
        line = buf[:i].split(b";", 1)[0].strip()
        buf = buf[i + 2:]
        if not line or any(c not in _HEX for c in line):
            raise _BadRequest(400, "invalid chunk size")
        size = int(line, 16)
        if size == 0:
            while True:  # trailer section, ends with an empty line
                i = buf.find(b"\r\n")
                while i < 0:
                    if len(buf) > _MAX_HEAD:
                        raise _BadRequest(431, "trailers too large")
                    buf = _recv_more(sock, buf)
                    i = buf.find(b"\r\n")
                line = buf[:i]
                buf = buf[i + 2:]
                if not line:
                    return b"".join(out), buf
        total += size
        if _MAX_BODY and total > _MAX_BODY:
            raise _BadRequest(413, "request body larger than %d bytes" % _MAX_BODY)
        data, buf = _read_exact(sock, buf, size + 2)
        if data[-2:] != b"\r\n":
            raise _BadRequest(400, "invalid chunk framing")
        out.append(data[:-2])


def _send_specialize(sock, body, v1, ka, http10):
    status, out = _specialize(body, v1)
    try:
        sock.sendall(_build(status, _H_JSON, out, ka, False, http10))
    finally:
        note, _spec_note[0] = _spec_note[0], None
        if note:
            _log(note)


if _IDLE_TIMEOUT and sys.maxsize > 2 ** 32 and hasattr(_socket, "SO_RCVTIMEO"):
    _TIMEVAL = _IDLE_TIMEOUT.to_bytes(8, sys.byteorder) + (0).to_bytes(8, sys.byteorder)
else:
    _TIMEVAL = None


def _parse_head(head):
    """A request head (bytes, without the blank line) -> (method, target, version, hdrs,
    Content-Length or -1, chunked, lower-cased Connection or None, Expect: 100-continue)."""
    lines = head.decode("latin-1").split("\r\n")
    rl = lines[0].split(" ")
    if len(rl) != 3 or not rl[0] or not rl[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = rl
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise _BadRequest(505 if version.startswith("HTTP/") else 400,
                          "unsupported protocol version %r" % version)
    hdrs = []
    clen = -1
    chunked = False
    conn = None
    expect = False
    del lines[0]
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or name[0] in " \t":
            raise _BadRequest(400, "malformed header line")
        value = value.strip()
        hdrs.append((name, value))
        if name[0] in "cCtTeE":
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
    return method, target, version, hdrs, clen, chunked, conn, expect


def _keep_alive(version, conn):
    if version == "HTTP/1.1":
        return conn is None or "close" not in conn
    return conn is not None and "keep-alive" in conn


def _is_healthz(method, target):
    return target[:8] == "/healthz" and (method == "GET" or method == "HEAD") and (
        len(target) == 8 or target[8] == "?")


def _send_health(sock, method, version, ka):
    sock.sendall(_build(503 if _stopping else 200, _H_JSON,
                        _STOPPING_BODY if _stopping else _HEALTH_BODY, ka, method == "HEAD",
                        version == "HTTP/1.0"))


def _serve_conn(sock, peer, local, buf=b""):
    """One connection on a thread of its own: parse requests (keep-alive, pipelining) until
    close. `buf` holds what the poller already read from it."""
    recv = sock.recv
    try:
        if _TIMEVAL is not None:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, _TIMEVAL)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _TIMEVAL)
        while True:
            # --- request head
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if buf[:2] == b"\r\n":  # stray CRLF between requests
                    buf = buf.lstrip(b"\r\n")
                    end = buf.find(b"\r\n\r\n")
                    continue
                if len(buf) > _MAX_HEAD:
                    sock.sendall(_error_response(431, "request_header_fields_too_large",
                                                 "request head larger than %d bytes" %
                                                 _MAX_HEAD, False))
                    return
                try:
                    data = recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf = buf + data if buf else data
                end = buf.find(b"\r\n\r\n")
            if end == 0 or buf[:2] == b"\r\n":
                buf = buf.lstrip(b"\r\n")
                continue
            head = buf[:end]
            buf = buf[end + 4:]
            _active.append(None)
            try:
                method, target, version, hdrs, clen, chunked, conn, expect = _parse_head(head)
                ka = _keep_alive(version, conn)
                # --- body
                if chunked:
                    if clen >= 0:
                        ka = False  # both framings: take chunked, then do not reuse
                    if expect and not buf and version == "HTTP/1.1":
                        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body, buf = _read_chunked(sock, buf)
                elif clen > 0:
                    if _MAX_BODY and clen > _MAX_BODY:
                        raise _BadRequest(413, "request body larger than %d bytes" % _MAX_BODY)
                    if len(buf) >= clen:
                        body = buf[:clen]
                        buf = buf[clen:]
                    else:
                        if expect and version == "HTTP/1.1":
                            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                        body, buf = _read_exact(sock, buf, clen)
                else:
                    body = b""
                if _stopping:
                    ka = False
                # --- dispatch
                if _is_healthz(method, target):
                    _send_health(sock, method, version, ka)
                elif method == "POST" and (target == "/v2/specialize" or
                                           target == "/specialize"):
                    _send_specialize(sock, body, target == "/specialize", ka,
                                     version == "HTTP/1.0")
                elif conn is not None and "upgrade" in conn and any(
                        k.lower() == "upgrade" and v.lower() == "websocket" for k, v in hdrs):
                    _serve_websocket(sock, method, target, version, hdrs, buf, peer, local)
                    return
                else:
                    ka = _handle_function(sock, method, target, version, hdrs, body, peer, ka,
                                          local)
            except _BadRequest as e:
                try:
                    sock.sendall(_error_response(e.status, _reason_code(e.status), str(e),
                                                 False))
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
            try:
                _log("kappa: internal error on a connection: %s: %s" % (type(e).__name__, e))
            except BaseException:
                pass
    finally:
        _close(sock)


def _close(sock):
    try:
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------------------------
# The poller: keep-alive connections without a thread each
#
# A thread per connection made every request a hand-over of the GIL between threads (each
# woken by its socket, then waiting for the interpreter): with 16 connections busy, twice the
# CPU per request of one. Instead, idle connections wait in one epoll, and one poller thread
# reads the requests that arrive and runs the function (or the specialization) for the simple
# ones itself (a complete head and Content-Length body, not chunked or a WebSocket). Everything
# else moves its connection to a thread of its own, for good (`_serve_conn`, as before).
#
# A function that blocks (sleeps, waits for I/O, or for the KAPPA_CONCURRENCY semaphore) must
# not hold up the other connections: a watchdog thread looks every _SPILL_AFTER seconds, and
# when the poller has been in the same request since its last look, it takes that request's
# connection out of the epoll and starts a new poller. The old one finishes its request, puts
# the connection back into the epoll and ends. The watchdog sleeps while nothing runs.

_SPILL_AFTER = 0.002
_SPILL_LOOKS = 5
_ep = None                     # select.epoll of the idle connections (made on first accept)
_conns = {}                    # fd -> [socket, peer, buffered bytes, last read (monotonic)]
_pmu = _thread.allocate_lock()  # guards _pstate; held for a few field updates only
# [current poller's token, requests begun by the pollers, fd of the request running inline
#  or -1, whether the watchdog is parked, the current poller's thread id]
_pstate = [0, 0, -1, False, 0]
_park = _thread.allocate_lock()  # held while the watchdog is not parked


def _poller_start(local):
    """Starts the epoll, the poller and its watchdog (at the first connection)."""
    global _ep
    import select
    if not hasattr(select, "epoll"):
        return False
    _ep = select.epoll()
    _park.acquire()
    with _pmu:
        _pstate[0] = 1
    _thread.start_new_thread(_poll_loop, (1, local))
    _thread.start_new_thread(_watch, (local,))
    return True


def _poller_add(sock, peer, local):
    """An accepted connection: waits in the epoll for its first request."""
    global _poller_add
    if _ep is None and not _poller_start(local):
        _poller_add = _thread_per_connection
        return _thread_per_connection(sock, peer, local)
    if _TIMEVAL is not None:  # bounds a send to a client that does not read
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _TIMEVAL)
    fd = sock.fileno()
    _conns[fd] = [sock, peer, b"", _monotonic()]
    try:
        _ep.register(fd, 1)  # EPOLLIN
    except OSError:
        _conns.pop(fd, None)
        _thread.start_new_thread(_serve_conn, (sock, peer, local))


def _thread_per_connection(sock, peer, local):
    """Without epoll (not Linux): each connection on a thread of its own."""
    _thread.start_new_thread(_serve_conn, (sock, peer, local))


def _poller_remove(fd):
    """Takes a connection out of the epoll -> its record (None when it was not there)."""
    c = _conns.pop(fd, None)
    if c is not None:
        try:
            _ep.unregister(fd)
        except (OSError, ValueError):
            pass
    return c


def _spill(fd, local, buf):
    """Moves a connection to a thread of its own, with what was read from it."""
    c = _poller_remove(fd)
    if c is not None:
        _thread.start_new_thread(_serve_conn, (c[0], c[1], local, buf))


def _running(tid):
    """Whether thread `tid` of this process is running or waiting for a core (not blocked)."""
    try:
        with open("/proc/self/task/%d/stat" % tid, "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R"
    except (OSError, ValueError):
        return False


def _watch(local):
    seen = -1
    looks = 0  # consecutive looks that found the same request running
    while True:
        st = _pstate
        with _pmu:
            if st[2] < 0 and st[1] == seen:
                st[3] = True  # nothing ran since the last look: park until a request begins
                park = True
            else:
                park = False
                looks = looks + 1 if st[2] >= 0 and st[1] == seen else 0
                seen = st[1]
                tid = st[4]
        if park:
            _park.acquire()
            seen = -1
            continue
        # A request seen twice has run for a look's interval at least. The poller keeps it
        # while its thread runs (or only waits for a core: the machine is busy, and a new
        # poller would wait too), up to _SPILL_LOOKS; blocked, it hands the rest over.
        if looks and (looks >= _SPILL_LOOKS or not _running(tid)):
            with _pmu:
                if st[2] >= 0 and st[1] == seen:
                    fd = st[2]
                    st[0] += 1
                    st[2] = -1
                    if _conns.pop(fd, None) is not None:
                        try:
                            _ep.unregister(fd)
                        except (OSError, ValueError):
                            pass
                    _thread.start_new_thread(_poll_loop, (st[0], local))
            looks = 0
        _sleep(_SPILL_AFTER)


def _poll_loop(token, local):
    ep = _ep
    conns = _conns
    st = _pstate
    mu = _pmu
    with mu:
        if st[0] == token:
            st[4] = _thread.get_native_id()
    timeout = min(max(_IDLE_TIMEOUT / 4, 1), 60) if _IDLE_TIMEOUT else -1
    next_sweep = _monotonic() + timeout if _IDLE_TIMEOUT else None
    while True:
        try:
            events = ep.poll(timeout)
        except OSError:
            events = ()
        now = _monotonic()
        if next_sweep is not None and now >= next_sweep:
            next_sweep = now + timeout
            for fd, c in list(conns.items()):
                if now - c[3] >= _IDLE_TIMEOUT and _poller_remove(fd) is not None:
                    _close(c[0])
        for fd, _ in events:
            c = conns.get(fd)
            if c is None:
                continue
            sock = c[0]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                if _poller_remove(fd) is not None:
                    _close(sock)
                continue
            buf = c[2] + data if c[2] else data
            c[3] = now
            try:
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end <= 0 or buf[:2] == b"\r\n":
                        if end < 0 and len(buf) <= _MAX_HEAD and buf[:2] != b"\r\n":
                            c[2] = buf  # wait for the rest of the head
                        else:
                            _spill(fd, local, buf)
                        break
                    try:
                        method, target, version, hdrs, clen, chunked, conn, expect = \
                            _parse_head(buf[:end])
                    except _BadRequest:
                        _spill(fd, local, buf)  # answered there
                        break
                    start = end + 4
                    stop = start + clen if clen > 0 else start
                    if chunked or len(buf) < stop or (_MAX_BODY and clen > _MAX_BODY) or (
                            conn is not None and "upgrade" in conn):
                        _spill(fd, local, buf)
                        break
                    body = buf[start:stop]
                    buf = buf[stop:]
                    ka = _keep_alive(version, conn) and not _stopping
                    if _is_healthz(method, target):
                        _send_health(sock, method, version, ka)
                    else:
                        _active.append(None)
                        with mu:
                            st[1] += 1
                            st[2] = fd
                            if st[3]:
                                st[3] = False
                                _park.release()
                        try:
                            if method == "POST" and (target == "/v2/specialize" or
                                                     target == "/specialize"):
                                # Here rather than on a thread of its own: a new thread
                                # (its start, its malloc arena, its turn on a core) cost more
                                # than the specialization of a small function. A slow one is
                                # handed over by the watchdog like a slow function call.
                                _send_specialize(sock, body, target == "/specialize", ka,
                                                 version == "HTTP/1.0")
                            else:
                                ka = _handle_function(sock, method, target, version, hdrs,
                                                      body, c[1], ka, local)
                        except OSError:
                            ka = False
                        finally:
                            _active.pop()
                            with mu:
                                demoted = st[0] != token
                                if not demoted:
                                    st[2] = -1
                        if demoted:
                            # The watchdog took this connection out of the epoll and another
                            # poller runs. The connection goes back to the epoll (or, with a
                            # pipelined request already read, stays on this thread) and this
                            # thread ends.
                            if not ka or _stopping:
                                _close(sock)
                            elif buf:
                                _serve_conn(sock, c[1], local, buf)
                            else:
                                c[2] = b""
                                _conns[fd] = c
                                try:
                                    ep.register(fd, 1)  # EPOLLIN
                                except OSError:
                                    _conns.pop(fd, None)
                                    _serve_conn(sock, c[1], local)
                            return
                    if not ka:
                        if _poller_remove(fd) is not None:
                            _close(sock)
                        break
                    if not buf:
                        c[2] = b""
                        break
            except BaseException as e:  # never let the poller die
                if _poller_remove(fd) is not None:
                    _close(sock)
                if not isinstance(e, (OSError, SystemExit)):
                    try:
                        _log("kappa: internal error on a connection: %s: %s" % (
                            type(e).__name__, e))
                    except BaseException:
                        pass


# --------------------------------------------------------------------------------------------
# Process


_listener = None


def _on_signal(signum, frame):
    # No exception from here: CPython 3.11 lets an exception raised by a signal handler at a
    # loop's back-edge escape the enclosing try. Instead set the flag and shut the listener
    # down, which wakes the accept() in the main thread at once.
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

Kappa Python runtime server (Fission environment protocol v2).
  --host HOST   listen address (env HOST; default 127.0.0.1)
  --port PORT   listen port (env PORT, then RUNTIME_PORT; default 8888; 0 picks a free port)
  --precompile  write the compiled-code cache next to this file and exit (for read-only installs)
Environment: KAPPA_CONCURRENCY (default 1), KAPPA_GRACE_PERIOD (s, default 30),
KAPPA_MAX_BODY_BYTES (default 0 = no limit), KAPPA_KEEPALIVE_TIMEOUT (s, default 900),
KAPPA_FLASK (auto|shim|real, default auto).
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
        elif a == "--precompile":
            status, cache = _impl_cache
            sys.stdout.write("kappa python runtime: compiled-code cache %s: %s\n" % (
                cache or "-", status))
            sys.exit(0 if status in ("hit", "written") else 1)
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
    global _listener
    host, port = _parse_args(sys.argv[1:])
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
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
    # A process-directed SIGTERM may be delivered to a worker thread, which does not interrupt
    # the main thread's accept(); the timeout bounds how long the handler can wait to run.
    # (Blocking the signals in worker threads instead would leak the mask into subprocesses.)
    ls.settimeout(1.0)
    _listener = ls
    _signal.signal(_signal.SIGTERM, _on_signal)
    _signal.signal(_signal.SIGINT, _on_signal)
    shown = "[%s]" % host.strip("[]") if family == _socket.AF_INET6 else host
    sys.stdout.write("kappa python runtime listening on %s:%d\n" % (shown, port))
    sys.stdout.flush()
    accept = ls._accept
    new = _socket.socket
    fam, typ = ls.family, ls.type
    start = _thread.start_new_thread
    tcp, nodelay = _socket.IPPROTO_TCP, _socket.TCP_NODELAY
    local = ls.getsockname()
    # The rehearsal (_rehearse) runs once the listener has been idle for a moment: in a warm
    # pool, after the platform's health check and prepared connections; a start specialized
    # at once (no pool) is not delayed by it, and then no longer needs it.
    ls.settimeout(_REHEARSE_WHEN_IDLE)
    rehearsed = False
    while not _stopping:
        try:
            fd, peer = accept()
        except TimeoutError:
            if not rehearsed:
                rehearsed = True
                _rehearse()
                ls.settimeout(1.0)
            continue
        except OSError as e:
            if not _stopping:
                _log("kappa: accept failed: %s" % e)
                _sleep(0.05)
            continue
        s = new(fam, typ, 0, fd)
        try:
            s.setsockopt(tcp, nodelay, 1)
        except OSError:
            pass
        _poller_add(s, peer, local)
    _drain(ls)


def _drain(ls):
    """Stop accepting, let in-flight requests finish (up to KAPPA_GRACE_PERIOD), exit 0."""
    global _stopping
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
    try:
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(0)


'''
exec(_load_impl(_IMPL, sys._getframe().f_lineno - _IMPL.count("\n") - 1), globals())
del _IMPL

if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"] and len(sys.argv) == 3:
        # The template process instances are forked from (zygote.py; the local backend's
        # docs/design/009-zygote.md): this module stays loaded, each payload runs main().
        import zygote
        zygote.run(sys.argv[2], main)
    else:
        main()
