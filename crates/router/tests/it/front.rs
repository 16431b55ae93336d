//! The lean server path (`src/front.rs`): the same raw client conversations against a router
//! with it and one without it (every connection hyper's), compared byte for byte (dates and
//! invocation ids aside), including connections that hyper takes over mid-way.

use std::sync::Arc;
use std::time::Duration;

use kappa_router::RouterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lean::{Raw, answer, raw_function, target};
use crate::support::*;

/// What the scripted instance answers, by request target.
fn script(head: &str, body: &[u8]) -> (Vec<u8>, bool) {
    match target(head) {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/trailers" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n2\r\nhi\r\n0\r\nx-sum: 2\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/none" => (b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec(), false),
        "/dated" => (
            b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 1970 00:00:00 GMT\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
            false,
        ),
        "/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true),
        _ => (
            answer(&format!(
                "{} {}",
                target(head),
                String::from_utf8_lossy(body)
            )),
            false,
        ),
    }
}

/// A router (with or without the lean server path) and its scripted instance.
async fn router(lean: bool) -> (Harness, Raw) {
    let h = Harness::start_with(RouterConfig {
        lean_server: lean,
        ..RouterConfig::default()
    })
    .await;
    let raw = raw_function(&h, "f", Arc::new(script)).await;
    (h, raw)
}

/// Writes each of `parts` on one connection (pausing between them so the router reads them
/// separately; an empty part ends the client's side), then reads until the router closes it.
async fn converse(addr: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // Not a wait for anything: it only makes the parts arrive in separate reads.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        if part.is_empty() {
            // The client's end of stream (it still reads).
            stream.shutdown().await.unwrap();
        } else {
            stream.write_all(part).await.unwrap();
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the router answers and closes the connection; it sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    normalize(&String::from_utf8_lossy(&answer))
}

/// `text` with its `date` values and 32-digit hex ids (invocation ids) replaced.
fn normalize(text: &str) -> String {
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| match line.strip_prefix("date: ") {
            Some(_) => "date: <date>".to_string(),
            None => line.to_string(),
        })
        .collect();
    let text = lines.join("\r\n");
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            .count();
        if run == 32 {
            out.push_str("<id>");
            i += run;
        } else {
            let n = run.max(1);
            out.push_str(&text[i..i + n]);
            i += n;
        }
    }
    out
}

/// The conversations compared: each a client's writes on one connection.
fn conversations() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let long_uri = format!(
        "GET /x/{} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        "u".repeat(9 * 1024)
    );
    vec![
        (
            "keep-alive requests, then close",
            vec![
                b"GET /x/a?q=1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"POST /x/b HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello".to_vec(),
                b"HEAD /x/c HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/chunked HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/trailers HTTP/1.1\r\nhost: t\r\nte: trailers\r\n\r\n".to_vec(),
                b"GET /x/none HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/dated HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/eof HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/d HTTP/1.1\r\nHost: t\r\nConnection: Close\r\n\r\n".to_vec(),
            ],
        ),
        (
            "router errors",
            vec![
                b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"PUT /x/a HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n".to_vec(),
                long_uri.into_bytes(),
            ],
        ),
        (
            "a head split across reads",
            vec![
                b"GET /x/sp".to_vec(),
                b"lit HTTP/1.1\r\nhost:".to_vec(),
                b" t\r\ncontent-length: 3\r\n\r\nab".to_vec(),
                b"c".to_vec(),
                b"GET /x/after HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".to_vec(),
            ],
        ),
        (
            "a pipelined lean pair, then a chunked request hyper takes (the raw instance reads no chunked bodies: it goes nowhere), then lean ones again",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\nPOST /x/2 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi".to_vec(),
                b"POST /nowhere HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /x/4 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/5 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".to_vec(),
            ],
        ),
        (
            "expect and upgrade requests after a lean one",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"POST /x/2 HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n".to_vec(),
                b"ok".to_vec(),
                b"GET /x/3 HTTP/1.1\r\nhost: t\r\nupgrade: something\r\n\r\n".to_vec(),
                b"GET /x/4 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".to_vec(),
            ],
        ),
        (
            "an HTTP/1.0 request after a lean one",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/2 HTTP/1.0\r\nhost: t\r\n\r\n".to_vec(),
            ],
        ),
        (
            "a malformed head after a lean one",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/2 HTTP/1.1\r\nbad header line\r\n\r\n".to_vec(),
            ],
        ),
        (
            "a body over the router's limit",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                format!(
                    "POST /x/2 HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
                    100 * 1024 * 1024
                )
                .into_bytes(),
            ],
        ),
        (
            "a body that arrives after its head",
            vec![
                b"POST /x/late HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\n".to_vec(),
                b"late".to_vec(),
                b"GET /x/next HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".to_vec(),
            ],
        ),
        (
            "a router error for a request whose body has not arrived",
            vec![
                b"POST /nowhere HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\n".to_vec(),
                Vec::new(),
            ],
        ),
        (
            "end of stream in the middle of a head",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"GET /x/2 HTTP/1.1\r\nho".to_vec(),
                Vec::new(),
            ],
        ),
        (
            "end of stream in the middle of a body",
            vec![
                b"GET /x/1 HTTP/1.1\r\nhost: t\r\n\r\n".to_vec(),
                b"POST /x/2 HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nab".to_vec(),
                Vec::new(),
            ],
        ),
        (
            "hop-by-hop, Connection-listed, spoofed and forwarded headers",
            vec![
                b"GET /x/h HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: t\r\nX-Kappa-Function-Name: spoof\r\nKeep-Alive: 5\r\nConnection: X-Drop, keep-alive, close\r\nX-Drop: 1\r\nX-Fission-Full-Url: /spoof\r\nX-Forwarded-Proto: https\r\nProxy-Authorization: a\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n".to_vec(),
            ],
        ),
        (
            "a client that closes after its request is still answered",
            vec![b"GET /x/last HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".to_vec()],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_path_answers_as_hyper_does() {
    let (lean, lean_raw) = router(true).await;
    let (hyper, hyper_raw) = router(false).await;
    for (what, parts) in conversations() {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let with_lean = converse(lean.public, &parts).await;
        let with_hyper = converse(hyper.public, &parts).await;
        assert_eq!(with_lean, with_hyper, "{what}");
        assert!(with_lean.starts_with("HTTP/1."), "{what}: {with_lean}");
    }
    // The instances received the same requests.
    let received = |raw: &Raw| {
        raw.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(head, body)| (normalize(head), body.clone()))
            .collect::<Vec<_>>()
    };
    let (from_lean, from_hyper) = (received(&lean_raw), received(&hyper_raw));
    assert!(from_lean.len() > 15, "{from_lean:?}");
    assert_eq!(from_lean, from_hyper);
    // The headers the router rewrites: each invocation header once with the router's value,
    // the client's X-Forwarded-For joined in its place, hop-by-hop and listed names gone.
    let (head, _) = from_lean
        .iter()
        .find(|(head, _)| head.starts_with("GET /h "))
        .unwrap_or_else(|| panic!("the rewritten request in {from_lean:?}"));
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(
        lines[1..4],
        [
            "x-forwarded-for: 10.0.0.1, 127.0.0.1",
            "host: t",
            "x-forwarded-proto: http"
        ],
        "{head}"
    );
    for name in [
        "x-kappa-function-name",
        "x-kappa-function-namespace",
        "x-fission-function-name",
        "x-fission-function-namespace",
        "x-kappa-invocation-id",
        "x-kappa-full-url",
        "x-fission-full-url",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ] {
        let found: Vec<&&str> = lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .collect();
        assert_eq!(found.len(), 1, "{name} in {head}");
    }
    assert!(head.contains("x-kappa-function-name: f\r\n"), "{head}");
    assert!(head.contains("x-fission-full-url: /x/h\r\n"), "{head}");
    for gone in ["keep-alive", "connection", "x-drop", "proxy-authorization"] {
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with(&format!("{gone}:"))),
            "{gone} in {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_answers_carry_what_the_tests_of_hyper_answers_check() {
    let (h, _raw) = router(true).await;
    let answer = converse(
        h.public,
        &[b"GET /x/a HTTP/1.1\r\nhost: t\r\n\r\nGET /nowhere HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"],
    )
    .await;
    assert!(
        answer.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nx-kappa-invocation-id: <id>\r\ndate: <date>\r\n\r\n/a \
             HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
        ),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\"invocationId\":\"<id>\"}}"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_request_frees_its_slot() {
    for lean in [true, false] {
        let h = Harness::start_with(RouterConfig {
            lean_server: lean,
            ..RouterConfig::default()
        })
        .await;
        h.put_one_slot_function("busy", 60).await;
        let mut stream = tokio::net::TcpStream::connect(h.public).await.unwrap();
        stream
            .write_all(b"GET /busy HTTP/1.1\r\nhost: t\r\nx-test-gate: 1\r\n\r\n")
            .await
            .unwrap();
        h.wait_only_slot_held("the request to hold the only slot")
            .await;
        drop(stream);
        let endpoints = h
            .index
            .entry(&kappa_core::FunctionId::new("default", "busy"));
        kappa_test_support::eventually_async(
            Duration::from_secs(15),
            "the slot to be given back",
            || async { endpoints.in_flight() == 0 },
        )
        .await;
        let (status, _, _) = h.get("/busy").await;
        assert_eq!(status, http::StatusCode::OK, "lean: {lean}");
    }
}
