//! Integration tests of kappa-archive: the store on a real directory, extraction of zips built
//! here (including malicious ones), and packing.
#![allow(clippy::unwrap_used)]

mod extract;
mod fuzz;
mod pack;
mod store;
mod support;
