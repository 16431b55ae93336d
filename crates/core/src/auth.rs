//! The one bearer-token check every Kappa listener uses (the API server, the router's admin
//! listener, the executor API, the process admin listener of `kappa server`).
//!
//! The token is compared in constant time: [`TokenCheck`] keeps only the SHA-256 digest of the
//! expected token and compares it with the digest of the presented one using `subtle`, so
//! neither where the first differing byte is nor the presented token's length shows in the time
//! taken. It lives here (not in each server) so that there is one parser of
//! `Authorization: Bearer <token>` and one comparison; it does no IO and knows no HTTP crate:
//! callers pass the header's raw value.

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of a build token ([`build_token`]).
const BUILD_TOKEN_PREFIX: &str = "kappa-build";

/// Why a request's credentials were refused. Every variant answers 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("authentication required: send the header Authorization: Bearer <token>")]
    Missing,
    /// An `Authorization` header of another scheme (e.g. `Basic`), or one that is not text.
    #[error("the Authorization header is not a bearer token: send Authorization: Bearer <token>")]
    NotBearer,
    /// A bearer token that is not the platform's.
    #[error("the bearer token is not valid")]
    Invalid,
}

/// The expected platform token, ready to check requests against.
#[derive(Clone)]
pub struct TokenCheck {
    /// SHA-256 of the expected token; the token itself is not kept.
    digest: [u8; 32],
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(<redacted>)")
    }
}

impl TokenCheck {
    /// A check for `token`.
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// A check for `token`, or `None` (no authentication) when it is absent or empty.
    pub fn optional(token: Option<&str>) -> Option<Self> {
        token.filter(|t| !t.is_empty()).map(Self::new)
    }

    /// Checks the raw value of a request's `Authorization` header (`None` when it has none).
    /// The scheme is case-insensitive (`Bearer`, `bearer`); spaces around the token are
    /// ignored.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let given = bearer(value).ok_or(AuthError::NotBearer)?;
        if self.matches(given) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// Whether `given` is the expected token, compared in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        bool::from(self.digest.ct_eq(&given))
    }
}

/// A build token: the credential of one builder pod, scoped to reading its package's source
/// archive (`source_sha256`) and uploading archives, never the platform token.
///
/// It is `kappa-build.<nonce>.<source_sha256>.<mac>`, the MAC being HMAC-SHA256 over the nonce
/// and the digest keyed with the SHA-256 of the platform token: a server holding only a
/// [`TokenCheck`] (which keeps that digest) verifies it with [`TokenCheck::verify_build`], and
/// nobody without the platform token can make one or widen one's scope. The nonce (the build's
/// id) makes every build's token different.
pub fn build_token(platform_token: &str, nonce: &str, source_sha256: &str) -> String {
    let key: [u8; 32] = Sha256::digest(platform_token.as_bytes()).into();
    format!(
        "{BUILD_TOKEN_PREFIX}.{nonce}.{source_sha256}.{}",
        hex(&build_mac(&key, nonce, source_sha256))
    )
}

fn build_mac(key: &[u8; 32], nonce: &str, source_sha256: &str) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(BUILD_TOKEN_PREFIX.as_bytes());
    mac.update(b"\0");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(source_sha256.as_bytes());
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a valid build token ([`build_token`]) allows: reading this source archive (and
/// uploading archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildGrant {
    /// The sha256 of the one archive the token may read.
    pub source_sha256: String,
}

impl TokenCheck {
    /// Checks a request's `Authorization` header for a build token made from the expected
    /// platform token ([`build_token`]); the MAC is compared in constant time.
    pub fn verify_build(&self, authorization: Option<&[u8]>) -> Result<BuildGrant, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let given = bearer(value).ok_or(AuthError::NotBearer)?;
        let given = std::str::from_utf8(given).map_err(|_| AuthError::Invalid)?;
        let mut parts = given.split('.');
        let (Some(BUILD_TOKEN_PREFIX), Some(nonce), Some(sha), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Invalid);
        };
        let expected = hex(&build_mac(&self.digest, nonce, sha));
        if bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            Ok(BuildGrant {
                source_sha256: sha.to_owned(),
            })
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value, or `None` for another scheme.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(split);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> TokenCheck {
        TokenCheck::new("s3cret-token-0123")
    }

    #[test]
    fn the_right_token_passes() {
        assert_eq!(check().verify(Some(b"Bearer s3cret-token-0123")), Ok(()));
        assert_eq!(check().verify(Some(b"bearer  s3cret-token-0123 ")), Ok(()));
        assert_eq!(check().verify(Some(b"BEARER s3cret-token-0123")), Ok(()));
    }

    #[test]
    fn a_wrong_token_is_invalid() {
        assert_eq!(
            check().verify(Some(b"Bearer s3cret-token-0124")),
            Err(AuthError::Invalid)
        );
        // A prefix, a longer token and an empty-looking one of other lengths.
        for other in [
            &b"Bearer s3cret"[..],
            b"Bearer s3cret-token-0123x",
            b"Bearer x",
        ] {
            assert_eq!(check().verify(Some(other)), Err(AuthError::Invalid));
        }
        assert!(!check().matches(b""));
    }

    #[test]
    fn a_missing_header_is_missing() {
        assert_eq!(check().verify(None), Err(AuthError::Missing));
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens() {
        for value in [
            &b"Basic czNjcmV0"[..],
            b"s3cret-token-0123",
            b"Bearer",
            b"Bearer   ",
            b"",
            b"Token s3cret-token-0123",
        ] {
            assert_eq!(check().verify(Some(value)), Err(AuthError::NotBearer));
        }
    }

    #[test]
    fn build_tokens_carry_their_scope_and_cannot_be_forged() {
        let sha = "a".repeat(64);
        let token = build_token("s3cret-token-0123", "b1", &sha);
        let header = format!("Bearer {token}");
        assert_eq!(
            check().verify_build(Some(header.as_bytes())),
            Ok(BuildGrant {
                source_sha256: sha.clone()
            })
        );
        // It is not the platform token.
        assert_eq!(
            check().verify(Some(header.as_bytes())),
            Err(AuthError::Invalid)
        );
        // Another platform's token, another digest, or a changed nonce do not verify.
        let other = format!("Bearer {}", build_token("other", "b1", &sha));
        assert_eq!(
            check().verify_build(Some(other.as_bytes())),
            Err(AuthError::Invalid)
        );
        let widened = header.replace(&sha, &"b".repeat(64));
        assert_eq!(
            check().verify_build(Some(widened.as_bytes())),
            Err(AuthError::Invalid)
        );
        let renonced = header.replace(".b1.", ".b2.");
        assert_eq!(
            check().verify_build(Some(renonced.as_bytes())),
            Err(AuthError::Invalid)
        );
        // The platform token itself is no build token.
        assert_eq!(
            check().verify_build(Some(b"Bearer s3cret-token-0123")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn an_empty_token_means_no_check() {
        assert!(TokenCheck::optional(None).is_none());
        assert!(TokenCheck::optional(Some("")).is_none());
        assert!(TokenCheck::optional(Some("t")).is_some());
    }

    #[test]
    fn debug_never_prints_the_token() {
        let text = format!("{:?}", check());
        assert!(!text.contains("s3cret"), "{text}");
    }
}
