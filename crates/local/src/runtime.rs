//! Which command line starts an environment's runtime server.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kappa_core::BackendError;

/// Where the runtime's own directory appears inside the sandbox.
pub(crate) const SANDBOX_RUNTIME_DIR: &str = "/runtime";

/// The interpreter a built-in runtime's server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interpreter {
    Python,
    Node,
}

impl Interpreter {
    fn program(self) -> &'static str {
        match self {
            Self::Python => "python3",
            Self::Node => "node",
        }
    }
}

#[derive(Debug, Clone)]
struct BuiltIn {
    name: &'static str,
    interpreter: Interpreter,
    /// The server file, relative to the runtime's directory.
    script: &'static str,
}

/// Maps an environment's image (a built-in runtime name, an alias or a Fission image name) or
/// explicit command to the command line that starts its runtime server.
#[derive(Debug, Clone)]
pub struct RuntimeRegistry {
    runtimes_dir: PathBuf,
    builtins: Vec<BuiltIn>,
}

/// A located interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    path: PathBuf,
    /// The installation prefix to bind into the sandbox when it lies outside `/usr`.
    prefix: Option<PathBuf>,
}

/// A runtime resolved to what must be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedRuntime {
    /// A built-in runtime: an interpreter running a server file from the runtimes directory.
    BuiltIn(BuiltInRuntime),
    /// An explicit command, run with `/bin/sh -c`; it must listen on `$PORT`.
    Command(String),
}

/// A built-in runtime ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltInRuntime {
    /// The built-in name (`python`, `nodejs`, `binary`).
    pub name: &'static str,
    /// The interpreter on the host.
    pub interpreter: PathBuf,
    /// The interpreter's installation prefix when it lies outside `/usr` (bound read-only into
    /// the sandbox at the same path).
    pub interpreter_prefix: Option<PathBuf>,
    /// The runtime's directory on the host (bound read-only at `/runtime` in the sandbox).
    pub dir: PathBuf,
    /// The server file's name inside `dir`.
    pub script: String,
}

impl RuntimeRegistry {
    /// A registry of the built-in runtimes under `runtimes_dir`: `python` always
    /// (`python/server.py`), `nodejs` (`nodejs/server.js`) and `binary` (`binary/server.py`) only
    /// when their server file exists.
    pub fn new(runtimes_dir: PathBuf) -> Self {
        let mut builtins = vec![BuiltIn {
            name: "python",
            interpreter: Interpreter::Python,
            script: "server.py",
        }];
        let optional = [
            BuiltIn {
                name: "nodejs",
                interpreter: Interpreter::Node,
                script: "server.js",
            },
            BuiltIn {
                name: "binary",
                interpreter: Interpreter::Python,
                script: "server.py",
            },
        ];
        for builtin in optional {
            if runtimes_dir
                .join(builtin.name)
                .join(builtin.script)
                .is_file()
            {
                builtins.push(builtin);
            }
        }
        Self {
            runtimes_dir,
            builtins,
        }
    }

    /// The directory the built-in runtimes are read from.
    pub fn runtimes_dir(&self) -> &Path {
        &self.runtimes_dir
    }

    /// The registered built-in names.
    pub fn names(&self) -> Vec<&'static str> {
        self.builtins.iter().map(|b| b.name).collect()
    }

    /// The built-in runtime `image` names (as [`RuntimeRegistry::resolve`] matches it), without
    /// looking for its interpreter; `None` when it names none.
    pub fn builtin_for(&self, image: &str) -> Option<&'static str> {
        let key = image_key(image);
        self.builtins
            .iter()
            .find(|b| matches_builtin(b.name, &key))
            .map(|b| b.name)
    }

    /// Resolves an environment's runtime. An explicit, non-empty `command` wins; otherwise
    /// `image` must name a built-in runtime, an alias (`python3`, `python-env`, `node`, ...) or
    /// a Fission image whose last path component starts with the runtime's name
    /// (`ghcr.io/fission/python-env-3.11`).
    pub fn resolve(
        &self,
        image: &str,
        command: Option<&str>,
    ) -> Result<ResolvedRuntime, BackendError> {
        if let Some(command) = command.map(str::trim).filter(|c| !c.is_empty()) {
            return Ok(ResolvedRuntime::Command(command.to_owned()));
        }
        let key = image_key(image);
        let builtin = self
            .builtins
            .iter()
            .find(|b| matches_builtin(b.name, &key))
            .ok_or_else(|| {
                BackendError::Start(format!(
                    "unknown runtime image {image:?}: locally an environment's image must be one of the \
                     built-in runtimes ({}) or the environment must give a command",
                    self.names().join(", ")
                ))
            })?;
        let dir = self.runtimes_dir.join(builtin.name);
        if !dir.join(builtin.script).is_file() {
            return Err(BackendError::Start(format!(
                "runtime {}: server file {} not found",
                builtin.name,
                dir.join(builtin.script).display()
            )));
        }
        let located = locate(builtin.interpreter).ok_or_else(|| {
            BackendError::Start(format!(
                "runtime {}: interpreter {} not found in /usr/bin or on PATH",
                builtin.name,
                builtin.interpreter.program()
            ))
        })?;
        Ok(ResolvedRuntime::BuiltIn(BuiltInRuntime {
            name: builtin.name,
            interpreter: located.path,
            interpreter_prefix: located.prefix,
            dir,
            script: builtin.script.to_owned(),
        }))
    }
}

impl ResolvedRuntime {
    /// The built-in name, or `command`.
    pub fn name(&self) -> &str {
        match self {
            Self::BuiltIn(b) => b.name,
            Self::Command(_) => "command",
        }
    }

    /// The command line that starts the server on `port`; `sandboxed` selects the paths as seen
    /// inside the sandbox.
    pub(crate) fn argv(&self, port: u16, sandboxed: bool) -> Vec<OsString> {
        match self {
            Self::BuiltIn(b) => {
                let script = if sandboxed {
                    Path::new(SANDBOX_RUNTIME_DIR).join(&b.script)
                } else {
                    b.dir.join(&b.script)
                };
                vec![
                    b.interpreter.clone().into_os_string(),
                    script.into_os_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string().into(),
                ]
            }
            // The port reaches a command only through `$PORT`, which the shell expands.
            Self::Command(command) => vec!["/bin/sh".into(), "-c".into(), command.into()],
        }
    }

    /// Whether the exit status comes through a launcher (the sandbox's init or a shell) that reports a
    /// child killed by signal N as exit code 128+N.
    pub(crate) fn via_shell(&self) -> bool {
        matches!(self, Self::Command(_))
    }
}

/// The part of an image reference that names the runtime: the last path component without tag
/// or digest, lower-cased.
fn image_key(image: &str) -> String {
    let last = image.trim().rsplit('/').next().unwrap_or_default();
    let last = last.split('@').next().unwrap_or_default();
    let last = last.split(':').next().unwrap_or_default();
    last.to_ascii_lowercase()
}

fn matches_builtin(name: &str, key: &str) -> bool {
    match name {
        // `python`, `python3`, `python-env`, `python-env-3.11`, ...
        "python" => key.starts_with("python"),
        // `nodejs`, `node`, `node-env`, `nodejs-env-20`, ...
        "nodejs" => key.starts_with("node"),
        // `binary`, `binary-env`
        "binary" => key.starts_with("binary"),
        other => key == other,
    }
}

/// Finds an interpreter: `/usr/bin/<name>` (inside the sandbox's `/usr` bind) when it exists,
/// else `<name>` on the platform's `PATH`, resolved to its real path.
fn locate(interpreter: Interpreter) -> Option<Located> {
    let program = interpreter.program();
    let usr = Path::new("/usr/bin").join(program);
    if usr.is_file() {
        return Some(Located {
            path: usr,
            prefix: None,
        });
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|candidate| candidate.canonicalize().ok())
        .map(|real| {
            let prefix = install_prefix(&real);
            Located { path: real, prefix }
        })
}

/// The installation prefix of an interpreter at `real` (`/opt/py/bin/python3` → `/opt/py`), or
/// `None` when it lies under `/usr`, which the sandbox binds anyway.
fn install_prefix(real: &Path) -> Option<PathBuf> {
    if real.starts_with("/usr") {
        return None;
    }
    let bin = real.parent()?;
    let prefix = if bin.file_name().is_some_and(|n| n == "bin") {
        bin.parent()?
    } else {
        bin
    };
    (prefix != Path::new("/")).then(|| prefix.to_path_buf())
}

/// The host paths an explicit command needs inside the sandbox, which binds each read-only at
/// the same path, so a command works the same with and without the sandbox:
///
/// - every absolute path the command names that exists outside the directories the sandbox has
///   anyway (`/usr`, `/bin`, ...), including the values of `VAR=/path` and `--flag=/path`
///   (colon-separated lists too, e.g. `PYTHONPATH=/a:/b`);
/// - for a script (a file starting with `#!`, or named `.sh`, `.py`, `.js`, `.mjs`, `.cjs`), its
///   whole directory, which holds what it imports (Fission's `server.py` and its modules, a
///   Node.js server's `node_modules`), and the paths the script itself names, two levels deep
///   (a wrapper script that `exec`s a server elsewhere);
/// - for an interpreter inside a Python virtual environment (`/opt/venv/bin/python`), the
///   environment's directory (its `pyvenv.cfg` and `lib/`, or it starts without its packages);
/// - for a symbolic link, what it points to.
///
/// Never bound: top-level directories (`/tmp`, `/home`, `/etc`...: they would hand the host's
/// files to the instance), home directories themselves (`/home/<user>`), and anything under
/// `deny` (the platform's own data directory). Nested paths collapse into the outermost one.
pub(crate) fn command_paths(command: &str, deny: &[&Path]) -> Vec<PathBuf> {
    let mut found = Paths {
        deny,
        paths: Vec::new(),
    };
    found.scan(command, 0);
    let mut paths = found.paths;
    // Outermost first, and nothing inside a directory already bound.
    paths.sort_by_key(|p| p.components().count());
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        if !kept.iter().any(|k| path.starts_with(k)) {
            kept.push(path);
        }
    }
    kept
}

/// How deep [`command_paths`] follows scripts naming scripts.
const MAX_SCRIPT_DEPTH: u8 = 2;
/// The most of a script [`command_paths`] reads.
const MAX_SCRIPT_BYTES: u64 = 256 * 1024;

struct Paths<'a> {
    deny: &'a [&'a Path],
    paths: Vec<PathBuf>,
}

impl Paths<'_> {
    fn scan(&mut self, text: &str, depth: u8) {
        for token in text.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
            let token =
                token.trim_matches(|c| matches!(c, '"' | '\'' | ';' | '&' | '|' | '<' | '>' | ','));
            // `VAR=/path`, `--flag=/path`: the value; `A=/x:/y`: each of the list.
            let value = match token.split_once('=') {
                Some((name, value)) if !name.starts_with('/') => value,
                _ => token,
            };
            for candidate in value.split(':') {
                self.consider(candidate, depth);
            }
        }
    }

    /// Whether the sandbox may bind `p`: not a directory it has anyway, not a top-level or home
    /// directory, nothing under `deny`.
    fn bindable(&self, p: &Path) -> bool {
        const ALWAYS_THERE: [&str; 7] =
            ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/dev"];
        let depth = p.components().count();
        let excluded = ALWAYS_THERE.iter().any(|a| p.starts_with(a))
            || depth <= 2
            || (p.starts_with("/home") && depth == 3)
            || self.deny.iter().any(|d| p.starts_with(d));
        !excluded
    }

    /// Adds `p` when it may be bound and is not there yet.
    fn add(&mut self, p: &Path) {
        if self.bindable(p) && !self.paths.iter().any(|q| q == p) {
            self.paths.push(p.to_path_buf());
        }
    }

    fn consider(&mut self, candidate: &str, depth: u8) {
        if !candidate.starts_with('/') || candidate == "/" || candidate.contains('$') {
            return;
        }
        let path = PathBuf::from(candidate);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return;
        };
        if meta.file_type().is_symlink()
            && let Ok(target) = std::fs::canonicalize(&path)
        {
            // An interpreter outside `/usr` (`/opt/node/bin/node`, pyenv's python) needs its
            // whole installation, not only its executable.
            let target = install_prefix(&target).unwrap_or(target);
            self.add(&target);
            self.venv_of(&target);
        }
        if !self.bindable(&path) || self.paths.contains(&path) {
            return;
        }
        self.venv_of(&path);
        if !(path.is_file() && is_script(&path)) {
            self.paths.push(path);
            return;
        }
        if let Some(dir) = path.parent() {
            self.add(dir);
        }
        self.paths.push(path.clone());
        if depth < MAX_SCRIPT_DEPTH
            && let Some(text) = read_prefix(&path)
        {
            self.scan(&text, depth + 1);
        }
    }

    /// Binds the Python virtual environment `path` is in (its interpreter, or a file of it),
    /// and the installation of the interpreter it was made from (`home = /opt/py/bin` in its
    /// `pyvenv.cfg`), whose standard library it uses.
    fn venv_of(&mut self, path: &Path) {
        let Some(dir) = path
            .ancestors()
            .skip(1)
            .take_while(|d| d.components().count() > 2)
            .find(|d| d.join("pyvenv.cfg").is_file())
        else {
            return;
        };
        self.add(dir);
        let home = std::fs::read_to_string(dir.join("pyvenv.cfg"))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (key, value) = line.split_once('=')?;
                    (key.trim() == "home").then(|| PathBuf::from(value.trim()))
                })
            });
        if let Some(prefix) = home
            .and_then(|h| std::fs::canonicalize(h.join("python3")).ok())
            .and_then(|python| install_prefix(&python))
        {
            self.add(&prefix);
        }
    }
}

/// Whether `path` is a script: it starts with `#!`, or its extension says so.
fn is_script(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "sh" | "py" | "js" | "mjs" | "cjs"));
    by_name || read_prefix(path).is_some_and(|t| t.starts_with("#!"))
}

/// The first [`MAX_SCRIPT_BYTES`] of `path` as text, if it is text.
fn read_prefix(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_SCRIPT_BYTES).read_to_end(&mut bytes).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with_python() -> (tempfile::TempDir, RuntimeRegistry) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("python")).unwrap();
        std::fs::write(dir.path().join("python/server.py"), "").unwrap();
        let registry = RuntimeRegistry::new(dir.path().to_path_buf());
        (dir, registry)
    }

    #[test]
    fn python_aliases_and_fission_images_resolve() {
        let (_dir, registry) = registry_with_python();
        for image in [
            "python",
            "python3",
            "python-env",
            "ghcr.io/fission/python-env",
            "fission/python-env:latest",
            "ghcr.io/fission/python-env-3.11",
            "registry:5000/x/python-env@sha256:abc",
        ] {
            let resolved = registry.resolve(image, None).unwrap();
            assert_eq!(resolved.name(), "python", "{image}");
        }
    }

    #[test]
    fn explicit_command_wins() {
        let (_dir, registry) = registry_with_python();
        let resolved = registry.resolve("python", Some("exec my-server")).unwrap();
        assert_eq!(resolved, ResolvedRuntime::Command("exec my-server".into()));
        assert_eq!(
            resolved.argv(1234, true),
            vec!["/bin/sh", "-c", "exec my-server"]
        );
        // An empty command does not count.
        assert_eq!(
            registry.resolve("python", Some("  ")).unwrap().name(),
            "python"
        );
    }

    #[test]
    fn unknown_image_names_it_and_the_builtins() {
        let (_dir, registry) = registry_with_python();
        let err = registry.resolve("ruby-env", None).unwrap_err();
        let BackendError::Start(message) = err else {
            panic!("expected a start error, got {err:?}");
        };
        assert!(message.contains("\"ruby-env\""), "{message}");
        assert!(message.contains("python"), "{message}");
        // nodejs is not registered: its server file does not exist.
        assert!(registry.resolve("nodejs", None).is_err());
    }

    #[test]
    fn optional_runtimes_register_when_their_server_exists() {
        let (dir, _) = registry_with_python();
        std::fs::create_dir_all(dir.path().join("nodejs")).unwrap();
        std::fs::write(dir.path().join("nodejs/server.js"), "").unwrap();
        let registry = RuntimeRegistry::new(dir.path().to_path_buf());
        assert_eq!(registry.names(), vec!["python", "nodejs"]);
    }

    #[test]
    fn fission_node_and_binary_images_select_their_runtimes() {
        let (dir, _) = registry_with_python();
        for (sub, file) in [("nodejs", "server.js"), ("binary", "server.py")] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join(file), "").unwrap();
        }
        let registry = RuntimeRegistry::new(dir.path().to_path_buf());
        let node_found = locate(Interpreter::Node).is_some();
        for (image, want) in [
            ("nodejs", "nodejs"),
            ("node", "nodejs"),
            ("ghcr.io/fission/node-env", "nodejs"),
            ("fission/node-env:latest", "nodejs"),
            ("fission/node-env-20", "nodejs"),
            ("ghcr.io/fission/node-env-22:1.2.3", "nodejs"),
            ("binary", "binary"),
            ("fission/binary-env", "binary"),
            ("ghcr.io/fission/binary-env:latest", "binary"),
            ("ghcr.io/fission/python-env", "python"),
        ] {
            if want == "nodejs" && !node_found {
                // Without node the image still maps to nodejs, and says what is missing.
                let err = registry.resolve(image, None).unwrap_err().to_string();
                assert!(err.contains("node"), "{image}: {err}");
                continue;
            }
            let resolved = registry.resolve(image, None).unwrap();
            assert_eq!(resolved.name(), want, "{image}");
        }
        let ResolvedRuntime::BuiltIn(binary) = registry.resolve("binary-env", None).unwrap() else {
            panic!("binary is built in");
        };
        assert_eq!(binary.script, "server.py");
        assert!(binary.interpreter.ends_with("python3"), "{binary:?}");
    }

    #[test]
    fn builtin_argv_uses_sandbox_paths_when_sandboxed() {
        let (dir, registry) = registry_with_python();
        let resolved = registry.resolve("python", None).unwrap();
        let argv = resolved.argv(8080, true);
        assert_eq!(argv[1], "/runtime/server.py");
        assert_eq!(&argv[2..], ["--host", "127.0.0.1", "--port", "8080"]);
        let argv = resolved.argv(8080, false);
        assert_eq!(PathBuf::from(&argv[1]), dir.path().join("python/server.py"));
    }

    #[test]
    fn image_keys() {
        assert_eq!(image_key("ghcr.io/fission/Python-Env:3.11"), "python-env");
        assert_eq!(image_key("node"), "node");
    }

    #[test]
    fn install_prefixes() {
        assert_eq!(install_prefix(Path::new("/usr/bin/python3")), None);
        assert_eq!(
            install_prefix(Path::new("/opt/py/bin/python3.11")),
            Some(PathBuf::from("/opt/py"))
        );
    }

    #[test]
    fn command_paths_keep_existing_absolute_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("client.json"), "{}").unwrap();
        let config = dir.path().join("server.conf");
        std::fs::write(&config, "").unwrap();
        let command = format!(
            "/usr/bin/nginx -c '{}' --port $PORT /does/not/exist {}/client.json",
            config.display(),
            data.display()
        );
        assert_eq!(command_paths(&command, &[data.as_path()]), vec![config]);
    }

    #[test]
    fn command_paths_never_expose_top_level_or_home_directories() {
        let paths = command_paths(
            "nginx -p /tmp -c /etc/nginx/nginx.conf -g 'x' /home /root",
            &[],
        );
        for top in ["/tmp", "/home", "/root", "/etc"] {
            assert!(!paths.contains(&PathBuf::from(top)), "{paths:?}");
        }
    }

    #[test]
    fn scripts_bring_their_directory_and_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        // A Fission-style server directory and a wrapper elsewhere that execs its venv python.
        let server = dir.path().join("fission-python");
        std::fs::create_dir(&server).unwrap();
        std::fs::write(server.join("server.py"), "import userfunc\n").unwrap();
        let venv = dir.path().join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::create_dir_all(venv.join("lib")).unwrap();
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", venv.join("bin/python")).unwrap();
        let wrappers = dir.path().join("wrappers");
        std::fs::create_dir(&wrappers).unwrap();
        let wrapper = wrappers.join("start");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {}/bin/python {}/server.py\n",
                venv.display(),
                server.display()
            ),
        )
        .unwrap();
        let extra = dir.path().join("extra-lib");
        std::fs::create_dir(&extra).unwrap();
        let command = format!(
            "PYTHONPATH={}:/nonexistent USERFUNCVOL=/userfunc exec {}",
            extra.display(),
            wrapper.display()
        );
        let mut paths = command_paths(&command, &[]);
        paths.sort();
        let mut expected = vec![extra, server, venv, wrappers];
        expected.sort();
        assert_eq!(paths, expected);
    }
}
