//! The lean upstream path (`src/lean.rs`): what instances receive and how their answers are
//! framed, against scripted raw instances; and the requests that take hyper's client on the
//! same client connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kappa_core::{Endpoint, FunctionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::*;

/// What a scripted instance answers to one request (its head as text, its body): the bytes to
/// write, and whether to close the connection after them.
pub(crate) type Script = dyn Fn(&str, &[u8]) -> (Vec<u8>, bool) + Send + Sync;

/// Every request a raw instance received: (head, body).
pub(crate) type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A raw instance: reads each request (head, then a `content-length` body) and answers it
/// with what its script says.
pub(crate) struct Raw {
    pub(crate) requests: Received,
    pub(crate) connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a raw instance for function `name` (with a route at `/x` for it) and puts it in the
/// endpoint index.
pub(crate) async fn raw_function(h: &Harness, name: &str, script: Arc<Script>) -> Raw {
    h.put_function(name, 60).await;
    h.put_trigger("t", name, |s| {
        s.prefix = Some("/x".into());
        s.methods = ["GET", "HEAD", "POST"].map(String::from).to_vec();
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let task = {
        let (requests, connections) = (Arc::clone(&requests), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let requests = Arc::clone(&requests);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[end..end + len].to_vec();
                        buf.drain(..end + len);
                        let (answer, close) = script(&head, &body);
                        requests.lock().unwrap().push((head, body));
                        if stream.write_all(&answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        })
    };
    let id = FunctionId::new("default", name);
    h.index
        .insert(&id, Arc::new(Endpoint::new("raw", addr, 1, 8)));
    Raw {
        requests,
        connections,
        task,
    }
}

/// The request target of a head.
pub(crate) fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap()
}

/// `content-length` answer with `body`.
pub(crate) fn answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_receive_the_rewritten_head_and_the_body() {
    let h = Harness::start().await;
    let raw = raw_function(&h, "f", Arc::new(|_, _| (answer("ok"), false))).await;
    let (status, headers, body) = h
        .request(
            Request::post("/x/a/b?q=1")
                .header("host", "t")
                .header("content-type", "text/plain")
                .header("x-kappa-function-name", "spoofed")
                .header("connection", "x-secret")
                .header("x-secret", "1")
                .header("x-forwarded-for", "10.0.0.1")
                .body(full("hello"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    assert_invocation_id(&headers);
    let id = headers["x-kappa-invocation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let requests = raw.requests.lock().unwrap().clone();
    let (head, body) = &requests[0];
    assert!(head.starts_with("POST /a/b?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(body, b"hello");
    for line in [
        "host: t",
        "content-type: text/plain",
        "content-length: 5",
        "x-kappa-function-name: f",
        "x-fission-function-name: f",
        "x-kappa-function-namespace: default",
        "x-kappa-full-url: /x/a/b?q=1",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-host: t",
        "x-forwarded-proto: http",
    ] {
        assert!(
            head.contains(&format!("\r\n{line}\r\n")),
            "{line} in {head}"
        );
    }
    assert!(head.contains(&format!("\r\nx-kappa-invocation-id: {id}\r\n")));
    assert!(!head.contains("spoofed"), "{head}");
    assert!(!head.contains("x-secret"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_eof_delimited_and_empty_answers_reach_the_client() {
    let h = Harness::start().await;
    let raw = raw_function(
        &h,
        "f",
        Arc::new(|head, _| match target(head) {
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;a=b\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
                    .to_vec(),
                false,
            ),
            // No length: the body ends where the connection does.
            "/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true),
            "/none" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
            "/early" => (
                [
                    &b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"[..],
                    &answer("after hints"),
                ]
                .concat(),
                false,
            ),
            _ => (answer("plain"), false),
        }),
    )
    .await;
    let mut client = Client::connect(h.public).await;
    for (path, want) in [
        ("/x/chunked", "hello world"),
        ("/x/plain", "plain"),
        ("/x/early", "after hints"),
        ("/x/none", ""),
        ("/x/chunked", "hello world"),
        ("/x/eof", "until the end"),
        ("/x/plain", "plain"),
    ] {
        let (status, headers, body) = client.get(path).await;
        let expected = if path == "/x/none" {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{path}");
        assert_eq!(String::from_utf8_lossy(&body), want, "{path}");
        if path == "/x/plain" {
            assert_eq!(headers["content-length"], "5");
        }
    }
    // One connection up to the close-delimited answer, a second one after it.
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
    assert_eq!(raw.requests.lock().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_close_their_connection_are_not_reused() {
    let h = Harness::start().await;
    let raw = raw_function(
        &h,
        "f",
        Arc::new(|head, _| match target(head) {
            "/close" => (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                true,
            ),
            // HTTP/1.0 without keep-alive: closed after the answer.
            "/old" => (
                b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold".to_vec(),
                true,
            ),
            _ => (answer("plain"), false),
        }),
    )
    .await;
    let mut client = Client::connect(h.public).await;
    for (path, want) in [
        ("/x/close", "ok"),
        ("/x/close", "ok"),
        ("/x/old", "old"),
        ("/x/plain", "plain"),
        ("/x/plain", "plain"),
    ] {
        let (status, headers, body) = client.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
        assert_eq!(String::from_utf8_lossy(&body), want, "{path}");
        assert!(!headers.contains_key("connection"), "{path}: {headers:?}");
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_cut_short_answers() {
    let h = Harness::start().await;
    let raw = raw_function(
        &h,
        "f",
        Arc::new(|head, _| match target(head) {
            "/invalid" => (
                b"HTTP/1.1 200 OK\r\ncontent-length: twelve\r\n\r\n".to_vec(),
                true,
            ),
            "/garbage" => (b"\x00\x01 not http\r\n\r\n".to_vec(), true),
            "/short" => (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf".to_vec(),
                true,
            ),
            "/nothing" => (Vec::new(), true),
            _ => (answer("plain"), false),
        }),
    )
    .await;
    for path in ["/x/invalid", "/x/garbage"] {
        let (status, headers, body) = h.get(path).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}");
        let (code, message) = error_of(&headers, &body);
        assert_eq!(code, "instance_failed");
        assert!(
            message.starts_with("instance raw of function default/f sent an invalid response: "),
            "{message}"
        );
    }
    let (status, headers, body) = h.get("/x/nothing").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "instance_failed");
    assert_eq!(
        message,
        "connection to instance raw closed before a response"
    );
    // A body cut short: the client sees its connection end before the body's end.
    let stream = tokio::net::TcpStream::connect(h.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/x/short")
        .header("host", "t")
        .body(empty())
        .unwrap();
    if let Ok(response) = sender.send_request(request).await {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err());
    }
    // The instance still serves, and its slot was given back every time.
    let (status, _, body) = h.get("/x/plain").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"plain");
    assert_eq!(raw.requests.lock().unwrap().len(), 5);
    let id = FunctionId::new("default", "f");
    let endpoints = h.index.entry(&id);
    kappa_test_support::eventually_async(Duration::from_secs(5), "slots released", || async {
        endpoints.in_flight() == 0
    })
    .await;
}

/// Writes `requests` on one raw connection at once and reads until the router closes it.
async fn raw_pipeline(addr: std::net::SocketAddr, requests: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(requests).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the router answers and closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_http10_clients() {
    let h = Harness::start().await;
    let _raw = raw_function(
        &h,
        "f",
        Arc::new(|head, body| {
            (
                answer(&format!(
                    "{} {}",
                    target(head),
                    String::from_utf8_lossy(body)
                )),
                false,
            )
        }),
    )
    .await;
    let answers = raw_pipeline(
        h.public,
        b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n\
          POST /x/2 HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nbody\
          GET /x/3 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = answers
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|a| a.split("\r\n\r\n").nth(1).unwrap())
        .collect();
    assert_eq!(bodies, ["/1 ", "/2 body", "/3 "], "{answers}");
    assert!(answers.to_ascii_lowercase().contains("connection: close"));

    let answer = raw_pipeline(h.public, b"GET /x/old HTTP/1.0\r\nhost: t\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.contains(" 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n/old "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_lean_path_does_not_take_share_the_client_connection() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| {
        s.prefix = Some("/p".into());
        s.methods = ["GET", "POST", "PUT"].map(String::from).to_vec();
    })
    .await;
    let stream = tokio::net::TcpStream::connect(h.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let requests = [
        // Lean: no body.
        Request::get("/p/1")
            .header("host", "t")
            .body(empty())
            .unwrap(),
        // hyper's client: a chunked body (no length).
        Request::post("/p/2")
            .header("host", "t")
            .body(stream_body(3 * 64 * 1024, None))
            .unwrap(),
        // hyper's client: `Expect: 100-continue`.
        Request::put("/p/3")
            .header("host", "t")
            .header("expect", "100-continue")
            .header("content-length", "3")
            .body(full("abc"))
            .unwrap(),
        // hyper's client: a body past the lean path's size.
        Request::post("/p/4")
            .header("host", "t")
            .header("content-length", (100 * 1024).to_string())
            .body(full(vec![b'x'; 100 * 1024]))
            .unwrap(),
        // Lean again: a small body.
        Request::post("/p/5")
            .header("host", "t")
            .header("content-length", "2")
            .body(full("hi"))
            .unwrap(),
    ];
    let lengths = [0, 3 * 64 * 1024, 3, 100 * 1024, 2];
    for (request, length) in requests.into_iter().zip(lengths) {
        let path = request.uri().path().to_owned();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let echoed = echo(&body);
        assert_eq!(echoed["path"], path.trim_start_matches("/p"));
        assert_eq!(echoed["bodyLen"], length, "{path}");
    }
    // Both paths keep their upstream connections: one each.
    let up = h.provisioner.upstream("hello-g1-1");
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}
