//! Which command builds a package: the package's, the environment's, or the runtime's default.

use std::path::{Path, PathBuf};

use kappa_local::ResolvedRuntime;

// Shared with the CLI's `--src` check, which must not need the builder.
pub use kappa_archive::BUILD_MANIFESTS;

/// The Python default's pip arguments, after `python3 -m pip`.
const PIP_INSTALL: &str =
    "install -r requirements.txt --target . --no-cache-dir --disable-pip-version-check";
/// The Node.js default.
const NPM_INSTALL: &str = "npm install --omit=dev --no-audit --no-fund";

/// Where a build command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandSource {
    /// The package's `spec.buildcmd`.
    Package,
    /// The environment's `spec.builder.command`.
    Environment,
    /// The runtime's default for the manifest found in the source.
    Default,
}

impl CommandSource {
    /// How the build log names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Package => "the package's buildcmd",
            Self::Environment => "the environment's builder command",
            Self::Default => "the runtime's default build",
        }
    }
}

/// A build command and what the sandbox needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCommand {
    /// Run with `/bin/sh -c` in the build directory.
    pub command: String,
    /// Where it came from.
    pub source: CommandSource,
    /// Host directories to bind read-only (an interpreter installed outside `/usr`).
    pub read_only: Vec<PathBuf>,
}

pub use kappa_archive::{manifest_in_dir, manifest_in_zip};

/// The command a package is built with: `buildcmd`, else the environment's builder command,
/// else the runtime's default for the source in `dir` (`None`: nothing to build).
pub fn choose(
    buildcmd: Option<&str>,
    builder_command: Option<&str>,
    runtime: Option<&ResolvedRuntime>,
    dir: &Path,
) -> Option<BuildCommand> {
    let given = |c: Option<&str>| {
        c.map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
    };
    for (command, source) in [
        (given(buildcmd), CommandSource::Package),
        (given(builder_command), CommandSource::Environment),
    ] {
        let Some(command) = command else { continue };
        if let Some(built_in) = fission_build(&command, runtime, dir) {
            return Some(BuildCommand { source, ..built_in });
        }
        return Some(BuildCommand {
            command,
            source,
            read_only: interpreter_prefix(runtime),
        });
    }
    default_command(runtime?, dir)
}

/// The runtime's default build for the source in `dir`, when the build runs in the runtime's own
/// image (a builder pod) rather than on this host: the image's `python3 -m pip` or `npm`,
/// whatever their path. `runtime` is the built-in runtime the environment's image names
/// ([`kappa_local::RuntimeRegistry::builtin_for`]); `None`: nothing to build.
pub fn image_default_command(runtime: Option<&str>, dir: &Path) -> Option<BuildCommand> {
    let command = match runtime? {
        "python" if dir.join("requirements.txt").is_file() => format!(
            "python3 -m pip --version >/dev/null 2>&1 || {{ echo \"kappa: the build image has no python3 -m pip: give the environment a builder image with pip (kappa env create --builder IMAGE)\" >&2; exit 1; }}; \
             python3 -m pip {PIP_INSTALL}"
        ),
        "nodejs" if dir.join("package.json").is_file() => format!(
            "command -v npm >/dev/null 2>&1 || {{ echo \"kappa: the build image has no npm: give the environment a builder image with npm (kappa env create --builder IMAGE)\" >&2; exit 1; }}; {NPM_INSTALL}"
        ),
        _ => return None,
    };
    Some(BuildCommand {
        command,
        source: CommandSource::Default,
        read_only: Vec::new(),
    })
}

/// Fission's builder images carry a `build` script, their default builder command, which
/// installs `requirements.txt` (Python) or `package.json` (Node.js) into the source and copies
/// it to `$DEPLOY_PKG`. For a built-in runtime, `build` is that: the runtime's default build,
/// or nothing to do without a manifest (the source is deployed as it is). `None` for any other
/// command, or for a runtime Kappa does not build itself.
fn fission_build(
    command: &str,
    runtime: Option<&ResolvedRuntime>,
    dir: &Path,
) -> Option<BuildCommand> {
    let runtime @ ResolvedRuntime::BuiltIn(builtin) = runtime? else {
        return None;
    };
    if command != "build" || !matches!(builtin.name, "python" | "nodejs") {
        return None;
    }
    Some(
        default_command(runtime, dir).unwrap_or_else(|| BuildCommand {
            command: "echo 'kappa: build: no requirements.txt or package.json; deploying the source as it is'".into(),
            source: CommandSource::Default,
            read_only: interpreter_prefix(Some(runtime)),
        }),
    )
}

/// The runtime's default build for the source in `dir`: Python with `requirements.txt` runs
/// pip (with the runtime's own interpreter) into the package; Node.js with `package.json` runs
/// `npm install`. Each first checks that its tool exists, so a host without it fails the build
/// with a line saying what to install.
pub fn default_command(runtime: &ResolvedRuntime, dir: &Path) -> Option<BuildCommand> {
    let ResolvedRuntime::BuiltIn(builtin) = runtime else {
        return None;
    };
    let read_only = builtin.interpreter_prefix.iter().cloned().collect();
    match builtin.name {
        "python" if dir.join("requirements.txt").is_file() => {
            let python = shell_quote(&builtin.interpreter.to_string_lossy());
            Some(BuildCommand {
                command: format!(
                    "{python} -m pip --version >/dev/null 2>&1 || {{ echo \"kappa: pip is not installed for {python} on this host: install it (Debian and Ubuntu: apt-get install python3-pip)\" >&2; exit 1; }}; \
                     {python} -m pip {PIP_INSTALL}"
                ),
                source: CommandSource::Default,
                read_only,
            })
        }
        "nodejs" if dir.join("package.json").is_file() => Some(BuildCommand {
            command: format!(
                "command -v npm >/dev/null 2>&1 || {{ echo \"kappa: npm is not installed on this host: install it (Debian and Ubuntu: apt-get install npm)\" >&2; exit 1; }}; {NPM_INSTALL}"
            ),
            source: CommandSource::Default,
            read_only,
        }),
        _ => None,
    }
}

fn interpreter_prefix(runtime: Option<&ResolvedRuntime>) -> Vec<PathBuf> {
    match runtime {
        Some(ResolvedRuntime::BuiltIn(b)) => b.interpreter_prefix.iter().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_local::BuiltInRuntime;

    fn python() -> ResolvedRuntime {
        ResolvedRuntime::BuiltIn(BuiltInRuntime {
            name: "python",
            interpreter: PathBuf::from("/usr/bin/python3"),
            interpreter_prefix: None,
            dir: PathBuf::from("/rt/python"),
            script: "server.py".into(),
        })
    }

    #[test]
    fn package_command_wins_then_environment_then_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "six\n").unwrap();
        let rt = python();
        let c = choose(Some(" make "), Some("env-build"), Some(&rt), dir.path()).unwrap();
        assert_eq!(
            (c.command.as_str(), c.source),
            ("make", CommandSource::Package)
        );
        let c = choose(Some("  "), Some("env-build"), Some(&rt), dir.path()).unwrap();
        assert_eq!(c.source, CommandSource::Environment);
        let c = choose(None, Some(""), Some(&rt), dir.path()).unwrap();
        assert_eq!(c.source, CommandSource::Default);
        assert!(
            c.command
                .contains("/usr/bin/python3 -m pip install -r requirements.txt --target ."),
            "{}",
            c.command
        );
    }

    #[test]
    fn in_the_image_the_defaults_use_the_images_own_tools() {
        let dir = tempfile::tempdir().unwrap();
        assert!(image_default_command(Some("python"), dir.path()).is_none());
        std::fs::write(dir.path().join("requirements.txt"), "six\n").unwrap();
        let c = image_default_command(Some("python"), dir.path()).unwrap();
        assert_eq!(c.source, CommandSource::Default);
        assert!(
            c.command
                .contains("python3 -m pip install -r requirements.txt --target .")
                && !c.command.contains("/usr/bin/"),
            "{}",
            c.command
        );
        assert!(c.read_only.is_empty());
        assert!(image_default_command(Some("nodejs"), dir.path()).is_none());
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        let c = image_default_command(Some("nodejs"), dir.path()).unwrap();
        assert!(c.command.contains("npm install"), "{}", c.command);
        assert!(image_default_command(None, dir.path()).is_none());
        assert!(image_default_command(Some("binary"), dir.path()).is_none());
    }

    #[test]
    fn fissions_build_script_is_the_runtimes_own_build() {
        let dir = tempfile::tempdir().unwrap();
        let rt = python();
        // No manifest: nothing to install, the source is deployed as it is.
        let c = choose(None, Some("build"), Some(&rt), dir.path()).unwrap();
        assert_eq!(c.source, CommandSource::Environment);
        assert!(c.command.starts_with("echo "), "{}", c.command);
        std::fs::write(dir.path().join("requirements.txt"), "six\n").unwrap();
        let c = choose(Some(" build "), None, Some(&rt), dir.path()).unwrap();
        assert_eq!(c.source, CommandSource::Package);
        assert!(
            c.command.contains("-m pip install -r requirements.txt"),
            "{}",
            c.command
        );
        // Another command, or a runtime Kappa does not build, keeps the command as given.
        let c = choose(Some("build --fast"), None, Some(&rt), dir.path()).unwrap();
        assert_eq!(c.command, "build --fast");
        let command = ResolvedRuntime::Command("exec server".into());
        let c = choose(Some("build"), None, Some(&command), dir.path()).unwrap();
        assert_eq!(c.command, "build");
    }

    #[test]
    fn nothing_to_build_without_a_manifest_or_for_other_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(choose(None, None, Some(&python()), dir.path()), None);
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        // package.json means nothing to the Python runtime.
        assert_eq!(choose(None, None, Some(&python()), dir.path()), None);
        let command = ResolvedRuntime::Command("exec server".into());
        std::fs::write(dir.path().join("requirements.txt"), "").unwrap();
        assert_eq!(choose(None, None, Some(&command), dir.path()), None);
        assert_eq!(choose(None, None, None, dir.path()), None);
    }

    #[test]
    fn manifests_are_found_in_directories_and_zips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("main.py"), "").unwrap();
        assert_eq!(manifest_in_dir(&src), None);
        let zip = dir.path().join("a.zip");
        std::fs::write(&zip, kappa_archive::pack_dir(&src).unwrap()).unwrap();
        assert_eq!(manifest_in_zip(&zip).unwrap(), None);
        std::fs::write(src.join("package.json"), "{}").unwrap();
        assert_eq!(manifest_in_dir(&src), Some("package.json"));
        std::fs::write(&zip, kappa_archive::pack_dir(&src).unwrap()).unwrap();
        assert_eq!(manifest_in_zip(&zip).unwrap(), Some("package.json"));
        std::fs::write(&zip, b"not a zip").unwrap();
        assert!(manifest_in_zip(&zip).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(shell_quote("/opt/my py/python"), "'/opt/my py/python'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
