//! Test harness: the real API server (MemoryStore, temporary archive and log stores, a token) on
//! 127.0.0.1:0 in a background runtime, and the real `kappa` binary run against it with its
//! configuration passed per command (the test process's environment is never changed).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use kappa_api::{ApiState, Invoker};
use kappa_archive::ArchiveStore;
use kappa_core::FunctionId;
use kappa_logs::{LogConfig, LogStore};
use kappa_store::MemoryStore;
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "cli-test-token";

/// How long one CLI run may take before the test fails (a hang is a bug, not a slow machine).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// One API server under test, and a scratch directory.
pub struct Platform {
    rt: tokio::runtime::Runtime,
    pub url: String,
    pub state: ApiState,
    pub archives: Arc<ArchiveStore>,
    pub logs: Arc<LogStore>,
    pub dir: TempDir,
    shutdown: CancellationToken,
}

impl Platform {
    pub fn start() -> Self {
        Self::start_with(|state| state)
    }

    /// Starts with a fake invoker for `fn test`.
    pub fn with_invoker() -> Self {
        Self::start_with(|state| state.with_invoker(Arc::new(EchoInvoker)))
    }

    pub fn start_with(configure: impl FnOnce(ApiState) -> ApiState) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let archives = Arc::new(ArchiveStore::open(dir.path().join("archives"), 64 << 20).unwrap());
        let logs = Arc::new(LogStore::open(dir.path().join("logs"), LogConfig::default()).unwrap());
        let state = configure(
            ApiState::new(Arc::new(MemoryStore::new()), archives.clone(), logs.clone())
                .with_token(TOKEN),
        );
        let shutdown = CancellationToken::new();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(kappa_api::serve(listener, state.clone(), shutdown.clone()));
        Self {
            rt,
            url,
            state,
            archives,
            logs,
            dir,
            shutdown,
        }
    }

    /// A `kappa` command pointed at this platform with `KAPPA_API_URL`/`KAPPA_TOKEN`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bare_command(self.home());
        cmd.env("KAPPA_API_URL", &self.url)
            .env("KAPPA_TOKEN", TOKEN)
            .args(args);
        cmd
    }

    /// Runs `kappa ARGS` against this platform.
    pub fn kappa(&self, args: &[&str]) -> Run {
        run(self.command(args))
    }

    /// Runs `kappa ARGS` and requires success.
    pub fn ok(&self, args: &[&str]) -> Run {
        self.kappa(args).success(args)
    }

    /// Runs `kappa ARGS -o json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        self.ok(&all).json()
    }

    /// An empty `$HOME` for the CLI (so a developer's ~/.kappa never leaks into a test).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Writes a file under the scratch directory and returns its path.
    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join("work").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The bytes of an archive in the platform's archive store.
    pub fn blob(&self, sha256: &str) -> Vec<u8> {
        self.block_on(async {
            use tokio::io::AsyncReadExt;
            let mut file = self.archives.open_blob(sha256).await.unwrap();
            let mut out = Vec::new();
            file.read_to_end(&mut out).await.unwrap();
            out
        })
    }

    /// How many `POST /v1/archives` the API answered (from its metrics).
    pub fn archive_uploads(&self) -> u64 {
        self.state
            .metrics
            .encode()
            .lines()
            .filter(|l| {
                l.starts_with("kappa_api_requests_total")
                    && l.contains("route=\"/v1/archives\"")
                    && l.contains("method=\"POST\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Creates the `python` environment the function tests use.
    pub fn python_env(&self) {
        self.ok(&["env", "create", "--name", "python", "--image", "python"]);
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A `kappa` command with no platform configured, `$HOME` set to `home`.
pub fn bare_command(home: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kappa"));
    for var in ["KAPPA_API_URL", "KAPPA_TOKEN", "KAPPA_DATA_DIR", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home.as_ref());
    cmd
}

/// What a run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(self, args: &[&str]) -> Self {
        assert_eq!(
            self.code, 0,
            "kappa {args:?} failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a command to completion with a bound on its duration.
pub fn run(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, RUN_LIMIT);
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kappa did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A table with its last column (AGE, which depends on the clock) removed.
pub fn without_age(table: &str) -> String {
    table
        .lines()
        .map(|line| match line.trim_end().rsplit_once(' ') {
            Some((rest, _)) => format!("{}\n", rest.trim_end()),
            None => "\n".into(),
        })
        .collect()
}

/// A fake router for `fn test`: echoes the request, fails on `/fail` (plain text 500) and
/// `/timeout` (a JSON error body with an invocation id, as the router sends).
pub struct EchoInvoker;

#[async_trait]
impl Invoker for EchoInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let response = http::Response::builder().header("x-kappa-invocation-id", "inv-123");
        match parts.uri.path() {
            "/fail" => response.status(500).body(Body::from("boom\n")).unwrap(),
            "/timeout" => response
                .status(504)
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"error":{"code":"timeout","message":"function hello did not answer within 60s","invocationId":"inv-123"}}"#,
                ))
                .unwrap(),
            _ => {
                let header = parts
                    .headers
                    .get("x-test")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let text = format!(
                    "{} {} {}\nx-test: {header}\n{}",
                    function,
                    parts.method,
                    parts.uri,
                    String::from_utf8_lossy(&body)
                );
                response.status(200).body(Body::from(text)).unwrap()
            }
        }
    }
}
