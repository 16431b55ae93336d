//! The HTTP client of Kappa's API: where the platform is (flags, environment, `client.json`),
//! typed CRUD on resources, archive upload, logs, test invocation and server info.
//!
//! Every failure is a [`ClientError`], whose variant decides the process exit code: the platform
//! could not be found or did not answer (3), or it answered with a refusal (1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kappa_types::{ErrorBody, Kind, Resource, Spec, ValidationError};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long to wait for a TCP connection to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary API call (CRUD, info) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an archive upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The most of an error body we read (a misbehaving server must not make us buffer gigabytes).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of a JSON response we read for one resource or a list.
const MAX_JSON_BODY: usize = 256 * 1024 * 1024;

/// The name of the file `kappa up` writes into the data directory.
pub const CLIENT_FILE: &str = "client.json";

/// What the user told us about where the platform is.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `--api-url` / `KAPPA_API_URL`.
    pub api_url: Option<String>,
    /// `--token` / `KAPPA_TOKEN`.
    pub token: Option<String>,
    /// `--data-dir` / `KAPPA_DATA_DIR`; `$HOME/.kappa` when unset.
    pub data_dir: Option<PathBuf>,
}

/// `<data-dir>/client.json`, written by `kappa up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFile {
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
}

/// Where the platform's API is, and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8890`.
    pub api_url: String,
    pub token: Option<String>,
    /// The public router, when `client.json` names it.
    pub router_url: Option<String>,
    /// Where `api_url` came from, for error messages (`KAPPA_API_URL` or the client.json path).
    pub origin: String,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
}

/// `POST /v1/archives` → 201; also an item of `GET /v1/archives`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct UploadedArchive {
    pub sha256: String,
    pub size: u64,
    /// `archive://sha256/<digest>`, how packages name it.
    pub url: String,
}

/// One line of `GET /v1/functions/{name}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub timestamp: String,
    pub instance: String,
    pub stream: String,
    pub message: String,
}

/// Why talking to the platform failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No API URL in the flags, the environment or `client.json`.
    #[error(
        "no Kappa platform found (no --api-url, no KAPPA_API_URL, no {path}): run `kappa up` or set KAPPA_API_URL"
    )]
    NotConfigured { path: String },
    /// `client.json` exists but cannot be read or parsed.
    #[error("reading {path}: {reason}: run `kappa up` again or set KAPPA_API_URL")]
    BadClientFile { path: String, reason: String },
    /// The API URL is not something this client can talk to.
    #[error(
        "the API URL {url:?} from {origin} is not usable: {reason}: run `kappa up` or set KAPPA_API_URL"
    )]
    BadUrl {
        url: String,
        origin: String,
        reason: String,
    },
    /// Nothing answered at the API URL.
    #[error(
        "cannot reach the Kappa API at {url} (from {origin}): {reason}: run `kappa up` or set KAPPA_API_URL"
    )]
    Unreachable {
        url: String,
        origin: String,
        reason: String,
    },
    /// The API answered with an error body (or a non-2xx status).
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
        invocation_id: Option<String>,
    },
    /// A value the CLI built failed the same validation the server applies.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The request was sent but no complete answer came back.
    #[error("{0}")]
    Transport(String),
    /// The answer was not what the API contract says.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// The process exit code for this failure: 3 when the platform is not there, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotConfigured { .. }
            | ClientError::BadClientFile { .. }
            | ClientError::BadUrl { .. }
            | ClientError::Unreachable { .. } => 3,
            _ => 1,
        }
    }

    /// The field at fault, when the API or the client-side validation named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { field, .. } => field.as_deref(),
            ClientError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The API's machine-readable code (`not_found`, `conflict`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<ValidationError> for ClientError {
    fn from(e: ValidationError) -> Self {
        ClientError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// The default data directory: `$HOME/.kappa`.
pub fn default_data_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".kappa"))
}

/// Reads `client.json` from `dir`; `Ok(None)` when it does not exist.
pub fn read_client_file(dir: &Path) -> Result<Option<ClientFile>, ClientError> {
    let path = dir.join(CLIENT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ClientError::BadClientFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ClientError::BadClientFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Decides where the platform is: `--api-url`/`KAPPA_API_URL` wins, then `client.json` in the
/// data directory. The token comes from `--token`/`KAPPA_TOKEN`, else from `client.json` when
/// it describes the same API URL (a token is never sent to a server it was not issued for).
pub fn resolve(opts: &ConnectOptions) -> Result<Endpoint, ClientError> {
    let data_dir = opts.data_dir.clone().or_else(default_data_dir);
    let file = match &data_dir {
        Some(dir) => read_client_file(dir)?,
        None => None,
    };
    let file_path = data_dir
        .as_ref()
        .map(|d| d.join(CLIENT_FILE).display().to_string())
        .unwrap_or_else(|| format!("$HOME/.kappa/{CLIENT_FILE}"));
    let explicit = opts
        .api_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let (api_url, origin) = match (explicit, &file) {
        (Some(url), _) => (url.to_string(), "--api-url/KAPPA_API_URL".to_string()),
        (None, Some(f)) => (f.api_url.clone(), file_path.clone()),
        (None, None) => return Err(ClientError::NotConfigured { path: file_path }),
    };
    let api_url = api_url.trim_end_matches('/').to_string();
    check_url(&api_url, &origin)?;
    let same_server = |f: &&ClientFile| f.api_url.trim_end_matches('/') == api_url;
    let token = opts.token.clone().filter(|t| !t.is_empty()).or_else(|| {
        file.as_ref()
            .filter(same_server)
            .and_then(|f| f.token.clone())
    });
    let router_url = file
        .as_ref()
        .filter(same_server)
        .and_then(|f| f.router_url.clone());
    Ok(Endpoint {
        api_url,
        token,
        router_url,
        origin,
    })
}

fn check_url(url: &str, origin: &str) -> Result<(), ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_string(),
        origin: origin.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" => {}
        "https" => return Err(bad("this build of kappa speaks plain http only")),
        other => {
            return Err(bad(&format!(
                "scheme {other:?} is not supported: expected http://"
            )));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(())
}

/// A connection to the API, bound to one namespace.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    namespace: String,
}

impl Client {
    /// A client for `endpoint`, scoped to `namespace`.
    pub fn new(endpoint: Endpoint, namespace: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("kappa-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ClientError::Transport(format!("building the HTTP client: {}", root_cause(&e)))
            })?;
        Ok(Self {
            http,
            endpoint,
            namespace: namespace.to_string(),
        })
    }

    /// The namespace every call is scoped to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Where the API is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.endpoint.api_url));
        match &self.endpoint.token {
            Some(token) => rb.bearer_auth(token),
            None => rb,
        }
    }

    /// Sends a request, turning connection failures into [`ClientError::Unreachable`].
    async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let request = rb.build().map_err(|e| {
            ClientError::Transport(format!("building the request: {}", root_cause(&e)))
        })?;
        let url = request.url().clone();
        tracing::debug!(method = %request.method(), %url, "request");
        match self.http.execute(request).await {
            Ok(response) => {
                tracing::debug!(status = response.status().as_u16(), %url, "response");
                Ok(response)
            }
            Err(e) if e.is_connect() => Err(ClientError::Unreachable {
                url: self.endpoint.api_url.clone(),
                origin: self.endpoint.origin.clone(),
                reason: root_cause(&e),
            }),
            Err(e) if e.is_timeout() => Err(ClientError::Transport(format!(
                "no answer from {} in time",
                url_path(&url)
            ))),
            Err(e) => Err(ClientError::Transport(format!(
                "request to {} failed: {}",
                url_path(&url),
                root_cause(&e)
            ))),
        }
    }

    /// Sends a request and returns the response when it is 2xx, the API error otherwise.
    async fn send_ok(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let response = self.send(rb).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from_response(response).await)
        }
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send_ok(rb.timeout(REQUEST_TIMEOUT)).await?;
        let url = response.url().path().to_string();
        let bytes = read_bounded(response, MAX_JSON_BODY).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    fn resource_path(&self, kind: Kind, name: Option<&str>) -> String {
        match name {
            Some(name) => format!("/v1/{}/{}", kind.plural(), encode_segment(name)),
            None => format!("/v1/{}", kind.plural()),
        }
    }

    /// `GET /v1/{plural}`: the items as they came (JSON).
    pub async fn list_raw(&self, kind: Kind) -> Result<Vec<serde_json::Value>, ClientError> {
        #[derive(Deserialize)]
        struct ListBody {
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let rb = self
            .request(Method::GET, &self.resource_path(kind, None))
            .query(&[("namespace", self.namespace.as_str())]);
        let body: ListBody = self.json(rb).await?;
        Ok(body.items)
    }

    /// `GET /v1/{plural}?allNamespaces=true`: the items of every namespace (JSON).
    pub async fn list_all_raw(&self, kind: Kind) -> Result<Vec<serde_json::Value>, ClientError> {
        #[derive(Deserialize)]
        struct ListBody {
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let rb = self
            .request(Method::GET, &self.resource_path(kind, None))
            .query(&[("allNamespaces", "true")]);
        let body: ListBody = self.json(rb).await?;
        Ok(body.items)
    }

    /// `POST /v1/batch[?dryRun=true]`: applies `operations` as one change (every object at its
    /// old or its new version afterwards); returns the API's `results`.
    pub async fn batch(
        &self,
        operations: Vec<serde_json::Value>,
        dry_run: bool,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        #[derive(Deserialize)]
        struct BatchBody {
            #[serde(default)]
            results: Vec<serde_json::Value>,
        }
        // No `namespace`: every object and delete of a batch names its own.
        let mut query = Vec::new();
        if dry_run {
            query.push(("dryRun", "true"));
        }
        let rb = self
            .request(Method::POST, "/v1/batch")
            .query(&query)
            .json(&serde_json::json!({ "operations": operations }));
        let body: BatchBody = self.json(rb).await?;
        Ok(body.results)
    }

    /// `HEAD /v1/archives/{sha256}`: whether the archive store holds it.
    pub async fn archive_exists(&self, sha256: &str) -> Result<bool, ClientError> {
        let rb = self
            .request(
                Method::HEAD,
                &format!("/v1/archives/{}", encode_segment(sha256)),
            )
            .timeout(REQUEST_TIMEOUT);
        let response = self.send(rb).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(error_from_response(response).await),
        }
    }

    /// `GET /v1/{plural}/{name}` as it came (JSON).
    pub async fn get_raw(&self, kind: Kind, name: &str) -> Result<serde_json::Value, ClientError> {
        let rb = self
            .request(Method::GET, &self.resource_path(kind, Some(name)))
            .query(&[("namespace", self.namespace.as_str())]);
        self.json(rb).await
    }

    /// `GET /v1/{functions|environments}/{name}/instances`: the pool manager's instances of
    /// one function or environment.
    pub async fn instances(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Vec<kappa_core::InstanceInfo>, ClientError> {
        #[derive(Deserialize)]
        struct ListBody {
            #[serde(default)]
            items: Vec<kappa_core::InstanceInfo>,
        }
        let path = format!("{}/instances", self.resource_path(kind, Some(name)));
        let rb = self
            .request(Method::GET, &path)
            .query(&[("namespace", self.namespace.as_str())]);
        let body: ListBody = self.json(rb).await?;
        Ok(body.items)
    }

    /// `GET /v1/{plural}`, typed.
    pub async fn list<S: Spec>(&self) -> Result<Vec<Resource<S>>, ClientError> {
        self.list_raw(S::KIND)
            .await?
            .into_iter()
            .map(typed::<S>)
            .collect()
    }

    /// `GET /v1/{plural}/{name}`, typed.
    pub async fn get<S: Spec>(&self, name: &str) -> Result<Resource<S>, ClientError> {
        typed(self.get_raw(S::KIND, name).await?)
    }

    /// `GET` that maps 404 to `None`.
    pub async fn find<S: Spec>(&self, name: &str) -> Result<Option<Resource<S>>, ClientError> {
        match self.get::<S>(name).await {
            Ok(r) => Ok(Some(r)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/{plural}`: creates the resource and returns it as stored (JSON).
    pub async fn create<S: Spec>(
        &self,
        resource: &Resource<S>,
    ) -> Result<serde_json::Value, ClientError> {
        let rb = self
            .request(Method::POST, &self.resource_path(S::KIND, None))
            .query(&[("namespace", self.namespace.as_str())])
            .json(resource);
        self.json(rb).await
    }

    /// `PUT /v1/{plural}/{name}`: replaces the resource (its `metadata.resourceVersion`, when
    /// set, is a precondition) and returns it as stored (JSON).
    pub async fn replace<S: Spec>(
        &self,
        resource: &Resource<S>,
    ) -> Result<serde_json::Value, ClientError> {
        let rb = self
            .request(
                Method::PUT,
                &self.resource_path(S::KIND, Some(&resource.metadata.name)),
            )
            .query(&[("namespace", self.namespace.as_str())])
            .json(resource);
        self.json(rb).await
    }

    /// `DELETE /v1/{plural}/{name}[?force=true]`: returns the deleted resource (JSON).
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        force: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let mut query = vec![("namespace", self.namespace.as_str())];
        if force {
            query.push(("force", "true"));
        }
        let rb = self
            .request(Method::DELETE, &self.resource_path(kind, Some(name)))
            .query(&query);
        self.json(rb).await
    }

    /// `POST /v1/archives` with the given bytes.
    pub async fn upload_bytes(&self, bytes: Vec<u8>) -> Result<UploadedArchive, ClientError> {
        self.upload(reqwest::Body::from(bytes)).await
    }

    /// `POST /v1/archives` streaming a file from disk.
    pub async fn upload_file(&self, file: tokio::fs::File) -> Result<UploadedArchive, ClientError> {
        let stream = tokio_util::io::ReaderStream::new(file);
        self.upload(reqwest::Body::wrap_stream(stream)).await
    }

    async fn upload(&self, body: reqwest::Body) -> Result<UploadedArchive, ClientError> {
        let rb = self
            .request(Method::POST, "/v1/archives")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        let response = self.send_ok(rb).await?;
        let bytes = read_bounded(response, MAX_ERROR_BODY).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: "/v1/archives".into(),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/archives`: every stored archive.
    pub async fn list_archives(&self) -> Result<Vec<UploadedArchive>, ClientError> {
        #[derive(Deserialize)]
        struct Items {
            items: Vec<UploadedArchive>,
        }
        let items: Items = self.json(self.request(Method::GET, "/v1/archives")).await?;
        Ok(items.items)
    }

    /// `GET /v1/archives/{sha256}`: the response, its body to be streamed.
    pub async fn download_archive(&self, sha256: &str) -> Result<Response, ClientError> {
        let rb = self
            .request(
                Method::GET,
                &format!("/v1/archives/{}", encode_segment(sha256)),
            )
            .timeout(UPLOAD_TIMEOUT);
        self.send_ok(rb).await
    }

    /// `DELETE /v1/archives/{sha256}` (refused while a package uses it).
    pub async fn delete_archive(&self, sha256: &str) -> Result<UploadedArchive, ClientError> {
        self.json(self.request(
            Method::DELETE,
            &format!("/v1/archives/{}", encode_segment(sha256)),
        ))
        .await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<ServerInfo, ClientError> {
        self.json(self.request(Method::GET, "/v1/info")).await
    }

    /// `GET /v1/functions/{name}/logs`: the NDJSON response, to be read as a stream.
    pub async fn logs(
        &self,
        function: &str,
        tail: Option<usize>,
        instance: Option<&str>,
        follow: bool,
    ) -> Result<Response, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("namespace", self.namespace.clone())];
        if let Some(tail) = tail {
            query.push(("tail", tail.to_string()));
        }
        if let Some(instance) = instance {
            query.push(("instance", instance.to_string()));
        }
        if follow {
            query.push(("follow", "true".into()));
        }
        let mut rb = self
            .request(
                Method::GET,
                &format!("/v1/functions/{}/logs", encode_segment(function)),
            )
            .query(&query);
        if !follow {
            rb = rb.timeout(REQUEST_TIMEOUT);
        }
        self.send_ok(rb).await
    }

    /// `GET /v1/functions/{name}/versions`: the current version number and the kept versions,
    /// oldest first.
    pub async fn versions(
        &self,
        function: &str,
    ) -> Result<(Option<u32>, Vec<kappa_types::FunctionVersion>), ClientError> {
        #[derive(Deserialize)]
        struct VersionsBody {
            #[serde(default)]
            current: Option<u32>,
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let rb = self
            .request(
                Method::GET,
                &format!("/v1/functions/{}/versions", encode_segment(function)),
            )
            .query(&[("namespace", self.namespace.as_str())]);
        let body: VersionsBody = self.json(rb).await?;
        let items = body
            .items
            .into_iter()
            .map(typed::<kappa_types::FunctionVersionSpec>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((body.current, items))
    }

    /// `POST /v1/functions/{name}/rollback[?to=N]`: the function after the rollback.
    pub async fn rollback(
        &self,
        function: &str,
        to: Option<u32>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut query = vec![("namespace", self.namespace.clone())];
        if let Some(to) = to {
            query.push(("to", to.to_string()));
        }
        let rb = self
            .request(
                Method::POST,
                &format!("/v1/functions/{}/rollback", encode_segment(function)),
            )
            .query(&query);
        self.json(rb).await
    }

    /// `GET /v1/functions/{name}/invocations`: the function's asynchronous invocations,
    /// newest first (without their request bodies).
    pub async fn invocations(
        &self,
        function: &str,
        limit: Option<u64>,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        #[derive(Deserialize)]
        struct ListBody {
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let path = format!("/v1/functions/{}/invocations", encode_segment(function));
        let mut rb = self
            .request(Method::GET, &path)
            .query(&[("namespace", self.namespace.as_str())]);
        if let Some(limit) = limit {
            rb = rb.query(&[("limit", limit)]);
        }
        let body: ListBody = self.json(rb).await?;
        Ok(body.items)
    }

    /// `GET /v1/invocations/{id}`: one asynchronous invocation with its outcome.
    pub async fn invocation(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let rb = self
            .request(
                Method::GET,
                &format!("/v1/invocations/{}", encode_segment(id)),
            )
            .query(&[("namespace", self.namespace.as_str())]);
        self.json(rb).await
    }

    /// `ANY /v1/functions/{name}/invoke[/{subpath}]`: the function's response, whatever its
    /// status (the caller decides what a non-2xx means).
    pub async fn invoke(&self, function: &str, call: Invocation) -> Result<Response, ClientError> {
        let subpath = call.subpath.trim_start_matches('/');
        let mut path = format!("/v1/functions/{}/invoke", encode_segment(function));
        if !subpath.is_empty() {
            path.push('/');
            path.push_str(subpath);
        }
        let mut query = call.query;
        if self.namespace != kappa_types::DEFAULT_NAMESPACE {
            query.insert(0, ("namespace".into(), self.namespace.clone()));
        }
        let mut rb = self.request(call.method, &path).timeout(call.timeout);
        if !query.is_empty() {
            rb = rb.query(&query);
        }
        for (name, value) in call.headers {
            rb = rb.header(name, value);
        }
        if let Some(body) = call.body {
            rb = rb.body(body);
        }
        self.send(rb).await.map_err(|e| match e {
            ClientError::Transport(m) if m.starts_with("no answer") => {
                ClientError::Transport(format!(
                    "function '{function}' did not answer within {}",
                    crate::output::format_duration(call.timeout)
                ))
            }
            other => other,
        })
    }
}

/// A test invocation (`kappa fn test`).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub method: Method,
    pub subpath: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout: Duration,
}

/// Parses a resource the API returned.
pub fn typed<S: Spec>(value: serde_json::Value) -> Result<Resource<S>, ClientError> {
    Resource::<S>::from_json(value).map_err(|e| ClientError::Decode {
        url: format!("/v1/{}", S::KIND.plural()),
        reason: e.to_string(),
    })
}

/// Reads at most `limit` bytes of a body; more is an error.
pub async fn read_bounded(mut response: Response, limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(ClientError::Transport(format!(
                        "the answer from {} is larger than {limit} bytes",
                        response.url().path()
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(ClientError::Transport(format!(
                    "reading the answer from {}: {}",
                    response.url().path(),
                    root_cause(&e)
                )));
            }
        }
    }
}

/// Turns a non-2xx response into [`ClientError::Api`], from its JSON error body when it has one.
pub async fn error_from_response(response: Response) -> ClientError {
    let status = response.status();
    let invocation_header = response
        .headers()
        .get("x-kappa-invocation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_bounded(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    error_from_body(status, &bytes, invocation_header)
}

/// Builds [`ClientError::Api`] from a status and a body (JSON error body or plain text).
pub fn error_from_body(
    status: StatusCode,
    bytes: &[u8],
    invocation_id: Option<String>,
) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
            invocation_id: body.error.invocation_id.or(invocation_id),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("the API answered {status}")
            } else {
                format!("the API answered {status}: {}", first_line(text, 300))
            };
            ClientError::Api {
                status: status.as_u16(),
                code: status.as_str().to_string(),
                message,
                field: None,
                invocation_id,
            }
        }
    }
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which is what a
/// person needs; reqwest's outer layers only repeat the URL.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn url_path(url: &reqwest::Url) -> String {
    url.path().to_string()
}

/// Percent-encodes one path segment (resource names are DNS labels, but a user may type anything).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(file: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = file {
            std::fs::write(dir.path().join(CLIENT_FILE), text).unwrap();
        }
        dir
    }

    #[test]
    fn flags_win_over_client_file() {
        let dir = dir_with(Some(
            r#"{"apiUrl":"http://127.0.0.1:1/","token":"t1","routerUrl":"http://r"}"#,
        ));
        let ep = resolve(&ConnectOptions {
            api_url: Some("http://127.0.0.1:2/".into()),
            token: None,
            data_dir: Some(dir.path().into()),
        })
        .unwrap();
        assert_eq!(ep.api_url, "http://127.0.0.1:2");
        // The file's token belongs to another server: not sent.
        assert_eq!(ep.token, None);
        assert_eq!(ep.router_url, None);
    }

    #[test]
    fn client_file_is_used() {
        let dir = dir_with(Some(
            r#"{"apiUrl":"http://127.0.0.1:1","token":"t1","routerUrl":"http://r"}"#,
        ));
        let ep = resolve(&ConnectOptions {
            data_dir: Some(dir.path().into()),
            ..ConnectOptions::default()
        })
        .unwrap();
        assert_eq!(ep.api_url, "http://127.0.0.1:1");
        assert_eq!(ep.token.as_deref(), Some("t1"));
        assert_eq!(ep.router_url.as_deref(), Some("http://r"));
        assert!(ep.origin.ends_with(CLIENT_FILE));
    }

    #[test]
    fn nothing_found_is_exit_3() {
        let dir = dir_with(None);
        let err = resolve(&ConnectOptions {
            data_dir: Some(dir.path().into()),
            ..ConnectOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("kappa up"), "{err}");
        let dir = dir_with(Some("{not json"));
        let err = resolve(&ConnectOptions {
            data_dir: Some(dir.path().into()),
            ..ConnectOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains(CLIENT_FILE), "{err}");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["https://x", "ftp://x", "not a url"] {
            let err = resolve(&ConnectOptions {
                api_url: Some(url.into()),
                data_dir: Some("/nonexistent".into()),
                ..ConnectOptions::default()
            })
            .unwrap_err();
            assert_eq!(err.exit_code(), 3, "{url}");
        }
    }

    #[test]
    fn error_bodies() {
        let e = error_from_body(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"invalid","message":"1000 is out of range","field":"spec.poolsize"}}"#,
            None,
        );
        assert_eq!(e.field(), Some("spec.poolsize"));
        assert_eq!(e.code(), Some("invalid"));
        assert_eq!(e.exit_code(), 1);
        let e = error_from_body(StatusCode::BAD_GATEWAY, b"<html>\nbad", None);
        assert_eq!(e.to_string(), "the API answered 502 Bad Gateway: <html>");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("hello-1"), "hello-1");
        assert_eq!(encode_segment("../x y"), "..%2Fx%20y");
    }
}
