//! The `[health]` table: when `/health` calls the gateway degraded or
//! unhealthy. Every field has a default, so the table is optional.

use std::time::Duration;

use serde::Deserialize;

/// Thresholds `/health` judges the recent past by.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How far back success rates and error counts look (`"5m"`).
    #[serde(deserialize_with = "crate::config::duration")]
    pub window: Duration,
    /// Below this share of successful delivery attempts over the window
    /// (overall or on any route) the gateway is degraded (0.0 to 1.0).
    pub degraded_below: f64,
    /// Below this share it is unhealthy (0.0 to 1.0; 0 turns it off).
    pub unhealthy_below: f64,
    /// Fewer attempts than this in the window are too few to judge a rate
    /// by: one failed attempt out of one is not an outage.
    pub min_attempts: u64,
    /// Whether an open circuit breaker makes the gateway degraded.
    pub degrade_on_open_breaker: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            // Long enough to smooth a blip, short enough to show recovery soon.
            window: Duration::from_secs(300),
            degraded_below: 0.95,
            unhealthy_below: 0.0,
            min_attempts: 1,
            degrade_on_open_breaker: true,
        }
    }
}

impl HealthConfig {
    /// Problems with the values: (key under `health`, what is wrong).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.window.is_zero() {
            problems.push(("window", "must be longer than 0s".to_string()));
        }
        for (key, value) in [
            ("degraded_below", self.degraded_below),
            ("unhealthy_below", self.unhealthy_below),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push((key, format!("{value} is not between 0.0 and 1.0")));
            }
        }
        if self.unhealthy_below > self.degraded_below {
            problems.push((
                "unhealthy_below",
                format!(
                    "{} is above degraded_below ({})",
                    self.unhealthy_below, self.degraded_below
                ),
            ));
        }
        problems
    }
}
