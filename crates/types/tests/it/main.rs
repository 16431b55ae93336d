//! Integration tests of kappa-types: the fuzz target for resource decoding and validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz;
