//! Test support shared by Kappa's crates and its system tests. A dev-dependency only (never
//! published, never linked into a binary):
//!
//! - [`eventually`], [`eventually_async`] and [`eventually_blocking`]: poll a condition until it
//!   holds, failing the test after a bound;
//! - [`servers`]: real broker processes (`nats-server -js`, `redis-server`, `tansu`) on free
//!   loopback ports with temporary storage, for the trigger and system tests;
//! - [`store`] (feature `store`): the conformance suite every `Store` implementation runs;
//! - [`backend`] (feature `backend`): the conformance suite every instance `Backend` runs.
//!
//! A missing prerequisite (a broker binary) is an error, so a test that needs it fails rather
//! than passing without having run: `scripts/install-deps.sh` installs every prerequisite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "backend")]
pub mod backend;
pub mod servers;
#[cfg(feature = "store")]
pub mod store;
mod wait;

pub use wait::{Ready, eventually, eventually_async, eventually_blocking};
