//! The instance `Backend` conformance suite: what every backend (`kappa_core::Backend`) must do,
//! checked through the trait only. Each check is a generic `async fn` taking a factory of
//! [`Subject`]s, and [`backend_conformance_tests!`](crate::backend_conformance_tests) turns the
//! list into `#[tokio::test]`s for one backend. The local backend runs it from
//! `crates/local/tests/it/conformance.rs`, the pod backend (over the fake API server, with a
//! kubelet stand-in and a real fetcher and runtime) from `crates/kube/tests/it/backend.rs`.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kappa_core::{Backend, BackendError, Instance, InstanceAddr, InstanceSpec, SpecializeRequest};

use crate::eventually_async;

/// A backend under test, with how to ask it for an instance and a package it can load.
pub struct Subject {
    pub backend: Arc<dyn Backend>,
    /// A spec of a generic instance with this id, which the backend can start.
    pub spec: Box<dyn Fn(&str) -> InstanceSpec + Send + Sync>,
    /// A package already stored where the backend fetches code from, which specializes an
    /// instance of `spec`.
    pub package: SpecializeRequest,
    /// Whatever must outlive the backend (directories, servers, processes).
    _keep: Box<dyn Any + Send + Sync>,
}

impl Subject {
    pub fn new(
        backend: Arc<dyn Backend>,
        spec: impl Fn(&str) -> InstanceSpec + Send + Sync + 'static,
        package: SpecializeRequest,
        keep: impl Any + Send + Sync,
    ) -> Self {
        Self {
            backend,
            spec: Box::new(spec),
            package,
            _keep: Box::new(keep),
        }
    }
}

/// Generates one `#[tokio::test]` per conformance check for the async factory `$make` (an
/// `async fn() -> Subject`); `@checks $make; a, b, ...` generates only the listed ones.
#[macro_export]
macro_rules! backend_conformance_tests {
    ($make:path) => {
        $crate::backend_conformance_tests!(@checks $make;
            created_instances_are_listed_until_deleted,
            instances_are_independent,
            specialize_loads_a_package,
            deleting_an_unknown_instance_is_not_found,
            specializing_an_unknown_instance_is_not_found,
            specializing_a_deleted_instance_fails,
        );
    };
    (@checks $make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::backend::$check($make).await;
            }
        )*
    };
}

/// How long a test waits for something that should happen promptly before it fails.
const PATIENCE: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(5);

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn listed(backend: &dyn Backend) -> Vec<Instance> {
    backend.list().await.expect("list instances")
}

/// `id` is not among the listed instances (now, without waiting).
async fn assert_not_listed(backend: &dyn Backend, id: &str) {
    let instances = listed(backend).await;
    assert!(
        !instances.iter().any(|i| i.id == id),
        "{id} is listed: {instances:?}"
    );
}

/// Waits until `id` is listed or, with `present` false, until it is not.
async fn wait_listed(backend: &dyn Backend, id: &str, present: bool) {
    let what = format!(
        "instance {id} to be {}listed",
        if present { "" } else { "no longer " }
    );
    eventually_async(PATIENCE, &what, || async {
        listed(backend).await.iter().any(|i| i.id == id) == present
    })
    .await;
}

async fn create(subject: &Subject, id: &str) -> Instance {
    let spec = (subject.spec)(id);
    let labels = spec.labels.clone();
    let instance = subject.backend.create(spec).await.expect("instance starts");
    assert_eq!(
        instance.id, id,
        "create returns the instance it was asked for"
    );
    for (k, v) in &labels {
        assert_eq!(
            instance.labels.get(k),
            Some(v),
            "the instance carries the spec's label {k}: {:?}",
            instance.labels
        );
    }
    instance
}

/// Create returns the instance asked for (with the spec's labels); a fresh backend then lists
/// exactly it, as create returned it, until it is deleted; deleting it again is `NotFound`.
pub async fn created_instances_are_listed_until_deleted<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let backend = subject.backend.as_ref();
    let id = unique("conf-life");
    let instance = create(&subject, &id).await;
    wait_listed(backend, &id, true).await;
    assert_eq!(
        listed(backend).await,
        vec![instance],
        "a fresh backend lists exactly the instance it created, as create returned it"
    );

    backend.delete(&id, GRACE).await.expect("delete");
    wait_listed(backend, &id, false).await;
    assert_eq!(
        listed(backend).await,
        Vec::new(),
        "nothing left after the delete"
    );
    assert_eq!(
        backend.delete(&id, GRACE).await,
        Err(BackendError::NotFound(id.clone())),
        "deleting a deleted instance again"
    );
}

/// Two instances are listed side by side; deleting one leaves the other.
pub async fn instances_are_independent<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let backend = subject.backend.as_ref();
    let (a, b) = (unique("conf-a"), unique("conf-b"));
    let first = create(&subject, &a).await;
    let second = create(&subject, &b).await;
    assert_ne!(first.addr, second.addr, "each instance has its own address");
    wait_listed(backend, &a, true).await;
    wait_listed(backend, &b, true).await;
    backend.delete(&a, GRACE).await.expect("delete a");
    wait_listed(backend, &a, false).await;
    assert!(
        listed(backend).await.iter().any(|i| i.id == b),
        "deleting {a} left {b}"
    );
    backend.delete(&b, GRACE).await.expect("delete b");
    wait_listed(backend, &b, false).await;
}

/// A generic instance loads a package; the specialized instance is still listed and deletes.
pub async fn specialize_loads_a_package<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let backend = subject.backend.as_ref();
    let id = unique("conf-spec");
    let instance = create(&subject, &id).await;
    backend
        .specialize(&instance, &subject.package)
        .await
        .expect("specialize with the package");
    wait_listed(backend, &id, true).await;
    backend.delete(&id, GRACE).await.expect("delete");
    wait_listed(backend, &id, false).await;
}

/// Deleting an instance the backend never had is `NotFound`, naming it.
pub async fn deleting_an_unknown_instance_is_not_found<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let id = unique("conf-never");
    assert_eq!(
        subject.backend.delete(&id, Duration::ZERO).await,
        Err(BackendError::NotFound(id.clone()))
    );
    assert_not_listed(subject.backend.as_ref(), &id).await;
}

/// Specializing an instance the backend does not have is `NotFound`, naming it, and creates
/// nothing.
pub async fn specializing_an_unknown_instance_is_not_found<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let id = unique("conf-ghost");
    let ghost = Instance {
        id: id.clone(),
        addr: InstanceAddr::Tcp(([127, 0, 0, 1], 9).into()),
        labels: Default::default(),
    };
    assert_eq!(
        subject.backend.specialize(&ghost, &subject.package).await,
        Err(BackendError::NotFound(id.clone()))
    );
    assert_not_listed(subject.backend.as_ref(), &id).await;
}

/// Specializing an instance after it was deleted fails (whatever the error) and brings
/// nothing back.
pub async fn specializing_a_deleted_instance_fails<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Subject>,
{
    let subject = make().await;
    let backend = subject.backend.as_ref();
    let id = unique("conf-gone");
    let instance = create(&subject, &id).await;
    backend.delete(&id, GRACE).await.expect("delete");
    wait_listed(backend, &id, false).await;
    let result = backend.specialize(&instance, &subject.package).await;
    assert!(result.is_err(), "specializing deleted {id}: {result:?}");
    assert_not_listed(backend, &id).await;
}
