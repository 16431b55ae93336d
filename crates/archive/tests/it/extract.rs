use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kappa_archive::{ArchiveError, ExtractLimits, extract_zip};

use crate::support::{Entry, patch, tree, write, zeros_zip, zip_of};

/// Extracts `bytes` into `<tmp>/work/dest` and returns the result; `<tmp>/work` is where an
/// escaping entry would land.
fn extract(bytes: &[u8], limits: &ExtractLimits) -> (tempfile::TempDir, Result<(), ArchiveError>) {
    let tmp = tempfile::tempdir().unwrap();
    let zip = write(tmp.path(), "a.zip", bytes);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let result = extract_zip(&zip, &work.join("dest"), limits);
    (tmp, result)
}

fn dest(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("work").join("dest")
}

#[track_caller]
fn assert_unsafe(result: Result<(), ArchiveError>, entry_contains: &str) -> String {
    match result {
        Err(ArchiveError::Unsafe { entry, reason }) => {
            assert!(
                entry.contains(entry_contains),
                "entry {entry:?} should name {entry_contains:?} ({reason})"
            );
            reason
        }
        other => panic!("expected Unsafe for {entry_contains:?}, got {other:?}"),
    }
}

/// Nothing was written outside `work/dest`.
fn assert_contained(tmp: &tempfile::TempDir) {
    for path in tree(tmp.path()) {
        assert!(
            ["a.zip", "work", "work/dest"].contains(&path.as_str())
                || path.starts_with("work/dest/"),
            "escaped: {path}"
        );
    }
}

#[test]
fn extracts_files_dirs_and_modes() {
    let bytes = zip_of(&[
        Entry::Dir("lib/"),
        Entry::File("lib/util.py", b"X = 1\n", 0o644),
        Entry::File("main.py", b"def main(): pass\n", 0o644),
        Entry::File("bin/run", b"#!/bin/sh\necho hi\n", 0o755),
        Entry::File("wide-open", b"x", 0o777),
        Entry::File("setuid", b"x", 0o4755),
        Entry::File("./dotted//name.txt", b"n", 0o600),
    ]);
    let (tmp, result) = extract(&bytes, &ExtractLimits::default());
    result.unwrap();
    let d = dest(&tmp);
    assert_eq!(
        tree(&d),
        [
            "bin",
            "bin/run",
            "dotted",
            "dotted/name.txt",
            "lib",
            "lib/util.py",
            "main.py",
            "setuid",
            "wide-open"
        ]
    );
    assert_eq!(
        std::fs::read(d.join("main.py")).unwrap(),
        b"def main(): pass\n"
    );
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_ne!(mode("bin/run") & 0o111, 0, "exec bit kept");
    assert_eq!(mode("main.py") & 0o111, 0, "no exec bit added");
    assert_eq!(mode("wide-open") & 0o022, 0, "not group/world-writable");
    assert_eq!(mode("setuid") & 0o7000, 0, "no setuid");
    assert_eq!(mode("lib") & 0o022, 0);
}

#[test]
fn refuses_zip_slip_paths() {
    for name in [
        "../x",
        "a/../../x",
        "a/../x",
        "/etc/x",
        "C:/x",
        "..\\x",
        "a\\..\\..\\x",
    ] {
        let bytes = zip_of(&[
            Entry::File("ok.txt", b"fine", 0o644),
            Entry::File(name, b"evil", 0o644),
        ]);
        let (tmp, result) = extract(&bytes, &ExtractLimits::default());
        assert_unsafe(result, name);
        assert!(
            !dest(&tmp).exists(),
            "{name}: refused before writing anything"
        );
        assert_contained(&tmp);
        assert!(!tmp.path().join("x").exists());
    }
}

#[test]
fn refuses_escaping_symlinks() {
    for (link, target) in [
        ("etc", "/etc"),
        ("up", "../.."),
        ("up1", ".."),
        ("a/b/l", "../../../x"),
        ("a/l", "b/../../.."),
        ("w", "C:/Windows"),
    ] {
        let bytes = zip_of(&[Entry::Symlink(link, target)]);
        let (tmp, result) = extract(&bytes, &ExtractLimits::default());
        assert_unsafe(result, link);
        assert_contained(&tmp);
        let link_path = dest(&tmp).join(link);
        assert!(
            std::fs::symlink_metadata(&link_path).is_err(),
            "{link} -> {target} was created"
        );
    }
}

#[test]
fn refuses_writing_through_a_symlink() {
    // The link itself points inside, but an entry below it would be written through it.
    let bytes = zip_of(&[
        Entry::Dir("sub/"),
        Entry::Symlink("l", "sub"),
        Entry::File("l/x", b"through", 0o644),
    ]);
    let (tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert_unsafe(result, "l/x");
    assert_contained(&tmp);

    // A chain that only escapes when the kernel follows an earlier link.
    let bytes = zip_of(&[
        Entry::Dir("p/q/"),
        Entry::Symlink("p/q/l2", ".."),
        Entry::Symlink("p/q/l2/l3", "../../.."),
    ]);
    let (tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert_unsafe(result, "p/q/l2/l3");
    assert_contained(&tmp);
}

#[test]
fn keeps_symlinks_that_stay_inside() {
    let bytes = zip_of(&[
        Entry::File("lib/real.txt", b"real", 0o644),
        Entry::Symlink("link.txt", "lib/real.txt"),
        Entry::Symlink("lib/self", "."),
        Entry::Symlink("lib/up", "../lib/real.txt"),
    ]);
    let (tmp, result) = extract(&bytes, &ExtractLimits::default());
    result.unwrap();
    let d = dest(&tmp);
    assert_eq!(
        std::fs::read_link(d.join("link.txt")).unwrap(),
        Path::new("lib/real.txt")
    );
    assert_eq!(std::fs::read(d.join("link.txt")).unwrap(), b"real");
    assert_eq!(std::fs::read(d.join("lib/up")).unwrap(), b"real");
}

#[test]
fn refuses_duplicate_names() {
    // The same path spelled twice.
    let bytes = zip_of(&[
        Entry::File("x.txt", b"one", 0o644),
        Entry::File("./x.txt", b"two", 0o644),
    ]);
    let (_tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert_unsafe(result, "x.txt");

    // Byte-identical names (the zip writer refuses them, so rename one afterwards).
    let mut bytes = zip_of(&[
        Entry::File("dupA", b"one", 0o644),
        Entry::File("dupB", b"two", 0o644),
    ]);
    patch(&mut bytes, b"dupB", b"dupA");
    let (tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert!(
        matches!(
            result,
            Err(ArchiveError::Unsafe { .. } | ArchiveError::Corrupt(_))
        ),
        "{result:?}"
    );
    assert!(!dest(&tmp).join("dupA").exists());
}

#[test]
fn refuses_too_many_files() {
    let names: Vec<String> = (0..30).map(|i| format!("f{i:02}")).collect();
    let entries: Vec<Entry<'_>> = names.iter().map(|n| Entry::File(n, b"x", 0o644)).collect();
    let bytes = zip_of(&entries);
    let limits = ExtractLimits {
        max_files: 10,
        ..ExtractLimits::default()
    };
    let (tmp, result) = extract(&bytes, &limits);
    let reason = assert_unsafe(result, "f10");
    assert!(reason.contains("30 entries"), "{reason}");
    assert!(
        reason.contains("this is entry 11 in archive order, the first past the limit"),
        "{reason}"
    );
    // The same entry every time, and from the check without extraction too.
    let zip_path = tmp.path().join("again.zip");
    std::fs::write(&zip_path, &bytes).unwrap();
    for _ in 0..3 {
        match kappa_archive::check_zip(&zip_path, &limits) {
            Err(ArchiveError::Unsafe { entry, .. }) => assert_eq!(entry, "f10"),
            other => panic!("{other:?}"),
        }
    }
    assert!(!dest(&tmp).exists());

    let (_tmp, result) = extract(
        &bytes,
        &ExtractLimits {
            max_files: 30,
            ..limits
        },
    );
    result.unwrap();
}

#[test]
fn stops_a_file_that_inflates_too_far() {
    let bytes = zeros_zip("bomb", 8 << 20);
    assert!(bytes.len() < 64 << 10, "the test zip should be small");
    let limits = ExtractLimits {
        max_file_bytes: 1 << 20,
        ..ExtractLimits::default()
    };
    let (tmp, result) = extract(&bytes, &limits);
    assert_unsafe(result, "bomb");
    let written = std::fs::metadata(dest(&tmp).join("bomb")).map_or(0, |m| m.len());
    assert!(written <= 1 << 20, "wrote {written} bytes");
}

#[test]
fn stops_an_archive_that_inflates_too_far_in_total() {
    let chunk = vec![7u8; 1 << 20];
    let names: Vec<String> = (0..5).map(|i| format!("part{i}")).collect();
    let entries: Vec<Entry<'_>> = names
        .iter()
        .map(|n| Entry::File(n, &chunk, 0o644))
        .collect();
    let bytes = zip_of(&entries);
    let limits = ExtractLimits {
        max_total_bytes: 3 << 20,
        ..ExtractLimits::default()
    };
    let (tmp, result) = extract(&bytes, &limits);
    let reason = assert_unsafe(result, "part3");
    assert!(reason.contains("total"), "{reason}");
    let written: u64 = tree(&dest(&tmp))
        .iter()
        .map(|p| std::fs::metadata(dest(&tmp).join(p)).unwrap().len())
        .sum();
    assert!(written <= 3 << 20, "wrote {written} bytes");
}

#[test]
fn does_not_trust_declared_sizes() {
    // Declare 100 bytes in both headers for a file that inflates to 4 MiB.
    let mut bytes = zeros_zip("liar", 4 << 20);
    let declared = (4u32 << 20).to_le_bytes();
    patch(&mut bytes, &declared, &100u32.to_le_bytes());
    let limits = ExtractLimits {
        max_file_bytes: 1 << 20,
        ..ExtractLimits::default()
    };
    let (tmp, result) = extract(&bytes, &limits);
    assert!(result.is_err(), "a lying archive was accepted");
    let written = std::fs::metadata(dest(&tmp).join("liar")).map_or(0, |m| m.len());
    assert!(written <= 1 << 20, "wrote {written} bytes");
}

#[test]
fn refuses_files_under_file_entries() {
    let bytes = zip_of(&[
        Entry::File("a", b"file", 0o644),
        Entry::File("a/b", b"below a file", 0o644),
    ]);
    let (_tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert_unsafe(result, "a/b");
}

#[test]
fn corrupt_archives_are_reported() {
    let (_tmp, result) = extract(
        b"PK\x03\x04 this is not really a zip",
        &ExtractLimits::default(),
    );
    assert!(
        matches!(result, Err(ArchiveError::Corrupt(_))),
        "{result:?}"
    );

    // Flip a byte of the compressed data: the CRC check catches it.
    let mut bytes = zip_of(&[Entry::File("f.txt", &[b'a'; 4096], 0o644)]);
    let data_at = {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        let entry = archive.by_index_raw(0).unwrap();
        usize::try_from(entry.data_start().unwrap()).unwrap()
    };
    bytes[data_at] ^= 0xff;
    let (_tmp, result) = extract(&bytes, &ExtractLimits::default());
    assert!(result.is_err(), "{result:?}");
}
