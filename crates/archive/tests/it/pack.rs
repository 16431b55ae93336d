use std::os::unix::fs::PermissionsExt;

use kappa_archive::{ExtractLimits, extract_zip, pack_dir, pack_file, sha256_hex};

use crate::support::{tree, write};

fn source_tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    std::fs::create_dir_all(p.join("pkg/sub")).unwrap();
    std::fs::create_dir_all(p.join("__pycache__")).unwrap();
    std::fs::create_dir_all(p.join("pkg/__pycache__")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::create_dir_all(p.join("empty")).unwrap();
    write(p, "main.py", b"def main():\n    return 'hi'\n");
    write(p, "pkg/__init__.py", b"");
    write(p, "pkg/sub/data.txt", b"data");
    write(p, "__pycache__/main.cpython-312.pyc", b"junk");
    write(p, "pkg/__pycache__/x.pyc", b"junk");
    write(p, ".git/config", b"[core]");
    let tool = write(p, "tool.sh", b"#!/bin/sh\necho tool\n");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("pkg/sub/data.txt", p.join("data-link")).unwrap();
    src
}

#[test]
fn pack_dir_round_trips() {
    let src = source_tree();
    let zip = pack_dir(src.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let zip_path = write(out.path(), "src.zip", &zip);
    let dest = out.path().join("dest");
    extract_zip(&zip_path, &dest, &ExtractLimits::default()).unwrap();
    assert_eq!(
        tree(&dest),
        [
            "data-link",
            "empty",
            "main.py",
            "pkg",
            "pkg/__init__.py",
            "pkg/sub",
            "pkg/sub/data.txt",
            "tool.sh"
        ]
    );
    assert_eq!(
        std::fs::read(dest.join("main.py")).unwrap(),
        b"def main():\n    return 'hi'\n"
    );
    assert_eq!(std::fs::read(dest.join("data-link")).unwrap(), b"data");
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_ne!(mode("tool.sh") & 0o111, 0);
    assert_eq!(mode("main.py") & 0o111, 0);

    // Entries are relative and in a stable order.
    let archive = zip::ZipArchive::new(std::io::Cursor::new(&zip)).unwrap();
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('/')), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("__pycache__") || n.contains(".git"))
    );
}

#[test]
fn pack_dir_is_deterministic() {
    let src = source_tree();
    let first = pack_dir(src.path()).unwrap();
    // Touch a file: modification times must not change the bytes.
    let main = src.path().join("main.py");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&main)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = pack_dir(src.path()).unwrap();
    assert_eq!(sha256_hex(&first), sha256_hex(&second));
}

#[test]
fn pack_file_keeps_the_name_and_mode() {
    let src = tempfile::tempdir().unwrap();
    let bin = write(src.path(), "hello", b"#!/bin/sh\necho hello\n");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let zip = pack_file(&bin).unwrap();
    let out = tempfile::tempdir().unwrap();
    let zip_path = write(out.path(), "f.zip", &zip);
    let dest = out.path().join("dest");
    extract_zip(&zip_path, &dest, &ExtractLimits::default()).unwrap();
    assert_eq!(tree(&dest), ["hello"]);
    let mode = std::fs::metadata(dest.join("hello"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0);
}

#[test]
fn packing_the_wrong_kind_of_path_names_it() {
    let src = tempfile::tempdir().unwrap();
    let file = write(src.path(), "f.txt", b"x");
    let err = pack_dir(&file).unwrap_err();
    assert!(err.to_string().contains("f.txt"), "{err}");
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = pack_file(src.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let missing = src.path().join("missing");
    let err = pack_dir(&missing).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
