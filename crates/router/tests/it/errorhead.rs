//! hyper's own answers (request heads it cannot parse) carry the JSON error body like every
//! other router answer; a function's own answers pass through unchanged.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Harness;

/// Reads one response (head and a `content-length` body) from `stream`.
async fn read_response(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let deadline = Duration::from_secs(10);
    loop {
        if let Some(split) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffered[..split]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buffered.len() >= split + 4 + len {
                let body = buffered[split + 4..split + 4 + len].to_vec();
                buffered.drain(..split + 4 + len);
                let status = head[9..12].parse().unwrap();
                return (status, head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(deadline, stream.read(&mut chunk))
            .await
            .expect("the router answers")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(buffered)
        );
        buffered.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `requests` on one connection and reads `answers` responses.
async fn exchange(
    addr: std::net::SocketAddr,
    requests: &[u8],
    answers: usize,
) -> Vec<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(requests).await.unwrap();
    let mut buffered = Vec::new();
    let mut out = Vec::new();
    for _ in 0..answers {
        out.push(read_response(&mut stream, &mut buffered).await);
    }
    out
}

fn json_error(head: &str, body: &[u8]) -> Value {
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {head}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_heads_get_the_json_error_body() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.prefix = Some("/p".into()))
        .await;
    h.wait_function("hello").await;

    // A malformed request line.
    let answers = exchange(
        h.public,
        b"GET /p/x HTTP/1.1 extra junk\r\nhost: t\r\n\r\n",
        1,
    )
    .await;
    let (status, head, body) = &answers[0];
    assert_eq!(*status, 400, "{head}");
    assert_eq!(json_error(head, body)["error"]["code"], "bad_request");

    // A malformed header line.
    let answers = exchange(
        h.public,
        b"GET /p/x HTTP/1.1\r\nhost: t\r\nno colon here\r\n\r\n",
        1,
    )
    .await;
    let (status, head, body) = &answers[0];
    assert_eq!(*status, 400, "{head}");
    assert_eq!(json_error(head, body)["error"]["code"], "bad_request");

    // Keep-alive requests before a malformed one get their normal answers, including a
    // function's own 400 with an empty body, unchanged; then the malformed one gets the JSON.
    let mut requests = Vec::new();
    requests.extend_from_slice(b"GET /p/one HTTP/1.1\r\nhost: t\r\n\r\n");
    requests.extend_from_slice(
        b"GET /p/two HTTP/1.1\r\nhost: t\r\nx-test-status: 400\r\nx-test-empty: 1\r\n\r\n",
    );
    requests.extend_from_slice(b"GET /p/three HTTP/1.1\r\nhost: t\r\n\r\n");
    requests.extend_from_slice(b"BROKEN\r\n\r\n");
    let answers = exchange(h.public, &requests, 4).await;
    let (status, head, body) = &answers[0];
    assert_eq!(*status, 200, "{head}");
    let echo: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(echo["path"], "/one");
    let (status, head, body) = &answers[1];
    assert_eq!(*status, 400, "{head}");
    assert!(
        body.is_empty(),
        "the function's empty 400 passes through: {head}"
    );
    assert!(!head.contains("content-type"), "{head}");
    assert!(head.contains("x-kappa-invocation-id"), "{head}");
    let (status, head, body) = &answers[2];
    assert_eq!(*status, 200, "{head}");
    let echo: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(echo["path"], "/three");
    let (status, head, body) = &answers[3];
    assert_eq!(*status, 400, "{head}");
    assert_eq!(json_error(head, body)["error"]["code"], "bad_request");

    // The function's own empty 400 alone, sent one request at a time.
    let answers = exchange(
        h.public,
        b"GET /p/alone HTTP/1.1\r\nhost: t\r\nx-test-status: 400\r\nx-test-empty: 1\r\n\r\n",
        1,
    )
    .await;
    let (status, head, body) = &answers[0];
    assert_eq!(*status, 400, "{head}");
    assert!(body.is_empty() && !head.contains("content-type"), "{head}");
}
