use futures::StreamExt;
use kappa_logs::{LogConfig, LogStore, LogStream, ReadOptions};

use crate::support::{next, store};

#[tokio::test]
async fn follow_starts_with_the_tail_then_sees_new_lines_and_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let a = logs.instance("env", "a");
    a.assign("ns", "f");
    for i in 1..=3 {
        a.write(LogStream::Stdout, &format!("old {i}"));
    }
    let mut stream = Box::pin(logs.follow(
        "ns",
        "f",
        ReadOptions {
            tail: Some(2),
            ..Default::default()
        },
    ));
    assert_eq!(next(&mut stream).await.message, "old 2");
    assert_eq!(next(&mut stream).await.message, "old 3");

    a.write(LogStream::Stderr, "new from a");
    let line = next(&mut stream).await;
    assert_eq!(
        (line.message.as_str(), line.stream, line.instance.as_str()),
        ("new from a", LogStream::Stderr, "a")
    );

    // A new instance: its pool start-up lines arrive with it.
    let b = logs.instance("env", "b");
    b.write(LogStream::Stdout, "b booting");
    b.assign("ns", "f");
    b.write(LogStream::Platform, "specialized for function f");
    assert_eq!(next(&mut stream).await.message, "b booting");
    let line = next(&mut stream).await;
    assert_eq!(
        (line.message.as_str(), line.instance.as_str()),
        ("specialized for function f", "b")
    );

    // Another function's lines are not followed.
    let other = logs.instance("env", "c");
    other.assign("ns", "other");
    other.write(LogStream::Stdout, "not for f");
    a.write(LogStream::Stdout, "last");
    assert_eq!(next(&mut stream).await.message, "last");
}

#[tokio::test]
async fn follow_reads_across_rotation_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = LogStore::open(
        tmp.path(),
        LogConfig {
            max_file_bytes: 1024,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let inst = logs.instance("env", "r");
    inst.assign("ns", "f");
    inst.write(LogStream::Stdout, "first");
    let mut stream = Box::pin(logs.follow("ns", "f", ReadOptions::default()));
    assert_eq!(next(&mut stream).await.message, "first");
    // About 1.3 files' worth: one rotation between two polls at most.
    for i in 0..30 {
        inst.write(LogStream::Stdout, &format!("line {i:02}"));
    }
    for i in 0..30 {
        assert_eq!(next(&mut stream).await.message, format!("line {i:02}"));
    }
}

#[tokio::test]
async fn follow_of_a_function_that_does_not_exist_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let mut stream = Box::pin(logs.follow("ns", "later", ReadOptions::default()));
    let inst = logs.instance("env", "x");
    inst.assign("ns", "later");
    inst.write(LogStream::Stdout, "appeared");
    assert_eq!(next(&mut stream).await.message, "appeared");
}

#[tokio::test]
async fn follow_with_an_invalid_name_never_yields() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let mut stream = Box::pin(logs.follow("..", "f", ReadOptions::default()));
    let polled = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await;
    assert!(polled.is_err(), "the stream yielded or ended");
}
