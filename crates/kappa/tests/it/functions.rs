//! `kappa fn`: code from a file, a directory or a zip (inline or uploaded), update, list, delete.

use serde_json::Value;

use crate::support::{Platform, without_age};

const HELLO: &str = "def main():\n    return 'hello'\n";

fn package_of(p: &Platform, function: &str) -> (Value, Value) {
    let f = p.json(&["fn", "get", function]);
    let pkg_name = f["spec"]["package"]["packageref"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    (f, p.json(&["pkg", "get", &pkg_name]))
}

fn stored_sha(archive: &Value) -> String {
    let url = archive["url"].as_str().unwrap();
    url.strip_prefix("archive://sha256/").unwrap().to_string()
}

#[test]
fn small_code_file_goes_inline() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", HELLO);
    let run = p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--entrypoint",
        "hello.main",
    ]);
    assert_eq!(run.stdout, "function 'hello' created\n");
    assert_eq!(p.archive_uploads(), 0, "a small file is sent inline");

    let (f, pkg) = package_of(&p, "hello");
    let pkg_name = pkg["metadata"]["name"].as_str().unwrap();
    let suffix = pkg_name.strip_prefix("hello-").unwrap();
    assert_eq!(suffix.len(), 6, "{pkg_name}");
    assert!(
        suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{pkg_name}"
    );
    assert_eq!(
        pkg["metadata"]["annotations"]["kappa.dev/owner-function"],
        "hello"
    );
    assert_eq!(f["spec"]["package"]["functionName"], "hello.main");
    assert_eq!(
        f["spec"]["package"]["packageref"]["resourceversion"],
        pkg["metadata"]["resourceVersion"]
    );
    // The API moved the literal into the archive store; the bytes are the file's.
    let deployment = &pkg["spec"]["deployment"];
    assert_eq!(deployment["filename"], "hello.py");
    assert_eq!(p.blob(&stored_sha(deployment)), HELLO.as_bytes());
}

#[test]
fn large_code_file_is_uploaded() {
    let p = Platform::start();
    p.python_env();
    let big: String = (0..20_000).map(|i| format!("# line {i:>10}\n")).collect();
    assert!(big.len() > 256 * 1024);
    let code = p.file("big.py", &big);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "big",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    assert_eq!(p.archive_uploads(), 1);
    let (_, pkg) = package_of(&p, "big");
    let deployment = &pkg["spec"]["deployment"];
    assert_eq!(deployment["filename"], "big.py");
    assert_eq!(
        stored_sha(deployment),
        kappa_archive::sha256_hex(big.as_bytes())
    );
    assert_eq!(
        deployment["checksum"]["sum"],
        kappa_archive::sha256_hex(big.as_bytes())
    );
}

#[test]
fn src_directory_is_zipped() {
    let p = Platform::start();
    p.python_env();
    p.file("app/main.py", HELLO);
    p.file("app/lib/util.py", "X = 1\n");
    let dir = p.dir.path().join("work/app");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "app",
        "--env",
        "python",
        "--src",
        dir.to_str().unwrap(),
        "--entry",
        "main.main",
    ]);
    let (_, pkg) = package_of(&p, "app");
    // No builder: the tree is deployed as is.
    assert!(pkg["spec"].get("source").is_none(), "{pkg}");
    let deployment = &pkg["spec"]["deployment"];
    assert!(deployment.get("filename").is_none(), "{deployment}");
    let sha = stored_sha(deployment);
    let extracted = p.block_on(p.archives.extracted(&sha, None)).unwrap();
    let root = match extracted {
        kappa_archive::Extracted::Dir(d) => d,
        other => panic!("expected a directory, got {other:?}"),
    };
    assert_eq!(
        std::fs::read_to_string(root.join("main.py")).unwrap(),
        HELLO
    );
    assert_eq!(
        std::fs::read_to_string(root.join("lib/util.py")).unwrap(),
        "X = 1\n"
    );
}

#[test]
fn src_zip_is_sent_as_is() {
    let p = Platform::start();
    p.python_env();
    p.file("tree/main.py", HELLO);
    let zip = kappa_archive::pack_dir(&p.dir.path().join("work/tree")).unwrap();
    let path = p.file("app.zip", &zip);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "zipped",
        "--env",
        "python",
        "--src",
        path.to_str().unwrap(),
    ]);
    let (_, pkg) = package_of(&p, "zipped");
    let deployment = &pkg["spec"]["deployment"];
    assert_eq!(stored_sha(deployment), kappa_archive::sha256_hex(&zip));
    assert!(deployment.get("filename").is_none(), "{deployment}");
}

#[test]
fn src_with_a_builder_is_a_source_archive() {
    let p = Platform::start();
    p.ok(&[
        "env",
        "create",
        "--name",
        "python",
        "--image",
        "python",
        "--builder",
        "python",
        "--buildcmd",
        "./build.sh",
    ]);
    p.file("app/main.py", HELLO);
    let dir = p.dir.path().join("work/app");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "built",
        "--env",
        "python",
        "--src",
        dir.to_str().unwrap(),
    ]);
    let (_, pkg) = package_of(&p, "built");
    assert!(pkg["spec"]["source"]["url"].is_string(), "{pkg}");
    assert!(pkg["spec"].get("deployment").is_none(), "{pkg}");
    assert_eq!(pkg["status"]["buildstatus"], "pending");
}

#[test]
fn update_with_new_code_bumps_the_package_version() {
    let p = Platform::start();
    p.python_env();
    let v1 = p.file("v1/hello.py", HELLO);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        v1.to_str().unwrap(),
    ]);
    let (f1, pkg1) = package_of(&p, "hello");

    let v2 = p.file("v2/hello.py", "def main():\n    return 'v2'\n");
    let run = p.ok(&[
        "fn",
        "update",
        "--name",
        "hello",
        "--code",
        v2.to_str().unwrap(),
    ]);
    assert_eq!(run.stdout, "function 'hello' updated\n");
    let (f2, pkg2) = package_of(&p, "hello");
    // Same package, new content and version; the function points at the new version, so its
    // generation changes and new requests go to the new code.
    assert_eq!(pkg2["metadata"]["name"], pkg1["metadata"]["name"]);
    assert_ne!(
        pkg2["metadata"]["resourceVersion"],
        pkg1["metadata"]["resourceVersion"]
    );
    assert_eq!(
        f2["spec"]["package"]["packageref"]["resourceversion"],
        pkg2["metadata"]["resourceVersion"]
    );
    assert_ne!(
        f2["spec"]["package"]["packageref"]["resourceversion"],
        f1["spec"]["package"]["packageref"]["resourceversion"]
    );
    assert!(f2["metadata"]["generation"].as_i64() > f1["metadata"]["generation"].as_i64());
    assert_eq!(
        p.blob(&stored_sha(&pkg2["spec"]["deployment"])),
        b"def main():\n    return 'v2'\n"
    );
    assert_eq!(p.json(&["pkg", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn update_changes_only_the_flags_given() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", HELLO);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--fntimeout",
        "30",
        "--envvar",
        "A=1",
    ]);
    let before = p.json(&["fn", "get", "hello"]);
    p.ok(&[
        "fn",
        "update",
        "--name",
        "hello",
        "--concurrency",
        "7",
        "--rpp",
        "2",
        "--envvar",
        "B=2",
        "--maxmemory",
        "128",
    ]);
    let after = p.json(&["fn", "get", "hello"]);
    assert_eq!(after["spec"]["concurrency"], 7);
    assert_eq!(after["spec"]["requestsPerPod"], 2);
    assert_eq!(after["spec"]["functionTimeout"], 30);
    assert_eq!(
        after["spec"]["env"],
        serde_json::json!({"A": "1", "B": "2"})
    );
    assert_eq!(after["spec"]["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(after["spec"]["package"], before["spec"]["package"]);
}

#[test]
fn list_get_and_delete() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", HELLO);
    let code = code.to_str().unwrap();
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code,
        "--entrypoint",
        "hello.main",
    ]);
    p.ok(&[
        "function",
        "create",
        "--name",
        "worker",
        "--env",
        "python",
        "--code",
        code,
        "--executortype",
        "newdeploy",
        "--concurrency",
        "4",
        "--ft",
        "5",
    ]);
    let table = p.ok(&["fn", "list"]).stdout;
    assert_eq!(
        without_age(&table),
        "NAME    ENV     EXECUTOR   ENTRYPOINT  CONCURRENCY  RPP  TIMEOUT\n\
         hello   python  poolmgr    hello.main  10           1    60s\n\
         worker  python  newdeploy  -           4            1    5s\n"
    );
    let yaml = p.ok(&["fn", "get", "hello"]).stdout;
    assert!(
        yaml.contains("kind: Function\n") && yaml.contains("functionName: hello.main\n"),
        "{yaml}"
    );

    let run = p.ok(&["fn", "delete", "--name", "hello"]);
    let (first, second) = run.stdout.split_once('\n').unwrap();
    assert_eq!(first, "function 'hello' deleted");
    assert!(
        second.starts_with("package 'hello-") && second.ends_with("' deleted\n"),
        "{}",
        run.stdout
    );
    let packages = p.json(&["pkg", "list"]);
    assert_eq!(packages.as_array().unwrap().len(), 1);
    assert_eq!(
        packages[0]["metadata"]["annotations"]["kappa.dev/owner-function"],
        "worker"
    );
}

#[test]
fn delete_keeps_a_package_another_function_uses() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", HELLO);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    let (_, pkg) = package_of(&p, "hello");
    let pkg_name = pkg["metadata"]["name"].as_str().unwrap();
    // --pkg takes the environment from the package.
    p.ok(&["fn", "create", "--name", "again", "--pkg", pkg_name]);
    assert_eq!(
        p.json(&["fn", "get", "again"])["spec"]["environment"]["name"],
        "python"
    );
    let run = p.ok(&["fn", "delete", "hello"]);
    assert_eq!(run.stdout, "function 'hello' deleted\n");
    p.ok(&["pkg", "get", pkg_name]);
}

#[test]
fn create_with_a_route() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", HELLO);
    let run = p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--url",
        "/hello",
        "--method",
        "post",
    ]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "function 'hello' created");
    assert!(
        lines[1].starts_with("route 'hello-") && lines[1].ends_with("' created"),
        "{}",
        run.stdout
    );
    let routes = p.json(&["route", "list"]);
    assert_eq!(routes[0]["spec"]["relativeurl"], "/hello");
    assert_eq!(routes[0]["spec"]["methods"], serde_json::json!(["POST"]));
    assert_eq!(routes[0]["spec"]["functionref"]["name"], "hello");
    let route_name = routes[0]["metadata"]["name"].as_str().unwrap().to_string();

    // A route made by hand stays when the function goes; the one `fn create` made goes with it.
    p.ok(&[
        "route",
        "create",
        "--name",
        "manual",
        "--function",
        "hello",
        "--url",
        "/manual",
    ]);
    let run = p.ok(&["fn", "delete", "hello"]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "function 'hello' deleted");
    assert_eq!(lines[1], format!("route '{route_name}' deleted"));
    assert!(lines[2].starts_with("package 'hello-"), "{}", run.stdout);
    let routes = p.json(&["route", "list"]);
    assert_eq!(routes.as_array().unwrap().len(), 1);
    assert_eq!(routes[0]["metadata"]["name"], "manual");
}

#[test]
fn missing_code_file_names_the_flag_and_writes_nothing() {
    let p = Platform::start();
    p.python_env();
    let missing = p.dir.path().join("nope.py");
    let run = p.kappa(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        missing.to_str().unwrap(),
    ]);
    run.code(1);
    assert_eq!(
        run.stderr,
        format!(
            "error: reading --code {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    assert_eq!(p.json(&["pkg", "list"]), serde_json::json!([]));
    assert_eq!(p.json(&["fn", "list"]), serde_json::json!([]));

    let dir = p.dir.path();
    let run = p.kappa(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        dir.to_str().unwrap(),
    ]);
    run.code(1);
    assert!(
        run.stderr.contains("use --src for a directory"),
        "{}",
        run.stderr
    );
}

#[test]
fn server_side_errors_name_the_field() {
    let p = Platform::start();
    let code = p.file("hello.py", HELLO);
    // No environment "ghost": the API refuses the package and names the field.
    let run = p.kappa(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "ghost",
        "--code",
        code.to_str().unwrap(),
    ]);
    run.code(1);
    assert!(
        run.stderr.starts_with("error: creating package 'hello-"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("  field: spec.environment.name\n"),
        "{}",
        run.stderr
    );
    assert_eq!(p.json(&["fn", "list"]), serde_json::json!([]));

    // Client-side checks use the same validators, before anything is written.
    p.python_env();
    let run = p.kappa(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--entrypoint",
        "../x",
    ]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.package.functionName\n"),
        "{}",
        run.stderr
    );
    assert_eq!(p.json(&["pkg", "list"]), serde_json::json!([]));

    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    let run = p.kappa(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    run.code(1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(p.json(&["pkg", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn usage_errors() {
    let p = Platform::start();
    let run = p.kappa(&["fn", "create", "--name", "hello", "--env", "python"]);
    run.code(2);
    assert!(run.stderr.contains("--code"), "{}", run.stderr);
    p.kappa(&["fn", "create", "--name", "hello", "--code", "a.py"])
        .code(2);
    p.kappa(&[
        "fn", "create", "--name", "h", "--env", "e", "--code", "a", "--method", "GET",
    ])
    .code(2);
    p.kappa(&[
        "fn",
        "create",
        "--name",
        "h",
        "--env",
        "e",
        "--code",
        "a",
        "--executortype",
        "lambda",
    ])
    .code(2);
    p.kappa(&[
        "fn", "create", "--name", "h", "--env", "e", "--code", "a", "--envvar", "NOEQUALS",
    ])
    .code(2);
}

/// A zip of `entries` (name, contents; a name ending in `/` is a directory), in this order.
fn zip_file(p: &Platform, rel: &str, entries: &[(&str, &[u8])]) -> std::path::PathBuf {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, contents) in entries {
        if name.ends_with('/') {
            zip.add_directory(*name, opts).unwrap();
        } else {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(contents).unwrap();
        }
    }
    let bytes = zip.finish().unwrap().into_inner();
    p.file(rel, bytes)
}

/// `fn create` and `pkg create` with `src`: refused (exit 1) with a message naming `entry`
/// and `rule`, and nothing created.
fn refused(p: &Platform, src: &str, entry: &str, rule: &str) {
    for args in [
        vec![
            "fn", "create", "--name", "evil", "--env", "python", "--src", src,
        ],
        vec![
            "pkg", "create", "--name", "evil", "--env", "python", "--src", src,
        ],
    ] {
        let run = p.kappa(&args);
        run.code(1);
        assert!(
            run.stderr
                .contains(&format!("unsafe archive entry {entry:?}")),
            "{args:?} names the entry {entry:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(rule),
            "{args:?} names the rule {rule:?}: {}",
            run.stderr
        );
    }
    assert_eq!(p.json(&["fn", "list"]), serde_json::json!([]));
    assert_eq!(p.json(&["pkg", "list"]), serde_json::json!([]));
}

#[test]
fn unsafe_archives_are_refused_at_create_time() {
    let p = Platform::start();
    p.python_env();
    let main: (&str, &[u8]) = ("main.py", HELLO.as_bytes());

    let zip = zip_file(&p, "dotdot.zip", &[main, ("../../escape.py", b"x")]);
    refused(
        &p,
        zip.to_str().unwrap(),
        "../../escape.py",
        "'..' component",
    );

    let zip = zip_file(&p, "absolute.zip", &[main, ("/etc/cron.d/x", b"x")]);
    refused(&p, zip.to_str().unwrap(), "/etc/cron.d/x", "absolute");

    // A directory with a symlink out of it is packed as a symlink, which escapes.
    let dir = p
        .file("linked/main.py", HELLO)
        .parent()
        .unwrap()
        .to_path_buf();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", dir.join("passwd")).unwrap();
    refused(&p, dir.to_str().unwrap(), "passwd", "outside");

    // Too many entries: the message names the first entry past the limit (20 000), in the
    // archive's order, whatever else the archive holds.
    let names: Vec<String> = (0..25_001).map(|i| format!("f{i:05}.py")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let zip = zip_file(&p, "many.zip", &entries);
    refused(
        &p,
        zip.to_str().unwrap(),
        "f20000.py",
        "the archive has 25001 entries, more than the limit of 20000; this is entry 20001 in archive order",
    );
}

#[test]
fn oversized_archives_are_refused_at_create_time() {
    let p = Platform::start_with(|mut state| {
        let root = state.archives.max_archive_bytes();
        let dir = tempfile::tempdir().unwrap().keep();
        state.archives = std::sync::Arc::new(
            kappa_archive::ArchiveStore::open(dir, root)
                .unwrap()
                .with_extract_limits(kappa_archive::ExtractLimits {
                    max_total_bytes: 1000,
                    max_file_bytes: 600,
                    ..kappa_archive::ExtractLimits::default()
                }),
        );
        state
    });
    p.python_env();
    let zip = zip_file(
        &p,
        "big-file.zip",
        &[("main.py", HELLO.as_bytes()), ("data.bin", &[0; 700])],
    );
    refused(
        &p,
        zip.to_str().unwrap(),
        "data.bin",
        "per-file limit of 600 bytes",
    );
    let zip = zip_file(
        &p,
        "big-total.zip",
        &[
            ("a.bin", &[0; 500]),
            ("b.bin", &[0; 500]),
            ("c.bin", &[0; 500]),
        ],
    );
    refused(
        &p,
        zip.to_str().unwrap(),
        "c.bin",
        "total limit of 1000 bytes",
    );
}
