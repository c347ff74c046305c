//! `GET /health`: the gateway judged against the `[health]` thresholds,
//! with the figures behind the verdict.
//!
//! - **unhealthy** (HTTP 503): the journal could not be written within the
//!   window, a route's backlog is full (ingress refuses its webhooks), or the
//!   success rate fell below `unhealthy_below`;
//! - **degraded** (HTTP 200): the success rate over the window, overall or
//!   on any route, is below `degraded_below`; a breaker is open; a
//!   destination is disabled after a 410; a plugin file failed to load;
//! - **healthy** (HTTP 200) otherwise.
//!
//! A rate is judged only with at least `min_attempts` attempts in the
//! window. Every reason is listed, so an operator sees all of them at once.

use serde::Serialize;

use crate::config::HealthConfig;
use crate::metrics::recent::{LastError, RouteFigures, rate};
use crate::plugin::PluginStatus;
use crate::reload::ConfigStatus;
use crate::store::QueueStats;

/// The verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Degraded,
    Unhealthy,
}

/// One destination as `/health` and the admin API show it.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    pub app: String,
    pub route: String,
    pub destination: String,
    pub url: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// While open: milliseconds until probes are let through.
    pub open_for_ms: Option<u64>,
    /// Disabled after a 410 until an operator re-enables it.
    pub disabled: bool,
    /// Times the breaker opened since start.
    pub opened: u64,
    /// Attempts the breaker held back since start.
    pub rejected: u64,
}

/// Totals over every route.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub received: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub window_attempts: u64,
    pub window_failures: u64,
    pub success_rate: Option<f64>,
}

/// The whole `/health` answer.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub reasons: Vec<String>,
    pub window_seconds: u64,
    pub totals: Totals,
    pub routes: Vec<RouteFigures>,
    pub last_error: Option<LastError>,
    pub queue: QueueStats,
    pub breakers: Vec<BreakerView>,
    /// `app/route/destination` of each destination disabled after a 410.
    pub disabled_destinations: Vec<String>,
    pub plugins: Vec<PluginStatus>,
    /// The config file's hot-reload state: a refused file, keys waiting for
    /// a restart.
    pub config: ConfigStatus,
}

/// What the verdict is made from.
pub struct HealthInputs<'a> {
    pub config: &'a HealthConfig,
    pub routes: Vec<RouteFigures>,
    pub gateway_error: Option<LastError>,
    pub queue: QueueStats,
    /// `(app/route, backlog, limit)` of each route at its backlog limit.
    pub full_backlogs: Vec<(String, u64, u64)>,
    pub breakers: Vec<BreakerView>,
    pub plugins: Vec<PluginStatus>,
    pub config_status: ConfigStatus,
}

/// Judges `inputs` and assembles the report.
pub fn report(inputs: HealthInputs<'_>) -> HealthReport {
    let config = inputs.config;
    let mut verdict = Verdict::default();
    if let Some(err) = &inputs.gateway_error {
        verdict.unhealthy(format!("journal writes failing: {}", err.message));
    }
    for (route, backlog, limit) in &inputs.full_backlogs {
        verdict.unhealthy(format!(
            "route {route}: backlog is full ({backlog} messages waiting, limit {limit}): new webhooks are refused"
        ));
    }
    let mut totals = Totals::default();
    for r in &inputs.routes {
        totals.received += r.received;
        totals.delivered += r.delivered;
        totals.dead_lettered += r.dead_lettered;
        totals.window_attempts += r.window_attempts;
        totals.window_failures += r.window_failures;
    }
    let ok = totals.window_attempts - totals.window_failures;
    totals.success_rate = rate(ok, totals.window_failures);
    let judged =
        |attempts: u64, rate: Option<f64>| rate.filter(|_| attempts >= config.min_attempts);
    let mut rates: Vec<(String, f64)> = Vec::new();
    if let Some(r) = judged(totals.window_attempts, totals.success_rate) {
        rates.push(("overall".into(), r));
    }
    for route in &inputs.routes {
        if let Some(r) = judged(route.window_attempts, route.success_rate) {
            rates.push((format!("route {}/{}", route.app, route.route), r));
        }
    }
    for (what, r) in rates {
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        if r < config.unhealthy_below {
            verdict.unhealthy(format!(
                "{what}: success rate {} is below {}",
                pct(r),
                pct(config.unhealthy_below)
            ));
        } else if r < config.degraded_below {
            verdict.degraded(format!(
                "{what}: success rate {} is below {}",
                pct(r),
                pct(config.degraded_below)
            ));
        }
    }
    let name = |b: &BreakerView| format!("{}/{}/{}", b.app, b.route, b.destination);
    for b in &inputs.breakers {
        if b.state == "open" && config.degrade_on_open_breaker {
            verdict.degraded(format!("breaker open for {}", name(b)));
        }
        if b.disabled {
            verdict.degraded(format!("destination {} is disabled after a 410", name(b)));
        }
    }
    for p in &inputs.plugins {
        if let Some(err) = &p.error {
            verdict.degraded(format!("plugin {:?} failed to load: {err}", p.name));
        }
    }
    if let Some(err) = &inputs.config_status.watch_error {
        verdict.degraded(format!("hot reload is off: {err}"));
    }
    if let Some(err) = &inputs.config_status.error {
        verdict.degraded(format!("config file refused on reload: {err}"));
    }
    if !inputs.config_status.restart_needed.is_empty() {
        verdict.degraded(format!(
            "config keys changed that take effect only after a restart: {}",
            inputs.config_status.restart_needed.join(", ")
        ));
    }
    let last_error = inputs
        .routes
        .iter()
        .filter_map(|r| r.last_error.clone())
        .chain(inputs.gateway_error.clone())
        .max_by_key(|e| e.at);
    HealthReport {
        status: verdict.status,
        reasons: verdict.reasons,
        window_seconds: config.window.as_secs(),
        totals,
        routes: inputs.routes,
        last_error,
        queue: inputs.queue,
        disabled_destinations: inputs
            .breakers
            .iter()
            .filter(|b| b.disabled)
            .map(name)
            .collect(),
        breakers: inputs.breakers,
        plugins: inputs.plugins,
        config: inputs.config_status,
    }
}

#[derive(Default)]
struct Verdict {
    status: HealthStatus,
    reasons: Vec<String>,
}

impl Verdict {
    fn degraded(&mut self, reason: String) {
        self.status = self.status.max(HealthStatus::Degraded);
        self.reasons.push(reason);
    }
    fn unhealthy(&mut self, reason: String) {
        self.status = HealthStatus::Unhealthy;
        self.reasons.push(reason);
    }
}
