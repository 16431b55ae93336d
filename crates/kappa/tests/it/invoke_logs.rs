//! `kappa fn test` through a fake invoker, and `kappa fn logs` from a filled LogStore.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use kappa_logs::LogStream;
use kappa_test_support::eventually_blocking;

use crate::support::Platform;

fn with_function(p: &Platform) {
    p.python_env();
    let code = p.file("hello.py", "def main():\n    return 'hi'\n");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
}

#[test]
fn fn_test_prints_the_body() {
    let p = Platform::with_invoker();
    with_function(&p);
    let run = p.ok(&["fn", "test", "--name", "hello"]);
    assert_eq!(run.stdout, "default/hello GET /\nx-test: -\n");
    let run = p.ok(&[
        "fn",
        "test",
        "hello",
        "--method",
        "post",
        "-H",
        "X-Test: yes",
        "-b",
        "ping",
        "--subpath",
        "/a/b",
        "-q",
        "k=v",
        "--query",
        "x=1 2",
        "--timeout",
        "5s",
    ]);
    assert_eq!(
        run.stdout,
        "default/hello POST /a/b?k=v&x=1+2\nx-test: yes\nping"
    );
    assert_eq!(run.stderr, "");
}

#[test]
fn fn_test_failures_go_to_stderr_and_exit_1() {
    let p = Platform::with_invoker();
    with_function(&p);
    let run = p.kappa(&["fn", "test", "--name", "hello", "--subpath", "fail"]);
    run.code(1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "boom\nerror: function 'hello' answered 500 Internal Server Error (invocation inv-123)\n"
    );

    let run = p.kappa(&["fn", "test", "--name", "hello", "--subpath", "/timeout"]);
    run.code(1);
    assert_eq!(
        run.stderr,
        "error: invoking function 'hello': function hello did not answer within 60s\n  invocation: inv-123\n"
    );

    // The API's own refusals (no such function) come out the same way.
    let run = p.kappa(&["fn", "test", "--name", "ghost"]);
    run.code(1);
    assert!(
        run.stderr.starts_with("error: invoking function 'ghost': "),
        "{}",
        run.stderr
    );

    p.kappa(&["fn", "test", "--name", "hello", "-H", "no-colon"])
        .code(2);
    p.kappa(&["fn", "test", "--name", "hello", "--timeout", "soon"])
        .code(2);
    p.kappa(&[
        "fn",
        "test",
        "--name",
        "hello",
        "-H",
        "Authorization: Bearer x",
    ])
    .code(2);
}

#[test]
fn fn_test_without_an_invoker_is_refused() {
    let p = Platform::start();
    with_function(&p);
    let run = p.kappa(&["fn", "test", "--name", "hello"]);
    run.code(1);
    assert!(
        run.stderr.starts_with("error: invoking function 'hello': "),
        "{}",
        run.stderr
    );
}

/// Checks `line` is `<RFC 3339 timestamp> [instance] stream: message`.
fn assert_log_line(line: &str, instance: &str, stream: &str, message: &str) {
    let (timestamp, rest) = line.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{line}"
    );
    assert!(timestamp.ends_with('Z'), "{line}");
    assert_eq!(rest, format!("[{instance}] {stream}: {message}"));
}

#[test]
fn fn_logs_prints_lines() {
    let p = Platform::start();
    with_function(&p);
    let a = p.logs.instance("python", "inst-a");
    a.assign("default", "hello");
    a.write(LogStream::Stdout, "hello world");
    let b = p.logs.instance("python", "inst-b");
    b.assign("default", "hello");
    b.write(LogStream::Stderr, "oops");
    a.write(LogStream::Platform, "specialized for function hello");

    let out = p.ok(&["fn", "logs", "hello"]).stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_log_line(lines[0], "inst-a", "stdout", "hello world");
    assert_log_line(lines[1], "inst-b", "stderr", "oops");
    assert_log_line(
        lines[2],
        "inst-a",
        "platform",
        "specialized for function hello",
    );

    let out = p
        .ok(&["fn", "logs", "--name", "hello", "--tail", "1"])
        .stdout;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_log_line(
        out.trim_end(),
        "inst-a",
        "platform",
        "specialized for function hello",
    );

    let out = p.ok(&["fn", "log", "hello", "--instance", "inst-b"]).stdout;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_log_line(out.trim_end(), "inst-b", "stderr", "oops");

    let run = p.kappa(&["fn", "logs", "ghost"]);
    run.code(1);
    assert!(
        run.stderr
            .starts_with("error: reading the logs of function 'ghost': "),
        "{}",
        run.stderr
    );
}

#[test]
fn fn_logs_follow_prints_new_lines() {
    let p = Platform::start();
    with_function(&p);
    let a = p.logs.instance("python", "inst-a");
    a.assign("default", "hello");
    a.write(LogStream::Stdout, "first");

    let mut child = p
        .command(&["fn", "logs", "hello", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_log_line(&first, "inst-a", "stdout", "first");

    // A line from an instance that appears later is followed too.
    let b = p.logs.instance("python", "inst-b");
    b.assign("default", "hello");
    b.write(LogStream::Stdout, "second");
    let second = eventually_blocking(Duration::from_secs(30), "the followed line", || {
        rx.try_recv().ok()
    });
    assert_log_line(&second, "inst-b", "stdout", "second");
    child.kill().unwrap();
    child.wait().unwrap();
}
