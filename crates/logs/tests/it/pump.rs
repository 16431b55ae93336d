use std::process::Stdio;

use kappa_logs::{LogStream, ReadOptions};

use crate::support::{messages, store};

#[tokio::test]
async fn pump_splits_long_lines_and_keeps_the_last_partial_line() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("env", "p1");
    inst.assign("ns", "f");
    let mut input = Vec::new();
    input.extend_from_slice(b"short\r\n");
    input.extend_from_slice(&vec![b'x'; 40_000]);
    input.push(b'\n');
    input.extend_from_slice(&vec![b'e'; 16_384]);
    input.push(b'\n');
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"no newline at eof");
    inst.spawn_pump(std::io::Cursor::new(input), LogStream::Stderr)
        .await
        .unwrap();
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    let lens: Vec<usize> = lines.iter().map(|l| l.message.len()).collect();
    assert_eq!(
        lens,
        [5, 16_384, 16_384, 40_000 - 2 * 16_384, 16_384, 0, 17]
    );
    assert_eq!(lines[0].message, "short");
    assert_eq!(lines[6].message, "no newline at eof");
    assert!(lines.iter().all(|l| l.stream == LogStream::Stderr));
}

#[tokio::test]
async fn pumps_a_real_process() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("binary", "proc1");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("echo starting; echo 'bad thing' >&2; printf 'multi\\nline\\n'")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = inst.spawn_pump(child.stdout.take().unwrap(), LogStream::Stdout);
    let err = inst.spawn_pump(child.stderr.take().unwrap(), LogStream::Stderr);
    let status = child.wait().await.unwrap();
    out.await.unwrap();
    err.await.unwrap();
    inst.write(LogStream::Platform, &format!("exited with {status}"));
    inst.assign("ns", "proc");

    let lines = logs
        .read("ns", "proc", &ReadOptions::default())
        .await
        .unwrap();
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(stdout, ["starting", "multi", "line"]);
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stderr)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(stderr, ["bad thing"]);
    assert_eq!(
        messages(&lines).last().copied(),
        Some("exited with exit status: 0")
    );
}
