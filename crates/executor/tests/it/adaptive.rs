//! Adaptive warm pools through the pool manager: a burst of misses grows the pool, quiet
//! shrinks it, a fixed `poolsize` pins its pool, and the memory budget bounds the rest; the
//! decisions show in the environment's `status.pool` and in the metrics. Time is paused (the
//! policy's demand decays in virtual time), and nothing asserts a duration.

use std::sync::Arc;
use std::time::Duration;

use kappa_core::{FunctionId, InstanceState, Provision, Provisioner};
use kappa_store::{MemoryStore, Precondition};
use kappa_test_support::eventually;
use kappa_types::{Environment, EnvironmentSpec, Kind, PoolMode, PoolPolicy, Runtime};

use crate::fake::Harness;

const MIB: u64 = 1 << 20;

async fn start(budget: Option<u64>) -> Harness {
    Harness::start_configured(Arc::new(MemoryStore::new()), None, |c| {
        c.pool_memory_budget = budget;
        c.adaptive.half_life = Duration::from_secs(10);
    })
    .await
}

async fn env(h: &Harness, name: &str, poolsize: u32, adaptive: bool) {
    let mut spec = EnvironmentSpec {
        runtime: Runtime {
            image: "python".into(),
            command: None,
        },
        poolsize,
        ..EnvironmentSpec::default()
    };
    spec.resources.limits.memory = Some("100Mi".into());
    if adaptive {
        spec.pool_policy = Some(PoolPolicy {
            mode: PoolMode::Adaptive,
            min: None,
            max: None,
        });
    }
    h.store
        .put(Environment::new(name, spec).to_json(), Precondition::None)
        .await
        .unwrap();
}

/// `status.pool` of environment `name`, as stored.
async fn pool_status(h: &Harness, name: &str) -> serde_json::Value {
    let obj = h
        .store
        .get(Kind::Environment, "default", name)
        .await
        .unwrap()
        .unwrap();
    obj.value["status"]["pool"].clone()
}

fn warm(h: &Harness, env: &str) -> usize {
    h.manager
        .instances()
        .iter()
        .filter(|i| {
            i.state == InstanceState::Warm && i.environment.as_ref().is_some_and(|e| e.name == env)
        })
        .count()
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(h: &Harness, prefix: &str) -> Option<f64> {
    h.metrics()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `n` first requests at once, one to each of `n` new functions of `env`.
async fn burst(h: &Harness, env: &str, tag: &str, n: usize) -> Vec<FunctionId> {
    let mut functions = Vec::new();
    for k in 0..n {
        functions.push(h.function(&format!("{tag}{k}"), env, |_| {}).await);
    }
    let mut tasks = Vec::new();
    for f in &functions {
        let generation = h.generation(f).await;
        let m = h.manager.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(
            async move { m.provision(&f, generation).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Provision::Added);
    }
    functions
}

#[tokio::test(start_paused = true)]
async fn the_pool_grows_after_misses_and_shrinks_when_quiet() {
    let h = start(None).await;
    env(&h, "python", 0, true).await;
    eventually(Duration::from_secs(5), "the adaptive pool's status", || {
        h.metrics()
            .contains("kappa_executor_pool_size{environment=\"default/python\"} 0")
    })
    .await;
    let functions = burst(&h, "python", "f", 6).await;
    // Six misses (the pool was empty): the pool grows to cover such a burst.
    assert!(
        metric(
            &h,
            "kappa_executor_pool_takes_total{environment=\"default/python\",result=\"miss\"}"
        )
        .unwrap()
            >= 6.0
    );
    eventually(Duration::from_secs(5), "the pool to grow", || {
        warm(&h, "python") >= 6
    })
    .await;
    let status = pool_status(&h, "python").await;
    assert_eq!(status["policy"], "adaptive", "{status}");
    assert_eq!(status["reason"], "demand", "{status}");
    assert!(status["size"].as_u64().unwrap() >= 6, "{status}");
    assert!(
        metric(
            &h,
            "kappa_executor_pool_size{environment=\"default/python\"}"
        )
        .unwrap()
            >= 6.0
    );
    assert_eq!(
        metric(
            &h,
            "kappa_executor_pool_size_reason{environment=\"default/python\",reason=\"demand\"}"
        ),
        Some(1.0)
    );
    // Each function's keep-alive is published (its idletimeout until idle gaps are seen).
    let f0 = format!(
        "kappa_executor_keepalive_seconds{{function=\"{}\"}}",
        functions[0]
    );
    eventually(Duration::from_secs(5), "the keep-alive metric", || {
        metric(&h, &f0).is_some()
    })
    .await;
    assert!(
        h.metrics().contains(&format!(
            "kappa_executor_keepalive_reason{{function=\"{}\",reason=\"fallback\"}} 1",
            functions[0]
        )),
        "{}",
        h.metrics()
    );

    // Quiet: the demand decays and the pool empties.
    eventually(Duration::from_secs(600), "the pool to shrink", || {
        warm(&h, "python") == 0
    })
    .await;
    h.whole_pass().await;
    let status = pool_status(&h, "python").await;
    assert_eq!(status["size"], 0, "{status}");
    assert_eq!(status["message"], "no recent demand", "{status}");
    assert!(status["keepAlive"].is_object(), "{status}");
}

#[tokio::test(start_paused = true)]
async fn a_fixed_poolsize_pins_and_the_budget_bounds_adaptive_pools() {
    // 500 MiB: the fixed pool's 2 x 100 MiB first, 300 MiB for the adaptive one.
    let h = start(Some(500 * MIB)).await;
    env(&h, "fixed", 2, false).await;
    env(&h, "auto", 0, true).await;
    burst(&h, "fixed", "x", 5).await;
    burst(&h, "auto", "y", 6).await;
    eventually(
        Duration::from_secs(5),
        "the adaptive pool cut by the budget",
        || {
            metric(
                &h,
                "kappa_executor_pool_size_reason{environment=\"default/auto\",reason=\"budget\"}",
            ) == Some(1.0)
        },
    )
    .await;
    eventually(Duration::from_secs(5), "both pools filled", || {
        warm(&h, "auto") == 3 && warm(&h, "fixed") == 2
    })
    .await;
    h.whole_pass().await;
    assert_eq!((warm(&h, "auto"), warm(&h, "fixed")), (3, 2));
    let status = pool_status(&h, "auto").await;
    assert_eq!(status["size"], 3, "{status}");
    assert_eq!(status["reason"], "budget", "{status}");
    // A fixed pool has no adaptive status, and its size is poolsize whatever the demand.
    assert!(pool_status(&h, "fixed").await.is_null());
    assert_eq!(
        metric(
            &h,
            "kappa_executor_pool_size{environment=\"default/fixed\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &h,
            "kappa_executor_pool_size_reason{environment=\"default/fixed\",reason=\"fixed\"}"
        ),
        Some(1.0)
    );
}
