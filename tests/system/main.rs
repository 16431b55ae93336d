//! System tests: start the real `kappa up` on free loopback ports, deploy through the real CLI,
//! invoke over HTTP, as a user would.

mod errors;
mod examples;
mod harness;
mod restart;
