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
//!    (`/secrets/<namespace>/<name>/<key>` mode 0400, `/configs/...` mode 0440);
//! 4. calls the runtime's `POST http://127.0.0.1:8888/v2/specialize` with
//!    `{"filepath", "functionName", "env"}`, so Fission environment images work unchanged.
//!
//! It also serves `GET /healthz` (the fetcher is up) and `GET /readyz` (the runtime next to it
//! answers `GET /healthz` with anything but a 5xx), the pod's probes. A pod is specialized once: a second
//! `/specialize` is refused with 409.
//!
//! Errors are the platform's JSON error body; a runtime's refusal keeps the runtime's status
//! and message (and its traceback as `detail`), so an import error reaches the user as such.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use kappa_archive::{DEFAULT_FILENAME, ExtractLimits, extract_zip};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The fetcher's port in a function pod.
pub const FETCHER_PORT: u16 = 8000;
/// The runtime's port in a function pod (Fission's).
pub const RUNTIME_PORT: u16 = 8888;

/// What the pool manager sends to `POST /specialize`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    /// Where to download the archive: the API server's `/v1/archives/<sha256>`.
    pub archive_url: String,
    /// The archive's expected sha256 (lower-case hex).
    pub sha256: String,
    /// For a non-zip archive, the file name to place it under (`deployarchive` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The entrypoint, passed to the runtime as `functionName`.
    pub entrypoint: String,
    /// Environment variables passed to the runtime's specialize call (`env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets and ConfigMaps to place as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FetchFiles>,
    /// Bearer token for the archive download (omitted when the fetcher has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchRequest")
            .field("archive_url", &self.archive_url)
            .field("sha256", &self.sha256)
            .field("filename", &self.filename)
            .field("entrypoint", &self.entrypoint)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One Secret or ConfigMap to place: values are base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchFiles {
    /// `secrets` or `configs`: the directory under which it is placed.
    pub dir: String,
    pub namespace: String,
    pub name: String,
    /// Key (file name) to base64 value.
    pub entries: BTreeMap<String, String>,
}

impl std::fmt::Debug for FetchFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchFiles")
            .field("dir", &self.dir)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

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
    /// The archive could not be downloaded.
    #[error("downloading the archive failed: {0}")]
    Download(String),
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
    /// The runtime refused the specialization: its status, message and detail.
    #[error("{message}")]
    Runtime {
        status: u16,
        message: String,
        detail: Option<String>,
    },
}

impl FetchError {
    fn status(&self) -> StatusCode {
        match self {
            FetchError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FetchError::AlreadySpecialized(_) => StatusCode::CONFLICT,
            FetchError::Download(_) | FetchError::RuntimeUnreachable { .. } => {
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
            FetchError::AlreadySpecialized(_) => "conflict",
            FetchError::Download(_) => "download_failed",
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

struct FetcherState {
    config: FetcherConfig,
    http: reqwest::Client,
    /// The sha256 this pod was specialized with. A tokio mutex: held across the whole
    /// specialization on purpose, so two concurrent `/specialize` calls cannot both proceed.
    specialized: Mutex<Option<String>>,
}

/// The fetcher's HTTP service (no socket), for tests and [`serve`].
pub fn router(config: FetcherConfig) -> Router {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let state = Arc::new(FetcherState {
        config,
        http,
        specialized: Mutex::new(None),
    });
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

/// Binds `addr` and serves until `shutdown` (the `kappa fetcher` entry point).
pub async fn run(
    addr: SocketAddr,
    config: FetcherConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, userfunc = %config.userfunc.display(), "fetcher listening");
    serve(listener, config, shutdown).await
}

async fn readyz(State(state): State<Arc<FetcherState>>) -> Response {
    let url = format!("{}/healthz", state.config.runtime_url);
    match state
        .http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        // Any answer but a server error means the runtime is up (an image without a
        // `/healthz` route answers 404).
        Ok(r) if !r.status().is_server_error() => (StatusCode::OK, "ready").into_response(),
        Ok(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("runtime answered {}", r.status()),
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
    Json(request): Json<FetchRequest>,
) -> Result<Json<serde_json::Value>, FetchError> {
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

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
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
    if !plain_name(filename) {
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
    let response = call
        .send()
        .await
        .map_err(|e| FetchError::Download(format!("{}: {e}", request.archive_url)))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let mut end = body.len().min(512);
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        return Err(FetchError::Download(format!(
            "{} answered {status}: {}",
            request.archive_url,
            &body[..end]
        )));
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
        let chunk = chunk.map_err(|e| FetchError::Download(e.to_string()))?;
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sniff_zip(path: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    let mut read = 0;
    while read < magic.len() {
        let n = file.read(&mut magic[read..])?;
        if n == 0 {
            return Ok(false);
        }
        read += n;
    }
    Ok(&magic == b"PK\x03\x04")
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
}

/// Writes Secrets (0400) and ConfigMaps (0440) under `/secrets` and `/configs`.
async fn place_files(config: &FetcherConfig, files: &[FetchFiles]) -> Result<(), FetchError> {
    for volume in files {
        let (base, mode) = match volume.dir.as_str() {
            "secrets" => (&config.secrets, 0o400),
            "configs" => (&config.configs, 0o440),
            other => {
                return Err(FetchError::BadRequest(format!(
                    "files.dir {other:?} is not \"secrets\" or \"configs\""
                )));
            }
        };
        for part in [&volume.namespace, &volume.name] {
            if !plain_name(part) {
                return Err(FetchError::BadRequest(format!(
                    "{} name {part:?} is not a plain path component",
                    volume.dir
                )));
            }
        }
        let dir = base.join(&volume.namespace).join(&volume.name);
        mkdir(&dir).map_err(|e| FetchError::Place(format!("{}: {e}", dir.display())))?;
        for (key, value) in &volume.entries {
            if !plain_name(key) {
                return Err(FetchError::BadRequest(format!(
                    "key {key:?} of {} {}/{} is not a plain file name",
                    volume.dir, volume.namespace, volume.name
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| {
                    FetchError::BadRequest(format!(
                        "key {key:?} of {} {}/{} is not base64: {e}",
                        volume.dir, volume.namespace, volume.name
                    ))
                })?;
            let path = dir.join(key);
            let _ = tokio::fs::remove_file(&path).await;
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .await
                .map_err(|e| FetchError::Place(format!("{}: {e}", path.display())))?;
            file.write_all(&bytes)
                .await
                .map_err(|e| FetchError::Place(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

async fn call_runtime(
    state: &FetcherState,
    request: &FetchRequest,
    filepath: &Path,
) -> Result<(), FetchError> {
    let url = format!("{}/v2/specialize", state.config.runtime_url);
    let body = serde_json::json!({
        "filepath": filepath.to_string_lossy(),
        "functionName": request.entrypoint,
        "env": request.env,
    });
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
    let (message, detail) = runtime_error(status.as_u16(), &bytes);
    Err(FetchError::Runtime {
        status: status.as_u16(),
        message,
        detail,
    })
}

/// The message and detail of a runtime's (or a fetcher's) error body: Kappa's
/// `{"error":{"message","traceback"|"detail"}}`, `{"message"}`, `{"error":"..."}` or plain text.
pub fn runtime_error(status: u16, body: &[u8]) -> (String, Option<String>) {
    const MAX_RAW: usize = 4096;
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = value
            .get("error")
            .filter(|e| e.is_object())
            .unwrap_or(&value);
        let text = |key: &str| error.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(message) = text("message").or_else(|| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        }) {
            return (message, text("traceback").or_else(|| text("detail")));
        }
    }
    let raw = String::from_utf8_lossy(body);
    let raw = raw.trim();
    if raw.is_empty() {
        return (
            format!("the runtime refused the specialization with status {status}"),
            None,
        );
    }
    let mut end = raw.len().min(MAX_RAW);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    (raw[..end].to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_never_debug_print_secrets() {
        let request = FetchRequest {
            archive_url: "http://api/v1/archives/x".into(),
            sha256: "x".into(),
            filename: None,
            entrypoint: "main.main".into(),
            env: BTreeMap::from([("PASSWORD".into(), "hunter2".into())]),
            files: vec![FetchFiles {
                dir: "secrets".into(),
                namespace: "default".into(),
                name: "db".into(),
                entries: BTreeMap::from([("password".into(), "aHVudGVyMg==".into())]),
            }],
            token: Some("tok-123".into()),
        };
        let text = format!("{request:?}");
        for secret in ["hunter2", "aHVudGVyMg==", "tok-123"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn error_bodies_read_well() {
        let body = br#"{"error":{"code":"import_error","message":"No module named 'x'","traceback":"Traceback"}}"#;
        assert_eq!(
            runtime_error(500, body),
            ("No module named 'x'".into(), Some("Traceback".into()))
        );
        assert!(runtime_error(500, b"").0.contains("500"));
        assert!(!plain_name("../x"));
        assert!(plain_name("hello.py"));
    }
}
