//! The parts of a one-machine platform (`kappa up`) around the assembly: the data directory's
//! token and client.json, the built-in runtimes, the bundled example, and the API's check that
//! an Environment names a runtime the local backend can start.

use std::path::{Path, PathBuf};

use kappa_archive::ArchiveStore;
use kappa_local::RuntimeRegistry;
use kappa_store::{Precondition, Store, StoreError};
use kappa_types::{
    Archive, Environment, EnvironmentSpec, Function, FunctionReference, FunctionSpec, HttpTrigger,
    HttpTriggerSpec, Package, PackageSpec, Resource, Runtime, Spec,
};

use std::time::Duration;

use crate::Platform;
use crate::error::{Ctx as _, PlatformError};

/// The Python runtime server, shipped inside the binary so `kappa up` needs nothing else.
const PYTHON_RUNTIME: &str = include_str!("../../../functions/runtimes/python/server.py");
/// The Python runtime's template process (`server.py --zygote`), next to the server.
const PYTHON_ZYGOTE: &str = include_str!("../../../functions/runtimes/python/zygote.py");
/// The Node.js runtime server (run with the machine's `node`).
const NODEJS_RUNTIME: &str = include_str!("../../../functions/runtimes/nodejs/server.js");
/// The binary (CGI-style) runtime server (run with `python3`).
const BINARY_RUNTIME: &str = include_str!("../../../functions/runtimes/binary/server.py");
/// The example deployed by `kappa up`.
const HELLO_PY: &str = include_str!("../../../functions/examples/hello/hello.py");

/// The default data directory: `$HOME/.kappa`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".kappa")
}

/// The API token: read from `<data-dir>/token`, created (mode 0600) on first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, PlatformError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_ctx(|| format!("reading {}", path.display())),
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_ctx(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .with_ctx(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// `<data-dir>/client.json`, which the CLI reads to find the API (mode 0600: it holds the token).
pub fn write_client_config(
    data_dir: &Path,
    api_url: &str,
    token: &str,
    router_url: &str,
) -> Result<(), PlatformError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let body = serde_json::json!({ "apiUrl": api_url, "token": token, "routerUrl": router_url });
    let tmp = data_dir.join("client.json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_ctx(|| format!("creating {}", tmp.display()))?;
    let text = serde_json::to_string_pretty(&body).ctx("encoding client.json")?;
    file.write_all(text.as_bytes())
        .with_ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, data_dir.join("client.json")).ctx("writing client.json")?;
    Ok(())
}

/// Writes the built-in runtimes into `<data-dir>/runtimes/` (refreshed on every start, so an
/// upgraded binary brings its runtime along).
pub fn install_runtimes(data_dir: &Path) -> Result<PathBuf, PlatformError> {
    let dir = data_dir.join("runtimes");
    let target = install_runtime_file(&dir, "python", "server.py", PYTHON_RUNTIME)?;
    install_runtime_file(&dir, "python", "zygote.py", PYTHON_ZYGOTE)?;
    precompile_python_runtime(&target);
    install_runtime_file(&dir, "nodejs", "server.js", NODEJS_RUNTIME)?;
    install_runtime_file(&dir, "binary", "server.py", BINARY_RUNTIME)?;
    Ok(dir)
}

/// Writes `<dir>/<runtime>/<file>` atomically (write then rename) and returns its path.
fn install_runtime_file(
    dir: &Path,
    runtime: &str,
    file: &str,
    contents: &str,
) -> Result<PathBuf, PlatformError> {
    let sub = dir.join(runtime);
    std::fs::create_dir_all(&sub).with_ctx(|| format!("creating {}", sub.display()))?;
    let target = sub.join(file);
    let tmp = sub.join(format!("{file}.tmp"));
    std::fs::write(&tmp, contents).with_ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_ctx(|| format!("writing {}", target.display()))?;
    Ok(target)
}

/// Compiles the Python runtime's code cache on the host: sandboxed instances see the runtime
/// directory read-only and could not write it, and without it every instance start pays the
/// compilation again. Uses the interpreter the local backend prefers.
fn precompile_python_runtime(server: &Path) {
    let python = if Path::new("/usr/bin/python3").exists() {
        PathBuf::from("/usr/bin/python3")
    } else {
        PathBuf::from("python3")
    };
    match std::process::Command::new(&python)
        .arg(server)
        .arg("--precompile")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "precompiling the python runtime failed; instances will start more slowly"
        ),
        Err(e) => {
            tracing::warn!(python = %python.display(), error = %e, "python3 not found; the python runtime cannot start")
        }
    }
}

/// Deploys the bundled example (the `python` environment, the `hello` function and the
/// `/hello` route, unless they exist: a restart keeps what the user changed) and waits until
/// the router of `platform` serves its route, so a `curl` printed next works at once.
pub async fn deploy_example(platform: &Platform) -> Result<(), PlatformError> {
    let archives = platform
        .archives()
        .ok_or_else(|| PlatformError::config("the example needs the archive store (role api)"))?;
    let store = platform.store().as_ref();
    create_example(store, archives).await?;
    // The version of the trigger's last write, which the router has seen once it applied it.
    let version = store
        .get(kappa_types::Kind::HttpTrigger, "default", "hello")
        .await
        .ctx("reading the bundled example's route")?
        .map_or(0, |trigger| trigger.resource_version);
    if let Some(router) = platform.router()
        && !router.wait_applied(version, Duration::from_secs(10)).await
    {
        tracing::warn!("the router has not applied the bundled example's route yet");
    }
    Ok(())
}

/// Creates the example's resources unless they exist.
async fn create_example(store: &dyn Store, archives: &ArchiveStore) -> Result<(), PlatformError> {
    let env = Environment::new(
        "python",
        EnvironmentSpec {
            runtime: Runtime {
                image: "python".into(),
                command: None,
            },
            ..EnvironmentSpec::default()
        },
    );
    create_if_missing(store, &env).await?;
    let info = archives
        .put_bytes(HELLO_PY.as_bytes())
        .await
        .ctx("storing the example's code")?;
    let package = Package::new(
        "hello",
        PackageSpec {
            environment: kappa_types::NamedRef::new("python"),
            source: None,
            deployment: Some(Archive::stored(&info.sha256, Some("hello.py".into()))),
            buildcmd: None,
        },
    );
    let mut package_value = package.to_json();
    package_value["status"] = serde_json::json!({ "buildstatus": "none" });
    package.validate().ctx("the example's package")?;
    match store.put(package_value, Precondition::MustNotExist).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e).ctx("creating the example's package"),
    }
    let function = Function::new("hello", FunctionSpec::new("python", "hello", "hello.main"));
    create_if_missing(store, &function).await?;
    let trigger = HttpTrigger::new(
        "hello",
        HttpTriggerSpec {
            relativeurl: Some("/hello".into()),
            methods: vec!["GET".into()],
            functionref: FunctionReference::name("hello"),
            ..HttpTriggerSpec::default()
        },
    );
    create_if_missing(store, &trigger).await?;
    Ok(())
}

async fn create_if_missing<S: Spec>(
    store: &dyn Store,
    resource: &Resource<S>,
) -> Result<(), PlatformError> {
    resource
        .validate()
        .with_ctx(|| format!("the example's {}", S::KIND.as_str()))?;
    match store
        .put(resource.to_json(), Precondition::MustNotExist)
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e).with_ctx(|| format!("creating the example's {}", S::KIND.as_str())),
    }
}

/// The API's runtime check for the local backend: an Environment must name a built-in runtime
/// (or give a command), since only those can start here.
pub(crate) struct LocalRuntimes(pub(crate) RuntimeRegistry);

impl kappa_api::RuntimeCheck for LocalRuntimes {
    fn check(&self, image: &str, command: Option<&str>) -> Result<(), String> {
        if command.is_some_and(|c| !c.trim().is_empty()) || self.0.builtin_for(image).is_some() {
            return Ok(());
        }
        Err(format!(
            "{image:?} is not a runtime the local backend runs: expected one of the built-in runtimes ({}), a Fission image named after one (fission/python-env), or spec.runtime.command",
            self.0.names().join(", ")
        ))
    }
}
