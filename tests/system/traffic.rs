//! Traffic through the router beyond one request, one response: WebSockets (Python and
//! Node.js functions), server-sent events, and asynchronous invocations across a `kill -9`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, function_path, http};

/// A minimal WebSocket client (RFC 6455) over a blocking socket.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn connect(addr: SocketAddr, path: &str) -> Ws {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 101"),
            "handshake answered:\n{}",
            String::from_utf8_lossy(&buf)
        );
        // The key above is RFC 6455's example; its accept value is the RFC's too.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(head.contains("upgrade: websocket"), "{head}");
        let rest = buf[end + 4..].to_vec();
        Ws { stream, buf: rest }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            frame.push(0x80 | n as u8);
        } else if n < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The next frame (opcode, payload); `None` at the end of the connection.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2) {
            return None;
        }
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        let mut len = (self.buf[1] & 0x7f) as usize;
        let mut off = 2;
        if len == 126 {
            assert!(self.fill(4));
            len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            off = 4;
        } else if len == 127 {
            assert!(self.fill(10));
            len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize;
            off = 10;
        }
        assert!(self.fill(off + len), "connection closed inside a frame");
        let opcode = self.buf[0] & 0x0f;
        let payload = self.buf[off..off + len].to_vec();
        self.buf.drain(..off + len);
        Some((opcode, payload))
    }

    fn text(&mut self) -> String {
        let (opcode, payload) = self.recv().expect("a message");
        assert_eq!(opcode, 1, "a text frame");
        String::from_utf8(payload).unwrap()
    }

    /// The connection ends (EOF) after what is already buffered.
    fn expect_end(&mut self) {
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
    }
}

/// The function's in-flight count summed over its instances.
fn in_flight(p: &Platform, function: &str) -> Option<u64> {
    let out = p.cli(&["fn", "pods", function, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|i| i["inFlight"].as_u64())
            .sum(),
    )
}

fn wait_in_flight(p: &Platform, function: &str, want: u64, what: &str) {
    eventually_blocking(Duration::from_secs(30), what, || {
        (in_flight(p, function) == Some(want)).then_some(())
    });
}

/// Echoes through one WebSocket function: many messages each way, text and binary, a close
/// from the client and one from the function, the slot held while open and freed on close.
fn echo_through(p: &Platform, function: &str, path: &str) {
    let mut ws = Ws::connect(p.router, path);
    wait_in_flight(
        p,
        function,
        1,
        "the open socket to hold its instance's slot",
    );
    // One at a time...
    for i in 0..200 {
        let message = format!("message {i} of {function}");
        ws.send(1, message.as_bytes());
        assert_eq!(ws.text(), message);
    }
    // ...and many in flight at once, both ways.
    for i in 0..300 {
        ws.send(1, format!("burst {i}").as_bytes());
    }
    for i in 0..300 {
        assert_eq!(ws.text(), format!("burst {i}"));
    }
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(2, &binary);
    let (opcode, echoed) = ws.recv().expect("the binary echo");
    assert_eq!(opcode, 2);
    assert_eq!(echoed, binary);
    // The client closes: the function answers the close and the connection ends.
    ws.send(8, &1000u16.to_be_bytes());
    let (opcode, payload) = ws.recv().expect("the close answer");
    assert_eq!(opcode, 8);
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    ws.expect_end();
    wait_in_flight(
        p,
        function,
        0,
        "the slot to be released after the client's close",
    );

    // The function closes.
    let mut ws = Ws::connect(p.router, path);
    ws.send(1, b"hello");
    assert_eq!(ws.text(), "hello");
    ws.send(1, b"bye");
    let (opcode, payload) = ws.recv().expect("the function's close");
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    ws.send(8, &1000u16.to_be_bytes());
    ws.expect_end();
    wait_in_flight(
        p,
        function,
        0,
        "the slot to be released after the function's close",
    );
}

#[test]
fn websocket_echo_through_the_router_for_python_and_nodejs() {
    let p = Platform::start();
    p.python_env(&[]);
    p.ok(&["env", "create", "--name", "nodejs", "--image", "nodejs"]);
    let py = function_path("examples/websocket/echo.py");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "ws-py",
        "--env",
        "python",
        "--code",
        &py,
        "--entrypoint",
        "echo.main",
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "ws-py",
        "--function",
        "ws-py",
        "--url",
        "/ws-py",
    ]);
    let js = function_path("examples/nodejs/websocket.js");
    p.ok(&[
        "fn", "create", "--name", "ws-js", "--env", "nodejs", "--code", &js,
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "ws-js",
        "--function",
        "ws-js",
        "--url",
        "/ws-js",
    ]);

    echo_through(&p, "ws-py", "/ws-py");
    echo_through(&p, "ws-js", "/ws-js");

    // Fission's shape: the Node.js handler sees this instance's open sockets.
    let mut ws = Ws::connect(p.router, "/ws-js");
    ws.send(1, b"clients");
    assert_eq!(ws.text(), "1");
    ws.send(8, &1000u16.to_be_bytes());
    let _ = ws.recv();
    ws.expect_end();

    // A plain request to a WebSocket function is the function's own answer.
    let r = http(p.router, "GET", "/ws-py", &[], b"").unwrap();
    assert_eq!(r.status, 426, "{}", r.text());
}

#[test]
fn server_sent_events_stream_through_the_router() {
    let p = Platform::start();
    p.ok(&["env", "create", "--name", "nodejs", "--image", "nodejs"]);
    let code = function_path("testdata/nodejs/sse.js");
    // One instance serving both the stream and the request that releases it.
    p.ok(&[
        "fn",
        "create",
        "--name",
        "sse",
        "--env",
        "nodejs",
        "--code",
        &code,
        "--concurrency",
        "1",
        "--requestsperpod",
        "2",
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "sse",
        "--function",
        "sse",
        "--url",
        "/events",
        "--method",
        "GET",
        "--method",
        "POST",
    ]);
    let mut stream = TcpStream::connect_timeout(&p.router, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    // "first" arrives while the function still holds the response open: it is released only
    // after the test has seen it, so a buffering router would time out here.
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data: first") {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .expect("the first event before the end");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("data: second"));
    let r = http(p.router, "POST", "/events", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    while !String::from_utf8_lossy(&got).contains("0\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the last chunk");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("data: second"));
}

/// Every invocation of `function` as (id, phase, attempts, deadLetter).
fn invocations(p: &Platform, function: &str) -> Vec<(String, String, u64, String)> {
    let r = p.api("GET", &format!("/v1/functions/{function}/invocations"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i["status"]["phase"]
                    .as_str()
                    .unwrap_or("pending")
                    .to_string(),
                i["status"]["attempts"].as_u64().unwrap_or(0),
                i["status"]["deadLetter"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn async_invocations_survive_a_kill_and_failures_are_dead_lettered() {
    let nats = crate::triggers::Nats::start();
    nats.watch("kappa.dead");
    let url = nats.url();
    let mut p = Platform::start_with(&["--no-example", "--nats-url", &url]);
    p.python_env(&[]);
    let code = function_path("testdata/python/async_work.py");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "work",
        "--env",
        "python",
        "--code",
        &code,
        "--entrypoint",
        "async_work.main",
        "--retries",
        "1",
        "--dead-letter-topic",
        "kappa.dead",
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "work",
        "--function",
        "work",
        "--url",
        "/work",
        "--method",
        "POST",
    ]);

    // 1,000 accepted invocations, one in ten failing; the platform is killed with SIGKILL
    // half-way (while the worker is running the first half) and started again.
    const TOTAL: usize = 1000;
    let mut accepted: Vec<(String, bool)> = Vec::new();
    let mut i = 0;
    let mut killed = false;
    while accepted.len() < TOTAL {
        if accepted.len() == TOTAL / 2 && !killed {
            killed = true;
            p.kill9();
            p.restart();
        }
        let fails = i % 10 == 0;
        let body = if fails {
            format!("fail-{i}")
        } else {
            format!("ok-{i}")
        };
        i += 1;
        let Ok(r) = http(
            p.router,
            "POST",
            "/work",
            &[("X-Kappa-Invocation-Type", "async")],
            body.as_bytes(),
        ) else {
            continue;
        };
        if r.status != 202 {
            continue;
        }
        let id = r.json()["invocationId"].as_str().unwrap().to_string();
        assert_eq!(r.header("x-kappa-invocation-id"), Some(id.as_str()));
        accepted.push((id, fails));
    }

    // Every accepted id ends in a recorded outcome.
    let finished = eventually_blocking(
        Duration::from_secs(300),
        "every invocation to finish",
        || {
            let all = invocations(&p, "work");
            let done = all
                .iter()
                .filter(|(_, phase, _, _)| phase == "succeeded" || phase == "deadlettered")
                .count();
            (done >= TOTAL).then_some(all)
        },
    );
    let by_id: std::collections::HashMap<_, _> = finished
        .iter()
        .map(|(id, phase, attempts, dead)| (id.clone(), (phase.clone(), *attempts, dead.clone())))
        .collect();
    let mut failed = HashSet::new();
    for (id, fails) in &accepted {
        let (phase, attempts, dead) = by_id
            .get(id)
            .unwrap_or_else(|| panic!("accepted invocation {id} was lost"));
        if *fails {
            assert_eq!(phase, "deadlettered", "{id}");
            assert!(*attempts >= 2, "{id}: retried once ({attempts} attempts)");
            assert_eq!(dead, "nats-jetstream:kappa.dead", "{id}");
            failed.insert(id.clone());
        } else {
            assert_eq!(phase, "succeeded", "{id}");
        }
    }

    // Failures after the retry are on the dead-letter topic (at least once each).
    eventually_blocking(
        Duration::from_secs(60),
        "the dead letters on the topic",
        || {
            let seen: HashSet<String> = nats
                .got("kappa.dead")
                .iter()
                .filter_map(|(headers, _)| headers.get("x-kappa-invocation-id").cloned())
                .collect();
            failed.is_subset(&seen).then_some(())
        },
    );
    let sample = nats.got("kappa.dead");
    let (headers, body) = &sample[0];
    assert!(String::from_utf8_lossy(body).starts_with("fail-"));
    assert_eq!(
        headers.get("x-kappa-status").map(String::as_str),
        Some("500")
    );

    // The CLI shows them.
    let (id, _) = accepted.iter().find(|(_, fails)| *fails).unwrap();
    let shown = p.ok(&["fn", "invocation", id]);
    assert!(shown.contains("phase: deadlettered"), "{shown}");
    assert!(shown.contains("failing on purpose"), "{shown}");
    let listed = p.ok(&["fn", "invocations", "work", "--limit", "5"]);
    assert_eq!(listed.lines().count(), 6, "{listed}");
}
