use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use kappa_archive::{ArchiveError, ArchiveStore, Extracted, sha256_hex};
use tokio::io::AsyncReadExt;

use crate::support::{Entry, tree, zip_of};

fn open(root: &Path, max: u64) -> ArchiveStore {
    ArchiveStore::open(root, max).unwrap()
}

fn chunks(
    parts: &[&'static [u8]],
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    assert_eq!(store.max_archive_bytes(), 1 << 20);
    assert!(tmp.path().join("blobs").is_dir());
    assert!(tmp.path().join("extracted").is_dir());
    assert!(tmp.path().join("tmp").is_dir());

    let info = store
        .put_stream(chunks(&[b"hello ", b"", b"world"]))
        .await
        .unwrap();
    assert_eq!(info.sha256, sha256_hex(b"hello world"));
    assert_eq!(info.size, 11);
    assert_eq!(store.info(&info.sha256).await.unwrap(), Some(info.clone()));

    let mut content = Vec::new();
    store
        .open_blob(&info.sha256)
        .await
        .unwrap()
        .read_to_end(&mut content)
        .await
        .unwrap();
    assert_eq!(content, b"hello world");

    let other = store.put_bytes(b"another").await.unwrap();
    let mut expected = vec![info.clone(), other.clone()];
    expected.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    assert_eq!(store.list().await.unwrap(), expected);

    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["sha256"], info.sha256.as_str());
    assert_eq!(json["size"], 11);

    assert!(store.delete(&info.sha256).await.unwrap());
    assert!(!store.delete(&info.sha256).await.unwrap());
    assert_eq!(store.info(&info.sha256).await.unwrap(), None);
    assert!(matches!(
        store.open_blob(&info.sha256).await,
        Err(ArchiveError::NotFound(s)) if s == info.sha256
    ));
    assert_eq!(store.list().await.unwrap(), vec![other]);
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn identical_uploads_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let a = store.put_bytes(b"same bytes").await.unwrap();
    let b = store
        .put_stream(chunks(&[b"same", b" ", b"bytes"]))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(tree(&tmp.path().join("blobs")), [a.sha256.as_str()]);
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn over_the_limit_nothing_is_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 10);
    let exact = store.put_bytes(b"0123456789").await.unwrap();
    assert_eq!(exact.size, 10);

    let err = store
        .put_stream(chunks(&[b"01234", b"56789", b"x"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { limit: 10 }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "archive exceeds the limit of 10 bytes");
    assert!(matches!(
        store.put_bytes(&[0u8; 11]).await,
        Err(ArchiveError::TooLarge { limit: 10 })
    ));
    assert_eq!(tree(&tmp.path().join("blobs")), [exact.sha256]);
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn a_failing_body_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let body = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"partial")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]);
    let err = store.put_stream(body).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Body(_)), "{err:?}");
    assert!(err.to_string().contains("client went away"), "{err}");
    assert!(tree(&tmp.path().join("blobs")).is_empty());
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn invalid_digests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let good = sha256_hex(b"x");
    for bad in [
        String::new(),
        "abc".to_owned(),
        good.to_uppercase(),
        format!("../{}", &good[3..]),
        format!("{good}0"),
    ] {
        assert!(matches!(store.info(&bad).await, Err(ArchiveError::InvalidDigest(d)) if d == bad));
        assert!(matches!(
            store.open_blob(&bad).await,
            Err(ArchiveError::InvalidDigest(_))
        ));
        assert!(matches!(
            store.delete(&bad).await,
            Err(ArchiveError::InvalidDigest(_))
        ));
        assert!(matches!(
            store.extracted(&bad, None).await,
            Err(ArchiveError::InvalidDigest(_))
        ));
    }
    assert!(matches!(
        store.extracted(&good, None).await,
        Err(ArchiveError::NotFound(_))
    ));
}

#[tokio::test]
async fn open_clears_leftover_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let info = {
        let store = open(tmp.path(), 1 << 20);
        store.put_bytes(b"kept").await.unwrap()
    };
    std::fs::write(tmp.path().join("tmp/upload-crashed"), b"half").unwrap();
    std::fs::create_dir(tmp.path().join("tmp/extract-crashed")).unwrap();
    let store = open(tmp.path(), 1 << 20);
    assert!(tree(&tmp.path().join("tmp")).is_empty());
    assert_eq!(store.info(&info.sha256).await.unwrap(), Some(info));
}

#[tokio::test]
async fn zip_is_extracted_once_for_concurrent_callers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let zip = zip_of(&[
        Entry::File("main.py", b"def main():\n    return 'hi'\n", 0o644),
        Entry::File("bin/tool", b"#!/bin/sh\n", 0o755),
    ]);
    let info = store.put_bytes(&zip).await.unwrap();

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let sha = info.sha256.clone();
        tasks.push(tokio::spawn(
            async move { store.extracted(&sha, None).await },
        ));
    }
    let expected = Extracted::Dir(tmp.path().join("extracted").join(&info.sha256));
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), expected);
    }
    assert_eq!(store.extractions_performed(), 1);
    // Cached from now on.
    assert_eq!(store.extracted(&info.sha256, None).await.unwrap(), expected);
    assert_eq!(store.extractions_performed(), 1);

    let dir = expected.path();
    assert_eq!(tree(dir), ["bin", "bin/tool", "main.py"]);
    let mode = std::fs::metadata(dir.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "exec bit kept");
    assert!(tree(&tmp.path().join("tmp")).is_empty());

    // Deleting the archive deletes its extraction.
    assert!(store.delete(&info.sha256).await.unwrap());
    assert!(!dir.exists());
    assert!(tree(&tmp.path().join("extracted")).is_empty());
}

#[tokio::test]
async fn non_zip_becomes_a_single_executable_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let script = b"#!/bin/sh\necho hello\n";
    let info = store.put_bytes(script).await.unwrap();
    let base = tmp.path().join("extracted").join(&info.sha256);

    let named = store
        .extracted(&info.sha256, Some("hello.sh"))
        .await
        .unwrap();
    assert_eq!(named, Extracted::File(base.join("hello.sh")));
    assert_eq!(std::fs::read(named.path()).unwrap(), script);
    let mode = std::fs::metadata(named.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555, "executable, and sealed");

    let default = store.extracted(&info.sha256, None).await.unwrap();
    assert_eq!(default, Extracted::File(base.join("deployarchive")));
    assert_eq!(std::fs::read(default.path()).unwrap(), script);
    // Both names stay valid.
    assert!(base.join("hello.sh").is_file());

    for bad in ["", "..", "a/b", "../../etc/passwd"] {
        assert!(
            matches!(
                store.extracted(&info.sha256, Some(bad)).await,
                Err(ArchiveError::InvalidFilename { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn a_placed_single_file_is_found_without_a_blocking_task() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let code = b"def main():\n    return 'hi'\n";
    let info = store.put_bytes(code).await.unwrap();
    let sha = &info.sha256;
    // Not placed yet: left to `extracted`.
    assert_eq!(store.cached_file(sha, Some("hello.py")), None);
    let placed = store.extracted(sha, Some("hello.py")).await.unwrap();
    assert_eq!(
        store
            .cached_file(sha, Some("hello.py"))
            .map(Extracted::File),
        Some(placed.clone())
    );
    // Another name, not placed yet; invalid names and digests.
    assert_eq!(store.cached_file(sha, None), None);
    store.extracted(sha, None).await.unwrap();
    assert!(store.cached_file(sha, None).is_some());
    assert!(store.cached_file(sha, Some("hello.py")).is_some());
    assert_eq!(store.cached_file(sha, Some("../hello.py")), None);
    assert_eq!(store.cached_file("abc", Some("hello.py")), None);

    // A changed extraction is not reused; `extracted` makes it again, then it is found.
    std::fs::write(placed.path(), b"def main():\n    return 'evil'\n").unwrap();
    assert_eq!(store.cached_file(sha, Some("hello.py")), None);
    let again = store.extracted(sha, Some("hello.py")).await.unwrap();
    assert_eq!(std::fs::read(again.path()).unwrap(), code);
    assert_eq!(
        store
            .cached_file(sha, Some("hello.py"))
            .map(Extracted::File),
        Some(again)
    );

    // A zip, even of one file, is a directory: never a cached file.
    let zip = zip_of(&[Entry::File("main.py", code, 0o644)]);
    let zinfo = store.put_bytes(&zip).await.unwrap();
    store.extracted(&zinfo.sha256, None).await.unwrap();
    assert_eq!(store.cached_file(&zinfo.sha256, None), None);
    assert_eq!(store.cached_file(&zinfo.sha256, Some("main.py")), None);
}

#[tokio::test]
async fn an_unsafe_zip_is_refused_when_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let zip = zip_of(&[
        Entry::File("ok.py", b"", 0o644),
        Entry::Symlink("escape", "../../../../etc"),
    ]);
    let err = store.put_bytes(&zip).await.unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Unsafe { entry, reason } if entry == "escape" && reason.contains("outside")),
        "{err:?}"
    );
    assert!(store.list().await.unwrap().is_empty(), "nothing stored");
    assert!(tree(&tmp.path().join("tmp")).is_empty());

    // One stored before uploads were checked (written straight into the blob directory) is
    // refused by `check` and by extraction alike, and leaves no extraction behind.
    let sha = sha256_hex(&zip);
    std::fs::write(tmp.path().join("blobs").join(&sha), &zip).unwrap();
    assert!(matches!(
        store.check(&sha).await,
        Err(ArchiveError::Unsafe { entry, .. }) if entry == "escape"
    ));
    let err = store.extracted(&sha, None).await.unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Unsafe { entry, .. } if entry == "escape"),
        "{err:?}"
    );
    assert!(tree(&tmp.path().join("extracted")).is_empty());
    assert!(tree(&tmp.path().join("tmp")).is_empty());
    assert_eq!(store.extractions_performed(), 0);
    assert!(matches!(
        store.check(&"0".repeat(64)).await,
        Err(ArchiveError::NotFound(_))
    ));
    // Single files are always acceptable.
    let info = store.put_bytes(b"#!/bin/sh\n").await.unwrap();
    store.check(&info.sha256).await.unwrap();
}

#[tokio::test]
async fn extraction_limits_are_configurable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20).with_extract_limits(kappa_archive::ExtractLimits {
        max_files: 1,
        ..Default::default()
    });
    let zip = zip_of(&[Entry::File("a", b"", 0o644), Entry::File("b", b"", 0o644)]);
    let err = store.put_bytes(&zip).await.unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Unsafe { entry, reason }
            if entry == "b" && reason.contains("2 entries, more than the limit of 1; this is entry 2 in archive order")),
        "{err:?}"
    );
    let roomy = open(&tmp.path().join("roomy"), 1 << 20);
    let info = roomy.put_bytes(&zip).await.unwrap();
    roomy.extracted(&info.sha256, None).await.unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn extractions_are_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let zip = zip_of(&[
        Entry::File("main.py", b"print('hi')\n", 0o666),
        Entry::File("bin/tool", b"#!/bin/sh\n", 0o777),
        Entry::Dir("empty/"),
    ]);
    let info = store.put_bytes(&zip).await.unwrap();
    let dir = store.extracted(&info.sha256, None).await.unwrap();
    let dir = dir.path();
    assert_eq!(mode_of(dir), 0o555);
    assert_eq!(mode_of(&dir.join("bin")), 0o555);
    assert_eq!(mode_of(&dir.join("empty")), 0o555);
    assert_eq!(mode_of(&dir.join("main.py")), 0o444);
    assert_eq!(mode_of(&dir.join("bin/tool")), 0o555);

    // Sealed directories are still removed whole.
    assert!(store.delete(&info.sha256).await.unwrap());
    assert!(!dir.exists());
    assert!(tree(&tmp.path().join("manifests")).is_empty());
}

/// A way of changing an extraction (given its directory).
type Tamper = Box<dyn Fn(&Path)>;

/// What an instance of the local backend does with an extraction: hard links to its files.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::hard_link(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_tampered_extraction_is_made_again_from_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let original = b"def main():\n    return 'original'\n";
    let zip = zip_of(&[
        Entry::File("main.py", original, 0o644),
        Entry::File("lib/util.py", b"X = 1\n", 0o644),
    ]);
    let info = store.put_bytes(&zip).await.unwrap();
    let dir = store.extracted(&info.sha256, None).await.unwrap();
    let dir = dir.path().to_path_buf();
    assert_eq!(store.extractions_performed(), 1);

    // Hard links into instances (which change the files' change time and link count) are
    // not tampering: the extraction is reused.
    let instances = tempfile::tempdir().unwrap();
    link_tree(&dir, &instances.path().join("one"));
    link_tree(&dir, &instances.path().join("two"));
    assert_eq!(
        store.extracted(&info.sha256, None).await.unwrap().path(),
        dir
    );
    assert_eq!(
        store.extractions_performed(),
        1,
        "hard links are not tampering"
    );

    // Each way of changing the code is caught; the next caller gets the original back.
    let one = instances.path().join("one");
    let tampers: Vec<(&str, Tamper)> = vec![
        // As a function with write access to its /userfunc would (first: later extractions
        // are new files, which that instance's links no longer reach).
        (
            "write through an instance's hard link",
            Box::new(move |_: &Path| {
                let link = one.join("main.py");
                let mut code = std::fs::read(&link).unwrap();
                code.extend_from_slice(b"import os; os.system('evil')\n");
                std::fs::write(&link, code).unwrap();
            }),
        ),
        // The tests run as root, who may write a 0444 file (as the platform user could
        // after a chmod).
        (
            "write in place",
            Box::new(|dir: &Path| {
                std::fs::write(dir.join("main.py"), b"def main():\n    return 'evil'\n").unwrap();
            }),
        ),
        (
            "replace the file",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("main.py")).unwrap();
                std::fs::write(dir.join("main.py"), b"def main():\n    return 'evil!!!'\n")
                    .unwrap();
            }),
        ),
        (
            "add a file",
            Box::new(|dir: &Path| {
                std::fs::write(dir.join("lib/sitecustomize.py"), b"import os\n").unwrap();
            }),
        ),
        (
            "make a file writable",
            Box::new(|dir: &Path| {
                std::fs::set_permissions(
                    dir.join("lib/util.py"),
                    std::fs::Permissions::from_mode(0o666),
                )
                .unwrap();
            }),
        ),
        (
            "remove a file",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("lib/util.py")).unwrap();
            }),
        ),
    ];
    let mut performed = 1;
    for (what, tamper) in tampers {
        tamper(&dir);
        let again = store.extracted(&info.sha256, None).await.unwrap();
        assert_eq!(again.path(), dir, "{what}");
        performed += 1;
        assert_eq!(
            store.extractions_performed(),
            performed,
            "{what}: extracted again"
        );
        assert_eq!(
            std::fs::read(dir.join("main.py")).unwrap(),
            original,
            "{what}"
        );
        assert_eq!(
            std::fs::read(dir.join("lib/util.py")).unwrap(),
            b"X = 1\n",
            "{what}"
        );
        assert_eq!(tree(&dir), ["lib", "lib/util.py", "main.py"], "{what}");
        assert_eq!(mode_of(&dir.join("lib/util.py")), 0o444, "{what}");
        // And the fresh one is trusted again.
        store.extracted(&info.sha256, None).await.unwrap();
        assert_eq!(
            store.extractions_performed(),
            performed,
            "{what}: reused after"
        );
    }
    assert!(tree(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn an_extraction_without_a_manifest_is_made_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1 << 20);
    let script = b"#!/bin/sh\necho hello\n";
    let info = store.put_bytes(script).await.unwrap();
    let file = store.extracted(&info.sha256, Some("run")).await.unwrap();
    std::fs::remove_file(tmp.path().join("manifests").join(&info.sha256)).unwrap();
    // A single file tampered with through the cache, too.
    std::fs::write(file.path(), b"#!/bin/sh\necho evil\n").unwrap();
    let again = store.extracted(&info.sha256, Some("run")).await.unwrap();
    assert_eq!(again, file);
    assert_eq!(std::fs::read(again.path()).unwrap(), script);
    assert_eq!(store.extractions_performed(), 2);
    // A second name for an intact single file keeps the first one and its seal.
    let other = store.extracted(&info.sha256, None).await.unwrap();
    assert_eq!(std::fs::read(other.path()).unwrap(), script);
    assert_eq!(mode_of(other.path()), 0o555);
    assert_eq!(mode_of(other.path().parent().unwrap()), 0o555);
    store.extracted(&info.sha256, Some("run")).await.unwrap();
    store.extracted(&info.sha256, None).await.unwrap();
    assert_eq!(store.extractions_performed(), 3, "both names reused");
}
