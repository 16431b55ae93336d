//! The client side of the runtime protocol, written once for every place that loads a
//! function's code into a runtime:
//!
//! - [`specialize`]: the runtime's `POST /v2/specialize` body ([`SpecializeBody`]) and how a
//!   refusal's body reads ([`runtime_error`], [`error_code`]).
//! - [`place`]: the code and Secret/ConfigMap layout of an instance (`userfunc`,
//!   `secrets/<namespace>/<name>/<key>`, `configs/...`) with its file and directory modes.
//! - [`fetch`]: the pool manager's request to a Kubernetes function pod's fetcher
//!   ([`FetchRequest`]), its ports and per-pod token.
//!
//! The local backend (`kappa-local`) uses it in process; the fetcher (`kappa-fetcher`, the
//! second container of a function pod) uses it next to the runtime in the pod; the pod backend
//! (`kappa-kube`) builds the fetcher's requests with it. No HTTP client or server lives here:
//! each side keeps its own transport.

pub mod fetch;
pub mod place;
pub mod specialize;

pub use fetch::{
    FETCHER_PORT, FETCHER_TOKEN_ENV, FetchFiles, FetchRequest, RUNTIME_PORT, pod_fetcher_token,
};
pub use specialize::{SPECIALIZE_PATH, SpecializeBody, error_code, runtime_error};
