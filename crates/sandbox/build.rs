//! Stamps the crate with a hash of its own sources, so the platform can tell whether a separate
//! `kappa-sandbox` helper executable was built from the same sandbox code as itself
//! (`helper::IDENTITY`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

fn main() {
    let src = Path::new("src");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let mut files: Vec<_> = std::fs::read_dir(src)
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    if let Ok(manifest) = std::fs::read("Cargo.toml") {
        manifest.hash(&mut hasher);
    }
    println!(
        "cargo:rustc-env=KAPPA_SANDBOX_SOURCE_HASH={:016x}",
        hasher.finish()
    );
}
