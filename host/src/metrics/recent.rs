//! The recent past per app and route, for `/health`: delivery attempts that
//! succeeded and failed over a sliding window, lifetime totals, and the last
//! error. Kept in memory (a restart starts a fresh window).
//!
//! The window is cut into `BUCKETS` buckets, so recording and reading are
//! O(buckets) whatever the traffic, and a failure drops out of the rate at
//! most one bucket width after it leaves the window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Buckets per window: a 5-minute window moves in 5-second steps.
const BUCKETS: u64 = 60;

/// Counts of one bucket: (bucket number, successes, failures).
type Bucket = (u64, u64, u64);

/// An error as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When, ms since the Unix epoch.
    pub at: u64,
    pub message: String,
}

/// One route's figures, as `/health` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteFigures {
    pub app: String,
    pub route: String,
    /// Webhooks accepted since start.
    pub received: u64,
    /// Delivery attempts that succeeded since start.
    pub delivered: u64,
    /// Deliveries dead-lettered since start.
    pub dead_lettered: u64,
    /// Delivery attempts in the window.
    pub window_attempts: u64,
    pub window_failures: u64,
    /// Successful share of the window's attempts; `None` without attempts.
    pub success_rate: Option<f64>,
    pub last_error: Option<LastError>,
}

#[derive(Default)]
struct RouteState {
    received: u64,
    delivered: u64,
    dead_lettered: u64,
    buckets: VecDeque<Bucket>,
    last_error: Option<LastError>,
}

/// The sliding windows of every route seen so far.
pub struct Recent {
    width_ms: u64,
    window_ms: u64,
    routes: Mutex<BTreeMap<(String, String), RouteState>>,
    /// Errors not tied to a route (journal writes), with the time.
    gateway_error: Mutex<Option<LastError>>,
}

impl Recent {
    pub fn new(window: Duration) -> Recent {
        let window_ms = (window.as_millis() as u64).max(1);
        Recent {
            width_ms: (window_ms / BUCKETS).max(1),
            window_ms,
            routes: Mutex::default(),
            gateway_error: Mutex::default(),
        }
    }

    fn with_route<T>(&self, app: &str, route: &str, f: impl FnOnce(&mut RouteState) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let state = routes
            .entry((app.to_string(), route.to_string()))
            .or_default();
        f(state)
    }

    pub fn received(&self, app: &str, route: &str) {
        self.with_route(app, route, |s| s.received += 1);
    }

    /// One delivery attempt: `error` is `None` on success.
    pub fn attempt(&self, app: &str, route: &str, now: u64, error: Option<String>) {
        let bucket = now / self.width_ms;
        let oldest = now.saturating_sub(self.window_ms) / self.width_ms;
        self.with_route(app, route, |s| {
            match s.buckets.back_mut() {
                Some(last) if last.0 == bucket => {}
                _ => s.buckets.push_back((bucket, 0, 0)),
            }
            while s.buckets.front().is_some_and(|b| b.0 < oldest) {
                s.buckets.pop_front();
            }
            if let Some(last) = s.buckets.back_mut() {
                match error {
                    None => {
                        last.1 += 1;
                        s.delivered += 1;
                    }
                    Some(message) => {
                        last.2 += 1;
                        s.last_error = Some(LastError { at: now, message });
                    }
                }
            }
        });
    }

    pub fn dead_lettered(&self, app: &str, route: &str) {
        self.with_route(app, route, |s| s.dead_lettered += 1);
    }

    /// An error on the route that is not an attempt (a plugin failure).
    pub fn error(&self, app: &str, route: &str, now: u64, message: String) {
        self.with_route(app, route, |s| {
            s.last_error = Some(LastError { at: now, message });
        });
    }

    /// An error of the gateway itself (the journal could not be written).
    pub fn gateway_error(&self, now: u64, message: String) {
        *self.gateway_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(LastError { at: now, message });
    }

    /// The gateway's own last error if it happened within the window.
    pub fn recent_gateway_error(&self, now: u64) -> Option<LastError> {
        let error = self.gateway_error.lock().unwrap_or_else(|p| p.into_inner());
        error
            .clone()
            .filter(|e| e.at >= now.saturating_sub(self.window_ms))
    }

    /// Every route's figures at `now`.
    pub fn figures(&self, now: u64) -> Vec<RouteFigures> {
        let oldest = now.saturating_sub(self.window_ms) / self.width_ms;
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .map(|((app, route), s)| {
                let (ok, failed) = s
                    .buckets
                    .iter()
                    .filter(|b| b.0 >= oldest)
                    .fold((0, 0), |(ok, failed), b| (ok + b.1, failed + b.2));
                RouteFigures {
                    app: app.clone(),
                    route: route.clone(),
                    received: s.received,
                    delivered: s.delivered,
                    dead_lettered: s.dead_lettered,
                    window_attempts: ok + failed,
                    window_failures: failed,
                    success_rate: rate(ok, failed),
                    last_error: s.last_error.clone(),
                }
            })
            .collect()
    }
}

/// Successes over attempts; `None` when there were none.
pub fn rate(ok: u64, failed: u64) -> Option<f64> {
    let total = ok + failed;
    (total > 0).then(|| ok as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_leave_the_rate_once_they_are_older_than_the_window() {
        let recent = Recent::new(Duration::from_secs(60));
        recent.attempt("a", "r", 1_000, Some("status 500".into()));
        recent.attempt("a", "r", 2_000, None);
        let now = recent.figures(2_000);
        assert_eq!(now[0].success_rate, Some(0.5));
        assert_eq!(now[0].last_error.as_ref().map(|e| e.at), Some(1_000));
        recent.attempt("a", "r", 70_000, None);
        let later = recent.figures(70_000);
        assert_eq!(later[0].window_attempts, 1);
        assert_eq!(later[0].success_rate, Some(1.0));
        assert_eq!(later[0].delivered, 2, "totals are for the lifetime");
    }

    #[test]
    fn a_route_without_attempts_has_no_rate() {
        let recent = Recent::new(Duration::from_secs(60));
        recent.received("a", "r");
        assert_eq!(recent.figures(0)[0].success_rate, None);
    }
}
