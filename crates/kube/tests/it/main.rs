//! Component tests of kappa-kube. No Kubernetes API server exists on the machines these run
//! on: the kube client is wired to a `tower-test` mock service driven by [`mock::FakeApi`],
//! which records every request (method, path, query, body) and answers with what each test
//! scripts. So these tests prove the requests the code sends and how it maps each response
//! and status code; they do not prove a real API server accepts them (the objects are also
//! written to `target/kube-manifests/` for schema validation with `kubernetes-validate`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adopt;
mod backend;
mod builds;
mod conformance;
mod crds;
mod deployments;
mod fake_api;
mod finalizer;
mod lease;
mod manifests;
mod mock;
mod pod_conformance;
mod readiness;
mod specialize;
mod store;
mod watch;
