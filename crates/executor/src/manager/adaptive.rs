//! Adaptive warm pools (design note 006): how big each environment's pool is and how long each
//! function's idle instances are kept, from recent demand, within the pool memory budget.
//!
//! Pure: no clocks, no IO. Every time is a [`Duration`] since an origin the caller picks (the
//! pool manager passes the time since it started), so unit tests replay synthetic arrivals.
//!
//! - **Pool size.** Each pool *take* (a specialization that needs a generic instance of the
//!   environment, whether the pool had one: a hit, or not: a miss) counts the takes within the
//!   last *refill time* (the measured time to start a warm instance, an exponentially weighted
//!   mean). The largest such count is the environment's *demand peak*, which halves every
//!   `half_life` without a larger one. The target is the peak (rounded) plus one spare, or 0
//!   once the peak is below one half; clamped to `[min, max]` of the environment's policy, then
//!   to its share of the memory budget.
//! - **Budget.** Fixed pools (`poolsize`) are pinned and counted first; what is left is shared
//!   by the adaptive pools: each gets its `min` while they fit, then instances are handed out
//!   one at a time to the pool with the largest unmet target (the most recent, largest demand),
//!   while one more of its instances fits.
//! - **Keep-alive.** Per function of an adaptive environment, the idle gaps before its
//!   requests (the last 64). With at least 8, the keep-alive is 1.1 × their 99th percentile
//!   plus a margin (the reconcile interval, the resolution gaps are measured at), between
//!   `keepalive_min` and the function's `idletimeout`; with fewer, `idletimeout`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kappa_core::FunctionId;
use kappa_types::{Environment, Function};

/// Tunables of the policy.
#[derive(Debug, Clone)]
pub struct AdaptiveConfig {
    /// The demand peak halves after this long without a larger one.
    pub half_life: Duration,
    /// Refill time assumed before any warm start was measured.
    pub default_refill: Duration,
    /// The shortest window takes are counted in, whatever the measured refill.
    pub min_refill: Duration,
    /// The shortest adaptive keep-alive.
    pub keepalive_min: Duration,
    /// Added to the gap percentile: gaps are seen at the reconcile interval's resolution.
    pub keepalive_margin: Duration,
    /// Memory counted per warm instance of an environment without a memory limit.
    pub memory_estimate: u64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(30),
            default_refill: Duration::from_secs(1),
            min_refill: Duration::from_millis(50),
            keepalive_min: Duration::from_secs(10),
            keepalive_margin: Duration::from_secs(1),
            memory_estimate: 128 << 20,
        }
    }
}

/// Idle gaps kept per function.
const MAX_GAPS: usize = 64;
/// Gaps needed before the keep-alive follows them.
const MIN_GAPS: usize = 8;

/// Why a pool has its size (the `reason` label of the metrics, `status.pool.reason`'s start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolReason {
    /// `poolsize` pins it.
    Fixed,
    /// The demand peak.
    Demand,
    /// Raised to the policy's `min`.
    Min,
    /// Cut to the policy's `max`.
    Max,
    /// Cut to the pool's share of the memory budget.
    Budget,
}

impl PoolReason {
    pub const ALL: [PoolReason; 5] = [
        PoolReason::Fixed,
        PoolReason::Demand,
        PoolReason::Min,
        PoolReason::Max,
        PoolReason::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolReason::Fixed => "fixed",
            PoolReason::Demand => "demand",
            PoolReason::Min => "min",
            PoolReason::Max => "max",
            PoolReason::Budget => "budget",
        }
    }
}

/// Why a function has its keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeepAliveReason {
    /// Too few idle gaps seen: the function's `idletimeout`.
    Fallback,
    /// From the 99th percentile of its idle gaps.
    Gaps,
    /// The percentile is at or beyond `idletimeout`, which bounds it.
    Capped,
}

impl KeepAliveReason {
    pub const ALL: [KeepAliveReason; 3] = [
        KeepAliveReason::Fallback,
        KeepAliveReason::Gaps,
        KeepAliveReason::Capped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeepAliveReason::Fallback => "fallback",
            KeepAliveReason::Gaps => "gaps",
            KeepAliveReason::Capped => "capped",
        }
    }
}

/// What one environment's pool saw.
#[derive(Debug, Clone)]
pub struct EnvDemand {
    /// Times of the takes within the last refill time.
    recent: VecDeque<Duration>,
    /// The demand peak and when it was last raised.
    peak: f64,
    peak_at: Duration,
    /// Exponentially weighted mean time to start a warm instance.
    refill: Option<Duration>,
}

impl EnvDemand {
    /// A pool that starts at `initial` (its `poolsize`): the peak is set so the target is
    /// `initial`, then decays like any other.
    pub fn new(now: Duration, initial: u32) -> Self {
        Self {
            recent: VecDeque::new(),
            peak: f64::from(initial.saturating_sub(1)),
            peak_at: now,
            refill: None,
        }
    }

    /// The window takes are counted in.
    pub fn refill(&self, config: &AdaptiveConfig) -> Duration {
        self.refill
            .unwrap_or(config.default_refill)
            .max(config.min_refill)
    }

    /// A take at `now`: `hit` when the pool had a warm instance.
    pub fn take(&mut self, now: Duration, hit: bool, config: &AdaptiveConfig) {
        let window = self.refill(config);
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let count = self.recent.len() as f64;
        // A take without a spare warm instance shows the demand went beyond the pool: count
        // the spare the next take will need too. The peak only rises here.
        let seen = if hit { count } else { count + 1.0 };
        let current = self.peak(now, config);
        if seen >= current {
            self.peak = seen;
            self.peak_at = now;
        }
    }

    /// A warm instance took `took` to start.
    pub fn started(&mut self, took: Duration) {
        self.refill = Some(match self.refill {
            None => took,
            // 1/4 of the new measurement.
            Some(mean) => (mean * 3 + took) / 4,
        });
    }

    /// The demand peak at `now`, decayed.
    pub fn peak(&self, now: Duration, config: &AdaptiveConfig) -> f64 {
        let dt = now.saturating_sub(self.peak_at).as_secs_f64();
        let halves = dt / config.half_life.as_secs_f64().max(1e-3);
        self.peak * 0.5f64.powf(halves)
    }

    /// The size demand asks for, before bounds and budget: the rounded peak plus one spare.
    pub fn wanted(&self, now: Duration, config: &AdaptiveConfig) -> u32 {
        let peak = self.peak(now, config).round();
        if peak < 1.0 {
            0
        } else {
            (peak as u32).saturating_add(1)
        }
    }
}

/// One environment as the budget share sees it.
#[derive(Debug, Clone)]
pub struct PoolInput {
    /// `None`: fixed at `poolsize`. `Some((min, max))`: adaptive.
    pub bounds: Option<(u32, u32)>,
    pub poolsize: u32,
    /// What demand asks for ([`EnvDemand::wanted`]); ignored for fixed pools.
    pub wanted: u32,
    /// Memory one warm instance counts for.
    pub memory: u64,
}

/// A pool's size and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolDecision {
    pub size: u32,
    pub reason: PoolReason,
    /// The size before the budget (after `[min, max]`).
    pub bounded: u32,
}

/// Sizes every pool: fixed ones at `poolsize`, adaptive ones at their wanted size within
/// `[min, max]`, then within what the `budget` (bytes, `None`: unbounded) leaves after the
/// fixed pools.
pub fn decide(pools: &[PoolInput], budget: Option<u64>) -> Vec<PoolDecision> {
    let mut decisions: Vec<PoolDecision> = pools
        .iter()
        .map(|p| match p.bounds {
            None => PoolDecision {
                size: p.poolsize,
                reason: PoolReason::Fixed,
                bounded: p.poolsize,
            },
            Some((min, max)) => {
                let (bounded, reason) = if p.wanted < min {
                    (min, PoolReason::Min)
                } else if p.wanted > max {
                    (max, PoolReason::Max)
                } else {
                    (p.wanted, PoolReason::Demand)
                };
                PoolDecision {
                    size: bounded,
                    reason,
                    bounded,
                }
            }
        })
        .collect();
    let Some(budget) = budget else {
        return decisions;
    };
    let fixed: u64 = pools
        .iter()
        .zip(&decisions)
        .filter(|(p, _)| p.bounds.is_none())
        .map(|(p, d)| u64::from(d.size).saturating_mul(p.memory))
        .sum();
    let mut left = budget.saturating_sub(fixed);
    let adaptive: Vec<usize> = (0..pools.len())
        .filter(|i| pools[*i].bounds.is_some())
        .collect();
    let wanted_bytes: u64 = adaptive
        .iter()
        .map(|i| u64::from(decisions[*i].bounded).saturating_mul(pools[*i].memory))
        .sum();
    if wanted_bytes <= left {
        return decisions;
    }
    let mut given = vec![0u32; pools.len()];
    // Mins first, while they fit (the larger demand first).
    let mut by_want = adaptive.clone();
    by_want.sort_by_key(|i| std::cmp::Reverse(decisions[*i].bounded));
    for &i in &by_want {
        let min = pools[i].bounds.map_or(0, |(min, _)| min);
        let want = min.min(decisions[i].bounded);
        for _ in 0..want {
            if pools[i].memory > left {
                break;
            }
            left -= pools[i].memory;
            given[i] += 1;
        }
    }
    // Then one instance at a time to the largest unmet target that still fits (ties: the
    // larger target).
    loop {
        let next = adaptive
            .iter()
            .copied()
            .filter(|i| given[*i] < decisions[*i].bounded && pools[*i].memory <= left)
            .max_by_key(|i| (decisions[*i].bounded - given[*i], decisions[*i].bounded));
        let Some(i) = next else { break };
        left -= pools[i].memory;
        given[i] += 1;
    }
    for i in adaptive {
        if given[i] < decisions[i].bounded {
            decisions[i].size = given[i];
            decisions[i].reason = PoolReason::Budget;
        }
    }
    decisions
}

/// The idle gaps of one function.
#[derive(Debug, Clone, Default)]
pub struct Gaps {
    gaps: VecDeque<Duration>,
    /// When the function last became idle (no request in flight); `None` while busy.
    idle_since: Option<Duration>,
}

impl Gaps {
    fn push(&mut self, gap: Duration) {
        if self.gaps.len() == MAX_GAPS {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
    }

    /// A request arrived at `now` (a miss, seen exactly).
    pub fn arrival(&mut self, now: Duration) {
        if let Some(since) = self.idle_since.take() {
            self.push(now.saturating_sub(since));
        }
    }

    /// What a reconcile pass saw at `now` of the function's instances: `None` when it has
    /// none (nothing changes), else whether a request is in flight and, when none is, how long
    /// since the last one finished on any instance.
    pub fn observe(&mut self, now: Duration, seen: Option<(bool, Duration)>) {
        let Some((busy, idle_for)) = seen else {
            return;
        };
        if busy {
            // Busy since the last pass: a gap ended at the latest now.
            self.arrival(now);
            return;
        }
        let last_active = now.saturating_sub(idle_for);
        match self.idle_since {
            // Requests came and went between passes: the gap ended by the time they finished.
            Some(since) if last_active > since => {
                self.push(last_active - since);
                self.idle_since = Some(last_active);
            }
            Some(_) => {}
            None => self.idle_since = Some(last_active),
        }
    }

    /// The number of gaps seen.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// The keep-alive and why, for a function whose `idletimeout` is `configured`.
    pub fn keep_alive(
        &self,
        configured: Duration,
        config: &AdaptiveConfig,
    ) -> (Duration, KeepAliveReason) {
        if self.gaps.len() < MIN_GAPS {
            return (configured, KeepAliveReason::Fallback);
        }
        let mut sorted: Vec<Duration> = self.gaps.iter().copied().collect();
        sorted.sort();
        let rank = (sorted.len() * 99).div_ceil(100).max(1) - 1;
        let p99 = sorted[rank.min(sorted.len() - 1)];
        let keep = p99.mul_f64(1.1) + config.keepalive_margin;
        if keep >= configured {
            (configured, KeepAliveReason::Capped)
        } else {
            (
                keep.max(config.keepalive_min.min(configured)),
                KeepAliveReason::Gaps,
            )
        }
    }
}

/// All the demand the pool manager tracks, and the pool statuses it last wrote.
#[derive(Debug, Default)]
pub struct Demand {
    pub envs: HashMap<FunctionId, EnvDemand>,
    /// Functions of adaptive environments.
    pub functions: HashMap<FunctionId, Gaps>,
    /// Per environment, the `status.pool` last written (`Null`: none, a fixed pool).
    pub written: HashMap<FunctionId, serde_json::Value>,
    /// Per adaptive environment, its functions' keep-alives of the last pass.
    pub keep_alives: HashMap<FunctionId, BTreeMap<String, (Duration, KeepAliveReason)>>,
    /// Environments and functions forgotten since the caller last drained these (their
    /// metrics go).
    pub gone_envs: Vec<FunctionId>,
    pub gone_functions: Vec<FunctionId>,
}

/// The memory one warm instance of `env` counts for: its memory limit, else the estimate.
pub fn instance_memory(env: &Environment, config: &AdaptiveConfig) -> u64 {
    env.spec
        .resources
        .memory_limit_bytes()
        .unwrap_or(config.memory_estimate)
}

impl Demand {
    /// A take from `env`'s pool at `now` (`poolsize` starts its demand when first seen).
    pub fn take(
        &mut self,
        env: &FunctionId,
        poolsize: u32,
        now: Duration,
        hit: bool,
        config: &AdaptiveConfig,
    ) {
        self.envs
            .entry(env.clone())
            .or_insert_with(|| EnvDemand::new(now, poolsize))
            .take(now, hit, config);
    }

    /// A warm instance of `env` took `took` to start.
    pub fn started(&mut self, env: &FunctionId, took: Duration) {
        if let Some(d) = self.envs.get_mut(env) {
            d.started(took);
        }
    }

    /// A request of `function` missed at `now` (only functions of adaptive environments are
    /// tracked).
    pub fn arrival(&mut self, function: &FunctionId, now: Duration) {
        if let Some(g) = self.functions.get_mut(function) {
            g.arrival(now);
        }
    }

    /// Sizes every environment's pool at `now`; forgets environments that are gone and
    /// functions no longer in an adaptive environment.
    pub fn plan(
        &mut self,
        now: Duration,
        environments: &HashMap<FunctionId, Arc<Environment>>,
        functions: &HashMap<FunctionId, Arc<Function>>,
        budget: Option<u64>,
        config: &AdaptiveConfig,
    ) -> HashMap<FunctionId, PoolDecision> {
        self.envs.retain(|id, _| {
            let keep = environments.contains_key(id);
            if !keep {
                self.gone_envs.push(id.clone());
            }
            keep
        });
        self.written.retain(|id, _| environments.contains_key(id));
        // Recomputed by this pass's keep_alive calls.
        self.keep_alives.clear();
        self.functions.retain(|id, _| {
            let keep = functions
                .get(id)
                .is_some_and(|f| adaptive_env_of(f, environments).is_some());
            if !keep {
                self.gone_functions.push(id.clone());
            }
            keep
        });
        for (id, f) in functions {
            if adaptive_env_of(f, environments).is_some() {
                self.functions.entry(id.clone()).or_default();
            }
        }
        let ids: Vec<&FunctionId> = environments.keys().collect();
        let inputs: Vec<PoolInput> = ids
            .iter()
            .map(|id| {
                let env = &environments[*id];
                let demand = self
                    .envs
                    .entry((*id).clone())
                    .or_insert_with(|| EnvDemand::new(now, env.spec.poolsize));
                PoolInput {
                    bounds: env.spec.adaptive_pool(),
                    poolsize: env.spec.poolsize,
                    wanted: demand.wanted(now, config),
                    memory: instance_memory(env, config),
                }
            })
            .collect();
        let decisions = decide(&inputs, budget);
        ids.into_iter().cloned().zip(decisions).collect()
    }

    /// `function`'s keep-alive after a pass saw its instances at `now` (`seen` as for
    /// [`Gaps::observe`]); `configured` (its `idletimeout`) when its environment is fixed.
    pub fn keep_alive(
        &mut self,
        function: &FunctionId,
        environment: Option<&FunctionId>,
        now: Duration,
        seen: Option<(bool, Duration)>,
        configured: Duration,
        config: &AdaptiveConfig,
    ) -> (Duration, KeepAliveReason) {
        let Some(gaps) = self.functions.get_mut(function) else {
            return (configured, KeepAliveReason::Fallback);
        };
        gaps.observe(now, seen);
        let decision = gaps.keep_alive(configured, config);
        if let Some(env) = environment {
            self.keep_alives
                .entry(env.clone())
                .or_default()
                .insert(function.name.clone(), decision);
        }
        decision
    }

    /// The `status.pool` of an environment (`Null` for a fixed pool), from the pass's
    /// decision. Rates are rounded: the status is written only when it changes.
    pub fn status(
        &self,
        env_id: &FunctionId,
        env: &Environment,
        decision: &PoolDecision,
        now: Duration,
        budget: Option<u64>,
        config: &AdaptiveConfig,
    ) -> serde_json::Value {
        let Some((min, max)) = env.spec.adaptive_pool() else {
            return serde_json::Value::Null;
        };
        let demand = self.envs.get(env_id);
        let wanted = demand.map_or(0, |d| d.wanted(now, config));
        let why = match decision.reason {
            PoolReason::Fixed => "poolsize pins the pool".to_string(),
            PoolReason::Demand if wanted == 0 => "no recent demand".to_string(),
            PoolReason::Demand => format!(
                "demand: up to {} takes within one refill time, plus one spare",
                wanted - 1
            ),
            PoolReason::Min => format!("demand asks for {wanted}; raised to poolPolicy.min {min}"),
            PoolReason::Max => format!("demand asks for {wanted}; cut to poolPolicy.max {max}"),
            PoolReason::Budget => format!(
                "demand asks for {}; cut to its share of the pool memory budget ({} MiB)",
                decision.bounded,
                budget.unwrap_or(0) >> 20
            ),
        };
        let keep_alive: serde_json::Map<String, serde_json::Value> = self
            .keep_alives
            .get(env_id)
            .map(|m| {
                m.iter()
                    .map(|(name, (keep, reason))| {
                        (
                            name.clone(),
                            serde_json::json!({
                                "seconds": keep.as_secs(),
                                "reason": reason.as_str(),
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "policy": "adaptive",
            "size": decision.size,
            "reason": decision.reason.as_str(),
            "message": why,
            "min": min,
            "max": max,
            "memoryPerInstanceBytes": instance_memory(env, config),
            "keepAlive": keep_alive,
        })
    }

    /// The status to write for `env_id`, when it differs from the one last written; records it.
    pub fn changed_status(
        &mut self,
        env_id: &FunctionId,
        status: serde_json::Value,
    ) -> Option<serde_json::Value> {
        let last = self.written.get(env_id);
        if last == Some(&status) || (last.is_none() && status.is_null()) {
            return None;
        }
        self.written.insert(env_id.clone(), status.clone());
        Some(status)
    }
}

/// The environment of `function` when it is adaptive.
fn adaptive_env_of<'a>(
    function: &Function,
    environments: &'a HashMap<FunctionId, Arc<Environment>>,
) -> Option<&'a Arc<Environment>> {
    let env_id = FunctionId::new(
        &function.spec.environment.namespace,
        &function.spec.environment.name,
    );
    environments
        .get(&env_id)
        .filter(|e| e.spec.adaptive_pool().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn config() -> AdaptiveConfig {
        AdaptiveConfig {
            half_life: secs(10.0),
            ..AdaptiveConfig::default()
        }
    }

    /// A burst of `n` takes at `at`, the first `warm` of them hits.
    fn burst(d: &mut EnvDemand, at: f64, n: u32, warm: u32, c: &AdaptiveConfig) {
        for k in 0..n {
            d.take(secs(at + f64::from(k) * 0.001), k < warm, c);
        }
    }

    fn adaptive(wanted: u32, min: u32, max: u32, memory: u64) -> PoolInput {
        PoolInput {
            bounds: Some((min, max)),
            poolsize: 3,
            wanted,
            memory,
        }
    }

    #[test]
    fn a_new_pool_starts_at_poolsize_and_quiet_lowers_it() {
        let c = config();
        let d = EnvDemand::new(secs(0.0), 3);
        assert_eq!(d.wanted(secs(0.0), &c), 3);
        // Halves every 10 s: 2 -> 1 -> 0.5 -> 0.25.
        assert_eq!(d.wanted(secs(10.0), &c), 2);
        assert_eq!(d.wanted(secs(40.0), &c), 0);
        assert_eq!(EnvDemand::new(secs(0.0), 0).wanted(secs(0.0), &c), 0);
    }

    #[test]
    fn bursty_arrivals_raise_the_pool_and_quiet_lowers_it() {
        let c = config();
        let mut d = EnvDemand::new(secs(0.0), 0);
        d.started(secs(0.2));
        // 8 concurrent first requests; the pool had none: every take a miss.
        burst(&mut d, 1.0, 8, 0, &c);
        assert_eq!(
            d.wanted(secs(1.01), &c),
            10,
            "8 takes + the missing spare + 1"
        );
        // The same burst again, now warm: the peak holds.
        burst(&mut d, 3.0, 8, 8, &c);
        assert!(d.wanted(secs(3.01), &c) >= 9);
        // Quiet: it decays to nothing.
        let quiet = [30.0, 60.0, 120.0].map(|t| d.wanted(secs(t), &c));
        assert!(quiet[0] < 9 && quiet[1] < quiet[0], "{quiet:?}");
        assert_eq!(quiet[2], 0);
    }

    #[test]
    fn spread_out_takes_count_only_within_the_refill_time() {
        let c = config();
        let mut d = EnvDemand::new(secs(0.0), 0);
        d.started(secs(0.1));
        // One take every 0.5 s: the pool refills between them.
        for k in 0..20 {
            d.take(secs(1.0 + f64::from(k) * 0.5), true, &c);
        }
        assert_eq!(d.wanted(secs(11.0), &c), 2, "one at a time plus a spare");
    }

    #[test]
    fn the_refill_time_follows_measured_starts() {
        let c = config();
        let mut d = EnvDemand::new(secs(0.0), 0);
        assert_eq!(d.refill(&c), c.default_refill);
        d.started(secs(0.4));
        d.started(secs(0.8));
        assert_eq!(d.refill(&c), secs(0.5));
        for _ in 0..13 {
            d.started(Duration::ZERO);
        }
        assert_eq!(d.refill(&c), c.min_refill);
    }

    #[test]
    fn a_fixed_poolsize_pins_the_pool() {
        let fixed = PoolInput {
            bounds: None,
            poolsize: 4,
            wanted: 50,
            memory: 100,
        };
        for budget in [None, Some(0), Some(100)] {
            let d = decide(std::slice::from_ref(&fixed), budget);
            assert_eq!(d[0].size, 4, "{budget:?}");
            assert_eq!(d[0].reason, PoolReason::Fixed);
        }
    }

    #[test]
    fn bounds_clamp_the_demand() {
        let d = decide(
            &[
                adaptive(0, 2, 10, 1),
                adaptive(30, 0, 10, 1),
                adaptive(5, 0, 10, 1),
            ],
            None,
        );
        assert_eq!((d[0].size, d[0].reason), (2, PoolReason::Min));
        assert_eq!((d[1].size, d[1].reason), (10, PoolReason::Max));
        assert_eq!((d[2].size, d[2].reason), (5, PoolReason::Demand));
    }

    #[test]
    fn the_budget_is_respected_and_shared_by_demand() {
        let mib = 1u64 << 20;
        let fixed = PoolInput {
            bounds: None,
            poolsize: 2,
            wanted: 0,
            memory: 100 * mib,
        };
        // 1000 MiB; the fixed pool takes 200; 800 left for 8 + 4 + 0 wanted of 100 MiB.
        let pools = [
            fixed,
            adaptive(8, 0, 20, 100 * mib),
            adaptive(4, 1, 20, 100 * mib),
            adaptive(0, 0, 20, 100 * mib),
        ];
        let d = decide(&pools, Some(1000 * mib));
        let used: u64 = pools
            .iter()
            .zip(&d)
            .map(|(p, d)| u64::from(d.size) * p.memory)
            .sum();
        assert!(used <= 1000 * mib, "{d:?}");
        assert_eq!(d[0].size, 2);
        assert_eq!(d[1].size + d[2].size, 8, "{d:?}");
        assert!(d[1].size > d[2].size, "{d:?}");
        assert_eq!(d[1].reason, PoolReason::Budget);
        assert_eq!((d[3].size, d[3].reason), (0, PoolReason::Demand));
        // Enough budget: nothing is cut.
        let d = decide(&pools, Some(10_000 * mib));
        assert_eq!((d[1].size, d[2].size), (8, 4));
        // A budget the fixed pools exceed leaves the adaptive ones nothing, even their min.
        let d = decide(&pools, Some(150 * mib));
        assert_eq!((d[0].size, d[1].size, d[2].size), (2, 0, 0));
    }

    #[test]
    fn any_arrivals_and_budget_stay_within_the_budget() {
        // A deterministic pseudo-random replay: many environments, bursts at random times.
        let c = config();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut envs: Vec<EnvDemand> = (0..5).map(|_| EnvDemand::new(secs(0.0), 3)).collect();
        for step in 0..200u32 {
            let now = secs(f64::from(step) * 0.7);
            let e = (next() % 5) as usize;
            let n = (next() % 12) as u32;
            burst(&mut envs[e], now.as_secs_f64(), n, (next() % 4) as u32, &c);
            let budget = next() % 4000;
            let inputs: Vec<PoolInput> = envs
                .iter()
                .enumerate()
                .map(|(i, d)| adaptive(d.wanted(now, &c), (i % 2) as u32, 15, 100 + i as u64))
                .collect();
            let out = decide(&inputs, Some(budget));
            let used: u64 = inputs
                .iter()
                .zip(&out)
                .map(|(p, d)| u64::from(d.size) * p.memory)
                .sum();
            assert!(used <= budget, "step {step}: {used} > {budget}");
            for (p, d) in inputs.iter().zip(&out) {
                assert!(d.size <= d.bounded && d.bounded <= 15, "{p:?} {d:?}");
            }
        }
    }

    #[test]
    fn keep_alive_falls_back_until_enough_gaps() {
        let c = config();
        let mut g = Gaps::default();
        g.observe(secs(0.0), Some((false, Duration::ZERO)));
        for k in 1..MIN_GAPS {
            g.arrival(secs(k as f64 * 5.0));
            g.observe(secs(k as f64 * 5.0 + 0.1), Some((false, Duration::ZERO)));
        }
        assert_eq!(
            g.keep_alive(secs(120.0), &c),
            (secs(120.0), KeepAliveReason::Fallback)
        );
    }

    #[test]
    fn keep_alive_follows_the_99th_percentile_of_idle_gaps() {
        let c = config();
        let mut g = Gaps::default();
        let mut t = 0.0;
        g.observe(secs(t), Some((false, Duration::ZERO)));
        // Idle gaps of 20 s, seen by passes: a request of 0.1 s finished 0.5 s before the pass.
        for _ in 0..40 {
            t += 20.0;
            g.observe(secs(t + 0.6), Some((false, secs(0.5))));
            t += 0.1;
        }
        let (keep, reason) = g.keep_alive(secs(120.0), &c);
        assert_eq!(reason, KeepAliveReason::Gaps);
        // 1.1 x ~20.1 s + 1 s.
        assert!(keep > secs(22.0) && keep < secs(24.0), "{keep:?}");
        // Gaps longer than idletimeout: capped by it.
        let (keep, reason) = g.keep_alive(secs(15.0), &c);
        assert_eq!((keep, reason), (secs(15.0), KeepAliveReason::Capped));
        // Very short gaps: at least keepalive_min.
        let mut g = Gaps::default();
        for k in 0..20 {
            g.observe(secs(f64::from(k)), Some((false, Duration::ZERO)));
        }
        assert_eq!(
            g.keep_alive(secs(120.0), &c),
            (c.keepalive_min, KeepAliveReason::Gaps)
        );
    }

    #[test]
    fn a_rare_long_gap_among_short_ones_sets_the_keep_alive() {
        let c = config();
        let mut g = Gaps::default();
        g.observe(secs(0.0), Some((false, Duration::ZERO)));
        let mut t = 0.0;
        for k in 0..30 {
            t += if k == 10 { 50.0 } else { 2.0 };
            // Seen as misses (its instances were reaped): exact arrival times.
            g.arrival(secs(t));
            g.observe(secs(t + 0.2), Some((false, Duration::ZERO)));
            t += 0.2;
        }
        let (keep, reason) = g.keep_alive(secs(120.0), &c);
        assert_eq!(reason, KeepAliveReason::Gaps);
        assert!(keep >= secs(55.0), "{keep:?}");
    }

    #[test]
    fn busy_functions_record_no_gap() {
        let mut g = Gaps::default();
        for k in 0..20 {
            g.observe(secs(f64::from(k)), Some((true, Duration::ZERO)));
        }
        assert_eq!(g.len(), 0);
        g.observe(secs(20.0), None);
        assert_eq!(g.len(), 0);
    }
}
