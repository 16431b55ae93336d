"""Tests for the Kappa binary runtime server.

Each test starts server.py as a real subprocess on a free port (``--port 0``; the port is read
from the "listening on" line) and talks HTTP to it. Run from the repository root with:

    python3 -m unittest discover -s functions/runtimes/binary -p 'test_*.py'

No test asserts a wall-clock duration; waits are bounded polls.
"""

import http.client
import json
import os
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
EXAMPLES = os.path.join(ROOT, "functions", "examples", "binary")
TESTDATA = os.path.join(ROOT, "functions", "testdata", "binary")
TIMEOUT = 20  # seconds; a bound for waits, never an assertion


def wait_for(check, what="condition"):
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.01)


def read(path):
    with open(path) as f:
        return f.read()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Runtime:
    def __init__(self, env=None, args=None):
        e = dict(os.environ)
        e.pop("KAPPA_CONCURRENCY", None)
        e.update(env or {})
        self.stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, SERVER] + (args if args is not None else ["--port", "0"])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, env=e)
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            self.close()
            raise AssertionError("runtime did not print its listening line")
        self.first_line = self.proc.stdout.readline().decode()
        if "listening on" not in self.first_line:
            self.close()
            raise AssertionError("unexpected first line %r" % self.first_line)
        self.port = int(self.first_line.strip().rpartition(":")[2])

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def request(self, method, path, body=None, headers=None):
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r, r.read()
        finally:
            c.close()

    def specialize(self, filepath, entry="", env=None):
        payload = {"filepath": filepath, "functionName": entry}
        if env is not None:
            payload["env"] = env
        r, data = self.request("POST", "/v2/specialize", json.dumps(payload),
                               {"Content-Type": "application/json"})
        return r.status, json.loads(data)

    def logs(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.stderr.close()


class BinaryTestCase(unittest.TestCase):
    def start(self, env=None, args=None):
        rt = Runtime(env, args)
        self.addCleanup(rt.close)
        return rt

    def specialized(self, filepath, entry="", env=None, rt_env=None):
        rt = self.start(rt_env)
        status, body = rt.specialize(filepath, entry, env)
        self.assertEqual(status, 202, body)
        return rt

    def script(self, source, name="fn.sh", mode=0o555):
        d = tempfile.mkdtemp(prefix="kappa-bin-test-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source).lstrip())
        os.chmod(path, mode)
        return path


class TestProtocol(BinaryTestCase):
    def test_listening_line_healthz_and_specialize(self):
        rt = self.start()
        self.assertEqual(rt.first_line.strip(),
                         "kappa binary runtime listening on 127.0.0.1:%d" % rt.port)
        r, body = rt.request("GET", "/healthz")
        self.assertEqual((r.status, json.loads(body)), (200, {"status": "ok"}))
        r, body = rt.request("GET", "/x")
        self.assertEqual(r.status, 500)
        self.assertEqual(json.loads(body)["error"]["code"], "not_specialized")
        status, _ = rt.specialize(os.path.join(EXAMPLES, "hello.sh"))
        self.assertEqual(status, 202)
        status, body = rt.specialize(os.path.join(EXAMPLES, "hello.sh"))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["code"], "already_specialized")
        r, _ = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)

    def test_port_from_environment(self):
        for var in ("PORT", "RUNTIME_PORT"):
            with self.subTest(var=var):
                rt = self.start(env={"PORT": "", "RUNTIME_PORT": "", var: "0"}, args=[])
                r, _ = rt.request("GET", "/healthz")
                self.assertEqual(r.status, 200)

    def test_specialize_failures_name_the_cause(self):
        rt = self.start()
        status, body = rt.specialize(TESTDATA, "nope.sh")
        self.assertEqual(status, 500)
        self.assertIn("does not exist", body["error"]["message"])
        self.assertIn("nope.sh", body["error"]["message"])
        status, body = rt.specialize(TESTDATA, "")
        self.assertIn("entrypoint must name the executable", body["error"]["message"])
        self.assertIn("fail.sh", body["error"]["message"])
        status, body = rt.specialize(TESTDATA, "../binary/../../x")
        self.assertIn("outside the package", body["error"]["message"])
        r, data = rt.request("POST", "/v2/specialize", b"{")
        self.assertEqual(r.status, 400)
        # Still generic.
        status, _ = rt.specialize(TESTDATA, "plain.sh")
        self.assertEqual(status, 202)

    def test_directory_and_entrypoint(self):
        rt = self.specialized(TESTDATA, "created.sh")
        r, body = rt.request("POST", "/items/7?x=1&y=%20", b"hello stdin",
                             {"Content-Type": "text/plain", "X-Custom": "abc"})
        self.assertEqual(r.status, 201, body)
        self.assertEqual(r.getheader("X-Custom"), "abc")
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(json.loads(body), {
            "method": "POST", "uri": "/items/7?x=1&y=%20", "query": "x=1&y=%20",
            "length": "11", "type": "text/plain", "body": "hello stdin"})


class TestCgi(BinaryTestCase):
    def test_hello_example(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello.sh"))
        r, body = rt.request("PUT", "/greet?name=x", b"some input")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("X-Request-Method"), "PUT")
        text = body.decode()
        self.assertIn("PUT request to /greet", text)
        self.assertIn("Query: name=x", text)
        self.assertIn("Body (10 bytes): some input", text)

    def test_environment_of_the_child(self):
        path = self.script("""
            #!/bin/sh
            env | grep -E '^(REQUEST_|PATH_INFO|QUERY_STRING|CONTENT_|HTTP_|GREETING|GATEWAY)' | sort
        """)
        rt = self.specialized(path, "", {"GREETING": "hi"})
        r, body = rt.request("GET", "/a%20b/c?q=1", headers={
            "X-Multi-Word-Header": "v", "Proxy": "evil", "Content-Type": "text/x"})
        env = dict(line.split("=", 1) for line in body.decode().splitlines())
        self.assertEqual(env["REQUEST_METHOD"], "GET")
        self.assertEqual(env["REQUEST_URI"], "/a%20b/c?q=1")
        self.assertEqual(env["PATH_INFO"], "/a b/c")
        self.assertEqual(env["QUERY_STRING"], "q=1")
        self.assertEqual(env["CONTENT_LENGTH"], "0")
        self.assertEqual(env["CONTENT_TYPE"], "text/x")
        self.assertEqual(env["HTTP_X_MULTI_WORD_HEADER"], "v")
        self.assertEqual(env["GREETING"], "hi")
        self.assertEqual(env["GATEWAY_INTERFACE"], "CGI/1.1")
        self.assertNotIn("HTTP_PROXY", env)
        self.assertNotIn("HTTP_CONTENT_TYPE", env)

    def test_output_without_header_block_is_the_body(self):
        rt = self.specialized(os.path.join(TESTDATA, "plain.sh"))
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertTrue(body.startswith(b"time: "), body)
        self.assertIn(b"second line", body)
        self.assertEqual(r.getheader("Content-Type"), "text/plain; charset=utf-8")

    def test_binary_output_and_location(self):
        path = self.script("""
            #!/bin/sh
            if [ "$QUERY_STRING" = redirect ]; then printf 'Location: /elsewhere\\n\\n'; exit 0; fi
            printf '\\377\\376\\000'
        """)
        rt = self.specialized(path)
        r, body = rt.request("GET", "/")
        self.assertEqual(body, b"\xff\xfe\x00")
        self.assertEqual(r.getheader("Content-Type"), "application/octet-stream")
        r, body = rt.request("GET", "/?redirect")
        self.assertEqual((r.status, r.getheader("Location")), (302, "/elsewhere"))

    def test_not_executable_runs_with_sh(self):
        path = self.script("echo from sh $0\n", mode=0o444)
        rt = self.specialized(path)
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertIn(b"from sh", body)
        self.assertIn("/bin/sh", rt.logs())

    def test_nonzero_exit_is_500_with_code_and_stderr_tail(self):
        rt = self.specialized(os.path.join(TESTDATA, "fail.sh"))
        r, body = rt.request("GET", "/", headers={"X-Kappa-Invocation-Id": "inv-3"})
        self.assertEqual(r.status, 500)
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "function_error")
        self.assertIn("exited with code 3", err["message"])
        self.assertIn("the widget is broken", err["message"])
        self.assertIn("starting up", err["stderr"])
        self.assertEqual(err["invocation_id"], "inv-3")
        self.assertNotIn(b"partial output", body)
        wait_for(lambda: "the widget is broken" in rt.logs(), "stderr in the log")
        # Killed by a signal.
        path = self.script("#!/bin/sh\nkill -9 $$\n")
        rt = self.specialized(path)
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 500)
        self.assertIn("killed by signal 9", json.loads(body)["error"]["message"])

    def test_large_output_is_streamed(self):
        path = self.script("""
            #!/bin/sh
            head -c 3000000 /dev/zero | tr '\\0' 'a'
        """)
        rt = self.specialized(path)
        r, body = rt.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(len(body), 3000000)
        self.assertEqual(set(body), {ord("a")})

    def test_large_request_body_on_stdin(self):
        path = self.script("#!/bin/sh\nwc -c\n")
        rt = self.specialized(path)
        r, body = rt.request("POST", "/", b"x" * 5000000)
        self.assertEqual(body.strip(), b"5000000")

    def test_client_going_away_kills_the_child(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        pidfile = os.path.join(d, "pid")
        rt = self.specialized(os.path.join(TESTDATA, "sleep.sh"))
        s = socket.create_connection(("127.0.0.1", rt.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pidfile: %s\r\n\r\n" % pidfile.encode())
        wait_for(lambda: os.path.exists(pidfile) and read(pidfile).strip(), "the pid")
        pid = int(read(pidfile))
        self.assertTrue(pid_alive(pid))
        s.close()
        wait_for(lambda: not pid_alive(pid), "the child to be killed")
        wait_for(lambda: "client went away" in rt.logs(), "the log line")
        r, _ = rt.request("GET", "/healthz")
        self.assertEqual(r.status, 200)

    def test_keep_alive_and_head(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello.sh"))
        c = rt.conn()
        self.addCleanup(c.close)
        for _ in range(5):
            c.request("GET", "/")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            r.read()
        c.request("HEAD", "/")
        r = c.getresponse()
        self.assertEqual(r.read(), b"")
        self.assertGreater(int(r.getheader("Content-Length")), 0)

    def test_concurrency_runs_children_in_parallel(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = self.script("""
            #!/bin/sh
            touch "$HTTP_X_DIR/started-$$"
            while [ ! -e "$HTTP_X_DIR/gate" ]; do sleep 0.01; done
            echo done
        """)
        for conc in (1, 3):
            with self.subTest(concurrency=conc):
                for n in os.listdir(d):
                    os.remove(os.path.join(d, n))
                rt = self.specialized(path, rt_env={"KAPPA_CONCURRENCY": str(conc)})
                results = []
                threads = [threading.Thread(target=lambda: results.append(
                    rt.request("GET", "/", headers={"X-Dir": d})[1])) for _ in range(3)]
                for t in threads:
                    t.start()
                started = lambda: len([n for n in os.listdir(d) if n.startswith("started")])
                wait_for(lambda: started() >= conc, "%d children" % conc)
                r, _ = rt.request("GET", "/healthz")
                self.assertEqual(r.status, 200)
                if conc == 1:
                    self.assertEqual(started(), 1)
                open(os.path.join(d, "gate"), "w").close()
                for t in threads:
                    t.join(TIMEOUT)
                self.assertEqual(results, [b"done\n"] * 3)

    def test_sigterm_drains(self):
        rt = self.start()
        rt.proc.send_signal(signal.SIGTERM)
        self.assertEqual(rt.proc.wait(TIMEOUT), 0)
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = self.script("""
            #!/bin/sh
            touch "$HTTP_X_DIR/started"
            while [ ! -e "$HTTP_X_DIR/gate" ]; do sleep 0.01; done
            echo released
        """)
        rt = self.specialized(path)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault(
            "r", rt.request("GET", "/", headers={"X-Dir": d})))
        t.start()
        wait_for(lambda: os.path.exists(os.path.join(d, "started")), "the child")
        rt.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining 1 in-flight" in rt.logs(), "the drain")
        self.assertIsNone(rt.proc.poll())
        open(os.path.join(d, "gate"), "w").close()
        t.join(TIMEOUT)
        self.assertEqual(out["r"][1], b"released\n")
        self.assertEqual(rt.proc.wait(TIMEOUT), 0)

    def test_max_body_bytes(self):
        rt = self.specialized(os.path.join(EXAMPLES, "hello.sh"),
                              rt_env={"KAPPA_MAX_BODY_BYTES": "10"})
        r, body = rt.request("POST", "/", b"x" * 100)
        self.assertEqual(r.status, 413)
        r, body = rt.request("POST", "/", b"x" * 5)
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main()
