//! Component tests of the builder: a MemoryStore, a real archive store and the real local
//! build sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds;
mod fission;
mod support;
