//! The sandbox helper's `wait` stage: what the Python template's waiter execs once it has forked
//! a payload (`docs/design/009-zygote.md`). A shell stands in for the waiter: it starts a child,
//! then execs the helper, which must report how that child ended on its stdout.

use std::process::Command;

use crate::support::helper;

/// Runs `prelude` in `sh`, which leaves a child's pid in `$p`, then execs the `wait` stage with
/// it; returns the stage's stdout and exit status.
fn wait_after(prelude: &str) -> std::io::Result<(String, std::process::ExitStatus)> {
    let script = format!(
        "{prelude}; exec env -i {}=wait \"$0\" \"$p\"",
        kappa_sandbox::STAGE_VAR
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .arg(helper())
        .output()?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status,
    ))
}

#[test]
fn the_wait_stage_reports_its_childs_exit_code() {
    let (out, status) = wait_after("(sleep 0.2; exit 7) & p=$!").unwrap();
    assert_eq!(out, "exit 7\n");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_wait_stage_reports_a_signal_as_128_plus_its_number() {
    let (out, _) = wait_after("sleep 30 & p=$!; kill -KILL $p").unwrap();
    assert_eq!(out, "exit 137\n");
}

#[test]
fn the_wait_stage_without_such_a_child_reports_125() {
    let (out, _) = wait_after("p=1").unwrap();
    assert_eq!(out, "exit 125\n");
    // And a malformed argument is a set-up failure, with nothing on stdout.
    let (out, status) = wait_after("p=x").unwrap();
    assert_eq!(out, "");
    assert_eq!(status.code(), Some(125), "a set-up failure");
}
