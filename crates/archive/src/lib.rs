//! Kappa's archives: the content-addressed store where uploaded packages live, and the code that
//! turns a stored archive into files an instance can run.
//!
//! This crate owns:
//! - [`ArchiveStore`]: blobs on disk under `<root>/blobs/<sha256>`, written by streaming (the
//!   whole body is never held in memory), bounded in size, de-duplicated by digest, and their
//!   cached extractions under `<root>/extracted/<sha256>/`.
//! - [`extract_zip`]: extraction that refuses zip-slip paths, escaping symlinks, duplicate names
//!   and zip bombs (it counts the bytes it actually writes, not the sizes the archive declares);
//!   [`check_zip`], the same rules without writing, which the store applies to every zip it
//!   stores, so an unsafe archive is refused when it is uploaded.
//! - [`pack_dir`] / [`pack_file`]: deterministic zips of local sources, for the CLI.
//!
//! It deliberately does not know about resources (packages, functions), HTTP, or who may read
//! an archive: the API server decides that, and stores only digests in resources.

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod extract;
mod manifest;
mod pack;
mod store;

pub use error::ArchiveError;
pub use extract::{ExtractLimits, check_zip, extract_zip};
pub use manifest::{BUILD_MANIFESTS, manifest_in_dir, manifest_in_zip};
pub use pack::{pack_dir, pack_file, pack_files};
pub use store::{ArchiveInfo, ArchiveStore, DEFAULT_FILENAME, Extracted, sniff_zip};

use sha2::{Digest, Sha256};

/// The lower-case hexadecimal sha256 digest of `bytes` (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` is a digest as this crate writes them: exactly 64 lower-case hexadecimal
/// characters.
pub fn is_valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lower-case hexadecimal encoding.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_validation() {
        assert!(is_valid_digest(&sha256_hex(b"x")));
        assert!(!is_valid_digest(""));
        assert!(!is_valid_digest(&sha256_hex(b"x").to_uppercase()));
        assert!(!is_valid_digest(&format!("{}0", sha256_hex(b"x"))));
        assert!(!is_valid_digest(&"g".repeat(64)));
        assert!(!is_valid_digest(&format!("../{}", &sha256_hex(b"x")[3..])));
    }
}
