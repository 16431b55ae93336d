//! How the builder reaches archives: [`BuildArchives`], with two implementations.
//!
//! - [`ArchiveStore`] itself, when the builder runs next to the API server's archive directory
//!   (`kappa up`, or a `kappa server` that also serves the API).
//! - [`ApiArchives`], when it does not (the builder role in a cluster, and the steps of a
//!   builder pod): archives are downloaded from and uploaded to the API server
//!   (`GET`/`HEAD`/`POST /v1/archives`) with a bearer token, and what is downloaded is kept in a
//!   local [`ArchiveStore`] used as a cache (content-addressed, so a download whose digest is not
//!   the one asked for is refused).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use kappa_archive::{ArchiveError, ArchiveStore, ExtractLimits, Extracted};

/// Why an archive could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveAccessError {
    /// The local archive store (or the download cache) failed or refused the archive.
    #[error(transparent)]
    Store(#[from] ArchiveError),
    /// The API server answered with an error.
    #[error("the API server answered {status} to {what}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    /// The API server could not be reached, or its answer not read.
    #[error("{what} failed: {message}")]
    Transport { what: String, message: String },
}

/// The archive operations a build needs.
#[async_trait]
pub trait BuildArchives: Send + Sync + 'static {
    /// Stores `bytes`; returns their sha256.
    async fn put_bytes(&self, bytes: &[u8]) -> Result<String, ArchiveAccessError>;
    /// The archive `sha256` extracted on this machine (see [`ArchiveStore::extracted`]).
    async fn extracted(
        &self,
        sha256: &str,
        filename: Option<&str>,
    ) -> Result<Extracted, ArchiveAccessError>;
    /// Whether the archive `sha256` is stored.
    async fn exists(&self, sha256: &str) -> Result<bool, ArchiveAccessError>;
}

#[async_trait]
impl BuildArchives for ArchiveStore {
    async fn put_bytes(&self, bytes: &[u8]) -> Result<String, ArchiveAccessError> {
        Ok(ArchiveStore::put_bytes(self, bytes).await?.sha256)
    }

    async fn extracted(
        &self,
        sha256: &str,
        filename: Option<&str>,
    ) -> Result<Extracted, ArchiveAccessError> {
        Ok(ArchiveStore::extracted(self, sha256, filename).await?)
    }

    async fn exists(&self, sha256: &str) -> Result<bool, ArchiveAccessError> {
        Ok(self.info(sha256).await?.is_some())
    }
}

/// Archives through the API server, with a local download cache.
pub struct ApiArchives {
    http: reqwest::Client,
    api_url: String,
    token: Option<String>,
    cache: ArchiveStore,
}

impl std::fmt::Debug for ApiArchives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArchives")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ApiArchives {
    /// Archives of the API server at `api_url` (`http://kappa-api:8080`), authenticated with
    /// `token` (the platform token, or a builder pod's build token), downloads cached in
    /// `cache_dir` (created) and refused over `max_archive_bytes` or `limits`. `timeout` bounds
    /// each request.
    pub fn new(
        api_url: &str,
        token: Option<String>,
        cache_dir: impl Into<PathBuf>,
        max_archive_bytes: u64,
        limits: ExtractLimits,
        timeout: Duration,
    ) -> Result<Self, ArchiveAccessError> {
        let cache = ArchiveStore::open(cache_dir, max_archive_bytes)?.with_extract_limits(limits);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ArchiveAccessError::Transport {
                what: "creating the HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            cache,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.api_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ArchiveAccessError> {
        request
            .send()
            .await
            .map_err(|e| ArchiveAccessError::Transport {
                what: what.to_owned(),
                message: e.to_string(),
            })
    }

    async fn refusal(what: &str, response: reqwest::Response) -> ArchiveAccessError {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        // The API's JSON error body, else the text as it came.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        ArchiveAccessError::Api {
            what: what.to_owned(),
            status,
            message,
        }
    }
}

#[async_trait]
impl BuildArchives for ApiArchives {
    async fn put_bytes(&self, bytes: &[u8]) -> Result<String, ArchiveAccessError> {
        let what = "uploading an archive";
        let response = Self::send(
            what,
            self.request(reqwest::Method::POST, "/v1/archives")
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.to_vec()),
        )
        .await?;
        if !response.status().is_success() {
            return Err(Self::refusal(what, response).await);
        }
        let body: serde_json::Value =
            response
                .json()
                .await
                .map_err(|e| ArchiveAccessError::Transport {
                    what: what.to_owned(),
                    message: format!("reading the answer: {e}"),
                })?;
        let sha = body["sha256"].as_str().unwrap_or_default();
        let expected = kappa_archive::sha256_hex(bytes);
        if sha != expected {
            return Err(ArchiveAccessError::Transport {
                what: what.to_owned(),
                message: format!("the API server stored sha256 {sha:?}, not {expected}"),
            });
        }
        Ok(expected)
    }

    async fn extracted(
        &self,
        sha256: &str,
        filename: Option<&str>,
    ) -> Result<Extracted, ArchiveAccessError> {
        if self.cache.info(sha256).await?.is_none() {
            let what = format!("downloading archive {sha256}");
            if !kappa_archive::is_valid_digest(sha256) {
                return Err(ArchiveAccessError::Transport {
                    what,
                    message: "not a sha256 digest".into(),
                });
            }
            let response = Self::send(
                &what,
                self.request(reqwest::Method::GET, &format!("/v1/archives/{sha256}")),
            )
            .await?;
            if !response.status().is_success() {
                return Err(Self::refusal(&what, response).await);
            }
            let stored = self
                .cache
                .put_stream(response.bytes_stream().map_err(std::io::Error::other))
                .await?;
            if stored.sha256 != sha256 {
                self.cache.delete(&stored.sha256).await?;
                return Err(ArchiveAccessError::Transport {
                    what,
                    message: format!("the download's sha256 is {}", stored.sha256),
                });
            }
        }
        Ok(self.cache.extracted(sha256, filename).await?)
    }

    async fn exists(&self, sha256: &str) -> Result<bool, ArchiveAccessError> {
        let what = format!("looking up archive {sha256}");
        let response = Self::send(
            &what,
            self.request(reqwest::Method::HEAD, &format!("/v1/archives/{sha256}")),
        )
        .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::refusal(&what, response).await),
        }
    }
}
