//! Pool manager component tests: a real `MemoryStore`, a fake backend that records calls, and
//! paused time for reaping.

mod fake;
mod pool;
