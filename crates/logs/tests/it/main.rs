//! Integration tests of kappa-logs on a real directory: writing, assignment, reading, rotation,
//! pruning, following and pumping real process output.
#![allow(clippy::unwrap_used)]

mod follow;
mod pump;
mod read_write;
mod support;
