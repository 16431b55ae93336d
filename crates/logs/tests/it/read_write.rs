use std::time::{Duration, SystemTime};

use kappa_logs::{LogConfig, LogError, LogStore, LogStream, ReadOptions};

use crate::support::{files, messages, store};

#[tokio::test]
async fn pool_lines_follow_the_instance_to_its_function() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("python", "py-1");
    assert_eq!(inst.id(), "py-1");
    inst.write(LogStream::Stdout, "runtime listening on 127.0.0.1:4000");
    assert_eq!(inst.path(), tmp.path().join("_pool/python/py-1.log"));
    let pool = logs
        .read_pool("python", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(messages(&pool), ["runtime listening on 127.0.0.1:4000"]);

    inst.assign("default", "hello");
    inst.write(LogStream::Platform, "specialized for function hello");
    inst.clone().write(
        LogStream::Stderr,
        "Traceback (most recent call last):\n  boom\n",
    );

    assert_eq!(
        files(&tmp.path().join("_pool/python")),
        Vec::<String>::new()
    );
    assert_eq!(files(&tmp.path().join("default/hello")), ["py-1.log"]);

    let lines = logs
        .read("default", "hello", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        messages(&lines),
        [
            "runtime listening on 127.0.0.1:4000",
            "specialized for function hello",
            "Traceback (most recent call last):",
            "  boom"
        ]
    );
    let streams: Vec<LogStream> = lines.iter().map(|l| l.stream).collect();
    assert_eq!(
        streams,
        [
            LogStream::Stdout,
            LogStream::Platform,
            LogStream::Stderr,
            LogStream::Stderr
        ]
    );
    assert!(lines.iter().all(|l| l.instance == "py-1"));

    // The file format is the documented one.
    let raw = std::fs::read_to_string(tmp.path().join("default/hello/py-1.log")).unwrap();
    let first = raw.lines().next().unwrap();
    let (ts, rest) = first.split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert_eq!(ts.len(), "2025-01-02T03:04:05.678901Z".len());
    assert_eq!(rest, "stdout runtime listening on 127.0.0.1:4000");
}

#[tokio::test]
async fn assignment_onto_an_existing_file_keeps_writing_to_the_function_s_file() {
    // The instance's file at the function already exists (an earlier handle of the same
    // instance was assigned there): assigning appends the pool file to it and removes the pool
    // file, so the next line must go to the function's file, not to the removed pool file the
    // writer had open.
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let earlier = logs.instance("python", "py-1");
    earlier.write(LogStream::Platform, "first at the function");
    earlier.assign("default", "hello");
    let inst = logs.instance("python", "py-1");
    inst.write(LogStream::Stdout, "in the pool");
    inst.assign("default", "hello");
    assert_eq!(
        files(&tmp.path().join("_pool/python")),
        Vec::<String>::new()
    );
    inst.write(LogStream::Platform, "after the assignment");
    assert_eq!(files(&tmp.path().join("default/hello")), ["py-1.log"]);
    let lines = logs
        .read("default", "hello", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        messages(&lines),
        [
            "first at the function",
            "in the pool",
            "after the assignment"
        ]
    );
}

#[tokio::test]
async fn instances_merge_in_write_order_and_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let a = logs.instance("python", "a");
    let b = logs.instance("python", "b");
    a.assign("ns", "f");
    b.assign("ns", "f");
    for i in 0..20 {
        let (inst, name) = if i % 3 == 0 { (&b, "b") } else { (&a, "a") };
        inst.write(LogStream::Stdout, &format!("{name}{i}"));
    }
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    let expected: Vec<String> = (0..20)
        .map(|i| format!("{}{i}", if i % 3 == 0 { "b" } else { "a" }))
        .collect();
    assert_eq!(messages(&lines), expected);
    assert!(lines.windows(2).all(|w| w[0].timestamp < w[1].timestamp));

    let only_b = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                instance: Some("b".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(only_b.iter().all(|l| l.instance == "b"));
    assert_eq!(only_b.len(), 7);

    let tail = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                tail: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(messages(&tail), ["a17", "b18", "a19"]);

    let since = lines[15].timestamp.clone();
    let recent = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(messages(&recent), ["b15", "a16", "a17", "b18", "a19"]);

    let relative = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                since: Some("1h".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(relative.len(), 20);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let err = logs
        .read("../etc", "f", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::InvalidName {
                field: "namespace",
                ..
            }
        ),
        "{err:?}"
    );
    let err = logs
        .read("ns", "a/b", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::InvalidName {
                field: "function",
                ..
            }
        ),
        "{err:?}"
    );
    let err = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                instance: Some("..".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::InvalidName {
                field: "instance",
                ..
            }
        ),
        "{err:?}"
    );
    let err = logs
        .read(
            "ns",
            "f",
            &ReadOptions {
                since: Some("yesterday".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::InvalidSince { .. }), "{err:?}");
    assert!(err.to_string().contains("yesterday"), "{err}");
    // A function without logs simply has none.
    assert!(
        logs.read("ns", "nothing", &ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn rotation_bounds_each_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 2048;
    let logs = LogStore::open(
        tmp.path(),
        LogConfig {
            max_file_bytes: max,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let inst = logs.instance("env", "r1");
    inst.assign("ns", "f");
    for i in 0..1000 {
        inst.write(
            LogStream::Stdout,
            &format!("line {i:04} {}", "x".repeat(20)),
        );
    }
    let dir = tmp.path().join("ns/f");
    assert_eq!(files(&dir), ["r1.log", "r1.log.1"]);
    let longest_line = 100;
    for f in files(&dir) {
        let size = std::fs::metadata(dir.join(&f)).unwrap().len();
        assert!(size <= max + longest_line, "{f} has {size} bytes");
    }
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    // The newest lines survive, contiguous and in order.
    let numbers: Vec<usize> = lines
        .iter()
        .map(|l| l.message[5..9].parse().unwrap())
        .collect();
    assert_eq!(*numbers.last().unwrap(), 999);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(
        numbers.len() > 20 && numbers.len() < 200,
        "{}",
        numbers.len()
    );
}

#[tokio::test]
async fn assignment_prunes_to_the_newest_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = LogStore::open(
        tmp.path(),
        LogConfig {
            max_instances_per_function: 3,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let dir = tmp.path().join("ns/f");
    let base = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..6u64 {
        let inst = logs.instance("env", &format!("i{i}"));
        inst.write(LogStream::Stdout, "start");
        inst.assign("ns", "f");
        inst.write(LogStream::Stdout, "rotated half");
        // Distinct modification times in creation order (file times are coarse).
        let mtime = base + Duration::from_secs(i * 10);
        std::fs::File::options()
            .append(true)
            .open(dir.join(format!("i{i}.log")))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    assert_eq!(files(&dir), ["i3.log", "i4.log", "i5.log"]);
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    let mut instances: Vec<&str> = lines.iter().map(|l| l.instance.as_str()).collect();
    instances.dedup();
    assert_eq!(instances, ["i3", "i4", "i5"]);
}

#[tokio::test]
async fn concurrent_writers_never_interleave_within_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("env", "c1");
    inst.assign("ns", "f");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let inst = inst.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    inst.write(
                        LogStream::Stdout,
                        &format!("t{t}-{i:03}-{}", "y".repeat(100)),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    assert_eq!(lines.len(), 800);
    assert!(lines.iter().all(|l| l.message.len() == 2 + 1 + 3 + 1 + 100));
    for t in 0..4 {
        let own: Vec<&str> = lines
            .iter()
            .map(|l| l.message.as_str())
            .filter(|m| m.starts_with(&format!("t{t}-")))
            .collect();
        assert_eq!(own.len(), 200);
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "thread {t} out of order"
        );
    }
}

#[tokio::test]
async fn delete_function_removes_its_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("env", "d1");
    inst.assign("ns", "gone");
    inst.write(LogStream::Stdout, "hello");
    let other = logs.instance("env", "d2");
    other.assign("ns", "kept");
    other.write(LogStream::Stdout, "still here");

    logs.delete_function("ns", "gone").await.unwrap();
    logs.delete_function("ns", "gone").await.unwrap();
    assert!(!tmp.path().join("ns/gone").exists());
    assert!(
        logs.read("ns", "gone", &ReadOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        logs.read("ns", "kept", &ReadOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // A writer of a deleted function keeps working (its lines are simply not kept).
    inst.write(LogStream::Stdout, "after delete");
}

#[tokio::test]
async fn long_messages_are_split() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = store(tmp.path());
    let inst = logs.instance("env", "l1");
    inst.assign("ns", "f");
    inst.write(LogStream::Stdout, &"z".repeat(40_000));
    inst.write(LogStream::Stdout, "");
    let lines = logs.read("ns", "f", &ReadOptions::default()).await.unwrap();
    let lens: Vec<usize> = lines.iter().map(|l| l.message.len()).collect();
    assert_eq!(lens, [16_384, 16_384, 40_000 - 2 * 16_384, 0]);
}

#[tokio::test]
async fn unsafe_names_stay_under_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    let logs = store(&root);
    let inst = logs.instance("../../env", "../id");
    inst.write(LogStream::Stdout, "x");
    inst.assign("..", "../f");
    inst.write(LogStream::Stdout, "y");
    assert!(inst.path().starts_with(&root), "{}", inst.path().display());
    assert_eq!(files(tmp.path()), ["logs"]);
}
