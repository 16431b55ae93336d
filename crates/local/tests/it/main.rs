//! Integration tests of the local backend against the real Python runtime, bubblewrap and
//! cgroups (as root; a test whose capability is missing says so and skips).

mod config;
mod lifecycle;
mod limits;
mod orphans;
mod sandbox;
mod support;
