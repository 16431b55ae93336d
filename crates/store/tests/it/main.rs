//! Integration tests of kappa-store: the conformance suite (`kappa_test_support::store`) run
//! against every implementation, then what only the embedded file store promises (reopen,
//! crash safety).

mod list_prefix;
mod memory;
mod redb_store;
mod watch_cache;
