//! A real `nats-server -js`, `redis-server` or Kafka-protocol broker (`tansu`) on a free
//! loopback port with temporary storage, stopped (killed) when dropped: for the trigger tests
//! and the system tests.
//!
//! `scripts/install-deps.sh` installs them (Debian packages `nats-server`, `redis-server`;
//! `cargo install tansu`). A missing one is an error (the test fails), never a skip.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (free when asked; the caller binds it right after).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_binary(name: &str) -> io::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} is not installed (run scripts/install-deps.sh)"),
            )
        })
}

/// A broker server process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Server {
    fn spawn(
        program: PathBuf,
        args: Vec<String>,
        dir: tempfile::TempDir,
        port: u16,
    ) -> io::Result<Self> {
        let log = dir.path().join("server.log");
        let mut server = Self {
            child: None,
            dir,
            port,
            program,
            args,
            log,
        };
        server.start()?;
        Ok(server)
    }

    /// Starts the process again (after [`Server::kill`]) on the same port and storage.
    pub fn start(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "{} exited with {status}: {}",
                    self.program.display(),
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not listen on {addr}", self.program.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the server (its storage stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its storage directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `nats-server -js` on a free port.
#[derive(Debug)]
pub struct NatsServer(pub Server);

impl NatsServer {
    /// Starts one on a free port.
    pub fn start() -> io::Result<Self> {
        Self::start_on(free_port()?)
    }

    /// Starts one on `port`.
    pub fn start_on(port: u16) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kappa-nats-").tempdir()?;
        let args = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.path().join("js").display().to_string(),
        ];
        Server::spawn(find_binary("nats-server")?, args, dir, port).map(Self)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }
}

/// `redis-server` on a free port, without persistence.
#[derive(Debug)]
pub struct RedisServer(pub Server);

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> io::Result<Self> {
        let port = free_port()?;
        let dir = tempfile::Builder::new().prefix("kappa-redis-").tempdir()?;
        let args = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
        ];
        Server::spawn(find_binary("redis-server")?, args, dir, port).map(Self)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }
}

/// Where `tansu` is: on `PATH`, else in `~/.cargo/bin` (where `cargo install` puts it).
pub fn tansu_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("tansu"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join("tansu"));
    on_path.chain(cargo_home).find(|p| p.is_file())
}

/// A Kafka-protocol broker (`tansu broker`, in-memory storage) on a free port.
#[derive(Debug)]
pub struct KafkaServer(pub Server);

impl KafkaServer {
    /// Starts one on a free port (an error when `tansu` is not installed).
    pub fn start() -> io::Result<Self> {
        let program = tansu_binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "tansu (a Kafka-protocol broker) is not installed (run scripts/install-deps.sh)",
            )
        })?;
        let port = free_port()?;
        let dir = tempfile::Builder::new().prefix("kappa-kafka-").tempdir()?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let args = vec![
            "broker".into(),
            "--listener-url".into(),
            listener.clone(),
            "--advertised-listener-url".into(),
            listener,
            "--storage-engine".into(),
            "memory://tansu/".into(),
        ];
        Server::spawn(program, args, dir, port).map(Self)
    }

    /// `kafka://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.0.port)
    }
}

/// A line echo server on the host's loopback, in a process of its own (a stand-in for a
/// development database a function may be allowed to reach through `hostPorts`; a process of
/// its own because the platform never relays to its own listeners): answers each
/// connection's first line with `echo <port>`. Killed when dropped.
#[derive(Debug)]
pub struct LineEcho {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl LineEcho {
    /// Starts one on a free port (`python3`).
    pub fn start() -> Self {
        use std::io::BufRead;
        const SERVER: &str = r#"
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(("echo %d\n" % self.server.server_address[1]).encode())
s = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the echo server's port line");
        let port = line.trim().parse().expect("the echo server's port");
        Self { child, port }
    }
}

impl Drop for LineEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
