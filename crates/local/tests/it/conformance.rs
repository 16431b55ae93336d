//! The shared instance-backend conformance suite (`kappa_test_support::backend`) against the
//! local backend with the repository's Python runtime, sandboxed and unsandboxed.

use std::sync::Arc;

use kappa_core::Limits;
use kappa_local::{CgroupMode, SandboxMode};
use kappa_test_support::backend::Subject;

use crate::support::{Harness, python_testdata, request, spec};

async fn subject(sandbox: SandboxMode) -> Subject {
    let h = Harness::with("conformance", sandbox, CgroupMode::Auto).await;
    let sha = h.put_dir(&python_testdata()).await;
    let Harness {
        dir,
        archives,
        logs,
        backend,
    } = h;
    Subject::new(
        Arc::new(backend),
        |id| {
            let mut spec = spec("unused", Limits::default());
            spec.id = id.to_owned();
            spec
        },
        request(&sha, "envvar.main", None),
        (dir, archives, logs),
    )
}

mod sandboxed {
    async fn make() -> kappa_test_support::backend::Subject {
        super::subject(kappa_local::SandboxMode::Namespaces).await
    }
    kappa_test_support::backend_conformance_tests!(make);
}

mod unsandboxed {
    async fn make() -> kappa_test_support::backend::Subject {
        super::subject(kappa_local::SandboxMode::None).await
    }
    kappa_test_support::backend_conformance_tests!(make);
}
