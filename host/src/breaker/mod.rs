//! Per-destination circuit breaker: decides whether an attempt may be sent to
//! a destination at all.
//!
//! In the delivery flow it sits between the dispatcher and the HTTP client:
//! the dispatcher asks [`CircuitBreaker::try_acquire`] before every attempt,
//! sends only with a [`Permit`], and reports the attempt's outcome on that
//! permit. While the breaker is open nothing is sent; async messages wait for
//! [`Rejected::retry_at`], sync routes let the fallback plugin answer.
//!
//! The state machine (thresholds come from [`BreakerConfig`]):
//!
//! ```text
//! Closed --failure_threshold consecutive failures--> Open { until: now + cooldown }
//! Closed --failure_rate of at least min_calls
//!          attempts in the last `window` failed------> Open { until: now + cooldown }
//! Open   --first try_acquire at or after `until`---> HalfOpen (up to half_open_probes probes)
//! HalfOpen --any probe failure---------------------> Open { until: now + cooldown }
//! HalfOpen --success_threshold probe successes-----> Closed
//! any    --reset() by an operator------------------> Closed
//! ```
//!
//! Concurrency: one breaker is shared by every task delivering to its
//! destination, so the state lives behind a `std::sync::Mutex`. No lock is
//! held across an `.await`: each call takes the lock, updates a few fields
//! and returns. Every transition bumps an epoch; a permit remembers the epoch
//! it was issued in, and the outcome of a permit issued before the latest
//! transition is ignored, because it describes the destination as it was
//! before the breaker last changed its mind (ten requests in flight when the
//! fifth failure opens the breaker must not extend the cool-down five times).
//!
//! Time is `tokio::time::Instant`, so paused-clock tests and the gateway
//! agree on "now"; the `*_at` variants take "now" explicitly for callers
//! that already have it and for deterministic tests.

mod window;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use self::window::RateWindow;

/// Longest cool-down the breaker applies. A longer configured value is
/// reported by [`BreakerConfig::validate`] and clamped here, so `now +
/// cooldown` cannot overflow `Instant` whatever the config says. A day is
/// far beyond any useful cool-down: an operator who wants a destination off
/// for longer disables it.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 60 * 60);

/// How a destination's breaker trips and recovers: a route's `breaker`
/// table (or `defaults.breaker`), applied to each of the route's
/// destinations, every field optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed attempts (while closed) that open the breaker.
    /// A success in between starts the count again.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets probes through
    /// (`"60s"`, `"2m"`).
    #[serde(deserialize_with = "crate::config::duration")]
    pub cooldown: Duration,
    /// Successful probes needed while half-open to close the breaker again.
    pub success_threshold: u32,
    /// Probes allowed in flight at once while half-open; everything else is
    /// rejected until a probe reports.
    pub half_open_probes: u32,
    /// Also open when at least this fraction (0-1] of the attempts in the
    /// last `window` failed, once there were `min_calls` of them: catches a
    /// destination that fails every other request, which never makes
    /// `failure_threshold` in a row. Off unless set.
    pub failure_rate: Option<f64>,
    /// The span `failure_rate` looks back over (`"30s"`).
    #[serde(deserialize_with = "crate::config::duration")]
    pub window: Duration,
    /// Attempts the window must hold before `failure_rate` may open the
    /// breaker, so three failures out of four at night do not count as 75%.
    pub min_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            // Five in a row rules out a single blip without hammering a
            // destination that is really down.
            failure_threshold: 5,
            // Long enough for a restart or a failover to finish.
            cooldown: Duration::from_secs(60),
            // One lucky answer from a flapping destination is not recovery.
            success_threshold: 3,
            // One probe at a time: a recovering destination sees a trickle.
            half_open_probes: 1,
            failure_rate: None,
            // Long enough to see a pattern, short enough to react in time.
            window: Duration::from_secs(30),
            // Fewer attempts than this say little about a rate.
            min_calls: 20,
        }
    }
}

impl BreakerConfig {
    /// Every problem with this table, one message each without a key path,
    /// so the config layer can prefix the table's key path.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("failure_threshold", self.failure_threshold),
            ("success_threshold", self.success_threshold),
            ("half_open_probes", self.half_open_probes),
            ("min_calls", self.min_calls),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1, got 0"));
            }
        }
        if let Some(rate) = self.failure_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            problems.push(format!(
                "failure_rate must be more than 0 and at most 1, got {rate}"
            ));
        }
        if self.window.is_zero() || self.window > MAX_COOLDOWN {
            problems.push(format!(
                "window must be more than 0s and at most {}, got {}",
                humantime::format_duration(MAX_COOLDOWN),
                humantime::format_duration(self.window)
            ));
        }
        if self.cooldown > MAX_COOLDOWN {
            problems.push(format!(
                "cooldown must be at most {}, got {}",
                humantime::format_duration(MAX_COOLDOWN),
                humantime::format_duration(self.cooldown)
            ));
        }
        problems
    }

    /// The values the breaker runs with: zero counts become 1 and the
    /// cool-down is clamped, so an unvalidated config cannot wedge or panic it.
    fn effective(mut self) -> Self {
        self.failure_threshold = self.failure_threshold.max(1);
        self.success_threshold = self.success_threshold.max(1);
        self.half_open_probes = self.half_open_probes.max(1);
        self.cooldown = self.cooldown.min(MAX_COOLDOWN);
        self.min_calls = self.min_calls.max(1);
        self.window = self.window.min(MAX_COOLDOWN);
        self
    }
}

/// Where a breaker stands; a snapshot for `/health`, metrics and logs.
///
/// `Open { until }` with `until` in the past means the cool-down is over but
/// no attempt has come along yet: the next one becomes a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow; consecutive failures are being counted.
    Closed,
    /// Nothing is sent before `until`.
    Open { until: Instant },
    /// A few probes test whether the destination has recovered.
    HalfOpen,
}

impl BreakerState {
    /// Stable label for metrics and `/health` (`state="half_open"`).
    pub fn label(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A change of state, returned by the call that caused it so the caller can
/// log it with the destination's name (the breaker does not know it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// Running totals since the breaker was created, for `_total` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerCounters {
    /// Transitions into `Open` (from closed or from a failed probe).
    pub opened: u64,
    /// Transitions into `HalfOpen`.
    pub half_opened: u64,
    /// Transitions into `Closed` (recovery or operator reset).
    pub closed: u64,
    /// Attempts refused by [`CircuitBreaker::try_acquire`].
    pub rejected: u64,
}

/// Why an attempt may not be sent now. Not a delivery failure: the attempt
/// was never made, so it must not count against the message's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The destination failed recently; nothing is sent before `until`.
    #[error("circuit breaker is open")]
    Open { until: Instant },
    /// Half-open and every probe slot is taken; the probes' outcome decides
    /// what happens next, so there is no known time to come back.
    #[error("circuit breaker is half-open and its probes are in flight")]
    ProbesBusy,
}

impl Rejected {
    /// When an attempt could next be admitted, if known: the end of the
    /// cool-down. `None` while probes are in flight; the dispatcher retries
    /// on its own short tick then.
    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            Rejected::Open { until } => Some(*until),
            Rejected::ProbesBusy => None,
        }
    }
}

/// One destination's breaker. Cloning is cheap and shares the state, so
/// every delivery task for the destination holds a clone.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: BreakerConfig,
    core: Mutex<Core>,
}

#[derive(Debug)]
struct Core {
    state: BreakerState,
    /// Bumped on every transition; see the module docs.
    epoch: u64,
    /// Closed: failures in a row so far.
    consecutive_failures: u32,
    /// Half-open: permits out that have not reported.
    probes_in_flight: u32,
    /// Half-open: probes that succeeded since the breaker went half-open.
    probe_successes: u32,
    /// Probes granted plus probes reported, ever: moves whenever a probe
    /// starts or ends (see [`CircuitBreaker::awaiting_probe`]).
    probe_events: u64,
    /// Closed: outcomes over the recent window, for `failure_rate`.
    recent: RateWindow,
    counters: BreakerCounters,
}

/// What a permit reports back.
#[derive(Debug, Clone, Copy)]
enum Report {
    Success,
    Failure,
    /// Dropped without a verdict.
    Abandoned,
}

impl CircuitBreaker {
    /// A closed breaker. Zero thresholds count as 1 and the cool-down is
    /// clamped to [`MAX_COOLDOWN`]; `validate` reports both to the operator.
    pub fn new(config: BreakerConfig) -> Self {
        let config = config.effective();
        let core = Core {
            state: BreakerState::Closed,
            epoch: 0,
            consecutive_failures: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            probe_events: 0,
            recent: RateWindow::new(config.window, Instant::now()),
            counters: BreakerCounters::default(),
        };
        Self {
            shared: Arc::new(Shared {
                config,
                core: Mutex::new(core),
            }),
        }
    }

    /// The settings in effect (after clamping).
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// Asks to send one attempt now. See [`CircuitBreaker::try_acquire_at`].
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.try_acquire_at(Instant::now())
    }

    /// Asks to send one attempt at `now`. Closed: always granted. Open:
    /// refused until the cool-down ends; the first call after it turns the
    /// breaker half-open. Half-open: granted as a probe while a probe slot
    /// is free, refused otherwise.
    pub fn try_acquire_at(&self, now: Instant) -> Result<Permit, Rejected> {
        let mut core = self.shared.lock();
        let mut transition = None;
        match core.state {
            BreakerState::Closed => return Ok(self.permit(&core, false, None)),
            BreakerState::Open { until } if now < until => {
                core.counters.rejected += 1;
                return Err(Rejected::Open { until });
            }
            BreakerState::Open { .. } => {
                transition = Some(core.transition(BreakerState::HalfOpen));
            }
            BreakerState::HalfOpen => {}
        }
        if core.probes_in_flight >= self.shared.config.half_open_probes {
            core.counters.rejected += 1;
            return Err(Rejected::ProbesBusy);
        }
        core.probes_in_flight += 1;
        core.probe_events += 1;
        Ok(self.permit(&core, true, transition))
    }

    /// Half-open with no probe out, so the next attempt would be let
    /// through as one: a count that moves each time a probe starts or
    /// ends. Whoever lets a waiting delivery out to be that probe notes
    /// the count, and lets out another only once it has moved or the
    /// first came back unsent. `None` when a probe is out or the breaker
    /// is not half-open.
    pub fn awaiting_probe(&self) -> Option<u64> {
        let core = self.shared.lock();
        (core.state == BreakerState::HalfOpen && core.probes_in_flight == 0)
            .then_some(core.probe_events)
    }

    /// The current state, for `/health` and metrics. Does not move an
    /// expired `Open` to `HalfOpen`; only an attempt does that.
    pub fn state(&self) -> BreakerState {
        self.shared.lock().state
    }

    /// Operator override (admin API): close the breaker now and forget the
    /// failure count. Returns the transition, or `None` if it was already
    /// closed; after a real transition, permits issued before it no longer
    /// count (a probe in flight cannot reopen the breaker).
    pub fn reset(&self) -> Option<Transition> {
        let mut core = self.shared.lock();
        core.consecutive_failures = 0;
        match core.state {
            BreakerState::Closed => None,
            _ => Some(core.transition(BreakerState::Closed)),
        }
    }

    /// Totals since creation, for the `hookgate_breaker_*_total` metrics.
    pub fn counters(&self) -> BreakerCounters {
        self.shared.lock().counters
    }

    fn permit(&self, core: &Core, probe: bool, transition: Option<Transition>) -> Permit {
        Permit {
            shared: Arc::clone(&self.shared),
            epoch: core.epoch,
            probe,
            transition,
            reported: false,
        }
    }
}

impl Shared {
    /// The state stays consistent at every point a panic could happen (there
    /// are none under the lock), so a poisoned lock is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, epoch: u64, report: Report, now: Instant) -> Option<Transition> {
        let config = &self.config;
        let mut core = self.lock();
        if epoch != core.epoch {
            // Issued before the latest transition: stale news.
            return None;
        }
        match (core.state, report) {
            (BreakerState::Closed, Report::Success) => {
                core.consecutive_failures = 0;
                core.recent.record(now, false);
                None
            }
            (BreakerState::Closed, Report::Failure) => {
                core.consecutive_failures = core.consecutive_failures.saturating_add(1);
                core.recent.record(now, true);
                let in_a_row = core.consecutive_failures >= config.failure_threshold;
                (in_a_row || core.rate_exceeded(config, now))
                    .then(|| core.open(now, config.cooldown))
            }
            (BreakerState::HalfOpen, report) => {
                // Same epoch while half-open means this permit is a probe.
                core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
                core.probe_events += 1;
                match report {
                    Report::Success => {
                        core.probe_successes += 1;
                        (core.probe_successes >= config.success_threshold)
                            .then(|| core.transition(BreakerState::Closed))
                    }
                    Report::Failure => Some(core.open(now, config.cooldown)),
                    Report::Abandoned => None,
                }
            }
            // Closed + abandoned changes nothing. Open never matches: opening
            // bumps the epoch and no permit is issued while open.
            (BreakerState::Closed, Report::Abandoned) | (BreakerState::Open { .. }, _) => None,
        }
    }
}

impl Core {
    /// Whether the recent window holds enough attempts, and a large enough
    /// share of failures, to open under `failure_rate`.
    fn rate_exceeded(&self, config: &BreakerConfig, now: Instant) -> bool {
        let Some(rate) = config.failure_rate else {
            return false;
        };
        let (calls, failures) = self.recent.totals(now);
        calls >= config.min_calls && f64::from(failures) >= rate * f64::from(calls)
    }

    fn open(&mut self, now: Instant, cooldown: Duration) -> Transition {
        // `cooldown` is clamped to MAX_COOLDOWN, so this only fails on a
        // clock at the very end of `Instant`'s range; then probe at once.
        let until = now.checked_add(cooldown).unwrap_or(now);
        self.transition(BreakerState::Open { until })
    }

    /// Moves to `to`, resets the per-state counts and starts a new epoch.
    fn transition(&mut self, to: BreakerState) -> Transition {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.consecutive_failures = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.recent.clear();
        match to {
            BreakerState::Closed => self.counters.closed += 1,
            BreakerState::Open { .. } => self.counters.opened += 1,
            BreakerState::HalfOpen => self.counters.half_opened += 1,
        }
        Transition { from, to }
    }
}

/// Leave to send one attempt. Report the outcome with [`Permit::success`] or
/// [`Permit::failure`]; what counts as a failure is the caller's call (the
/// retry classification: 5xx, 429, timeouts and connection errors are; a
/// 4xx the destination answered on purpose is not).
///
/// Dropped without a report (the task was cancelled, the gateway is
/// shutting down), the permit frees its probe slot and changes nothing else:
/// nothing was learned about the destination. A probe holds its slot until
/// then, so the attempt it guards must be bounded by the attempt timeout.
#[derive(Debug)]
#[must_use = "report the attempt's outcome with success() or failure()"]
pub struct Permit {
    shared: Arc<Shared>,
    epoch: u64,
    probe: bool,
    transition: Option<Transition>,
    reported: bool,
}

impl Permit {
    /// Whether this attempt is a half-open probe, for the attempt log.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The transition taking this permit caused (open -> half-open), so the
    /// caller can log that probing started.
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }

    /// The destination handled the attempt. Returns the transition it
    /// caused, if any (half-open -> closed).
    pub fn success(self) -> Option<Transition> {
        self.success_at(Instant::now())
    }

    /// [`Permit::success`] at a known `now`.
    pub fn success_at(self, now: Instant) -> Option<Transition> {
        self.report(Report::Success, now)
    }

    /// The destination failed the attempt. Returns the transition it caused,
    /// if any (-> open).
    pub fn failure(self) -> Option<Transition> {
        self.failure_at(Instant::now())
    }

    /// [`Permit::failure`] at a known `now`; the cool-down runs from `now`.
    pub fn failure_at(self, now: Instant) -> Option<Transition> {
        self.report(Report::Failure, now)
    }

    fn report(mut self, report: Report, now: Instant) -> Option<Transition> {
        self.reported = true;
        self.shared.record(self.epoch, report, now)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.shared
                .record(self.epoch, Report::Abandoned, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;
