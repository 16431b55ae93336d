//! Connections opened in advance while an instance waits in a warm pool (`Backend::prepare`):
//! the specialization goes over one, the other is handed over for the first request, and a
//! connection the runtime closed meanwhile is never used.

use std::io::{Read, Write};
use std::time::Duration;

use kappa_core::{Backend, Limits};
use kappa_local::{CgroupMode, SandboxMode};

use crate::support::{Harness, get, is_root, repo_root, request, spec};

/// `GET /` written by hand on a plain blocking stream; the whole response.
fn get_over(mut stream: std::net::TcpStream) -> String {
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

async fn prepared_instance_serves_its_first_request_on_the_handed_connection(
    test: &str,
    sandbox: SandboxMode,
) {
    let h = Harness::with(test, sandbox, CgroupMode::None).await;
    let instance = h.create("prepared", Limits::default()).await;
    h.backend.prepare(&instance).await;
    let sha = h
        .put_file(&repo_root().join("functions/examples/hello/hello.py"))
        .await;
    // After specializing, the connection opened in advance reaches the function.
    h.backend
        .specialize(&instance, &request(&sha, "hello.main", Some("hello.py")))
        .await
        .expect("specialize");
    let connection = h
        .backend
        .take_connection(&instance.id)
        .expect("a connection opened in advance");
    let response = tokio::task::spawn_blocking(move || get_over(connection))
        .await
        .expect("join");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("Hello, world!\n"), "{response}");
    // Taken once.
    assert!(h.backend.take_connection(&instance.id).is_none());
    // New connections work as before.
    assert_eq!(
        get(&instance.addr, "/").await.expect("GET /"),
        (200, "Hello, world!\n".to_owned())
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn prepared_unsandboxed_instance_uses_its_connections() {
    prepared_instance_serves_its_first_request_on_the_handed_connection(
        "prepared_unsandboxed_instance_uses_its_connections",
        SandboxMode::None,
    )
    .await;
}

#[tokio::test]
async fn prepared_sandboxed_instance_uses_its_connections() {
    const TEST: &str = "prepared_sandboxed_instance_uses_its_connections";
    assert!(
        is_root(),
        "{TEST}: the sandbox needs the platform to run as root"
    );
    prepared_instance_serves_its_first_request_on_the_handed_connection(
        TEST,
        SandboxMode::Namespaces,
    )
    .await;
}

/// The runtime closes idle connections after `KAPPA_KEEPALIVE_TIMEOUT`: an instance that waited
/// longer in its pool specializes over a new connection, and hands over none that is closed.
#[tokio::test]
async fn connections_the_runtime_closed_are_not_used() {
    const TEST: &str = "connections_the_runtime_closed_are_not_used";
    let h = Harness::with(TEST, SandboxMode::None, CgroupMode::None).await;
    let mut spec = spec("closed", Limits::default());
    spec.env
        .insert("KAPPA_KEEPALIVE_TIMEOUT".to_owned(), "1".to_owned());
    let instance = h.backend.create(spec).await.expect("instance starts");
    h.backend.prepare(&instance).await;
    let kappa_core::InstanceAddr::Tcp(addr) = &instance.addr else {
        panic!("an unsandboxed instance has a host port: {}", instance.addr);
    };
    let port = addr.port();
    // The two connections are established, then the runtime closes them (nothing
    // established is left on its port).
    assert_eq!(established_sockets(port), 2);
    kappa_test_support::eventually(
        Duration::from_secs(60),
        "the runtime to close its idle connections",
        || established_sockets(port) == 0,
    )
    .await;
    let sha = h
        .put_file(&repo_root().join("functions/examples/hello/hello.py"))
        .await;
    h.backend
        .specialize(&instance, &request(&sha, "hello.main", Some("hello.py")))
        .await
        .expect("specialize over a new connection");
    assert!(h.backend.take_connection(&instance.id).is_none());
    assert_eq!(
        get(&instance.addr, "/").await.expect("GET /"),
        (200, "Hello, world!\n".to_owned())
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

/// Established TCP connections whose server side is the instance's port (host network).
fn established_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&port) && cols[3] == "01"
        })
        .count()
}
