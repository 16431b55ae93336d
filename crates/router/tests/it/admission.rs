//! Warm admission, cold starts, the wait queue and provisioner errors.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use kappa_core::{FunctionId, ProvisionError};
use kappa_router::RouterConfig;
use kappa_test_support::eventually_async;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_requests_make_no_provision_calls() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    let mut client = Client::connect(h.public).await;
    let (status, _, _) = client.get("/t").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.provisioner.calls(),
        1,
        "the first request is a cold start"
    );
    for _ in 0..20 {
        let (status, headers, _) = client.get("/t").await;
        assert_eq!(status, StatusCode::OK);
        assert_invocation_id(&headers);
    }
    assert_eq!(
        h.provisioner.calls(),
        1,
        "warm requests never call the provisioner"
    );
    let up = h.provisioner.upstream("hello-g1-1");
    assert_eq!(up.requests.load(Ordering::SeqCst), 21);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one kept-alive upstream connection"
    );
    let endpoints = h.index.endpoints(&FunctionId::new("default", "hello"));
    eventually_async(Duration::from_secs(15), "slots released", || async {
        endpoints[0].in_flight() == 0
    })
    .await;

    let metrics = h.router.metrics_text();
    assert!(
        metrics.contains(
            r#"kappa_router_requests_total{namespace="default",function="hello",code="200"} 21"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"kappa_router_cold_starts_total{namespace="default",function="hello"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_queued_requests_are_served() {
    let h = Harness::start_with(RouterConfig {
        queue_limit: 1,
        ..RouterConfig::default()
    })
    .await;
    h.put_one_slot_function("busy", 60).await;

    let public = h.public;
    let holder = tokio::spawn(async move {
        send(
            public,
            Request::get("/busy")
                .header("host", "t")
                .header("x-test-gate", "1")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    h.wait_only_slot_held("the first request to hold the only slot")
        .await;
    let queued = tokio::spawn(async move {
        send(
            public,
            Request::get("/busy")
                .header("host", "t")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    let function = h.index.get(&FunctionId::new("default", "busy")).unwrap();
    eventually_async(
        Duration::from_secs(15),
        "the second request to queue",
        || async { function.waiting() == 1 },
    )
    .await;

    let (status, headers, body) = h.get("/busy").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "no_capacity");
    assert!(message.contains("default/busy"), "{message}");

    h.provisioner.upstream("busy-g1-1").gate.add_permits(1);
    assert_eq!(holder.await.unwrap().0, StatusCode::OK);
    assert_eq!(queued.await.unwrap().0, StatusCode::OK);
    assert!(
        h.router
            .metrics_text()
            .contains("kappa_router_queue_rejections_total 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_wait_is_bounded_by_the_function_timeout() {
    let h = Harness::start().await;
    h.put_one_slot_function("busy", 1).await;
    let public = h.public;
    // Its response head arrives at once, but its body (and so its slot) is held.
    let holder = tokio::spawn(async move {
        send(
            public,
            Request::get("/busy")
                .header("host", "t")
                .header("x-test-hold-body", "1")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    h.wait_only_slot_held("the first request to hold the only slot")
        .await;
    let (status, headers, body) = h.get("/busy").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "no_capacity");
    assert!(message.contains("within 1 s"), "{message}");
    h.provisioner.upstream("busy-g1-1").gate.add_permits(1);
    let (status, _, body) = holder.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioner_errors_carry_the_real_cause() {
    let h = Harness::start().await;
    h.provisioner.plan(
        "broken",
        Plan {
            error: Some(ProvisionError::Specialize {
                message: "ModuleNotFoundError: No module named 'numpy'".into(),
                detail: Some(
                    "Traceback (most recent call last):\n  File \"main.py\", line 1".into(),
                ),
            }),
            ..Plan::default()
        },
    );
    h.provisioner.plan(
        "nostart",
        Plan {
            error: Some(ProvisionError::Start("exec: python9: not found".into())),
            ..Plan::default()
        },
    );
    h.provisioner.plan(
        "gone",
        Plan {
            error: Some(ProvisionError::FunctionNotFound(FunctionId::new(
                "default", "gone",
            ))),
            ..Plan::default()
        },
    );
    for name in ["broken", "nostart", "gone"] {
        h.put_function(name, 60).await;
        h.put_trigger(name, name, |s| s.relativeurl = Some(format!("/{name}")))
            .await;
    }

    let (status, headers, body) = h.get("/broken").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "specialize_failed");
    assert!(message.contains("No module named 'numpy'"), "{message}");
    assert!(message.contains("Traceback"), "{message}");

    let (status, headers, body) = h.get("/nostart").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "instance_start_failed");
    assert!(message.contains("python9"), "{message}");

    let (status, headers, body) = h.get("/gone").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&headers, &body).0, "function_not_found");
}
