"""Tests for the Kappa Python runtime server.

Each test starts server.py as a real subprocess on a free port (``--port 0``; the port is read
from the "listening on" line) and talks HTTP to it. Run from the repository root with:

    python3 -m unittest discover -s functions/runtimes/python -p 'test_*.py'

No test asserts a wall-clock duration: concurrency is checked through timestamps the functions
return, and waits are bounded polls.
"""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVER = os.path.join(HERE, "server.py")
EXAMPLES = os.path.join(ROOT, "functions", "examples")
TESTDATA = os.path.join(ROOT, "functions", "testdata", "python")
TIMEOUT = 20  # seconds; a bound for waits, never an assertion


def _has_real_flask():
    try:
        import importlib.util
        return importlib.util.find_spec("flask") is not None
    except Exception:
        return False


class Runtime:
    """A server.py subprocess with helpers to talk to it."""

    def __init__(self, env=None, args=None, python_args=()):
        e = dict(os.environ)
        e.pop("KAPPA_CONCURRENCY", None)
        e.pop("KAPPA_FLASK", None)
        e.update(env or {})
        self.stderr = tempfile.TemporaryFile()
        cmd = [sys.executable] + list(python_args) + [SERVER] + (
            args if args is not None else ["--port", "0"])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, env=e,
                                     cwd=ROOT)
        self.stdout_lines = []
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            self.close()
            raise AssertionError("runtime did not print its listening line")
        line = self.proc.stdout.readline().decode()
        self.first_line = line
        if "listening on" not in line:
            self.close()
            raise AssertionError("unexpected first line %r; stderr: %s" % (line, self.logs()))
        self.port = int(line.strip().rpartition(":")[2])
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line.decode())

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def request(self, method, path, body=None, headers=None):
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r, data
        finally:
            c.close()

    def specialize(self, filepath, entry="", env=None):
        payload = {"filepath": filepath, "functionName": entry}
        if env is not None:
            payload["env"] = env
        r, data = self.request("POST", "/v2/specialize", json.dumps(payload),
                               {"Content-Type": "application/json"})
        return r.status, (json.loads(data) if data else None)

    def logs(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.stderr.close()


class RuntimeTestCase(unittest.TestCase):
    def start(self, env=None, args=None, python_args=()):
        rt = Runtime(env, args, python_args)
        self.addCleanup(rt.close)
        return rt

    def specialized(self, filepath, entry="", env=None, rt_env=None):
        rt = self.start(rt_env)
        status, body = rt.specialize(filepath, entry, env)
        self.assertEqual(status, 200, body)
        return rt

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="kappa-py-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def write(self, directory, name, source):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        return path

    def module(self, source, name="fn.py"):
        """A directory holding one module; returns (dir, module name)."""
        d = self.tmpdir()
        self.write(d, name, source)
        return d, name[:-3]


# ---------------------------------------------------------------------------------------------


class TestLifecycle(RuntimeTestCase):
    def test_listening_line_and_healthz_before_and_after_specialize(self):
        rt = self.start()
        self.assertEqual(rt.first_line.strip(),
                         "kappa python runtime listening on 127.0.0.1:%d" % rt.port)
        r, body = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)
        status, _ = rt.specialize(os.path.join(EXAMPLES, "hello"), "hello.main")
        self.assertEqual(status, 200)
        r, body = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)

    def test_a_blocked_specialization_does_not_hold_up_other_connections(self):
        # The specialization runs on the poller thread; one that blocks (here its import waits
        # for a file) is handed over like a blocked function call, so health checks on other
        # connections keep answering meanwhile, and the specialization still completes.
        d = self.tmpdir()
        started, gate = os.path.join(d, "started"), os.path.join(d, "gate")
        path = self.write(d, "slow.py", """
            import os, time
            open(%r, "w").close()
            while not os.path.exists(%r):
                time.sleep(0.01)

            def main():
                return "slow but ready"
        """ % (started, gate))
        rt = self.start()
        result = {}

        def specialize():
            result["spec"] = rt.specialize(path, "slow.main")

        t = threading.Thread(target=specialize)
        t.start()
        self.addCleanup(lambda: open(gate, "w").close())
        wait_for(lambda: os.path.exists(started))
        r, _ = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)
        self.assertNotIn("spec", result)  # still importing
        open(gate, "w").close()
        t.join(TIMEOUT)
        self.assertEqual(result["spec"][0], 200, result["spec"])
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, body), (200, b"slow but ready"))

    def test_specialization_report_logged_after_the_answer(self):
        # The report line goes to stderr once the answer is sent, exactly once; a failed
        # specialization logs its error and no report.
        rt = self.start()
        status, _ = rt.specialize(os.path.join(EXAMPLES, "hello"), "hello.main")
        self.assertEqual(status, 200)
        wait_for(lambda: "kappa: specialized " in rt.logs())
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(rt.logs().count("kappa: specialized "), 1, rt.logs())
        status, _ = rt.specialize(os.path.join(EXAMPLES, "hello"), "hello.main")
        self.assertEqual(status, 400)
        self.assertEqual(rt.logs().count("kappa: specialized "), 1, rt.logs())
        bad = self.start()
        status, _ = bad.specialize(os.path.join(EXAMPLES, "hello"), "hello.missing")
        self.assertEqual(status, 500)
        wait_for(lambda: "specialize failed" in bad.logs())
        self.assertNotIn("kappa: specialized ", bad.logs())

    def test_port_from_environment(self):
        for var in ("PORT", "RUNTIME_PORT"):
            with self.subTest(var=var):
                rt = self.start(env={"PORT": "", "RUNTIME_PORT": "", var: "0"}, args=[])
                r, _ = rt.request("GET", "/healthz")
                self.assertEqual(r.status, 200)

    def test_invoke_before_specialize_is_not_specialized(self):
        rt = self.start()
        r, body = rt.request("GET", "/anything")
        self.assertEqual(r.status, 500)
        self.assertEqual(json.loads(body)["error"]["code"], "not_specialized")

    def test_sigterm_idle_exits_zero(self):
        rt = self.start()
        rt.request("GET", "/healthz")
        rt.proc.send_signal(signal.SIGTERM)
        self.assertEqual(rt.proc.wait(TIMEOUT), 0)

    def test_sigterm_lets_in_flight_request_finish(self):
        d = self.tmpdir()
        gated = self.write(d, "gated.py", GATED)
        started, gate = os.path.join(d, "started"), os.path.join(d, "gate")
        rt = self.specialized(gated)
        result = {}

        def call():
            result["resp"] = rt.request("GET", "/?started=%s&gate=%s" % (started, gate))

        t = threading.Thread(target=call)
        t.start()
        wait_for(lambda: os.path.exists(started))
        rt.proc.send_signal(signal.SIGTERM)
        # No new connection may be needed to wake the server up (the signal can land on any
        # thread): wait for the drain to start by its log line alone. The count may include the
        # specialization's request: its thread leaves the in-flight count only after its answer
        # and its log line, which a loaded machine can delay past this point.
        wait_for(lambda: re.search(r"shutting down: draining [12] in-flight", rt.logs()))
        # The listener is closed: new connections are refused while the request is in flight.
        self.assertFalse(can_connect(rt.port))
        self.assertIsNone(rt.proc.poll())
        open(gate, "w").close()
        t.join(TIMEOUT)
        r, body = result["resp"]
        self.assertEqual((r.status, body), (200, b"released"))
        self.assertEqual(rt.proc.wait(TIMEOUT), 0)

    def test_sigterm_delivered_to_a_worker_thread(self):
        # The handler signals its own (non-main) thread: the server must still notice and exit.
        d, name = self.module("""
            import signal, threading
            def main():
                signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
                return "signalled"
        """)
        rt = self.specialized(d, name + ".main")
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, body), (200, b"signalled"))
        self.assertEqual(rt.proc.wait(TIMEOUT), 0)


class TestCodeCache(RuntimeTestCase):
    def test_precompile_then_hit_and_disabled_cache_still_serves(self):
        d = self.tmpdir()
        copy = os.path.join(d, "server.py")
        shutil.copy2(SERVER, copy)

        def precompile(env=None):
            e = dict(os.environ, **(env or {}))
            return subprocess.run([sys.executable, copy, "--precompile"], env=e,
                                  capture_output=True, text=True, timeout=TIMEOUT)

        first = precompile()
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn(": written", first.stdout)
        self.assertTrue(os.listdir(os.path.join(d, "__pycache__")))
        second = precompile()
        self.assertIn(": hit", second.stdout)
        disabled = precompile({"KAPPA_RUNTIME_CACHE": "0"})
        self.assertEqual(disabled.returncode, 1)
        rt = self.start(env={"KAPPA_RUNTIME_CACHE": "0"})
        self.assertEqual(rt.request("GET", "/healthz")[0].status, 200)

    def test_implementation_keeps_the_file_line_numbers(self):
        code = ("import sys, inspect; sys.path.insert(0, %r); import server; "
                "print(inspect.getsourcelines(server._handle_function)[0][0], end='')" % HERE)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=TIMEOUT)
        self.assertEqual(out.stdout, "def _handle_function(sock, method, target, version, "
                                     "hdrs, body, peer, ka, local):\n", out.stderr)


GATED = """
    import os, time
    from flask import request

    def main():
        open(request.args["started"], "w").close()
        while not os.path.exists(request.args["gate"]):
            time.sleep(0.01)
        return "released"
"""


def wait_for(cond, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        time.sleep(0.01)


def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class TestTraceContext(RuntimeTestCase):
    def test_traceparent_helpers(self):
        d, mod = self.module("""
            import json
            from flask import request

            def main():
                return json.dumps({"tp": request.traceparent, "trace": request.trace_id,
                                   "child": request.child_traceparent()})
            """)
        rt = self.specialized(d, mod + ".main")
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        r, body = rt.request("GET", "/", headers={"traceparent": tp})
        self.assertEqual(r.status, 200, body)
        v = json.loads(body)
        self.assertEqual(v["tp"], tp)
        self.assertEqual(v["trace"], "0af7651916cd43dd8448eb211c80319c")
        child = v["child"].split("-")
        self.assertEqual((child[0], child[1], child[3]), ("00", v["trace"], "01"))
        self.assertNotEqual(child[2], "b7ad6b7169203331")
        self.assertEqual(len(child[2]), 16)
        for bad in ("", "junk", "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                    "00-0af7651916cd43dd8448eb211c80319c-zzzzzzzzzzzzzzzz-01"):
            r, body = rt.request("GET", "/", headers={"traceparent": bad} if bad else {})
            self.assertEqual(json.loads(body), {"tp": None, "trace": None, "child": None}, bad)

    def test_error_lines_carry_invocation_and_trace(self):
        d, mod = self.module("""
            def main():
                raise ValueError("boom")
            """)
        rt = self.specialized(d, mod + ".main")
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        r, _ = rt.request("GET", "/", headers={"traceparent": tp, "X-Kappa-Invocation-Id": "inv-9"})
        self.assertEqual(r.status, 500)
        deadline = time.monotonic() + 10
        while "trace 0af7651916cd43dd8448eb211c80319c" not in rt.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("(invocation inv-9, trace 0af7651916cd43dd8448eb211c80319c)", rt.logs())


class TestSpecialize(RuntimeTestCase):
    def test_directory_mode(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main")
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, body), (200, b"Hello, world!\n"))
        self.assertEqual(r.getheader("Content-Type"), "text/plain; charset=utf-8")

    def test_file_mode(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello", "hello.py"), "hello.main")
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, body), (200, b"Hello, world!\n"))

    def test_file_mode_without_extension_and_empty_entrypoint(self):
        d = self.tmpdir()
        path = self.write(d, "deployarchive", "def main():\n    return 'from archive'\n")
        rt = self.specialized(path, "")
        self.assertEqual(rt.request("GET", "/")[1], b"from archive")

    def test_file_mode_entrypoint_without_dot(self):
        d = self.tmpdir()
        path = self.write(d, "user.py", "def handler():\n    return 'handler'\n")
        rt = self.specialized(path, "handler")
        self.assertEqual(rt.request("GET", "/")[1], b"handler")

    def test_directory_empty_entrypoint_means_main_main(self):
        d, _ = self.module("def main():\n    return 'main.main'\n", name="main.py")
        rt = self.specialized(d, "")
        self.assertEqual(rt.request("GET", "/")[1], b"main.main")

    def test_directory_entrypoint_without_dot_means_main_name(self):
        d, _ = self.module("def handler():\n    return 'main.handler'\n", name="main.py")
        rt = self.specialized(d, "handler")
        self.assertEqual(rt.request("GET", "/")[1], b"main.handler")

    def test_directory_dotted_package_entrypoint(self):
        d = self.tmpdir()
        os.makedirs(os.path.join(d, "pkg", "sub"))
        self.write(d, "pkg/__init__.py", "")
        self.write(d, "pkg/sub/__init__.py", "")
        self.write(d, "pkg/sub/mod.py", "def handle():\n    return 'deep'\n")
        rt = self.specialized(d, "pkg.sub.mod.handle")
        self.assertEqual(rt.request("GET", "/")[1], b"deep")

    def test_second_specialize_is_refused(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main")
        status, body = rt.specialize(os.path.join(EXAMPLES, "echo"), "echo.main")
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["code"], "already_specialized")
        self.assertEqual(rt.request("GET", "/")[1], b"Hello, world!\n")

    def test_import_error_is_reported_with_traceback(self):
        rt = self.start()
        status, body = rt.specialize(os.path.join(TESTDATA, "import_error.py"), "main")
        self.assertEqual(status, 500)
        err = body["error"]
        self.assertEqual(err["code"], "specialize_failed")
        self.assertEqual(err["message"],
                         "ModuleNotFoundError: No module named 'does_not_exist_module'")
        self.assertIn("import_error.py\", line 3", err["traceback"])
        self.assertIn("import does_not_exist_module", err["traceback"])
        self.assertNotIn("server.py", err["traceback"])
        self.assertIn("does_not_exist_module", rt.logs())
        # A failed specialization leaves the instance generic.
        r, _ = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)

    def test_import_error_in_directory_mode(self):
        rt = self.start()
        status, body = rt.specialize(TESTDATA, "import_error.main")
        self.assertEqual(status, 500)
        self.assertIn("No module named 'does_not_exist_module'", body["error"]["message"])

    def test_syntax_error(self):
        d, name = self.module("def main(:\n    return 1\n")
        rt = self.start()
        status, body = rt.specialize(d, name + ".main")
        self.assertEqual(status, 500)
        msg = body["error"]["message"]
        self.assertTrue(msg.startswith("SyntaxError: "), msg)
        self.assertIn("fn.py", msg)
        self.assertIn("line 1", msg)

    def test_missing_module_attribute_and_path(self):
        d, name = self.module("def main():\n    return 1\nVALUE = 3\n")
        cases = [
            (d, "nope.main", "No module named 'nope'"),
            (d, name + ".mian", "has no attribute 'mian'"),
            (d, name + ".VALUE", "not a function"),
            (os.path.join(d, "missing"), "x.main", "not found"),
            (d, "bad-name.main", "invalid entrypoint"),
        ]
        for path, entry, expected in cases:
            with self.subTest(entry=entry):
                rt = self.start()
                status, body = rt.specialize(path, entry)
                self.assertEqual(status, 500, body)
                self.assertEqual(body["error"]["code"], "specialize_failed")
                self.assertIn(expected, body["error"]["message"])

    def test_malformed_specialize_request(self):
        rt = self.start()
        for payload in (b"{not json", b"[1, 2]", b'{"functionName": "x.main"}',
                        b'{"filepath": "/tmp", "env": {"A": [1]}}'):
            with self.subTest(payload=payload):
                r, body = rt.request("POST", "/v2/specialize", payload)
                self.assertEqual(r.status, 400)
                self.assertEqual(json.loads(body)["error"]["code"], "bad_request")

    def test_env_is_applied_before_import(self):
        d, name = self.module("""
            import os
            AT_IMPORT = os.environ.get("GREETING")
            def main():
                return AT_IMPORT + "/" + os.environ["GREETING"]
        """)
        rt = self.specialized(d, name + ".main", env={"GREETING": "hi"})
        self.assertEqual(rt.request("GET", "/")[1], b"hi/hi")

    def test_envvar_fixture(self):
        rt = self.specialized(os.path.join(TESTDATA, "envvar.py"), "envvar.main",
                              env={"KAPPA_TEST_VAR": "value-1"})
        r, body = rt.request("GET", "/?name=KAPPA_TEST_VAR")
        self.assertEqual((r.status, body), (200, b"value-1"))
        r, _ = rt.request("GET", "/?name=KAPPA_NOT_SET_ANYWHERE")
        self.assertEqual(r.status, 404)

    def test_v1_specialize_uses_fixed_path(self):
        if os.path.exists("/userfunc/user"):
            self.skipTest("/userfunc/user exists on this machine")
        rt = self.start()
        r, body = rt.request("POST", "/specialize", b"")
        self.assertEqual(r.status, 500)
        self.assertIn("/userfunc/user", json.loads(body)["error"]["message"])

    def test_user_directory_comes_first_on_sys_path(self):
        d = self.tmpdir()
        self.write(d, "fn.py", "import shadowme\ndef main():\n    return shadowme.WHO\n")
        self.write(d, "shadowme.py", "WHO = 'bundled'\n")
        rt = self.specialized(d, "fn.main")
        self.assertEqual(rt.request("GET", "/")[1], b"bundled")


class TestRehearsal(RuntimeTestCase):
    """The runtime runs a specialization's steps once on a built-in module while it waits for
    its function (server.py `_rehearse`); nothing of it may show."""

    MODULE_FACTS = """
        import sys

        def main():
            m = sys.modules[__name__]
            return {"name": __name__, "file": __file__, "cached": __cached__,
                    "origin": __spec__.origin, "spec_name": __spec__.name,
                    "loader": type(__loader__).__name__, "loader_path": __loader__.path,
                    "in_sys_modules": sys.modules.get(__name__) is m,
                    "rehearsal_modules": sorted(n for n in sys.modules if "rehearsal" in n)}
    """

    def test_a_file_module_is_imported_as_the_import_system_would(self):
        d = self.tmpdir()
        path = self.write(d, "facts.py", self.MODULE_FACTS)
        rt = self.specialized(path, "facts.main")
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200, body)
        import importlib.util
        facts = json.loads(body)
        self.assertEqual(facts, {
            "name": "facts", "file": path, "cached": importlib.util.cache_from_source(path),
            "origin": path, "spec_name": "facts", "loader": "SourceFileLoader",
            "loader_path": path, "in_sys_modules": True, "rehearsal_modules": []})

    def test_a_function_named_like_the_rehearsal_module_keeps_its_name(self):
        d = self.tmpdir()
        path = self.write(d, "kappa_rehearsal.py", self.MODULE_FACTS)
        rt = self.specialized(path, "kappa_rehearsal.main")
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200, body)
        facts = json.loads(body)
        self.assertEqual((facts["name"], facts["rehearsal_modules"]),
                         ("kappa_rehearsal", ["kappa_rehearsal"]))

    def test_the_rehearsal_logs_nothing_and_leaves_the_runtime_generic(self):
        rt = self.start()
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 500)
        self.assertEqual(json.loads(body)["error"]["code"], "not_specialized")
        self.assertEqual(rt.logs(), "")
        status, _ = rt.specialize(os.path.join(EXAMPLES, "hello", "hello.py"), "hello.main")
        self.assertEqual(status, 200)
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, body), (200, b"Hello, world!\n"))

    def test_in_process_it_leaves_no_module_and_does_nothing_once_specialized(self):
        code = textwrap.dedent("""
            import sys, json
            sys.path.insert(0, %r)
            import server
            before = set(sys.modules)
            meta = [f for f in sys.meta_path if f is not server._FlaskFinder]
            # It runs a request's steps on its own function, and leaves no request bound.
            names = (server._shim_app.name, server._shim_app.import_name)
            prepared, real = [], server._prepare
            server._prepare = lambda rv: (prepared.append(rv), real(rv))[1]
            server._rehearse()
            server._prepare = real
            assert prepared == ["ok"], prepared
            # It rewrites the state a specialization sets with the values it had: unchanged.
            assert (server._shim_app.name, server._shim_app.import_name) == names, names
            assert server._spec_note == [None], server._spec_note
            assert server._cur.get() is None
            after = set(sys.modules)
            assert server._state is None
            assert [f for f in sys.meta_path if f is not server._FlaskFinder] == meta
            status, _ = server._specialize(json.dumps(
                {"filepath": %r, "functionName": "hello.main"}).encode(), False)
            assert status == 200, status
            state = server._state
            server._rehearse()
            assert server._state is state
            print(sorted(after - before), end="")
        """ % (HERE, os.path.join(EXAMPLES, "hello", "hello.py")))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=TIMEOUT)
        self.assertEqual((out.returncode, out.stdout), (0, "[]"), out.stderr)

    def test_specialize_then_request_pipelined_on_one_connection(self):
        # A specialization and the first request written back to back on one connection are
        # answered in order; a failed specialization's request gets "not specialized".
        for entry, first, code in (("hello.main", 200, None),
                                   ("hello.missing", 500, "not_specialized")):
            with self.subTest(entry=entry):
                rt = self.start()
                body = json.dumps({"filepath": os.path.join(EXAMPLES, "hello", "hello.py"),
                                   "functionName": entry}).encode()
                data = raw_exchange(
                    rt.port,
                    b"POST /v2/specialize HTTP/1.1\r\nHost: x\r\nContent-Length: %d"
                    b"\r\n\r\n%s" % (len(body), body) +
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answers = data.split(b"HTTP/1.1 ")[1:]
                self.assertEqual(len(answers), 2, data)
                self.assertTrue(answers[0].startswith(b"%d " % first), data)
                if code is None:
                    self.assertTrue(answers[1].startswith(b"200 "), data)
                    self.assertTrue(answers[1].endswith(b"Hello, world!\n"), data)
                else:
                    self.assertTrue(answers[1].startswith(b"500 "), data)
                    self.assertIn(code.encode(), answers[1])


    def test_request_with_a_body_pipelined_behind_the_specialization(self):
        # On the poller: the specialization's body and the request's body, read from one
        # buffer, each reach their own handler whole.
        rt = self.start()
        spec = json.dumps({"filepath": os.path.join(EXAMPLES, "echo", "echo.py"),
                           "functionName": "echo.main"}).encode()
        payload = b"first request's body\r\n\r\nwith a blank line"
        data = raw_exchange(
            rt.port,
            b"POST /v2/specialize HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(spec), spec) +
            b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        answers = data.split(b"HTTP/1.1 ")[1:]
        self.assertEqual(len(answers), 2, data)
        self.assertTrue(answers[0].startswith(b"200 "), data)
        self.assertTrue(answers[1].startswith(b"200 "), data)
        echoed = json.loads(answers[1].split(b"\r\n\r\n", 1)[1])
        self.assertEqual((echoed["method"], echoed["path"], echoed["body"]),
                         ("POST", "/x", payload.decode()))


class TestInvoke(RuntimeTestCase):
    def test_exception_is_500_with_traceback_and_logged(self):
        rt = self.specialized(os.path.join(TESTDATA, "exception.py"), "exception.main")
        r, body = rt.request("GET", "/", headers={"X-Kappa-Invocation-Id": "inv-123"})
        self.assertEqual(r.status, 500)
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "function_error")
        self.assertEqual(err["message"], "ValueError: boom")
        self.assertEqual(err["invocation_id"], "inv-123")
        self.assertIn("exception.py\", line 5, in main", err["traceback"])
        self.assertIn('raise ValueError("boom")', err["traceback"])
        self.assertNotIn("server.py", err["traceback"])
        wait_for(lambda: "ValueError: boom" in rt.logs())
        self.assertIn("inv-123", rt.logs())
        # The instance keeps serving.
        self.assertEqual(rt.request("GET", "/")[0].status, 500)

    def test_every_return_type(self):
        d, name = self.module(RETURNS)
        rt = self.specialized(d, name + ".main")
        cases = {
            "/str": (200, "text/plain; charset=utf-8", b"text"),
            "/bytes": (200, "application/octet-stream", b"\x00\x01"),
            "/dict": (200, "application/json", b'{"a":1,"b":[true,null]}\n'),
            "/list": (200, "application/json", b'[1,"x"]\n'),
            "/none": (200, None, b""),
            "/response": (201, "text/csv; charset=utf-8", b"a,b"),
            "/tuple2": (202, "text/plain; charset=utf-8", b"accepted"),
            "/tuple3": (203, "text/plain; charset=utf-8", b"three"),
            "/tuple-headers": (200, "application/x-custom", b"hdrs"),
            "/tuple-dict": (400, "application/json", b'{"error":"bad"}\n'),
            "/jsonify": (200, "application/json", b'{"k":"v"}\n'),
            "/make-response": (418, "text/plain; charset=utf-8", b"teapot"),
            "/generator": (200, "text/plain; charset=utf-8", b"g1g2"),
            "/bytes-generator": (200, "application/octet-stream", b"b1b2"),
            "/unicode": (200, "text/plain; charset=utf-8", "h\u00e9llo \u2603".encode()),
            "/no-content": (204, None, b""),
        }
        c = rt.conn()
        for path, (status, ctype, body) in cases.items():
            with self.subTest(path=path):
                c.request("GET", path)
                r = c.getresponse()
                data = r.read()
                self.assertEqual(r.status, status)
                self.assertEqual(r.getheader("Content-Type"), ctype)
                self.assertEqual(data, body)
        c.request("GET", "/tuple3")
        r = c.getresponse()
        r.read()
        self.assertEqual(r.getheader("X-Extra"), "yes")
        self.assertEqual(r.getheader("Content-Length"), "5")
        c.close()

    def test_abort_and_http_errors(self):
        # The stand-in answers abort() with Kappa's JSON error (real Flask with its HTML page).
        d, name = self.module(RETURNS)
        rt = self.specialized(d, name + ".main", rt_env={"KAPPA_FLASK": "shim"})
        r, body = rt.request("GET", "/abort")
        self.assertEqual(r.status, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")
        r, body = rt.request("GET", "/missing-arg")
        self.assertEqual(r.status, 400)

    def test_bad_return_value_is_function_error(self):
        d, name = self.module(RETURNS)
        rt = self.specialized(d, name + ".main")
        for path, text in (("/int", "returned a int"), ("/bad-header", "invalid response header"),
                           ("/bad-status", "status")):
            with self.subTest(path=path):
                r, body = rt.request("GET", path)
                self.assertEqual(r.status, 500)
                err = json.loads(body)["error"]
                self.assertEqual(err["code"], "function_error")
                self.assertIn(text, err["message"])

    def test_flask_shim_request(self):
        d, name = self.module(FLASKY)
        rt = self.specialized(d, name + ".main", rt_env={"KAPPA_FLASK": "shim"})
        r, body = rt.request("POST", "/some/path%20x?a=1&a=2&b=%C3%A9&empty=",
                             json.dumps({"n": 5}),
                             {"Content-Type": "application/json", "X-Custom": "cv",
                              "X-Kappa-Params-Id": "42"})
        self.assertEqual(r.status, 200, body)
        got = json.loads(body)
        self.assertEqual(got["method"], "POST")
        self.assertEqual(got["path"], "/some/path x")
        self.assertEqual(got["full_path"], "/some/path x?a=1&a=2&b=%C3%A9&empty=")
        self.assertEqual(got["a"], "1")
        self.assertEqual(got["a_list"], ["1", "2"])
        self.assertEqual(got["b"], "\u00e9")
        self.assertEqual(got["empty"], "")
        self.assertEqual(got["missing"], "dflt")
        self.assertEqual(got["a_int"], 1)
        self.assertEqual(got["header"], "cv")
        self.assertTrue(got["has_header"])
        self.assertEqual(got["json"], {"n": 5})
        self.assertEqual(got["data"], '{"n": 5}')
        self.assertEqual(got["params"], {"id": "42"})
        self.assertEqual(got["remote_addr"], "127.0.0.1")
        self.assertTrue(got["url"].startswith("http://127.0.0.1:%d/some/path" % rt.port))
        self.assertTrue(got["is_shim"])

    def test_flask_shim_form_and_json_errors(self):
        d, name = self.module(FLASKY)
        rt = self.specialized(d, name + ".form", rt_env={"KAPPA_FLASK": "shim"})
        r, body = rt.request("POST", "/", "x=1&y=a+b&y=c%21",
                             {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(json.loads(body), {"x": "1", "y": ["a b", "c!"], "json": None})
        boundary = "XyZ"
        multipart = (
            "--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
            "--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\nfile body\r\n--XyZ--\r\n")
        r, body = rt.request("POST", "/files", multipart,
                             {"Content-Type": "multipart/form-data; boundary=" + boundary})
        self.assertEqual(json.loads(body), {"field": "value", "filename": "a.txt",
                                            "content": "file body"})
        r, body = rt.request("POST", "/strict-json", "{bad", {"Content-Type": "application/json"})
        self.assertEqual(r.status, 400)
        r, body = rt.request("POST", "/strict-json", "{}", {"Content-Type": "text/plain"})
        self.assertEqual(r.status, 415)

    def test_request_argument_handler(self):
        rt = self.specialized(os.path.join(EXAMPLES, "jsonapi"), "jsonapi.main")
        r, body = rt.request("GET", "/")
        self.assertEqual((r.status, json.loads(body)), (200, {"items": []}))
        r, body = rt.request("POST", "/", json.dumps({"name": "apple", "price": 3}),
                             {"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, body)
        self.assertEqual(json.loads(body), {"id": 1, "name": "apple", "price": 3})
        self.assertEqual(r.getheader("Location"), "/1")
        r, body = rt.request("POST", "/", json.dumps({"name": ""}))
        self.assertEqual(r.status, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_item")
        r, body = rt.request("POST", "/", "not json")
        self.assertEqual(r.status, 400)
        r, body = rt.request("GET", "/?q=APP")
        self.assertEqual(len(json.loads(body)["items"]), 1)
        r, body = rt.request("GET", "/1")
        self.assertEqual(json.loads(body)["name"], "apple")
        r, _ = rt.request("DELETE", "/1")
        self.assertEqual(r.status, 204)
        r, _ = rt.request("GET", "/1")
        self.assertEqual(r.status, 404)

    def test_async_handlers(self):
        d, name = self.module(ASYNC)
        for entry, path, expected in (("with_request", "/a?x=1", b"async POST /a 1"),
                                      ("flask_style", "/b?x=2", b"flask async /b 2")):
            with self.subTest(entry=entry):
                rt = self.specialized(d, name + "." + entry)
                r, body = rt.request("POST", path, b"")
                self.assertEqual((r.status, body), (200, expected))

    def test_async_generator_streams(self):
        d, name = self.module(ASYNC)
        rt = self.specialized(d, name + ".agen")
        r, body = rt.request("GET", "/")
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(body, b"a0a1a2")

    def test_streaming_generator_is_chunked(self):
        rt = self.specialized(os.path.join(TESTDATA, "stream.py"), "stream.main")
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertIsNone(r.getheader("Content-Length"))
        self.assertEqual(body, b"".join(b"chunk %d\n" % i for i in range(5)))
        # On the wire: five data chunks, then the terminating zero-size chunk.
        raw = raw_exchange(rt.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, wire = raw.partition(b"\r\n\r\n")
        self.assertEqual(wire, b"".join(b"8\r\nchunk %d\n\r\n" % i for i in range(5)) +
                         b"0\r\n\r\n")

    def test_error_in_stream_after_first_chunk_cuts_response(self):
        d, name = self.module(RETURNS)
        rt = self.specialized(d, name + ".main")
        raw = raw_exchange(rt.port, b"GET /broken-stream HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"4\r\nok1\n\r\n", raw)
        self.assertFalse(raw.endswith(b"0\r\n\r\n"))
        wait_for(lambda: "stream broke" in rt.logs())
        r, body = rt.request("GET", "/broken-first")
        self.assertEqual(r.status, 500)
        self.assertIn("first chunk broke", json.loads(body)["error"]["message"])

    def test_all_methods_reach_the_function(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"):
            with self.subTest(method=method):
                r, body = rt.request(method, "/sub/path?q=1", b"payload")
                self.assertEqual(r.status, 200)
                got = json.loads(body)
                self.assertEqual(got["method"], method)
                self.assertEqual(got["path"], "/sub/path")
                self.assertEqual(got["query"], {"q": ["1"]})
                self.assertEqual(got["body"], "payload")

    def test_echo_router_headers(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        r, body = rt.request("GET", "/users/7", headers={
            "X-Kappa-Function-Name": "echo", "X-Kappa-Invocation-Id": "abc",
            "x-kappa-params-userid": "7", "X-Forwarded-For": "10.0.0.1"})
        got = json.loads(body)
        self.assertEqual(got["params"], {"userid": "7"})
        self.assertEqual(got["function"], "echo")
        self.assertEqual(got["invocation_id"], "abc")
        self.assertEqual(got["headers"]["x-forwarded-for"], "10.0.0.1")

    def test_head(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main")
        c = rt.conn()
        c.request("HEAD", "/")
        r = c.getresponse()
        self.assertEqual(r.read(), b"")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Length"), "14")
        c.request("GET", "/")  # same connection still in sync
        self.assertEqual(c.getresponse().read(), b"Hello, world!\n")
        c.close()

    def test_head_on_a_streaming_function(self):
        rt = self.specialized(os.path.join(TESTDATA, "stream.py"), "stream.main")
        raw = raw_exchange(rt.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first, _, rest = raw.partition(b"\r\n\r\n")
        self.assertTrue(first.startswith(b"HTTP/1.1 200 OK"), raw)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK"), raw)
        self.assertTrue(rest.endswith(b"8\r\nchunk 4\n\r\n0\r\n\r\n"), raw)

    def test_crash_fixture_exits_with_its_code(self):
        for query, expected in (("?how=exit&code=3", 3), ("?how=kill", -signal.SIGKILL)):
            with self.subTest(query=query):
                rt = self.specialized(os.path.join(TESTDATA, "crash.py"), "crash.main")
                with self.assertRaises((http.client.HTTPException, OSError)):
                    rt.request("GET", "/" + query)
                self.assertEqual(rt.proc.wait(TIMEOUT), expected)

    def test_memhog_fixture_small_allocation(self):
        rt = self.specialized(os.path.join(TESTDATA, "memhog.py"), "memhog.main")
        r, body = rt.request("GET", "/?mb=8")
        self.assertEqual((r.status, body), (200, b"allocated 8 MB\n"))

    def test_print_output_is_not_lost(self):
        d, name = self.module("def main():\n    print('hello from the function')\n"
                              "    return 'ok'\n")
        rt = self.specialized(d, name + ".main")
        rt.request("GET", "/")
        wait_for(lambda: any("hello from the function" in line for line in rt.stdout_lines))

    @unittest.skipUnless(_has_real_flask(), "Flask is not installed for this interpreter")
    def test_real_flask_when_bundled_with_the_function(self):
        import importlib.util
        d, name = self.module(FLASKY)
        flask_dir = os.path.dirname(importlib.util.find_spec("flask").origin)
        os.symlink(flask_dir, os.path.join(d, "flask"))
        rt = self.specialized(d, name + ".main")
        r, body = rt.request("POST", "/p?a=1&b=2", "{}", {"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, body)
        self.assertFalse(json.loads(body)["is_shim"])

    @unittest.skipUnless(_has_real_flask(), "Flask is not installed for this interpreter")
    def test_real_flask_by_default_when_installed(self):
        d, name = self.module(FLASKY)
        rt = self.specialized(d, name + ".main")
        r, body = rt.request("POST", "/p?a=1&b=2", "{}", {"Content-Type": "application/json"})
        self.assertFalse(json.loads(body)["is_shim"])

    @unittest.skipUnless(_has_real_flask(), "Flask is not installed for this interpreter")
    def test_fission_example_on_real_flask(self):
        TestFissionFlask.check_fission_example(self, {"KAPPA_FLASK": "real"})

    @unittest.skipUnless(_has_real_flask(), "Flask is not installed for this interpreter")
    def test_real_flask_when_requested(self):
        d, name = self.module(FLASKY)
        rt = self.specialized(d, name + ".main", rt_env={"KAPPA_FLASK": "real"})
        r, body = rt.request("POST", "/p?a=1&a=2&b=%C3%A9&empty=", json.dumps({"n": 5}),
                             {"Content-Type": "application/json", "X-Custom": "cv"})
        self.assertEqual(r.status, 200, body)
        got = json.loads(body)
        self.assertFalse(got["is_shim"])
        self.assertEqual((got["a_list"], got["json"], got["header"]), (["1", "2"], {"n": 5}, "cv"))
        r, body = rt.request("GET", "/jsonify")
        self.assertEqual(json.loads(body), {"via": "jsonify"})


FISSION_EXAMPLE = """
    from flask import request, current_app, jsonify, Response, make_response, abort, g

    def main():
        current_app.logger.info("fission-style log line from %s", request.path)
        g.user = request.headers.get("X-User", "anon")
        p = request.path
        if p == "/form":
            return jsonify({
                "method": request.method,
                "path": request.path,
                "args": request.args.to_dict(),
                "form": request.form.to_dict(),
                "values": request.values.to_dict(),
                "cookies": dict(request.cookies),
                "header": request.headers.get("X-User"),
                "user": g.user,
                "g_default": g.get("missing", "dflt"),
                "in_g": "user" in g,
            })
        if p == "/raw":
            return jsonify({
                "json": request.json if request.is_json else None,
                "get_json": request.get_json(),
                "data": request.data.decode(),
                "get_data": request.get_data(as_text=True),
            })
        if p == "/files":
            f = request.files["up"]
            return {"field": request.form["field"], "filename": f.filename,
                    "content": f.read().decode()}
        if p == "/response":
            return Response("created", status=201, mimetype="text/plain")
        if p == "/make":
            r = make_response(jsonify(ok=True), 202)
            r.headers["X-From"] = "make_response"
            return r
        if p == "/abort":
            abort(403)
        if p == "/app":
            return current_app.name
        return "unknown " + p, 404
"""

FAKE_FLASK = """
    # Stands in for an installed Flask: enough of its surface for the runtime to drive.
    import logging
    MARK = "fake-real-flask"
    apps = []

    class _Ctx:
        def push(self):
            pass

        def pop(self):
            pass

    class Flask:
        def __init__(self, name):
            self.name = name
            self.logger = logging.getLogger(name)
            apps.append(name)

        def request_context(self, environ):
            return _Ctx()
"""

WHICH_FLASK = """
    import flask

    def main():
        return {"mark": getattr(flask, "MARK", None),
                "shim": getattr(flask, "__kappa_shim__", False),
                "apps": list(getattr(flask, "apps", []))}
"""


class TestFissionFlask(RuntimeTestCase):
    """What Fission's Python examples use of Flask, on the stand-in and (when it is installed)
    on real Flask, and how the runtime picks one."""

    def check_fission_example(self, rt_env):
        d, name = self.module(FISSION_EXAMPLE)
        rt = self.specialized(d, name + ".main", rt_env=rt_env)
        r, body = rt.request("POST", "/form?q=1&both=arg", "f=2&both=form",
                             {"Content-Type": "application/x-www-form-urlencoded",
                              "X-User": "ann", "Cookie": "session=abc; theme=dark"})
        self.assertEqual(r.status, 200, body)
        got = json.loads(body)
        self.assertEqual(got["method"], "POST")
        self.assertEqual(got["path"], "/form")
        self.assertEqual(got["args"], {"q": "1", "both": "arg"})
        self.assertEqual(got["form"], {"f": "2", "both": "form"})
        self.assertEqual(got["values"], {"q": "1", "f": "2", "both": "arg"})
        self.assertEqual(got["cookies"], {"session": "abc", "theme": "dark"})
        self.assertEqual((got["header"], got["user"], got["g_default"], got["in_g"]),
                         ("ann", "ann", "dflt", True))
        r, body = rt.request("POST", "/raw", json.dumps({"n": 5}),
                             {"Content-Type": "application/json"})
        self.assertEqual(json.loads(body), {"json": {"n": 5}, "get_json": {"n": 5},
                                            "data": '{"n": 5}', "get_data": '{"n": 5}'})
        multipart = (
            "--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
            "--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\nfile body\r\n--XyZ--\r\n")
        r, body = rt.request("POST", "/files", multipart,
                             {"Content-Type": "multipart/form-data; boundary=XyZ"})
        self.assertEqual(json.loads(body), {"field": "value", "filename": "a.txt",
                                            "content": "file body"})
        r, body = rt.request("GET", "/response")
        self.assertEqual((r.status, body, r.getheader("Content-Type").split(";")[0]),
                         (201, b"created", "text/plain"))
        r, body = rt.request("GET", "/make")
        self.assertEqual((r.status, json.loads(body), r.getheader("X-From")),
                         (202, {"ok": True}, "make_response"))
        r, body = rt.request("GET", "/abort")
        self.assertEqual(r.status, 403, body)
        r, body = rt.request("GET", "/app")
        self.assertEqual(body, name.encode())
        wait_for(lambda: "fission-style log line from /form" in rt.logs())
        r, body = rt.request("GET", "/nope")
        self.assertEqual(r.status, 404)

    def test_fission_example_on_the_stand_in(self):
        self.check_fission_example({"KAPPA_FLASK": "shim"})

    def test_fission_example_by_default(self):
        # The stand-in, or real Flask where it is installed: the same behaviour.
        self.check_fission_example({})

    def flask_package(self, directory, source=FAKE_FLASK):
        os.makedirs(os.path.join(directory, "flask"))
        self.write(directory, os.path.join("flask", "__init__.py"), source)

    def which(self, rt):
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200, body)
        return json.loads(body)

    def test_an_importable_flask_is_used_wherever_it_is_installed(self):
        # Installed for the interpreter (here: on PYTHONPATH), not bundled with the function.
        site = self.tmpdir()
        self.flask_package(site)
        d, name = self.module(WHICH_FLASK)
        rt = self.specialized(d, name + ".main", rt_env={"PYTHONPATH": site})
        got = self.which(rt)
        self.assertEqual((got["mark"], got["shim"]), ("fake-real-flask", False))
        self.assertEqual(got["apps"][-1], name, "the app is named after the function's module")
        # Bundled with the function.
        d, name = self.module(WHICH_FLASK)
        self.flask_package(d)
        got = self.which(self.specialized(d, name + ".main"))
        self.assertEqual(got["mark"], "fake-real-flask")
        # KAPPA_FLASK=shim forces the stand-in, from the runtime's env or the function's.
        rt = self.start()
        status, body = rt.specialize(d, name + ".main", env={"KAPPA_FLASK": "shim"})
        self.assertEqual(status, 200, body)
        self.assertTrue(self.which(rt)["shim"])

    def test_a_flask_missing_its_dependencies(self):
        d, name = self.module(WHICH_FLASK)
        self.flask_package(d, "import kappa_missing_dependency_of_flask\n")
        # auto: the stand-in, saying why.
        rt = self.specialized(d, name + ".main")
        self.assertTrue(self.which(rt)["shim"])
        self.assertIn("the package 'kappa_missing_dependency_of_flask' it needs is not installed",
                      rt.logs())
        # real: the specialization fails, naming the missing package.
        rt = self.start()
        status, body = rt.specialize(d, name + ".main", env={"KAPPA_FLASK": "real"})
        self.assertEqual(status, 500, body)
        message = body["error"]["message"]
        self.assertIn("KAPPA_FLASK=real, but Flask", message)
        self.assertIn("'kappa_missing_dependency_of_flask'", message)

    def test_kappa_flask_real_without_flask_names_the_missing_package(self):
        d, name = self.module(WHICH_FLASK)
        # `python3 -S`: no site-packages, so no Flask even where it is installed.
        rt = self.start(python_args=["-S"])
        status, body = rt.specialize(d, name + ".main", env={"KAPPA_FLASK": "real"})
        self.assertEqual(status, 500, body)
        message = body["error"]["message"]
        self.assertIn("KAPPA_FLASK=real, but the flask package is not installed", message)
        self.assertIn("requirements.txt", message)

    def test_bad_kappa_flask_value(self):
        d, name = self.module(WHICH_FLASK)
        rt = self.start()
        status, body = rt.specialize(d, name + ".main", env={"KAPPA_FLASK": "yes"})
        self.assertEqual(status, 500, body)
        self.assertIn("expected auto, shim or real", body["error"]["message"])


def raw_exchange(port, payload, until_close=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(payload)
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    s.close()
    return b"".join(chunks)


RETURNS = """
    from flask import Response, abort, jsonify, make_response, request

    def main():
        p = request.path
        if p == "/str": return "text"
        if p == "/bytes": return b"\\x00\\x01"
        if p == "/dict": return {"a": 1, "b": [True, None]}
        if p == "/list": return [1, "x"]
        if p == "/none": return None
        if p == "/response": return Response("a,b", status=201, mimetype="text/csv")
        if p == "/tuple2": return "accepted", 202
        if p == "/tuple3": return "three", 203, {"X-Extra": "yes"}
        if p == "/tuple-headers": return "hdrs", {"Content-Type": "application/x-custom"}
        if p == "/tuple-dict": return {"error": "bad"}, 400
        if p == "/jsonify": return jsonify(k="v")
        if p == "/make-response":
            r = make_response("teapot", 418)
            r.headers["Content-Type"] = "text/plain; charset=utf-8"
            return r
        if p == "/generator": return (x for x in ["g1", "g2"])
        if p == "/bytes-generator": return iter([b"b1", b"b2"])
        if p == "/unicode": return "h\\u00e9llo \\u2603"
        if p == "/no-content": return "", 204
        if p == "/abort": abort(404)
        if p == "/missing-arg": return request.args["nope"]
        if p == "/int": return 42
        if p == "/bad-header": return "x", 200, {"X-Bad": "a\\r\\nInjected: yes"}
        if p == "/bad-status": return "x", 1000
        if p == "/broken-stream":
            def gen():
                yield "ok1\\n"
                raise RuntimeError("stream broke")
            return gen()
        if p == "/broken-first":
            def gen():
                raise RuntimeError("first chunk broke")
                yield "never"
            return gen()
        return "unknown " + p, 404
"""

FLASKY = """
    import flask
    from flask import request, jsonify

    def main():
        if request.path == "/jsonify":
            return jsonify(via="jsonify")
        return {
            "method": request.method,
            "path": request.path,
            "full_path": request.full_path,
            "url": request.url,
            "a": request.args.get("a"),
            "a_list": request.args.getlist("a"),
            "a_int": request.args.get("a", type=int),
            "b": request.args["b"],
            "empty": request.args.get("empty"),
            "missing": request.args.get("missing", "dflt"),
            "header": request.headers.get("x-custom"),
            "has_header": "X-CUSTOM" in request.headers,
            "json": request.get_json(),
            "data": request.get_data(as_text=True),
            "params": getattr(request, "params", None),
            "remote_addr": request.remote_addr,
            "is_shim": getattr(flask, "__kappa_shim__", False),
        }

    def form():
        if request.path == "/files":
            f = request.files["up"]
            return {"field": request.form["field"], "filename": f.filename,
                    "content": f.read().decode()}
        if request.path == "/strict-json":
            return {"json": request.get_json()}
        return {"x": request.form["x"], "y": request.form.getlist("y"),
                "json": request.get_json(silent=True)}
"""

ASYNC = """
    import asyncio
    from flask import request

    async def with_request(req):
        await asyncio.sleep(0)
        return "async %s %s %s" % (req.method, req.path, req.args["x"])

    async def flask_style():
        await asyncio.sleep(0.001)
        return "flask async %s %s" % (request.path, request.args["x"])

    async def agen():
        for i in range(3):
            await asyncio.sleep(0)
            yield "a%d" % i
"""


class TestHTTP(RuntimeTestCase):
    def hello(self):
        return self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main")

    def test_keep_alive_reuses_one_connection(self):
        rt = self.hello()
        c = rt.conn()
        c.request("GET", "/")
        c.getresponse().read()
        sock = c.sock
        for i in range(200):
            c.request("GET", "/?i=%d" % i)
            r = c.getresponse()
            self.assertEqual(r.read(), b"Hello, world!\n")
            self.assertIs(c.sock, sock)
        c.close()

    def test_pipelined_requests(self):
        rt = self.hello()
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        raw = raw_exchange(rt.port, req * 3 + b"GET / HTTP/1.1\r\nHost: x\r\n"
                                              b"Connection: close\r\n\r\n")
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), 4)
        self.assertEqual(raw.count(b"Hello, world!\n"), 4)

    def test_chunked_request_body(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        c = rt.conn()
        c.request("POST", "/", body=iter([b"hel", b"lo ", b"chunked"]), encode_chunked=True,
                  headers={"Transfer-Encoding": "chunked"})
        r = c.getresponse()
        self.assertEqual(json.loads(r.read())["body"], "hello chunked")
        # Raw, with a chunk extension and a trailer, then another request on the connection.
        raw = raw_exchange(rt.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                                    b"\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
                                    b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b'"body":"abc"', raw)
        self.assertIn(b'"path":"/two"', raw)
        c.close()

    def test_expect_100_continue(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        s = socket.create_connection(("127.0.0.1", rt.port), timeout=TIMEOUT)
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"body")
        data = b""
        while b'"body":"body"' not in data:
            chunk = s.recv(65536)
            self.assertTrue(chunk)
            data += chunk
        s.close()

    def test_large_body(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        big = b"x" * (3 * 1024 * 1024 + 7)
        r, body = rt.request("POST", "/", big)
        self.assertEqual(len(json.loads(body)["body"]), len(big))

    def test_http10_and_connection_close(self):
        rt = self.hello()
        raw = raw_exchange(rt.port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Connection: close", raw)
        self.assertTrue(raw.endswith(b"Hello, world!\n"))
        raw = raw_exchange(rt.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(raw.endswith(b"Hello, world!\n"))

    def test_malformed_requests_get_400(self):
        rt = self.hello()
        for payload in (b"NONSENSE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"):
            with self.subTest(payload=payload):
                raw = raw_exchange(rt.port, payload)
                self.assertTrue(raw.startswith(b"HTTP/1.1 400 "), raw)
        self.assertEqual(rt.request("GET", "/")[0].status, 200)

    def test_healthz_answers_while_function_is_busy(self):
        d = self.tmpdir()
        gated = self.write(d, "gated.py", GATED)
        started, gate = os.path.join(d, "started"), os.path.join(d, "gate")
        rt = self.specialized(gated)  # KAPPA_CONCURRENCY defaults to 1
        result = {}
        t = threading.Thread(target=lambda: result.setdefault(
            "r", rt.request("GET", "/?started=%s&gate=%s" % (started, gate))))
        t.start()
        wait_for(lambda: os.path.exists(started))
        for _ in range(3):
            self.assertEqual(rt.request("GET", "/healthz")[0].status, 200)
        self.assertNotIn("r", result)  # the function was still blocked meanwhile
        open(gate, "w").close()
        t.join(TIMEOUT)
        self.assertEqual(result["r"][1], b"released")

    def test_concurrency_lets_slow_requests_overlap(self):
        rt = self.specialized(os.path.join(TESTDATA, "slow.py"), "slow.main",
                              rt_env={"KAPPA_CONCURRENCY": "4"})
        results = []
        lock = threading.Lock()

        def call():
            r, body = rt.request("GET", "/?s=1")
            with lock:
                results.append((r.status, body, float(r.getheader("X-Slow-Start")),
                                float(r.getheader("X-Slow-End"))))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        self.assertEqual(len(results), 4)
        self.assertEqual({(s, b) for s, b, _, _ in results}, {(200, b"done")})
        # All four were sleeping at the same moment: every start precedes every end.
        self.assertLess(max(r[2] for r in results), min(r[3] for r in results))

    def test_concurrency_one_serializes_calls(self):
        rt = self.specialized(os.path.join(TESTDATA, "slow.py"), "slow.main")
        results = []

        def call():
            r, _ = rt.request("GET", "/?s=0.2")
            results.append((float(r.getheader("X-Slow-Start")), float(r.getheader("X-Slow-End"))))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        (s1, e1), (s2, e2) = sorted(results)
        self.assertLessEqual(e1, s2)


PARTLY_GATED = """
    import os, time
    from flask import request

    def main():
        if "gate" not in request.args:
            return "quick"
        open(request.args["started"], "w").close()
        while not os.path.exists(request.args["gate"]):
            time.sleep(0.01)
        return "released"
"""


def read_response(sock, buf=b""):
    """One Content-Length response from `sock` -> (head, body, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError("connection closed before a response: %r" % buf)
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            raise AssertionError("connection closed in a response body")
        buf += data
    return head, buf[:length], buf[length:]


class TestPoller(RuntimeTestCase):
    """Keep-alive connections wait in one poller; blocking functions and unusual requests move
    their connection to a thread of its own."""

    def threads(self, rt):
        return len(os.listdir("/proc/%d/task" % rt.proc.pid))

    def test_many_connections_share_one_poller(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main")
        conns = [rt.conn() for _ in range(24)]
        for i in range(10):
            for c in conns:
                c.request("GET", "/?i=%d" % i)
                r = c.getresponse()
                self.assertEqual((r.status, r.read()), (200, b"Hello, world!\n"))
        # Not a thread per connection (main, poller, watchdog; a few more if the machine was
        # so busy that the watchdog handed some over).
        self.assertLess(self.threads(rt), 12)
        for c in conns:
            c.close()

    def test_one_connection_moves_between_poller_and_thread(self):
        rt = self.specialized(os.path.join(EXAMPLES, "echo"), "echo.main")
        s = socket.create_connection(("127.0.0.1", rt.port), timeout=TIMEOUT)
        # A head in two pieces, on the poller.
        s.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Le")
        time.sleep(0.05)
        s.sendall(b"ngth: 3\r\n\r\nabc")
        head, body, rest = read_response(s)
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertEqual(json.loads(body)["body"], "abc")
        # A chunked body moves the connection to a thread, with what came after it.
        s.sendall(b"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\ndef\r\n0\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = read_response(s, rest)
        self.assertEqual(json.loads(body)["body"], "def")
        head, body, rest = read_response(s, rest)
        self.assertEqual(json.loads(body)["path"], "/three")
        # A body that arrives after its head, on the thread.
        s.sendall(b"POST /four HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"ghij")
        head, body, rest = read_response(s, rest)
        self.assertEqual(json.loads(body)["body"], "ghij")
        self.assertEqual(rest, b"")
        s.close()

    def test_a_blocked_function_does_not_hold_up_other_connections(self):
        d = self.tmpdir()
        fn = self.write(d, "partly.py", PARTLY_GATED)
        started, gate = os.path.join(d, "started"), os.path.join(d, "gate")
        rt = self.specialized(fn, rt_env={"KAPPA_CONCURRENCY": "2"})
        a, b = rt.conn(), rt.conn()
        for c in (a, b):  # both connections served once, so both wait in the poller
            c.request("GET", "/")
            self.assertEqual(c.getresponse().read(), b"quick")
        result = {}

        def blocked():
            a.request("GET", "/?started=%s&gate=%s" % (started, gate))
            result["a"] = a.getresponse().read()

        t = threading.Thread(target=blocked)
        t.start()
        wait_for(lambda: os.path.exists(started))
        for _ in range(5):
            b.request("GET", "/")
            self.assertEqual(b.getresponse().read(), b"quick")
        self.assertNotIn("a", result)  # still blocked meanwhile
        open(gate, "w").close()
        t.join(TIMEOUT)
        self.assertEqual(result["a"], b"released")
        # The connection that blocked goes on serving, back in the poller: the thread that ran
        # the blocked call ends (main, poller and watchdog are left).
        for c in (a, b):
            c.request("GET", "/")
            self.assertEqual(c.getresponse().read(), b"quick")
        wait_for(lambda: self.threads(rt) <= 3)
        for c in (a, b):
            c.request("GET", "/")
            self.assertEqual(c.getresponse().read(), b"quick")
        a.close()
        b.close()

    def test_idle_connections_are_closed_after_the_keep_alive_timeout(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello"), "hello.main",
                              rt_env={"KAPPA_KEEPALIVE_TIMEOUT": "1"})
        s = socket.create_connection(("127.0.0.1", rt.port), timeout=TIMEOUT)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = read_response(s)
        self.assertEqual(body, b"Hello, world!\n")
        self.assertEqual(s.recv(100), b"")  # closed by the runtime, not by the timeout here
        s.close()


if __name__ == "__main__":
    unittest.main()
