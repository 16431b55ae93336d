//! The fetcher: the second container of every function pod (`kappa fetcher`, the same image as
//! the platform). It shares the emptyDir volumes `/userfunc`, `/secrets` and `/configs` with
//! the runtime container and, when the pool manager asks it to (`POST /specialize` on port
//! 8000), it
//!
//! 1. downloads the deployment archive from the API server (`GET /v1/archives/<sha256>`, bearer
//!    token), streaming it to disk with a size limit while hashing it, and refuses it unless its
//!    sha256 is the one asked for;
//! 2. extracts it safely with [`kappa_archive::extract_zip`] (a zip) or places it as one file;
//! 3. writes the function's Secrets and ConfigMaps as files
//!    (`/secrets/<namespace>/<name>/<key>`, `/configs/...`) with [`kappa_runtime::place`], the
//!    layout and modes the local backend uses;
//! 4. calls the runtime's `POST http://127.0.0.1:8888/v2/specialize` with
//!    [`kappa_runtime::SpecializeBody`] (`{"filepath", "functionName", "env"}`), so Fission
//!    environment images work unchanged.
//!
//! The request it takes ([`FetchRequest`]), its port and token derivation are
//! [`kappa_runtime::fetch`], which the pod backend (`kappa-kube`) builds requests with.
//!
//! `/specialize` needs `Authorization: Bearer <token>` with the pod's own fetcher token
//! ([`FETCHER_TOKEN_ENV`] in the fetcher container alone, derived by [`pod_fetcher_token`] from
//! the platform token and the pod's name, so the pool manager can recompute it for pods it
//! adopts and no pod's token opens another pod). A fetcher with no token refuses every
//! `/specialize`: anything that reaches a pod's port 8000 (another function's pod, on a
//! cluster whose CNI does not enforce NetworkPolicies) cannot place its own code in it.
//!
//! It also serves `GET /healthz` (the fetcher is up) and `GET /readyz` (the runtime next to it
//! answers `GET /healthz` with anything but a 5xx), the pod's probes. A pod is specialized once: a second
//! `/specialize` is refused with 409.
//!
//! **Start-up mode** (`--specialize-from FILE`, the pods of a `newdeploy` Deployment; see
//! [`Startup`]): the fetcher reads a [`FetchRequest`] from the file (a Secret mounted into the
//! fetcher alone), waits for the runtime, and runs the same fetch, place and specialize steps
//! on its own; `/readyz` answers ready only once that succeeded, and `/specialize` is refused
//! (401 without a token, as these pods have none; 409 with one). Transient failures (the runtime not up yet, a download connection error or 5xx) are
//! retried with backoff up to [`Startup::retry_for`]; a definitive one (sha256 mismatch, an
//! unsafe archive, the runtime refusing the code) or running out of time writes the message to
//! the termination log and ends the fetcher with an error, so Kubernetes restarts the container
//! and the Deployment's pod watcher reports the failure. Once specialized it keeps watching the
//! runtime: a runtime container restarted by the kubelet comes back generic, so when the
//! runtime stops accepting connections the fetcher turns not-ready and specializes it again.
//!
//! Errors are the platform's JSON error body; a runtime's refusal keeps the runtime's status
//! and message (and its traceback as `detail`), so an import error reaches the user as such.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use kappa_archive::{DEFAULT_FILENAME, ExtractLimits, extract_zip, hex, sniff_zip};
use kappa_core::TokenCheck;
use kappa_runtime::place::{is_plain_name, place_config};
use kappa_runtime::{SPECIALIZE_PATH, SpecializeBody, error_code};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use kappa_runtime::fetch::{
    FETCHER_PORT, FETCHER_TOKEN_ENV, FetchFiles, FetchRequest, RUNTIME_PORT, pod_fetcher_token,
};
use kappa_runtime::runtime_error;

/// Configuration of a fetcher.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// Where the code goes (the shared emptyDir, `/userfunc`).
    pub userfunc: PathBuf,
    /// Where Secrets go (`/secrets`).
    pub secrets: PathBuf,
    /// Where ConfigMaps go (`/configs`).
    pub configs: PathBuf,
    /// The runtime next to the fetcher (`http://127.0.0.1:8888`).
    pub runtime_url: String,
    /// Token used for downloads when a request carries none.
    pub api_token: Option<String>,
    /// The token `/specialize` requires ([`FETCHER_TOKEN_ENV`]); `None` refuses every
    /// `/specialize` (start-up mode needs none).
    pub specialize_token: Option<TokenCheck>,
    /// Largest archive accepted, in bytes.
    pub max_archive_bytes: u64,
    /// Limits applied while extracting.
    pub extract_limits: ExtractLimits,
    /// Bound of the archive download and of the runtime's specialize call, each.
    pub timeout: Duration,
}

impl FetcherConfig {
    /// The pod layout: `/userfunc`, `/secrets`, `/configs`, runtime on `127.0.0.1:8888`.
    pub fn in_pod() -> Self {
        Self {
            userfunc: PathBuf::from("/userfunc"),
            secrets: PathBuf::from("/secrets"),
            configs: PathBuf::from("/configs"),
            runtime_url: format!("http://127.0.0.1:{RUNTIME_PORT}"),
            api_token: None,
            specialize_token: None,
            max_archive_bytes: 512 << 20,
            extract_limits: ExtractLimits::default(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Why a specialization through the fetcher failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request itself is wrong (bad sha256, file name, key...).
    #[error("{0}")]
    BadRequest(String),
    /// The pod was specialized already.
    #[error("this instance is already specialized (with archive {0})")]
    AlreadySpecialized(String),
    /// The pod specializes itself from its start-up request: `/specialize` is not for it.
    #[error("this instance specializes itself from its start-up request")]
    SelfSpecializing,
    /// `/specialize` without the pod's fetcher token (or on a fetcher that has none).
    #[error("{0}")]
    Unauthorized(String),
    /// The archive could not be downloaded; `transient` when trying again may succeed (a
    /// connection error, a timeout, a 5xx or 429 answer).
    #[error("downloading the archive failed: {message}")]
    Download { message: String, transient: bool },
    /// The archive is not what was asked for.
    #[error("archive checksum mismatch: expected sha256 {expected}, downloaded {actual}")]
    Checksum { expected: String, actual: String },
    /// The archive is too big.
    #[error("the archive is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// Extraction refused the archive or writing files failed.
    #[error("placing the code failed: {0}")]
    Place(String),
    /// The runtime could not be reached.
    #[error("could not reach the runtime at {url}: {message}")]
    RuntimeUnreachable { url: String, message: String },
    /// The runtime refused the specialization: its status, error code (when its body has
    /// one), message and detail.
    #[error("{message}")]
    Runtime {
        status: u16,
        code: Option<String>,
        message: String,
        detail: Option<String>,
    },
}

impl FetchError {
    /// Whether trying again later may succeed: the runtime not reachable (not up yet), or a
    /// download that failed on the way rather than being refused.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Download { transient, .. } => *transient,
            FetchError::RuntimeUnreachable { .. } => true,
            _ => false,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            FetchError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FetchError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FetchError::AlreadySpecialized(_) | FetchError::SelfSpecializing => {
                StatusCode::CONFLICT
            }
            FetchError::Download { .. } | FetchError::RuntimeUnreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            FetchError::Checksum { .. } | FetchError::TooLarge(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            FetchError::Place(_) => StatusCode::INTERNAL_SERVER_ERROR,
            FetchError::Runtime { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            FetchError::BadRequest(_) => "invalid",
            FetchError::Unauthorized(_) => "unauthorized",
            FetchError::AlreadySpecialized(_) | FetchError::SelfSpecializing => "conflict",
            FetchError::Download { .. } => "download_failed",
            FetchError::Checksum { .. } => "checksum_mismatch",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Place(_) => "place_failed",
            FetchError::RuntimeUnreachable { .. } => "runtime_unreachable",
            FetchError::Runtime { .. } => "specialize_failed",
        }
    }
}

impl IntoResponse for FetchError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        if let FetchError::Runtime {
            detail: Some(detail),
            ..
        } = &self
        {
            body["error"]["detail"] = serde_json::Value::String(detail.clone());
        }
        (self.status(), Json(body)).into_response()
    }
}

/// How the fetcher specializes on start (`kappa fetcher --specialize-from FILE`).
#[derive(Debug, Clone)]
pub struct Startup {
    /// The [`FetchRequest`] as JSON (the `newdeploy` Secret, mounted read-only).
    pub request_file: PathBuf,
    /// Where a definitive failure's message goes (`/dev/termination-log`, which Kubernetes
    /// reports as the container's termination message): the message, then, after a blank
    /// line, the detail (a traceback), cut to [`TERMINATION_LOG_MAX`] bytes.
    pub termination_log: PathBuf,
    /// How long transient failures are retried before giving up.
    pub retry_for: Duration,
    /// The first wait between attempts; it doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the runtime is checked once specialized (a restarted runtime is generic).
    pub watch_interval: Duration,
}

/// The most of a failure the termination log holds (Kubernetes keeps 4 KiB).
pub const TERMINATION_LOG_MAX: usize = 4096;

impl Startup {
    /// Start-up from `request_file`, with the pod's termination log and default bounds.
    pub fn new(request_file: impl Into<PathBuf>) -> Self {
        Self {
            request_file: request_file.into(),
            termination_log: PathBuf::from("/dev/termination-log"),
            retry_for: Duration::from_secs(300),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            watch_interval: Duration::from_millis(500),
        }
    }
}

/// Why the fetcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Binding the listener or serving failed.
    #[error("serving the fetcher")]
    Serve(#[source] std::io::Error),
    /// A pool pod's fetcher (no start-up request) was started without its token.
    #[error(
        "the fetcher needs its pod's token in {FETCHER_TOKEN_ENV} to accept /specialize (the pool manager sets it in the pods it creates)"
    )]
    NoToken,
    /// The start-up specialization failed definitively, or transient failures outlasted
    /// [`Startup::retry_for`]; the message is in the termination log.
    #[error("specializing from the start-up request {}", path.display())]
    Specialize {
        path: PathBuf,
        #[source]
        source: FetchError,
    },
}

struct FetcherState {
    config: FetcherConfig,
    http: reqwest::Client,
    /// The sha256 this pod was specialized with. A tokio mutex: held across the whole
    /// specialization on purpose, so two concurrent `/specialize` calls cannot both proceed.
    specialized: Mutex<Option<String>>,
    /// Started with a [`Startup`]: `/specialize` is refused and readiness waits for `ready`.
    self_specializing: bool,
    /// Start-up mode: the runtime is specialized now. An atomic: set by the start-up task, read
    /// by every probe, no other state goes with it.
    ready: AtomicBool,
}

impl FetcherState {
    fn new(config: FetcherConfig, self_specializing: bool) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            config,
            http,
            specialized: Mutex::new(None),
            self_specializing,
            ready: AtomicBool::new(false),
        })
    }
}

/// The fetcher's HTTP service (no socket), for tests and [`serve`].
pub fn router(config: FetcherConfig) -> Router {
    app(FetcherState::new(config, false))
}

fn app(state: Arc<FetcherState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/specialize", post(specialize))
        .with_state(state)
}

/// Serves the fetcher on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: FetcherConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(config);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Serves the fetcher on `listener` until `shutdown` while specializing the runtime from
/// `startup` (see the module documentation). Returns an error, after writing the message to
/// the termination log, when the specialization fails for good.
pub async fn serve_startup(
    listener: TcpListener,
    config: FetcherConfig,
    startup: Startup,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let state = FetcherState::new(config, true);
    let stop = shutdown.child_token();
    let server = {
        let stop = stop.clone();
        axum::serve(listener, app(Arc::clone(&state)))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future()
    };
    let mut server = std::pin::pin!(server);
    let supervise = self_specialize(&state, &startup, &shutdown);
    let failure = tokio::select! {
        served = &mut server => return served.map_err(RunError::Serve),
        outcome = supervise => outcome.err(),
    };
    if let Some(error) = failure {
        tracing::error!(error = %error, request = %startup.request_file.display(), "specialization failed; exiting");
        write_termination_log(&startup.termination_log, &error);
        stop.cancel();
        let _ = server.await;
        return Err(RunError::Specialize {
            path: startup.request_file,
            source: error,
        });
    }
    server.await.map_err(RunError::Serve)
}

/// Binds `addr` and serves until `shutdown` (the `kappa fetcher` entry point), specializing on
/// start when `startup` is given.
pub async fn run(
    addr: SocketAddr,
    config: FetcherConfig,
    startup: Option<Startup>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let listener = TcpListener::bind(addr).await.map_err(RunError::Serve)?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(addr = %local, userfunc = %config.userfunc.display(), specialize_from = ?startup.as_ref().map(|s| s.request_file.display().to_string()), "fetcher listening");
    match startup {
        Some(startup) => serve_startup(listener, config, startup, shutdown).await,
        None if config.specialize_token.is_none() => Err(RunError::NoToken),
        None => serve(listener, config, shutdown)
            .await
            .map_err(RunError::Serve),
    }
}

/// Writes `error` where Kubernetes reads the termination message: the message, then the
/// detail after a blank line, at most [`TERMINATION_LOG_MAX`] bytes.
fn write_termination_log(path: &Path, error: &FetchError) {
    let mut text = error.to_string();
    if let FetchError::Runtime {
        detail: Some(detail),
        ..
    } = error
    {
        text.push_str("\n\n");
        text.push_str(detail);
    }
    let mut end = text.len().min(TERMINATION_LOG_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(path, &text.as_bytes()[..end]) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the termination log");
    }
}

/// Reads the start-up request, specializes the runtime (retrying transient failures), then
/// keeps it specialized across runtime restarts. Returns `Ok` on shutdown, `Err` when the
/// specialization failed for good.
async fn self_specialize(
    state: &FetcherState,
    startup: &Startup,
    shutdown: &CancellationToken,
) -> Result<(), FetchError> {
    let path = &startup.request_file;
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        FetchError::BadRequest(format!(
            "reading the start-up request {}: {e}",
            path.display()
        ))
    })?;
    let request: FetchRequest = serde_json::from_slice(&bytes).map_err(|e| {
        FetchError::BadRequest(format!(
            "the start-up request {} is not a fetch request (JSON with archiveUrl, sha256, entrypoint...): {e}",
            path.display()
        ))
    })?;
    tracing::info!(sha256 = %request.sha256, entrypoint = %request.entrypoint, "specializing from the start-up request");
    let attempt = || async {
        runtime_up(state).await?;
        let filepath = fetch_and_place(state, &request).await?;
        load_code(state, &request, &filepath).await?;
        Ok(filepath)
    };
    let Some(filepath) = with_retries(startup, shutdown, attempt).await? else {
        return Ok(());
    };
    *state.specialized.lock().await = Some(request.sha256.clone());
    state.ready.store(true, Ordering::Release);
    tracing::info!(sha256 = %request.sha256, filepath = %filepath.display(), "specialized");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(startup.watch_interval) => {}
        }
        if !runtime_gone(state).await {
            continue;
        }
        state.ready.store(false, Ordering::Release);
        tracing::warn!(
            "the runtime stopped accepting connections (restarted?); specializing it again once it is back"
        );
        let attempt = || async {
            runtime_up(state).await?;
            load_code(state, &request, &filepath).await
        };
        if with_retries(startup, shutdown, attempt).await?.is_none() {
            return Ok(());
        }
        state.ready.store(true, Ordering::Release);
        tracing::info!(sha256 = %request.sha256, "specialized the runtime again");
    }
}

/// Runs `attempt` until it succeeds (`Some`), fails definitively, or transient failures outlast
/// `startup.retry_for` (the last error); `None` on shutdown.
async fn with_retries<T, F, Fut>(
    startup: &Startup,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let deadline = tokio::time::Instant::now() + startup.retry_for;
    let mut backoff = startup.initial_backoff;
    loop {
        let error = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            result = attempt() => match result {
                Ok(value) => return Ok(Some(value)),
                Err(e) => e,
            },
        };
        if !error.is_transient() || tokio::time::Instant::now() + backoff > deadline {
            return Err(error);
        }
        tracing::info!(error = %error, retry_in_ms = backoff.as_millis() as u64, "specialization not possible yet; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(startup.max_backoff);
    }
}

/// The runtime answers `GET /healthz` with anything but a server error (else a transient
/// [`FetchError::RuntimeUnreachable`]).
async fn runtime_up(state: &FetcherState) -> Result<(), FetchError> {
    let (url, answer) = probe_runtime(state).await;
    match answer {
        Ok(status) if !status.is_server_error() => Ok(()),
        Ok(status) => Err(FetchError::RuntimeUnreachable {
            url,
            message: format!("it answered {status}"),
        }),
        Err(e) => Err(FetchError::RuntimeUnreachable {
            url,
            message: e.to_string(),
        }),
    }
}

/// Whether the runtime refuses connections: its container is gone or restarting (a busy
/// runtime that answers slowly is not gone).
async fn runtime_gone(state: &FetcherState) -> bool {
    match probe_runtime(state).await.1 {
        Ok(_) => false,
        Err(e) => e.is_connect(),
    }
}

/// `GET /healthz` of the runtime next to the fetcher (2 s at most): its URL and the answer's
/// status.
async fn probe_runtime(state: &FetcherState) -> (String, Result<StatusCode, reqwest::Error>) {
    let url = format!("{}/healthz", state.config.runtime_url);
    let answer = state
        .http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status());
    (url, answer)
}

/// Calls the runtime's specialize; a runtime that says it is specialized already kept the code
/// from an earlier run of this fetcher (the fetcher container restarted, the runtime did not),
/// which is success.
async fn load_code(
    state: &FetcherState,
    request: &FetchRequest,
    filepath: &Path,
) -> Result<(), FetchError> {
    match call_runtime(state, request, filepath).await {
        Err(FetchError::Runtime {
            code: Some(code), ..
        }) if code == "already_specialized" => {
            tracing::info!(
                "the runtime is specialized already (the fetcher restarted); keeping it"
            );
            Ok(())
        }
        other => other,
    }
}

async fn readyz(State(state): State<Arc<FetcherState>>) -> Response {
    if state.self_specializing && !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "specializing from the start-up request",
        )
            .into_response();
    }
    match probe_runtime(&state).await.1 {
        // Any answer but a server error means the runtime is up (an image without a
        // `/healthz` route answers 404).
        Ok(status) if !status.is_server_error() => (StatusCode::OK, "ready").into_response(),
        Ok(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("runtime answered {status}"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("runtime not reachable: {e}"),
        )
            .into_response(),
    }
}

async fn specialize(
    State(state): State<Arc<FetcherState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, FetchError> {
    let Some(check) = &state.config.specialize_token else {
        return Err(FetchError::Unauthorized(format!(
            "this fetcher has no token ({FETCHER_TOKEN_ENV}) and accepts no /specialize"
        )));
    };
    check
        .verify(
            headers
                .get(header::AUTHORIZATION)
                .map(axum::http::HeaderValue::as_bytes),
        )
        .map_err(|e| FetchError::Unauthorized(e.to_string()))?;
    // Parsed only once the caller is known to be the pool manager.
    let request: FetchRequest = serde_json::from_slice(&body).map_err(|e| {
        FetchError::BadRequest(format!("the request body is not a fetch request: {e}"))
    })?;
    if state.self_specializing {
        return Err(
            match state.specialized.try_lock().ok().and_then(|s| s.clone()) {
                Some(sha) => FetchError::AlreadySpecialized(sha),
                None => FetchError::SelfSpecializing,
            },
        );
    }
    let mut specialized = state.specialized.lock().await;
    if let Some(sha) = specialized.as_ref() {
        return Err(FetchError::AlreadySpecialized(sha.clone()));
    }
    tracing::info!(sha256 = %request.sha256, entrypoint = %request.entrypoint, "specializing");
    let filepath = fetch_and_place(&state, &request).await?;
    call_runtime(&state, &request, &filepath).await?;
    *specialized = Some(request.sha256.clone());
    tracing::info!(sha256 = %request.sha256, filepath = %filepath.display(), "specialized");
    Ok(Json(serde_json::json!({ "filepath": filepath })))
}

/// Downloads, verifies and places the code; returns the path to give the runtime.
async fn fetch_and_place(
    state: &FetcherState,
    request: &FetchRequest,
) -> Result<PathBuf, FetchError> {
    let sha = request.sha256.to_ascii_lowercase();
    if !kappa_archive::is_valid_digest(&sha) {
        return Err(FetchError::BadRequest(format!(
            "sha256 {:?} is not 64 hex digits",
            request.sha256
        )));
    }
    let filename = request.filename.as_deref().unwrap_or(DEFAULT_FILENAME);
    if !is_plain_name(filename) {
        return Err(FetchError::BadRequest(format!(
            "filename {filename:?} must be a plain file name"
        )));
    }
    let config = &state.config;
    mkdir(&config.userfunc).map_err(|e| FetchError::Place(e.to_string()))?;
    let download = config.userfunc.join(format!(".download-{sha}"));
    let result = download_verified(state, request, &sha, &download).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&download).await;
        return Err(e);
    }
    let dest = config.userfunc.join(&sha);
    let limits = config.extract_limits;
    let filename = filename.to_string();
    let download2 = download.clone();
    let placed = tokio::task::spawn_blocking(move || -> Result<PathBuf, FetchError> {
        let is_zip = sniff_zip(&download2).map_err(|e| FetchError::Place(e.to_string()))?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| FetchError::Place(e.to_string()))?;
        }
        if is_zip {
            extract_zip(&download2, &dest, &limits)
                .map_err(|e| FetchError::Place(e.to_string()))?;
            Ok(dest)
        } else {
            mkdir(&dest).map_err(|e| FetchError::Place(e.to_string()))?;
            let file = dest.join(&filename);
            std::fs::rename(&download2, &file).map_err(|e| FetchError::Place(e.to_string()))?;
            Ok(file)
        }
    })
    .await
    .map_err(|e| FetchError::Place(e.to_string()))?;
    let _ = tokio::fs::remove_file(&download).await;
    let placed = placed?;
    place_files(config, &request.files).await?;
    Ok(placed)
}

async fn download_verified(
    state: &FetcherState,
    request: &FetchRequest,
    sha: &str,
    to: &Path,
) -> Result<(), FetchError> {
    let token = request.token.as_ref().or(state.config.api_token.as_ref());
    let mut call = state
        .http
        .get(&request.archive_url)
        .timeout(state.config.timeout);
    if let Some(token) = token {
        call = call.bearer_auth(token);
    }
    let response = call.send().await.map_err(|e| FetchError::Download {
        message: format!("{}: {e}", request.archive_url),
        transient: true,
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let mut end = body.len().min(512);
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        return Err(FetchError::Download {
            message: format!(
                "{} answered {status}: {}",
                request.archive_url,
                &body[..end]
            ),
            transient: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
        });
    }
    let max = state.config.max_archive_bytes;
    if response.content_length().is_some_and(|n| n > max) {
        return Err(FetchError::TooLarge(max));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .await
        .map_err(|e| FetchError::Place(format!("{}: {e}", to.display())))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| FetchError::Download {
            message: format!("{}: {e}", request.archive_url),
            transient: true,
        })?;
        written += chunk.len() as u64;
        if written > max {
            return Err(FetchError::TooLarge(max));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| FetchError::Place(format!("{}: {e}", to.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| FetchError::Place(e.to_string()))?;
    let actual = hex(&hasher.finalize());
    if actual != sha {
        return Err(FetchError::Checksum {
            expected: sha.to_string(),
            actual,
        });
    }
    Ok(())
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
}

/// Writes Secrets and ConfigMaps under `/secrets` and `/configs`, as the local backend does.
async fn place_files(config: &FetcherConfig, files: &[FetchFiles]) -> Result<(), FetchError> {
    let mut volumes = Vec::with_capacity(files.len());
    for volume in files {
        volumes.push(volume.to_volume().map_err(FetchError::BadRequest)?);
    }
    for volume in &volumes {
        for part in [&volume.namespace, &volume.name] {
            if !is_plain_name(part) {
                return Err(FetchError::BadRequest(format!(
                    "{} name {part:?} is not a plain path component",
                    volume.kind.dir_name()
                )));
            }
        }
        for key in volume.entries.keys() {
            if !is_plain_name(key) {
                return Err(FetchError::BadRequest(format!(
                    "key {key:?} of {} {}/{} is not a plain file name",
                    volume.kind.dir_name(),
                    volume.namespace,
                    volume.name
                )));
            }
        }
    }
    let (secrets, configs) = (config.secrets.clone(), config.configs.clone());
    tokio::task::spawn_blocking(move || {
        for volume in &volumes {
            let base = match volume.kind {
                kappa_core::ConfigKind::Secret => &secrets,
                kappa_core::ConfigKind::ConfigMap => &configs,
            };
            place_config(base, volume, None).map_err(|e| {
                FetchError::Place(format!(
                    "{} {}/{} under {}: {e}",
                    volume.kind,
                    volume.namespace,
                    volume.name,
                    base.display()
                ))
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|e| FetchError::Place(e.to_string()))?
}

async fn call_runtime(
    state: &FetcherState,
    request: &FetchRequest,
    filepath: &Path,
) -> Result<(), FetchError> {
    let url = format!("{}{SPECIALIZE_PATH}", state.config.runtime_url);
    let body = SpecializeBody::new(filepath, &request.entrypoint, &request.env);
    let response = state
        .http
        .post(&url)
        .json(&body)
        .timeout(state.config.timeout)
        .send()
        .await
        .map_err(|e| FetchError::RuntimeUnreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let bytes = response.bytes().await.unwrap_or_default();
    let code = error_code(&bytes);
    let (message, detail) = runtime_error(status.as_u16(), &bytes);
    Err(FetchError::Runtime {
        status: status.as_u16(),
        code,
        message,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_read_well() {
        let body = br#"{"error":{"code":"import_error","message":"No module named 'x'","traceback":"Traceback"}}"#;
        assert_eq!(
            runtime_error(500, body),
            ("No module named 'x'".into(), Some("Traceback".into()))
        );
        assert!(runtime_error(500, b"").0.contains("500"));
        assert!(!is_plain_name("../x"));
        assert!(is_plain_name("hello.py"));
    }
}
