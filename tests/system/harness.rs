//! Starts `kappa up` in a temporary data directory and drives it through the CLI and HTTP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kappa_test_support::eventually_blocking;

/// The `kappa` binary under test.
pub fn kappa_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kappa")
}

/// The repository root (examples and fixtures live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A path under `functions/`.
pub fn function_path(rel: &str) -> String {
    repo_root()
        .join("functions")
        .join(rel)
        .display()
        .to_string()
}

/// What the listeners are given on the first start: port 0, so the kernel picks free ports as
/// `kappa up` binds them (no race with other tests); the addresses are read back from what it
/// prints.
const ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The router, API and admin addresses `kappa up` announced last in `log` (its
/// `  router  http://ADDR` lines on stdout).
fn announced(log: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let find = |name: &str| -> Option<SocketAddr> {
        log.lines().rev().find_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some(name) {
                return None;
            }
            words.next()?.strip_prefix("http://")?.parse().ok()
        })
    };
    Some((find("router")?, find("api")?, find("admin")?))
}

/// One running platform.
pub struct Platform {
    pub data_dir: tempfile::TempDir,
    pub router: SocketAddr,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
    log_path: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables `kappa up` gets besides the test's own.
    extra_env: Vec<(String, String)>,
}

impl Platform {
    /// Starts `kappa up` without the bundled example.
    pub fn start() -> Self {
        Self::start_with(&["--no-example"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Starts `kappa up` with extra arguments and environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::Builder::new()
            .prefix("kappa-it-")
            .tempdir()
            .expect("temp dir");
        let log_path = data_dir.path().join("kappa-up.log");
        let mut p = Platform {
            router: ANY_PORT,
            api: ANY_PORT,
            admin: ANY_PORT,
            data_dir,
            child: None,
            log_path,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("kappa up exited:\n{log}");
        }
    }

    /// Starts `kappa up` (on port 0 the first time, on the ports it bound then after that) and
    /// waits until it is ready, reading its addresses back from what it prints; its log so far
    /// if it exited instead.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open platform log");
        // Only what this start prints counts (the log is appended to across restarts).
        let from = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let child = Command::new(kappa_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--router-addr")
            .arg(self.router.to_string())
            .arg("--api-addr")
            .arg(self.api.to_string())
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .args(&self.extra_args)
            .env("RUST_LOG", "info,kappa=debug")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env_remove("KAPPA_API_URL")
            .env_remove("KAPPA_TOKEN")
            .env_remove("KAPPA_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start kappa up");
        self.child = Some(child);
        let addresses =
            eventually_blocking(Duration::from_secs(60), "kappa up to be ready", || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    return Some(Err(format!("exit status {status}\n{}", self.log())));
                }
                // Announced once everything is served (after client.json is written).
                let (router, api, admin) = announced(self.log().get(from..).unwrap_or(""))?;
                let ready = http(admin, "GET", "/readyz", &[], b"")
                    .map(|r| r.status == 200)
                    .unwrap_or(false);
                let configured = self.data_dir.path().join("client.json").exists();
                (ready && configured).then_some(Ok((router, api, admin)))
            })?;
        (self.router, self.api, self.admin) = addresses;
        Ok(())
    }

    /// What `kappa up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// `kill -9` the platform.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("kappa up did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI against this platform (found through `--data-dir`'s client.json).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(kappa_bin())
            .args(args)
            .env("KAPPA_DATA_DIR", self.data_dir.path())
            .env_remove("KAPPA_API_URL")
            .env_remove("KAPPA_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run kappa")
    }

    /// Runs the CLI and asserts it succeeded, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "kappa {args:?} failed ({}):\nstdout: {}\nstderr: {}\nplatform log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and asserts it failed, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "kappa {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The API token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// A request to the public router.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http(self.router, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", tail(&self.log(), 40)))
    }

    /// A request to the API server with the token.
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let auth = format!("Bearer {}", self.token());
        http(
            self.api,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Creates the `python` environment with the given extra flags.
    pub fn python_env(&self, extra: &[&str]) {
        let mut args = vec!["env", "create", "--name", "python", "--image", "python"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Deploys `functions/<file>` as function `name` with a GET route at `url`.
    pub fn deploy(&self, name: &str, file: &str, url: &str, extra: &[&str]) {
        let code = function_path(file);
        let mut args = vec![
            "fn", "create", "--name", name, "--env", "python", "--code", &code,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
        self.ok(&[
            "route",
            "create",
            "--name",
            name,
            "--url",
            url,
            "--function",
            name,
            "--method",
            "GET",
            "--method",
            "POST",
        ]);
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal blocking HTTP/1.1 client (one request per connection), so the tests see exactly
/// what the platform sends.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    // A server may answer (413) and close before the whole body is sent: read what it said.
    let sent = stream.write_all(body);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        sent?;
        read?;
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
