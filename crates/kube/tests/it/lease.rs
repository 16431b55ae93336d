//! Leader election requests: acquire (create), renew, conflict, takeover after expiry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kappa_kube::{LeaseConfig, LeaseLock, LeaseState};
use serde_json::{Value, json};

use super::mock::{FakeApi, Reply, status, write_manifest};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kappa/leases/kappa-executor";

/// A fake that keeps one Lease and enforces resourceVersion preconditions like the API does.
fn lease_api(initial: Option<Value>) -> (kube::Client, FakeApi, Arc<Mutex<Option<Value>>>) {
    let state = Arc::new(Mutex::new(initial));
    let shared = Arc::clone(&state);
    let (client, api) = FakeApi::start(move |r| {
        let mut lease = shared.lock().unwrap();
        match r.method.as_str() {
            "GET" => match lease.as_ref() {
                Some(l) => Reply::Json(200, l.clone()),
                None => status(404, "NotFound", "leases \"kappa-executor\" not found"),
            },
            "POST" if lease.is_some() => status(409, "AlreadyExists", "exists"),
            "POST" => {
                let mut l = r.body.clone();
                l["metadata"]["resourceVersion"] = json!("1");
                *lease = Some(l.clone());
                Reply::Json(201, l)
            }
            "PUT" => {
                let current = lease.as_ref().unwrap()["metadata"]["resourceVersion"].clone();
                if r.body["metadata"]["resourceVersion"] != current {
                    return status(409, "Conflict", "the object has been modified");
                }
                let next: u64 = current.as_str().unwrap().parse::<u64>().unwrap() + 1;
                let mut l = r.body.clone();
                l["metadata"]["resourceVersion"] = json!(next.to_string());
                *lease = Some(l.clone());
                Reply::Json(200, l)
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        }
    });
    (client, api, state)
}

fn config(holder: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(15),
        ..LeaseConfig::new("kappa-executor", "kappa", holder)
    }
}

fn held_by(holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kappa-executor", "namespace": "kappa", "resourceVersion": "5"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 2,
                 "renewTime": "2025-01-01T00:00:00.000000Z", "acquireTime": "2025-01-01T00:00:00.000000Z"},
    })
}

#[tokio::test]
async fn acquire_creates_the_lease_then_renews_it() {
    let (client, api, state) = lease_api(None);
    let lock = LeaseLock::new(client, config("executor-0"));
    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::Acquired
    );
    let create = &api.requests()[1];
    assert_eq!(
        create.line(),
        "POST /apis/coordination.k8s.io/v1/namespaces/kappa/leases"
    );
    assert_eq!(create.body["spec"]["holderIdentity"], "executor-0");
    assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);

    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::Renewed
    );
    let renew = api.requests().last().unwrap().clone();
    assert_eq!(renew.line(), format!("PUT {LEASE}"));
    assert_eq!(renew.body["metadata"]["resourceVersion"], "1");
    assert_eq!(renew.body["spec"]["holderIdentity"], "executor-0");

    lock.release().await.unwrap();
    let released = state.lock().unwrap().clone().unwrap();
    assert!(
        released["spec"].get("holderIdentity").is_none(),
        "{released}"
    );
    let lease: Lease = serde_json::from_value(create.body.clone()).unwrap();
    write_manifest("lease", &lease);
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_keeps_the_lease_and_an_expired_one_is_taken_over() {
    let (client, api, state) = lease_api(Some(held_by("executor-1")));
    let lock = LeaseLock::new(client, config("executor-0"));
    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::HeldBy("executor-1".into())
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::HeldBy("executor-1".into()),
        "not expired after 5 s of a 15 s lease"
    );
    // The holder renews: the clock restarts.
    state.lock().unwrap().as_mut().unwrap()["spec"]["renewTime"] =
        json!("2025-01-01T00:00:10.000000Z");
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::HeldBy("executor-1".into())
    );
    // No renewal for a whole lease duration: taken over, guarded by the version read.
    tokio::time::advance(Duration::from_secs(16)).await;
    assert_eq!(
        lock.try_acquire_or_renew().await.unwrap(),
        LeaseState::Acquired
    );
    let takeover = api.requests().last().unwrap().clone();
    assert_eq!(takeover.line(), format!("PUT {LEASE}"));
    assert_eq!(takeover.body["metadata"]["resourceVersion"], "5");
    assert_eq!(takeover.body["spec"]["holderIdentity"], "executor-0");
    assert_eq!(takeover.body["spec"]["leaseTransitions"], 3);
}

#[tokio::test(start_paused = true)]
async fn of_two_replicas_taking_over_only_one_wins() {
    let (client, _api, state) = lease_api(Some(held_by("executor-9")));
    let a = LeaseLock::new(client.clone(), config("executor-a"));
    let b = LeaseLock::new(client, config("executor-b"));
    for lock in [&a, &b] {
        assert!(!lock.try_acquire_or_renew().await.unwrap().is_leader());
    }
    tokio::time::advance(Duration::from_secs(16)).await;
    let first = a.try_acquire_or_renew().await.unwrap();
    assert_eq!(first, LeaseState::Acquired);
    // b sees a's fresh record (a new holder and renew time): not expired, so it backs off.
    let second = b.try_acquire_or_renew().await.unwrap();
    assert_eq!(second, LeaseState::HeldBy("executor-a".into()));
    assert_eq!(
        state.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        "executor-a"
    );
}

#[tokio::test]
async fn a_renewal_that_loses_the_race_reports_the_conflict() {
    // The lease says we hold it, but every write conflicts (someone else took it meanwhile).
    let (client, _api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => Reply::Json(200, held_by("executor-0")),
        "PUT" => status(409, "Conflict", "the object has been modified"),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let lock = LeaseLock::new(client, config("executor-0"));
    let state = lock.try_acquire_or_renew().await.unwrap();
    assert!(!state.is_leader(), "{state:?}");
}
