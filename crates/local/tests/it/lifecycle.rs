//! Create → healthy → specialize → invoke → delete, and the ways each step can fail.

use std::collections::BTreeMap;
use std::time::Duration;

use kappa_core::{Backend, BackendError, Limits};

use crate::support::{
    Harness, exit_of, get, python_testdata, repo_root, request, spec, state_instances,
};
use kappa_test_support::{eventually, eventually_async};

/// What the shared conformance suite (`conformance.rs`) checks of every backend (listing,
/// deleting twice) is not repeated here: this is the local backend's own part of the story.
#[tokio::test]
async fn create_specialize_invoke_delete() {
    let h = Harness::new("create_specialize_invoke_delete").await;
    let mut events = h.backend.subscribe();
    let mut spec = spec("life", Limits::default());
    spec.env = BTreeMap::from([("GREETING".to_owned(), "hi there".to_owned())]);
    let id = spec.id.clone();
    let instance = h.backend.create(spec).await.expect("instance starts");
    assert_eq!(instance.id, id);
    // Sandboxed: reached only through the sandbox's connector, on the runtime's own port.
    let (connector, port) = instance.addr.sandbox().expect("a sandboxed address");
    assert!(
        connector.starts_with(h.data_dir().join("sockets")),
        "{connector:?}"
    );
    assert_eq!(port, 8888);
    assert_eq!(instance.labels["environment"], "python");
    let info = h.backend.info(&id).expect("info");
    assert!(info.dir.join("userfunc").is_dir() && info.dir.join("work").is_dir());
    let recorded = state_instances(&h.data_dir());
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["id"], id.as_str());
    assert_eq!(recorded[0]["port"], port);

    // The generic instance answers /healthz (create waited for it).
    assert_eq!(get(&instance.addr, "/healthz").await.unwrap().0, 200);

    h.specialize_dir(&instance, &python_testdata(), "envvar.main")
        .await;
    let (status, body) = get(&instance.addr, "/?name=GREETING").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hi there"));
    // The platform's own environment never reaches the instance; the platform's variables do.
    assert_eq!(get(&instance.addr, "/?name=USER").await.unwrap().0, 404);
    assert_eq!(get(&instance.addr, "/?name=HOME").await.unwrap().1, "/tmp");
    let (_, instance_var) = get(&instance.addr, "/?name=KAPPA_INSTANCE_ID")
        .await
        .unwrap();
    assert_eq!(instance_var, id);
    let (_, port_var) = get(&instance.addr, "/?name=PORT").await.unwrap();
    assert_eq!(port_var, port.to_string());

    // A second specialization is refused by the runtime, and says so.
    let sha = h.put_dir(&python_testdata()).await;
    let err = h
        .backend
        .specialize(&instance, &request(&sha, "envvar.main", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Specialize {
                status: Some(400..=499),
                ..
            }
        ),
        "{err:?}"
    );

    h.backend
        .delete(&id, Duration::from_secs(5))
        .await
        .expect("delete");
    let reason = exit_of(&mut events, &id).await;
    eprintln!("deleted instance ended: {reason}");
    assert!(
        reason.code == Some(0) || reason.signal == Some(15),
        "{reason:?}"
    );
    assert!(!reason.oom_killed);
    assert!(!info.dir.exists(), "instance directory removed");
    assert!(state_instances(&h.data_dir()).is_empty());

    // The instance's log holds its runtime's output and the platform's lines, under the
    // function it was specialized for.
    use kappa_logs::LogStream::{Platform, Stdout};
    let wanted = [
        (
            Platform,
            "specialized for function default/fn (generation 1)",
        ),
        (Stdout, "kappa python runtime listening"),
        (Platform, "instance stopped"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The output pumps write asynchronously: poll (bounded) until every line is there.
        let lines = h
            .logs
            .read("default", "fn", &kappa_logs::ReadOptions::default())
            .await
            .expect("read logs");
        let has = |(stream, text): &(kappa_logs::LogStream, &str)| {
            lines
                .iter()
                .any(|l| l.instance == id && l.stream == *stream && l.message.contains(text))
        };
        if wanted.iter().all(has) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing log lines: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn single_file_archive_is_placed_under_its_name() {
    let h = Harness::new("single_file_archive_is_placed_under_its_name").await;
    let instance = h.create("file", Limits::default()).await;
    let sha = h
        .put_file(&repo_root().join("functions/examples/hello/hello.py"))
        .await;
    h.backend
        .specialize(&instance, &request(&sha, "hello.main", Some("hello.py")))
        .await
        .expect("specialize");
    let info = h.backend.info(&instance.id).expect("info");
    assert!(info.dir.join("userfunc/hello.py").is_file());
    assert_eq!(
        get(&instance.addr, "/").await.unwrap(),
        (200, "Hello, world!\n".to_owned())
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn specialize_error_carries_message_and_traceback() {
    let h = Harness::new("specialize_error_carries_message_and_traceback").await;
    let instance = h.create("imperr", Limits::default()).await;
    let sha = h.put_dir(&python_testdata()).await;
    let err = h
        .backend
        .specialize(&instance, &request(&sha, "import_error.main", None))
        .await
        .unwrap_err();
    let BackendError::Specialize {
        status,
        message,
        detail,
    } = err
    else {
        panic!("expected a specialize error, got {err:?}");
    };
    eprintln!("status {status:?}\nmessage: {message}\ndetail: {detail:?}");
    assert!(status.is_some_and(|s| s >= 400), "{status:?}");
    assert!(message.contains("does_not_exist_module"), "{message}");
    let detail = detail.expect("a traceback");
    assert!(
        detail.contains("Traceback") && detail.contains("import_error.py"),
        "{detail}"
    );
    // The failure is in the function's logs too: the platform's line, the runtime's own report
    // on its stderr (written while the instance's log moves to the function), and the lines
    // the instance had before it was assigned to the function (its start).
    let lines = eventually_async(
        Duration::from_secs(10),
        "the runtime's report of the failure in the function's logs",
        || async {
            let lines = h
                .logs
                .read("default", "fn", &kappa_logs::ReadOptions::default())
                .await
                .expect("read logs");
            lines
                .iter()
                .any(|l| {
                    l.stream == kappa_logs::LogStream::Stderr
                        && l.message.contains("specialize failed")
                })
                .then_some(lines)
        },
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.stream == kappa_logs::LogStream::Platform
                && l.message.contains("does_not_exist_module")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == kappa_logs::LogStream::Platform
                && l.message
                    .contains(&format!("instance {} started", instance.id))),
        "{lines:#?}"
    );

    // An archive that is not in the store is a code error.
    let missing = "0".repeat(64);
    let err = h
        .backend
        .specialize(&instance, &request(&missing, "main.main", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Code(m) if m.contains(&missing)),
        "{err:?}"
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn crash_gives_an_exit_event_with_its_code() {
    let h = Harness::new("crash_gives_an_exit_event_with_its_code").await;
    let mut events = h.backend.subscribe();
    let instance = h.create("crash", Limits::default()).await;
    h.specialize_dir(&instance, &python_testdata(), "crash.main")
        .await;
    // The request dies with the process.
    let _ = get(&instance.addr, "/?how=exit&code=3").await;
    let reason = exit_of(&mut events, &instance.id).await;
    assert_eq!(reason.code, Some(3), "{reason:?}");
    assert_eq!(reason.signal, None);
    assert!(!reason.oom_killed);
    eventually(
        Duration::from_secs(5),
        "the instance to leave the list",
        || h.backend.info(&instance.id).is_none(),
    )
    .await;

    // A process killed by a signal is reported as that signal, sandboxed or not.
    let killed = h.create("kill", Limits::default()).await;
    h.specialize_dir(&killed, &python_testdata(), "crash.main")
        .await;
    let _ = get(&killed.addr, "/?how=kill").await;
    let reason = exit_of(&mut events, &killed.id).await;
    assert_eq!((reason.code, reason.signal), (None, Some(9)), "{reason:?}");
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_runtime_is_named() {
    let h = Harness::new("unknown_runtime_is_named").await;
    let mut spec = spec("unknown", Limits::default());
    spec.image = "ghcr.io/acme/ruby-env:1".into();
    let id = spec.id.clone();
    let err = h.backend.create(spec).await.unwrap_err();
    let BackendError::Start(message) = err else {
        panic!("expected a start error, got {err:?}");
    };
    assert!(message.contains("ghcr.io/acme/ruby-env:1"), "{message}");
    assert!(message.contains("python"), "{message}");
    assert!(!h.data_dir().join("instances").join(id).exists());
}

#[tokio::test]
async fn early_exit_reports_status_and_stderr() {
    let h = Harness::new("early_exit_reports_status_and_stderr").await;
    let mut spec = spec("early", Limits::default());
    spec.command = Some("echo 'cannot load the frobnicator' >&2; exit 7".into());
    let id = spec.id.clone();
    let err = h.backend.create(spec).await.unwrap_err();
    let BackendError::Start(message) = err else {
        panic!("expected a start error, got {err:?}");
    };
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(message.contains("cannot load the frobnicator"), "{message}");
    assert!(!h.data_dir().join("instances").join(&id).exists());
    assert!(h.backend.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn explicit_command_runs_a_runtime_server() {
    let h = Harness::new("explicit_command_runs_a_runtime_server").await;
    // A server kept under the host's /tmp (where the sandbox has a /tmp of its own): the path
    // the command names is still visible inside.
    let outside = tempfile::tempdir().expect("tempdir");
    let server = outside.path().join("server.py");
    std::fs::copy(
        repo_root().join("functions/runtimes/python/server.py"),
        &server,
    )
    .expect("copy the python runtime server");
    assert!(server.starts_with("/tmp"), "{}", server.display());
    let mut spec = spec("cmd", Limits::default());
    spec.image = "my-own-runtime".into();
    spec.command = Some(format!(
        // Opening its stderr by name works too (nginx does), though the platform made the pipe.
        "echo starting > /dev/stderr && exec /usr/bin/python3 {} --port \"$PORT\"",
        server.display()
    ));
    let instance = h
        .backend
        .create(spec)
        .await
        .expect("command runtime starts");
    h.specialize_dir(
        &instance,
        &repo_root().join("functions/examples/hello"),
        "hello.main",
    )
    .await;
    assert_eq!(
        get(&instance.addr, "/").await.unwrap(),
        (200, "Hello, world!\n".to_owned())
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_stops_everything_and_refuses_new_instances() {
    let h = Harness::new("shutdown_stops_everything_and_refuses_new_instances").await;
    let mut events = h.backend.subscribe();
    let a = h.create("shut", Limits::default()).await;
    let b = h.create("shut", Limits::default()).await;
    let pids: Vec<u32> = [&a, &b]
        .iter()
        .map(|i| h.backend.info(&i.id).expect("info").pid)
        .collect();
    h.backend.shutdown(Duration::from_secs(2)).await;
    let mut ended = vec![
        match events.recv().await.expect("event") {
            kappa_core::InstanceEvent::Exited { id, .. } => id,
        },
        match events.recv().await.expect("event") {
            kappa_core::InstanceEvent::Exited { id, .. } => id,
        },
    ];
    ended.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ended, expected);
    for pid in pids {
        assert!(
            !crate::support::alive(i32::try_from(pid).unwrap()),
            "pid {pid} still alive"
        );
    }
    assert!(h.backend.list().await.unwrap().is_empty());
    let err = h
        .backend
        .create(spec("late", Limits::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Start(_)), "{err:?}");
}

#[tokio::test]
async fn taken_port_is_retried_with_another() {
    // Unsandboxed: instances share the host's loopback. (A sandboxed runtime has a network
    // namespace of its own, where its port is never taken.)
    let h = Harness::with(
        "taken_port_is_retried_with_another",
        kappa_local::SandboxMode::None,
        kappa_local::CgroupMode::Auto,
    )
    .await;
    let server = repo_root()
        .join("functions/runtimes/python/server.py")
        .canonicalize()
        .expect("python runtime server");
    let mut spec = spec("port", Limits::default());
    // The first attempt fails the way a server does when its port is taken; the work
    // directory survives between attempts.
    spec.command = Some(format!(
        "if [ ! -e tried ]; then touch tried; echo 'OSError: [Errno 98] Address already in use' >&2; exit 1; fi; \
         exec /usr/bin/python3 {}",
        server.display()
    ));
    let instance = h.backend.create(spec).await.expect("second attempt starts");
    assert_eq!(get(&instance.addr, "/healthz").await.unwrap().0, 200);
    let lines = h
        .logs
        .read_pool("python", &kappa_logs::ReadOptions::default())
        .await
        .expect("pool log");
    assert!(
        lines
            .iter()
            .any(|l| l.message.contains("was taken; retrying with another port")),
        "{lines:#?}"
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn silent_runtime_times_out_at_start() {
    let h = Harness::configured("silent_runtime_times_out_at_start", |config| {
        config.start_timeout = Duration::from_millis(300);
    })
    .await;
    let mut spec = spec("silent", Limits::default());
    spec.command = Some("echo 'warming up' >&2; exec sleep 60".into());
    let id = spec.id.clone();
    let err = h.backend.create(spec).await.unwrap_err();
    let BackendError::Start(message) = err else {
        panic!("expected a start error, got {err:?}");
    };
    assert!(message.contains("did not answer GET /healthz"), "{message}");
    assert!(message.contains("warming up"), "{message}");
    assert!(
        crate::support::processes_of(&id).is_empty(),
        "the silent runtime was not killed"
    );
}

#[tokio::test]
async fn slow_specialization_times_out() {
    let h = Harness::new("slow_specialization_times_out").await;
    let code = tempfile::tempdir().unwrap();
    std::fs::write(
        code.path().join("slow_import.py"),
        "import time\ntime.sleep(60)\n\ndef main():\n    return 'late'\n",
    )
    .unwrap();
    let instance = h.create("slowspec", Limits::default()).await;
    let sha = h.put_dir(code.path()).await;
    let mut req = request(&sha, "slow_import.main", None);
    req.timeout = Duration::from_millis(500);
    let err = h.backend.specialize(&instance, &req).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Timeout(m) if m.contains(&instance.id)),
        "{err:?}"
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn abandoned_create_leaves_nothing_behind() {
    let h = Harness::new("abandoned_create_leaves_nothing_behind").await;
    let mut slow = spec("abandon", Limits::default());
    slow.command = Some("exec sleep 60".into());
    let id = slow.id.clone();
    // The caller gives up while the runtime is still starting.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), h.backend.create(slow)).await;
    assert!(
        gave_up.is_err(),
        "a runtime that never answers cannot start"
    );
    eventually(
        Duration::from_secs(10),
        "the abandoned start to be cleaned up",
        || {
            crate::support::processes_of(&id).is_empty()
                && !h.data_dir().join("instances").join(&id).exists()
        },
    )
    .await;
    // The id is free again once the cleanup finished (it stays reserved until then).
    let instance = eventually_async(
        Duration::from_secs(10),
        "the id to be free again",
        || async {
            let mut again = spec("abandon", Limits::default());
            again.id = id.clone();
            match h.backend.create(again).await {
                Ok(instance) => Some(instance),
                Err(BackendError::Start(m)) if m.contains("already in use") => None,
                Err(e) => panic!("the id cannot be reused: {e}"),
            }
        },
    )
    .await;
    assert_eq!(instance.id, id);
    h.backend.shutdown(Duration::from_secs(1)).await;
}
