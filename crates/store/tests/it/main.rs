//! Integration tests of kappa-store: one conformance suite run against every implementation,
//! then what only the embedded file store promises (reopen, crash safety).

mod conformance;
mod memory;
mod redb_store;
mod watch_cache;
