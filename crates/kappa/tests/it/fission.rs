//! What a Fission user types: `env create --version 2`, the download verbs with `-o FILE`,
//! `archive` verbs, an unsupported message-queue type, shell completions.

use crate::support::Platform;

#[test]
fn env_version_is_the_environment_protocol_version() {
    let p = Platform::start();
    // The line in Fission's docs: it creates the environment (clap's --version used to print
    // the CLI's version, exit 0 and create nothing).
    let run = p.ok(&[
        "env",
        "create",
        "--name",
        "py",
        "--image",
        "python",
        "--version",
        "2",
    ]);
    assert_eq!(run.stdout, "environment 'py' created\n");
    assert_eq!(p.json(&["env", "get", "py"])["spec"]["version"], 2);
    p.ok(&["env", "update", "--name", "py", "--version", "3"]);
    assert_eq!(p.json(&["env", "get", "py"])["spec"]["version"], 3);
    // Version 1 is refused, naming the flag and what Kappa speaks; nothing is created.
    let run = p.kappa(&[
        "env",
        "create",
        "--name",
        "v1",
        "--image",
        "python",
        "--version",
        "1",
    ]);
    run.code(2);
    assert!(
        run.stderr.contains("--version 1 is not supported")
            && run.stderr.contains("use --version 2 or 3"),
        "{}",
        run.stderr
    );
    p.kappa(&["env", "get", "v1"]).code(1);
    let run = p.kappa(&["env", "update", "--name", "py", "--version", "7"]);
    run.code(2);
    assert!(run.stderr.contains("expected 2 or 3"), "{}", run.stderr);
    // Elsewhere --version is an unknown argument, not a silent success.
    let run = p.kappa(&["fn", "list", "--version"]);
    run.code(2);
    assert!(run.stderr.contains("--version"), "{}", run.stderr);
    // The CLI's own version stays on `kappa --version`.
    assert!(p.ok(&["--version"]).stdout.starts_with("kappa "));
}

#[test]
fn unsupported_message_queue_types_are_named() {
    let p = Platform::start();
    p.python_env();
    let run = p.kappa(&[
        "mqt",
        "create",
        "--name",
        "k",
        "--function",
        "f",
        "--mqtype",
        "rabbitmq",
        "--topic",
        "t",
    ]);
    run.code(2);
    assert!(
        run.stderr.contains(
            "--mqtype: \"rabbitmq\" is a Fission message-queue type that Kappa does not support"
        ) && run.stderr.contains("nats-jetstream")
            && run.stderr.contains("redis")
            && run.stderr.contains("kafka"),
        "{}",
        run.stderr
    );
    // The API refuses it the same way, naming the field.
    let body = serde_json::json!({
        "apiVersion": "kappa.dev/v1", "kind": "MessageQueueTrigger",
        "metadata": {"name": "k", "namespace": "default"},
        "spec": {"functionref": {"type": "name", "name": "f"}, "messageQueueType": "rabbitmq", "topic": "t"}
    });
    let (status, answer) = p.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/messagequeuetriggers", p.url))
            .bearer_auth(crate::support::TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"]["field"], "spec.messageQueueType",
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Kappa does not support"),
        "{answer}"
    );
    assert!(p.json(&["mqt", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn archive_verbs_and_package_downloads() {
    let p = Platform::start();
    p.python_env();
    let zip = p.file("src/a.zip", b"PK-not-really-a-zip-but-bytes");
    let up = p.json(&["archive", "upload", "--name", zip.to_str().unwrap()]);
    let id = up["sha256"].as_str().unwrap().to_string();
    assert_eq!(up["size"], 29);
    assert_eq!(up["url"], format!("archive://sha256/{id}"));
    let list = p.ok(&["archive", "list"]).stdout;
    assert!(list.starts_with("ID") && list.contains(&id), "{list}");
    let url = p.ok(&["archive", "get-url", "--id", &id]).stdout;
    assert_eq!(url, format!("{}/v1/archives/{id}\n", p.url));
    let out = p.home().join("down.zip");
    p.ok(&[
        "archive",
        "download",
        "--id",
        &format!("archive://sha256/{id}"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"PK-not-really-a-zip-but-bytes"
    );
    let run = p.kappa(&["archive", "download", "--id", "nothex"]);
    run.code(2);
    assert!(
        run.stderr.contains("is not an archive id"),
        "{}",
        run.stderr
    );

    // pkg getsrc / getdeploy: a package with a source and a deployment, both downloadable.
    let src = p.file("pkg/src/main.py", "def main():\n    return 'src'\n");
    // Incompressible bytes over the 256 KiB inline limit: the source is uploaded (stored).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    p.file("pkg/src/data.bin", &noise);
    let deploy = p.file("pkg/deploy/main.py", "def main():\n    return 'deploy'\n");
    p.ok(&[
        "pkg",
        "create",
        "--name",
        "p",
        "--env",
        "python",
        "--sourcearchive",
        src.parent().unwrap().to_str().unwrap(),
        "--deployarchive",
        deploy.parent().unwrap().to_str().unwrap(),
    ]);
    let src_zip = p.home().join("src.zip");
    p.ok(&[
        "pkg",
        "getsrc",
        "--name",
        "p",
        "-o",
        src_zip.to_str().unwrap(),
    ]);
    let deploy_zip = p.home().join("deploy.zip");
    p.ok(&[
        "pkg",
        "getdeploy",
        "p",
        "--output",
        deploy_zip.to_str().unwrap(),
    ]);
    for (zip, text) in [(&src_zip, "src"), (&deploy_zip, "deploy")] {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
        let mut main = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("main.py").unwrap(), &mut main).unwrap();
        assert!(main.contains(text), "{main}");
    }
    // Without -o the archive goes to stdout (here a pipe).
    let run = p.ok(&["pkg", "getdeploy", "p"]);
    assert!(
        run.stdout.starts_with("PK"),
        "{:?}",
        &run.stdout[..10.min(run.stdout.len())]
    );
    // A package without a source archive says so.
    p.ok(&[
        "pkg",
        "create",
        "--name",
        "only",
        "--env",
        "python",
        "--deploy",
        deploy.to_str().unwrap(),
    ]);
    // A single-file deployment comes back as that file.
    let single = p.home().join("single.py");
    p.ok(&["pkg", "getdeploy", "only", "-o", single.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(&deploy).unwrap()
    );
    let run = p.kappa(&["pkg", "getsrc", "only", "-o", src_zip.to_str().unwrap()]);
    run.code(1);
    assert!(
        run.stderr.contains("package 'only' has no source archive"),
        "{}",
        run.stderr
    );
    // An archive a package uses cannot be deleted; an unused one can.
    let package = p.json(&["pkg", "get", "p"]);
    let used = package["spec"]["source"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    p.kappa(&["archive", "delete", "--id", &used]).code(1);
    p.ok(&["archive", "delete", "--id", &id]);
    assert!(!p.ok(&["archive", "list"]).stdout.contains(&id));
}

#[test]
fn shell_completions() {
    let p = Platform::start();
    for (shell, marker) in [
        ("bash", "_kappa()"),
        ("zsh", "#compdef kappa"),
        ("fish", "complete -c kappa"),
    ] {
        let out = p.ok(&["completion", shell]).stdout;
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..200.min(out.len())]
        );
        assert!(out.contains("getsrc"), "{shell}");
    }
    p.kappa(&["completion", "tcsh"]).code(2);
}
