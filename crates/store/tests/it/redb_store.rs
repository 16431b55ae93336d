//! `RedbStore` through the conformance suite, then what only a file store promises: data and
//! versions survive close and reopen, and every acknowledged write survives `kill -9`.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kappa_store::{EventType, Precondition, RedbStore, Store, StoreError, StoreOptions};
use kappa_types::Kind;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use kappa_test_support::store::{Subject, function};

fn make(options: StoreOptions) -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open_with_options(dir.path().join("kappa.redb"), options).expect("open");
    Subject::new(Arc::new(store), Some(dir))
}

kappa_test_support::store_conformance_tests!(make);

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn data_and_versions_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kappa.redb");
    let (a, b) = {
        let store = RedbStore::open(&path).expect("open");
        let a = store
            .put(function("a", None, json!({"x": 1})), Precondition::None)
            .await
            .expect("put");
        store
            .put(function("gone", None, json!({})), Precondition::None)
            .await
            .expect("put");
        store
            .delete(Kind::Function, "default", "gone", Precondition::None)
            .await
            .expect("delete");
        let b = store
            .put_status(
                Kind::Function,
                "default",
                "a",
                json!({"ready": true}),
                Precondition::None,
            )
            .await
            .expect("status");
        (a, b)
    };
    assert_eq!(b.resource_version, 4);

    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.path(), path);
    assert_eq!(store.current_version().await.expect("version"), 4);
    assert_eq!(
        store
            .get(Kind::Function, "default", "a")
            .await
            .expect("get"),
        Some(b.clone())
    );
    assert_eq!(
        store
            .get(Kind::Function, "default", "gone")
            .await
            .expect("get"),
        None
    );
    let list = store.list(Kind::Function, None).await.expect("list");
    assert_eq!((list.items, list.resource_version), (vec![b.clone()], 4));

    // The event log survived too.
    let mut replay = store.watch(&[], Some(0));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(PATIENCE, replay.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        seen.push((
            event.event_type,
            event.object.name,
            event.object.resource_version,
        ));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, "a".to_string(), 1),
            (EventType::Added, "gone".to_string(), 2),
            (EventType::Deleted, "gone".to_string(), 3),
            (EventType::Modified, "a".to_string(), 4),
        ]
    );

    // Versions continue; identity and generation are kept across the reopen.
    let c = store
        .put(
            function("a", None, json!({"x": 2})),
            Precondition::ResourceVersion(4),
        )
        .await
        .expect("put");
    assert_eq!(c.resource_version, 5);
    assert_eq!(c.value["metadata"]["uid"], a.value["metadata"]["uid"]);
    assert_eq!(c.value["metadata"]["generation"], 2);
    assert_eq!(c.value["status"], json!({"ready": true}));
}

#[tokio::test]
async fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data").join("nested").join("kappa.redb");
    let store = RedbStore::open(&path).expect("open");
    store
        .put(function("a", None, json!({})), Precondition::None)
        .await
        .expect("put");
    assert!(path.is_file());
}

#[tokio::test]
async fn a_file_open_elsewhere_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kappa.redb");
    let _first = RedbStore::open(&path).expect("open");
    match RedbStore::open(&path) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kappa.redb");
    std::fs::write(
        &path,
        b"this is not a redb file, but it is long enough to look like one maybe",
    )
    .expect("write");
    match RedbStore::open(&path) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// Environment variable that turns [`crash_child_writer`] into the writer child of
/// [`acknowledged_writes_survive_kill_9`]; it holds the database path.
const CHILD_DB: &str = "KAPPA_STORE_CRASH_CHILD_DB";
/// How many writes the parent waits for before it kills the child.
const KILL_AFTER: usize = 40;

/// Not a test on its own: run by [`acknowledged_writes_survive_kill_9`] in a child process (this
/// same test binary), where it writes objects one after the other, printing `ACK <name>` after
/// each write returns, until it is killed. Without the variable it returns at once.
#[tokio::test]
async fn crash_child_writer() {
    use std::io::Write;

    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let store = RedbStore::open(Path::new(&path)).expect("child: open");
    // Bounded, in case the parent never kills us; a closed stdout ends us earlier.
    for i in 0..100_000 {
        let name = format!("f{i}");
        let value = function(&name, None, json!({"i": i, "pad": "x".repeat(200)}));
        store
            .put(value, Precondition::MustNotExist)
            .await
            .expect("child: put");
        let mut stdout = std::io::stdout();
        if writeln!(stdout, "ACK {name}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kappa.redb");
    // A first run leaves existing data, so the child also has to reopen a used file.
    {
        let store = RedbStore::open(&path).expect("open");
        store
            .put(function("seed", None, json!({})), Precondition::None)
            .await
            .expect("put");
    }

    let exe = std::env::current_exe().expect("test binary path");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "redb_store::crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acknowledged = Vec::new();
    let mut killed = false;
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the child writes in time")
            .expect("read child stdout");
        let Some(line) = line else { break };
        // The harness prints `test ... ` without a newline before the first line of output.
        if let Some((_, name)) = line.split_once("ACK ") {
            acknowledged.push(name.to_string());
        }
        if !killed && acknowledged.len() >= KILL_AFTER {
            // SIGKILL, in the middle of its writes; lines already in the pipe are still read.
            child.start_kill().expect("kill -9 the child");
            killed = true;
        }
    }
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("child exits")
        .expect("wait for child");
    assert!(
        killed,
        "the child ended before {KILL_AFTER} writes: {status}"
    );
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    let expected: Vec<String> = (0..acknowledged.len()).map(|i| format!("f{i}")).collect();
    assert_eq!(
        acknowledged, expected,
        "every acknowledgement was read, in order"
    );

    let store = RedbStore::open(&path).expect("the file opens after kill -9");
    for name in &acknowledged {
        let object = store
            .get(Kind::Function, "default", name)
            .await
            .expect("get");
        assert!(object.is_some(), "acknowledged write {name} is missing");
    }
    assert!(
        store
            .get(Kind::Function, "default", "seed")
            .await
            .expect("get")
            .is_some()
    );
    let list = store.list(Kind::Function, None).await.expect("list");
    let version = store.current_version().await.expect("version");
    // Each object is one write, plus the seed: no acknowledged write lost, none invented.
    assert!(
        list.items.len() > acknowledged.len(),
        "{} objects",
        list.items.len()
    );
    assert_eq!(version, u64::try_from(list.items.len()).expect("small"));
    assert_eq!(list.resource_version, version);
    assert!(list.items.iter().all(|o| o.resource_version <= version));
    // The log is whole and the store keeps working from where it was.
    let mut replay = store.watch(&[], Some(0));
    for expected in 1..=version {
        let event = tokio::time::timeout(PATIENCE, replay.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        assert_eq!(event.object.resource_version, expected);
    }
    let next = store
        .put(function("after", None, json!({})), Precondition::None)
        .await
        .expect("put");
    assert_eq!(next.resource_version, version + 1);
}
