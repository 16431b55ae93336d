//! The platform's short memory of how functions were called: per function, one bucket per
//! minute for the last [`MINUTES`] minutes (requests, errors, cold starts, a latency
//! histogram) and a ring of the last [`RECENT`] invocations (status, duration, invocation id,
//! time). The router records every request in a [`StatsRegistry`]; the API server reads a
//! [`StatsSnapshot`] (the wire format of the executor's `GET /v1/stats` in cluster mode, where
//! each router replica sends its own and the executor sums them) and turns it into the
//! dashboard's figures ([`FunctionSnapshot::summary`], [`FunctionSnapshot::series`]).
//!
//! Memory is bounded: a function's recorder is a fixed block (about 17 KiB) allocated on its
//! first request, the registry holds at most [`MAX_FUNCTIONS`] of them, and a function that
//! was not called for an hour is forgotten. Recording takes no lock of its own (a read of one
//! shard of a concurrent map, then atomic additions) and allocates nothing once the function
//! has its recorder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::FunctionId;

/// Minutes of history kept per function.
pub const MINUTES: usize = 60;
/// Invocations kept per function in the recent ring.
pub const RECENT: usize = 50;
/// Functions the registry keeps stats for at once; requests of more are not recorded.
pub const MAX_FUNCTIONS: usize = 4096;
/// Latency histogram buckets: bucket `i` holds durations in `[BASE·R^i, BASE·R^(i+1))` with
/// `R = 2^(1/3)` and `BASE` = 100 µs (the first bucket also holds everything shorter, the last
/// everything longer), so 64 buckets reach about 260 s and an estimate is within 13 %.
pub const LATENCY_BUCKETS: usize = 64;
const BASE_US: f64 = 100.0;
const STEPS_PER_OCTAVE: f64 = 3.0;

/// A minute stamp no real minute has: the bucket is being reset.
const RESETTING: u64 = u64::MAX;

/// The latency bucket of `duration`.
pub fn latency_bucket(duration: Duration) -> usize {
    let us = duration.as_secs_f64() * 1e6;
    if us < BASE_US {
        return 0;
    }
    let i = ((us / BASE_US).log2() * STEPS_PER_OCTAVE).floor();
    // `i` is finite and non-negative here; the cast saturates.
    (i as usize).min(LATENCY_BUCKETS - 1)
}

/// The value reported for bucket `i`: its geometric middle, in milliseconds.
pub fn bucket_value_ms(i: usize) -> f64 {
    BASE_US * 2f64.powf((i as f64 + 0.5) / STEPS_PER_OCTAVE) / 1000.0
}

/// Whether an answer with `status` counts as an error: 5xx (the function failed, timed out,
/// or could not be reached or started).
pub fn is_error(status: u16) -> bool {
    status >= 500
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The current minute since the Unix epoch.
pub fn current_minute() -> u64 {
    unix_now().as_secs() / 60
}

/// One minute of one function.
struct MinuteBucket {
    /// The minute (since the epoch) the counters belong to, or [`RESETTING`]. The thread that
    /// moves it to a new minute zeroes the counters before publishing the new stamp, so an
    /// increment that sees the new stamp is never wiped.
    minute: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    cold_starts: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl MinuteBucket {
    fn new() -> Self {
        Self {
            minute: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Makes the bucket hold `minute`; `false` when another thread is resetting it (the
    /// sample is then dropped rather than waited for) or it already holds a later minute.
    fn enter(&self, minute: u64) -> bool {
        for _ in 0..64 {
            let seen = self.minute.load(Ordering::Acquire);
            if seen == minute {
                return true;
            }
            if seen == RESETTING {
                std::hint::spin_loop();
                continue;
            }
            if seen > minute {
                return false;
            }
            if self
                .minute
                .compare_exchange(seen, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.requests.store(0, Ordering::Relaxed);
                self.errors.store(0, Ordering::Relaxed);
                self.cold_starts.store(0, Ordering::Relaxed);
                for b in &self.latency {
                    b.store(0, Ordering::Relaxed);
                }
                self.minute.store(minute, Ordering::Release);
                return true;
            }
        }
        false
    }

    fn read(&self, oldest: u64, newest: u64) -> Option<MinuteStats> {
        let minute = self.minute.load(Ordering::Acquire);
        if minute == RESETTING || minute < oldest || minute > newest {
            return None;
        }
        let stats = MinuteStats {
            minute,
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            cold_starts: self.cold_starts.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let n = c.load(Ordering::Relaxed);
                    // `i` < LATENCY_BUCKETS = 64.
                    (n > 0).then_some([i as u32, n])
                })
                .collect(),
        };
        // Reset meanwhile: what was read may be half old, half new.
        (self.minute.load(Ordering::Acquire) == minute).then_some(stats)
    }
}

/// One slot of the recent-invocations ring, a sequence lock over atomics: the writer of the
/// `n`th invocation makes `seq` odd (`2n + 1`), writes, makes it even (`2n + 2`); a reader
/// keeps what it read only when `seq` was the same even number before and after.
struct Slot {
    seq: AtomicU64,
    time_ms: AtomicU64,
    id_hi: AtomicU64,
    id_lo: AtomicU64,
    /// Status in the low 16 bits, duration in microseconds above.
    status_duration: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            time_ms: AtomicU64::new(0),
            id_hi: AtomicU64::new(0),
            id_lo: AtomicU64::new(0),
            status_duration: AtomicU64::new(0),
        }
    }
}

/// The recorder of one function.
pub struct FunctionStats {
    buckets: [MinuteBucket; MINUTES],
    ring: [Slot; RECENT],
    /// Invocations written to the ring so far; `next % RECENT` is the next slot.
    next: AtomicU64,
    /// The minute of the last request, for forgetting idle functions.
    last_minute: AtomicU64,
}

impl Default for FunctionStats {
    fn default() -> Self {
        Self::new()
    }
}

impl FunctionStats {
    pub fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| MinuteBucket::new()),
            ring: std::array::from_fn(|_| Slot::new()),
            next: AtomicU64::new(0),
            last_minute: AtomicU64::new(0),
        }
    }

    fn bucket(&self, minute: u64) -> Option<&MinuteBucket> {
        // The remainder is below MINUTES.
        let b = &self.buckets[(minute % MINUTES as u64) as usize];
        b.enter(minute).then_some(b)
    }

    /// Records one answered request at `now` (since the epoch).
    pub fn record_at(&self, now: Duration, status: u16, duration: Duration, invocation_id: u128) {
        let minute = now.as_secs() / 60;
        self.last_minute.fetch_max(minute, Ordering::Relaxed);
        if let Some(b) = self.bucket(minute) {
            b.requests.fetch_add(1, Ordering::Relaxed);
            if is_error(status) {
                b.errors.fetch_add(1, Ordering::Relaxed);
            }
            b.latency[latency_bucket(duration)].fetch_add(1, Ordering::Relaxed);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The remainder is below RECENT.
        let slot = &self.ring[(n % RECENT as u64) as usize];
        // Odd while writing; `2n + 2` once written, which also orders the ring.
        slot.seq.store(2 * n + 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX >> 16);
        slot.time_ms.store(
            u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        slot.id_hi
            .store((invocation_id >> 64) as u64, Ordering::Relaxed);
        slot.id_lo.store(invocation_id as u64, Ordering::Relaxed);
        slot.status_duration.store(
            u64::from(status) | (micros.min(u64::MAX >> 16) << 16),
            Ordering::Relaxed,
        );
        slot.seq.store(2 * n + 2, Ordering::Release);
    }

    /// Records one request that had to wait for a new instance, at `now`.
    pub fn cold_start_at(&self, now: Duration) {
        let minute = now.as_secs() / 60;
        self.last_minute.fetch_max(minute, Ordering::Relaxed);
        if let Some(b) = self.bucket(minute) {
            b.cold_starts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The minutes of the hour ending at `now_minute` and the recent invocations, newest
    /// first.
    pub fn snapshot(&self, function: FunctionId, now_minute: u64) -> FunctionSnapshot {
        let oldest = now_minute.saturating_sub(MINUTES as u64 - 1);
        let mut minutes: Vec<MinuteStats> = self
            .buckets
            .iter()
            .filter_map(|b| b.read(oldest, now_minute))
            .filter(|m| m.requests > 0 || m.cold_starts > 0)
            .collect();
        minutes.sort_by_key(|m| m.minute);
        let mut recent: Vec<(u64, InvocationRecord)> = self
            .ring
            .iter()
            .filter_map(|slot| {
                let before = slot.seq.load(Ordering::Acquire);
                if before == 0 || before & 1 == 1 {
                    return None;
                }
                let time_ms = slot.time_ms.load(Ordering::Relaxed);
                let id = (u128::from(slot.id_hi.load(Ordering::Relaxed)) << 64)
                    | u128::from(slot.id_lo.load(Ordering::Relaxed));
                let sd = slot.status_duration.load(Ordering::Relaxed);
                std::sync::atomic::fence(Ordering::Acquire);
                if slot.seq.load(Ordering::Relaxed) != before {
                    return None;
                }
                let record = InvocationRecord {
                    invocation_id: format!("{id:032x}"),
                    time_ms,
                    // The low 16 bits.
                    status: (sd & 0xffff) as u16,
                    duration_us: sd >> 16,
                };
                Some((before, record))
            })
            .collect();
        // Newest first, in the order they were recorded (several may share a millisecond).
        recent.sort_by_key(|r| std::cmp::Reverse(r.0));
        FunctionSnapshot {
            function,
            minutes,
            recent: recent.into_iter().map(|(_, r)| r).collect(),
        }
    }
}

/// The recorders of every function a router answered for.
#[derive(Default)]
pub struct StatsRegistry {
    /// A concurrent map: a request reads one shard (a read lock held for a lookup), a
    /// function's first request writes one.
    functions: DashMap<FunctionId, Arc<FunctionStats>>,
}

impl std::fmt::Debug for StatsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsRegistry")
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl StatsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn function(&self, id: &FunctionId) -> Option<Arc<FunctionStats>> {
        if let Some(stats) = self.functions.get(id) {
            return Some(Arc::clone(&stats));
        }
        if self.functions.len() >= MAX_FUNCTIONS {
            self.forget_idle(current_minute());
            if self.functions.len() >= MAX_FUNCTIONS {
                return None;
            }
        }
        Some(Arc::clone(
            &self
                .functions
                .entry(id.clone())
                .or_insert_with(|| Arc::new(FunctionStats::new())),
        ))
    }

    /// Records one answered request of `function`. `invocation_id` is the router's 32 hex
    /// digits (anything else is recorded as 0).
    pub fn record(
        &self,
        function: &FunctionId,
        status: u16,
        duration: Duration,
        invocation_id: &[u8],
    ) {
        if let Some(stats) = self.function(function) {
            stats.record_at(unix_now(), status, duration, parse_id(invocation_id));
        }
    }

    /// Records that a request of `function` had to wait for a new instance.
    pub fn cold_start(&self, function: &FunctionId) {
        if let Some(stats) = self.function(function) {
            stats.cold_start_at(unix_now());
        }
    }

    /// Forgets functions with no request in the hour before `now_minute`.
    fn forget_idle(&self, now_minute: u64) {
        let oldest = now_minute.saturating_sub(MINUTES as u64 - 1);
        self.functions
            .retain(|_, s| s.last_minute.load(Ordering::Relaxed) >= oldest);
    }

    /// Every function's last hour, as of now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot_at(current_minute())
    }

    /// Every function's hour ending at `now_minute`.
    pub fn snapshot_at(&self, now_minute: u64) -> StatsSnapshot {
        self.forget_idle(now_minute);
        let mut functions: Vec<FunctionSnapshot> = self
            .functions
            .iter()
            .map(|e| e.value().snapshot(e.key().clone(), now_minute))
            .collect();
        functions.sort_by(|a, b| a.function.cmp(&b.function));
        StatsSnapshot {
            minute: now_minute,
            functions,
        }
    }
}

fn parse_id(hex: &[u8]) -> u128 {
    if hex.len() != 32 {
        return 0;
    }
    let mut n: u128 = 0;
    for &c in hex {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return 0,
        };
        n = (n << 4) | u128::from(d);
    }
    n
}

/// Every function's recent history: what `GET /v1/stats` of the executor serves and what
/// each router replica sends to `POST /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// The minute (since the epoch) the snapshot was taken in.
    pub minute: u64,
    pub functions: Vec<FunctionSnapshot>,
}

/// One function's minutes (only those with requests or cold starts, oldest first) and recent
/// invocations (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSnapshot {
    pub function: FunctionId,
    pub minutes: Vec<MinuteStats>,
    pub recent: Vec<InvocationRecord>,
}

/// One minute of one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinuteStats {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Requests that waited for a new instance.
    pub cold_starts: u64,
    /// `[bucket, count]` of the non-empty latency buckets (see [`LATENCY_BUCKETS`]).
    pub latency: Vec<[u32; 2]>,
}

/// One finished invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationRecord {
    pub invocation_id: String,
    /// When the response head was sent, in milliseconds since the epoch.
    pub time_ms: u64,
    pub status: u16,
    /// From receiving the request to sending the response head.
    pub duration_us: u64,
}

/// A function's figures over a window of minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSummary {
    pub requests: u64,
    pub errors: u64,
    /// `errors / requests`, 0 without requests.
    pub error_rate: f64,
    /// Requests per second over the window.
    pub request_rate: f64,
    /// Latency percentiles in milliseconds; `None` without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cold_starts: u64,
}

/// One minute of a function's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    pub minute: u64,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The value under which a fraction `q` of the histogram's samples fall.
fn percentile(histogram: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the sample that is the percentile, 1-based.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_value_ms(i));
        }
    }
    None
}

fn add_latency(histogram: &mut [u64; LATENCY_BUCKETS], latency: &[[u32; 2]]) {
    for [i, n] in latency {
        if let Some(slot) = histogram.get_mut(*i as usize) {
            *slot += u64::from(*n);
        }
    }
}

impl FunctionSnapshot {
    /// The figures of the `window` minutes ending at `now_minute` (the current minute counts
    /// whole, so the rate is a little low early in a minute).
    pub fn summary(&self, now_minute: u64, window: u64) -> FunctionSummary {
        let oldest = now_minute.saturating_sub(window.saturating_sub(1));
        let mut histogram = [0u64; LATENCY_BUCKETS];
        let (mut requests, mut errors, mut cold_starts) = (0, 0, 0);
        for m in self
            .minutes
            .iter()
            .filter(|m| (oldest..=now_minute).contains(&m.minute))
        {
            requests += m.requests;
            errors += m.errors;
            cold_starts += m.cold_starts;
            add_latency(&mut histogram, &m.latency);
        }
        FunctionSummary {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            request_rate: requests as f64 / (window.max(1) * 60) as f64,
            p50_ms: percentile(&histogram, 0.5),
            p99_ms: percentile(&histogram, 0.99),
            cold_starts,
        }
    }

    /// One point per minute of the `window` minutes ending at `now_minute`, oldest first
    /// (empty minutes included).
    pub fn series(&self, now_minute: u64, window: u64) -> Vec<SeriesPoint> {
        let oldest = now_minute.saturating_sub(window.saturating_sub(1));
        (oldest..=now_minute)
            .map(|minute| {
                let mut histogram = [0u64; LATENCY_BUCKETS];
                let mut point = SeriesPoint {
                    minute,
                    requests: 0,
                    errors: 0,
                    cold_starts: 0,
                    p50_ms: None,
                    p99_ms: None,
                };
                for m in self.minutes.iter().filter(|m| m.minute == minute) {
                    point.requests += m.requests;
                    point.errors += m.errors;
                    point.cold_starts += m.cold_starts;
                    add_latency(&mut histogram, &m.latency);
                }
                point.p50_ms = percentile(&histogram, 0.5);
                point.p99_ms = percentile(&histogram, 0.99);
                point
            })
            .collect()
    }

    /// Adds `other`'s minutes and invocations (another router replica's view of the same
    /// function) to this one's.
    fn merge(&mut self, other: FunctionSnapshot) {
        for m in other.minutes {
            match self.minutes.iter_mut().find(|x| x.minute == m.minute) {
                Some(x) => {
                    x.requests += m.requests;
                    x.errors += m.errors;
                    x.cold_starts += m.cold_starts;
                    let mut histogram = [0u64; LATENCY_BUCKETS];
                    add_latency(&mut histogram, &x.latency);
                    add_latency(&mut histogram, &m.latency);
                    x.latency = histogram
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(i, n)| [i as u32, u32::try_from(*n).unwrap_or(u32::MAX)])
                        .collect();
                }
                None => self.minutes.push(m),
            }
        }
        self.minutes.sort_by_key(|m| m.minute);
        self.recent.extend(other.recent);
        // Stable: each replica's own order stands among invocations of one millisecond.
        self.recent.sort_by_key(|r| std::cmp::Reverse(r.time_ms));
        self.recent.truncate(RECENT);
    }
}

impl StatsSnapshot {
    /// Sums `other` (another router replica's snapshot) into this one.
    pub fn merge(&mut self, other: StatsSnapshot) {
        self.minute = self.minute.max(other.minute);
        for f in other.functions {
            match self.functions.iter_mut().find(|x| x.function == f.function) {
                Some(x) => x.merge(f),
                None => self.functions.push(f),
            }
        }
        self.functions.sort_by(|a, b| a.function.cmp(&b.function));
    }

    /// The snapshot of `function`, if it was called in the last hour.
    pub fn function(&self, function: &FunctionId) -> Option<&FunctionSnapshot> {
        self.functions.iter().find(|f| &f.function == function)
    }
}

/// Where the API server gets the routers' stats: the router's registry in process, or the
/// executor's sum of every replica's reports.
#[async_trait]
pub trait StatsSource: Send + Sync + 'static {
    /// Every function's last hour; the error says why it is unavailable.
    async fn stats(&self) -> Result<StatsSnapshot, String>;
}

#[async_trait]
impl StatsSource for StatsRegistry {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        Ok(self.snapshot())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: u64 = 29_000_000; // a minute since the epoch (in 2025)

    fn at(minute: u64, second: u64) -> Duration {
        Duration::from_secs(minute * 60 + second)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn id() -> FunctionId {
        FunctionId::new("default", "f")
    }

    #[test]
    fn buckets_cover_the_range_and_bound_the_error() {
        assert_eq!(latency_bucket(Duration::ZERO), 0);
        assert_eq!(latency_bucket(Duration::from_micros(99)), 0);
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
        for us in [150u64, 1_000, 12_345, 250_000, 3_000_000, 100_000_000] {
            let d = Duration::from_micros(us);
            let reported = bucket_value_ms(latency_bucket(d)) * 1000.0;
            let error = (reported - us as f64).abs() / us as f64;
            assert!(error < 0.13, "{us} µs reported as {reported} µs");
        }
        // Monotonic.
        let mut last = 0;
        for us in (100..10_000_000).step_by(997) {
            let b = latency_bucket(Duration::from_micros(us));
            assert!(b >= last);
            last = b;
        }
    }

    #[test]
    fn counts_land_in_their_minute() {
        let s = FunctionStats::new();
        s.record_at(at(T0, 1), 200, ms(5), 1);
        s.record_at(at(T0, 59), 500, ms(5), 2);
        s.record_at(at(T0 + 1, 0), 200, ms(5), 3);
        s.cold_start_at(at(T0 + 1, 0));
        let snap = s.snapshot(id(), T0 + 1);
        let minutes: Vec<_> = snap
            .minutes
            .iter()
            .map(|m| (m.minute, m.requests, m.errors, m.cold_starts))
            .collect();
        assert_eq!(minutes, [(T0, 2, 1, 0), (T0 + 1, 1, 0, 1)]);
        let sum = snap.summary(T0 + 1, 60);
        assert_eq!((sum.requests, sum.errors, sum.cold_starts), (3, 1, 1));
        assert!((sum.error_rate - 1.0 / 3.0).abs() < 1e-9);
        assert!((sum.request_rate - 3.0 / 3600.0).abs() < 1e-9);
        // A window of the last minute only.
        assert_eq!(snap.summary(T0 + 1, 1).requests, 1);
    }

    #[test]
    fn an_hour_later_a_bucket_starts_again_and_old_minutes_leave_the_window() {
        let s = FunctionStats::new();
        s.record_at(at(T0, 0), 200, ms(1), 1);
        s.record_at(at(T0 + 30, 0), 200, ms(1), 1);
        // Same slot as T0, an hour later: reset, not added.
        s.record_at(at(T0 + 60, 0), 500, ms(1), 1);
        let snap = s.snapshot(id(), T0 + 60);
        let minutes: Vec<_> = snap
            .minutes
            .iter()
            .map(|m| (m.minute, m.requests))
            .collect();
        assert_eq!(minutes, [(T0 + 30, 1), (T0 + 60, 1)]);
        assert_eq!(snap.minutes[1].errors, 1);
        // Seen from later, the minutes older than an hour are gone.
        assert!(s.snapshot(id(), T0 + 200).minutes.is_empty());
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let s = FunctionStats::new();
        // 98 fast requests, 2 slow ones: p50 is fast, p99 slow.
        for i in 0..98 {
            s.record_at(at(T0, i % 60), 200, ms(10), 0);
        }
        s.record_at(at(T0, 1), 200, ms(900), 0);
        s.record_at(at(T0, 2), 200, ms(1000), 0);
        let sum = s.snapshot(id(), T0).summary(T0, 60);
        let p50 = sum.p50_ms.unwrap();
        let p99 = sum.p99_ms.unwrap();
        assert!((p50 - 10.0).abs() / 10.0 < 0.13, "p50 {p50}");
        assert!((p99 - 950.0).abs() / 950.0 < 0.2, "p99 {p99}");
        assert_eq!(
            FunctionStats::new()
                .snapshot(id(), T0)
                .summary(T0, 60)
                .p50_ms,
            None
        );
    }

    #[test]
    fn the_ring_keeps_the_last_invocations_newest_first() {
        let s = FunctionStats::new();
        for i in 0..(RECENT as u64 + 7) {
            s.record_at(
                at(T0, 0) + ms(i),
                if i % 2 == 0 { 200 } else { 503 },
                ms(i),
                u128::from(i) << 64 | 0xabc,
            );
        }
        let recent = s.snapshot(id(), T0).recent;
        assert_eq!(recent.len(), RECENT);
        let newest = RECENT as u64 + 6;
        assert_eq!(
            recent[0].time_ms,
            (at(T0, 0) + ms(newest)).as_millis() as u64
        );
        assert_eq!(recent[0].status, 200);
        assert_eq!(recent[0].duration_us, newest * 1000);
        assert_eq!(
            recent[0].invocation_id,
            format!("{newest:016x}0000000000000abc")
        );
        assert_eq!(recent[1].status, 503);
        assert_eq!(
            recent[RECENT - 1].time_ms,
            (at(T0, 0) + ms(7)).as_millis() as u64
        );
    }

    #[test]
    fn invocation_ids_round_trip() {
        let hex = b"0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            format!("{:032x}", parse_id(hex)),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(parse_id(b"short"), 0);
        assert_eq!(parse_id(b"0123456789abcdef0123456789abcdeg"), 0);
    }

    #[test]
    fn the_registry_forgets_idle_functions_and_is_bounded() {
        let r = StatsRegistry::new();
        let a = FunctionId::new("default", "a");
        r.record(&a, 200, ms(1), b"00000000000000000000000000000001");
        r.cold_start(&a);
        let snap = r.snapshot();
        assert_eq!(snap.functions.len(), 1);
        assert_eq!(snap.functions[0].recent[0].invocation_id.len(), 32);
        assert_eq!(snap.summary_of(&a).cold_starts, 1);
        // Two hours later nothing is left.
        assert!(r.snapshot_at(current_minute() + 120).functions.is_empty());
        assert_eq!(r.functions.len(), 0);
        for i in 0..MAX_FUNCTIONS + 5 {
            r.record(
                &FunctionId::new("default", format!("f{i}")),
                200,
                ms(1),
                b"",
            );
        }
        assert_eq!(r.functions.len(), MAX_FUNCTIONS);
    }

    impl StatsSnapshot {
        fn summary_of(&self, f: &FunctionId) -> FunctionSummary {
            self.function(f).unwrap().summary(self.minute, 60)
        }
    }

    #[test]
    fn snapshots_of_replicas_sum() {
        let (a, b) = (FunctionStats::new(), FunctionStats::new());
        a.record_at(at(T0, 0), 200, ms(10), 1);
        a.record_at(at(T0, 1), 500, ms(10), 2);
        b.record_at(at(T0, 2), 200, ms(10), 3);
        b.record_at(at(T0 + 1, 0), 200, ms(100), 4);
        let other = FunctionId::new("default", "g");
        let mut one = StatsSnapshot {
            minute: T0 + 1,
            functions: vec![a.snapshot(id(), T0 + 1)],
        };
        let two = StatsSnapshot {
            minute: T0 + 1,
            functions: vec![b.snapshot(id(), T0 + 1), b.snapshot(other.clone(), T0 + 1)],
        };
        one.merge(two);
        assert_eq!(one.functions.len(), 2);
        let f = one.function(&id()).unwrap();
        let sum = f.summary(T0 + 1, 60);
        assert_eq!((sum.requests, sum.errors), (4, 1));
        assert_eq!(f.minutes.len(), 2);
        assert_eq!(
            f.minutes[0].latency,
            vec![[latency_bucket(ms(10)) as u32, 3]]
        );
        assert_eq!(f.recent.len(), 4);
        assert_eq!(f.recent[0].invocation_id, format!("{:032x}", 4));
        let series = f.series(T0 + 1, 3);
        assert_eq!(
            series.iter().map(|p| p.requests).collect::<Vec<_>>(),
            [0, 3, 1]
        );
        // The wire format round-trips.
        let json = serde_json::to_string(&one).unwrap();
        assert_eq!(serde_json::from_str::<StatsSnapshot>(&json).unwrap(), one);
    }

    #[test]
    fn concurrent_recording_loses_nothing_within_a_minute() {
        let s = Arc::new(FunctionStats::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        s.record_at(at(T0, 0), 200, ms(1), u128::from(t * 100_000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = s.snapshot(id(), T0);
        assert_eq!(snap.minutes[0].requests, 40_000);
        assert_eq!(snap.recent.len(), RECENT);
    }
}
