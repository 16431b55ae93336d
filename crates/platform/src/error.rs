//! Why the platform did not start.

/// A start-up failure: a setting that cannot work, or a part that did not start.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The settings cannot work together (names the flag and what was expected).
    #[error("{0}")]
    Config(String),
    /// Starting a part failed (`what` says which, `source` why).
    #[error("{what}: {source}")]
    Start {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PlatformError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }
}

/// `.ctx("what was being done")` on results, as anyhow's `context`.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PlatformError>;
    fn with_ctx(self, what: impl FnOnce() -> String) -> Result<T, PlatformError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PlatformError> {
        self.map_err(|e| PlatformError::Start {
            what: what.into(),
            source: Box::new(e),
        })
    }
    fn with_ctx(self, what: impl FnOnce() -> String) -> Result<T, PlatformError> {
        self.map_err(|e| PlatformError::Start {
            what: what(),
            source: Box::new(e),
        })
    }
}
