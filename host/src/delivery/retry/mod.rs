//! Retry policy: how long to wait between attempts (exponential backoff
//! with jitter, `Retry-After`), how long each attempt may take, and what an
//! upstream's answer means for the message.
//!
//! In the delivery flow the dispatcher sends an attempt, turns the response
//! (or the error) into an [`AttemptOutcome`] with [`classify_status`] or
//! [`AttemptOutcome::retryable`], and for a retryable outcome asks
//! [`RetryPolicy::next_delay`] when to reschedule the message, until
//! [`RetryPolicy::has_attempts_left`] says no and the message goes to the
//! fallback plugin and the dead-letter queue.
//!
//! Everything here is pure: no clock is read (callers pass `now`) and the
//! random source is a parameter, so tests are exact and repeatable.
//!
//! Attempts are numbered from 1. `backoff(n)` is the wait after `n` failed
//! attempts, before attempt `n + 1`.

use std::time::{Duration, SystemTime};

use rand::{Rng, RngExt};
use serde::Deserialize;

/// Retry settings for a route or a destination (`[routes.x.retry]`), every
/// field optional. [`RetryPolicy::validate`] says what is wrong with a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included; 1 means never retry.
    pub max_attempts: u32,
    /// Wait after the first failed attempt (`"1s"`, `"250ms"`).
    #[serde(deserialize_with = "crate::config::duration")]
    pub initial_delay: Duration,
    /// Each further wait is the previous one times this (at least 1).
    pub multiplier: f64,
    /// Hard ceiling on a backoff wait, jitter included.
    #[serde(deserialize_with = "crate::config::duration")]
    pub max_delay: Duration,
    /// Random spread of each wait as a fraction: 0.25 means anywhere from
    /// 75% to 125% of the computed wait, so messages that failed together do
    /// not all come back at the same instant.
    pub jitter: f64,
    /// Longest wait a destination's `Retry-After` can impose; a longer ask is
    /// cut to this. `"0s"` ignores `Retry-After` altogether.
    #[serde(deserialize_with = "crate::config::duration")]
    pub max_retry_after: Duration,
    /// Time limit of the first attempt, from connect to the end of the body.
    #[serde(deserialize_with = "crate::config::duration")]
    pub attempt_timeout: Duration,
    /// Each further attempt's time limit is the previous one times this;
    /// 1.0 keeps it constant. More time for later attempts helps a
    /// destination that is slow under load rather than down.
    pub timeout_growth: f64,
    /// Ceiling on a grown attempt time limit.
    #[serde(deserialize_with = "crate::config::duration")]
    pub max_attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            // 1+2+4+8 s of waiting: rides out a restart, gives up on an
            // outage within seconds so the fallback and DLQ take over.
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5 * 60),
            jitter: 0.25,
            max_retry_after: Duration::from_secs(60 * 60),
            attempt_timeout: Duration::from_secs(10),
            timeout_growth: 1.0,
            max_attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Every problem with the policy, one message each without a key path,
    /// so the config layer can prefix `routes.x.retry.`.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push("max_attempts must be at least 1, got 0".to_string());
        }
        if self.initial_delay.is_zero() {
            problems.push("initial_delay must be more than 0s".to_string());
        }
        check_factor(&mut problems, "multiplier", self.multiplier);
        if self.max_delay < self.initial_delay {
            problems.push(format!(
                "max_delay must not be less than initial_delay ({}), got {}",
                fmt(self.initial_delay),
                fmt(self.max_delay)
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if self.attempt_timeout.is_zero() {
            problems.push("attempt_timeout must be more than 0s".to_string());
        }
        check_factor(&mut problems, "timeout_growth", self.timeout_growth);
        if self.max_attempt_timeout < self.attempt_timeout {
            problems.push(format!(
                "max_attempt_timeout must not be less than attempt_timeout ({}), got {}",
                fmt(self.attempt_timeout),
                fmt(self.max_attempt_timeout)
            ));
        }
        problems
    }

    /// Whether a message that has been tried `attempts_made` times may be
    /// tried again; false means it goes to the fallback and the DLQ.
    pub fn has_attempts_left(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The wait after `attempt` failed attempts, before attempt
    /// `attempt + 1`: `initial_delay * multiplier^(attempt - 1)`, capped at
    /// `max_delay`, then spread by `jitter`.
    ///
    /// `max_delay` stays a hard ceiling: where the jitter window would reach
    /// above it, the window is cut at `max_delay` (at the cap the wait is
    /// uniform in `[max_delay * (1 - jitter), max_delay]`) rather than piling
    /// the excess onto `max_delay` itself. Large attempt numbers saturate at
    /// the cap. Attempt 0 (nothing failed yet) waits zero. Out-of-range
    /// values in an unvalidated policy are clamped, never a panic.
    pub fn backoff<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let cap = self.max_delay.as_secs_f64();
        let base = grow(
            self.initial_delay,
            self.multiplier,
            attempt - 1,
            self.max_delay,
        )
        .as_secs_f64();
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let low = base * (1.0 - jitter);
        let high = (base * (1.0 + jitter)).min(cap);
        let secs = if low < high {
            rng.random_range(low..=high)
        } else {
            low
        };
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// The wait before the next attempt after `attempt` failed ones, given
    /// the `Retry-After` the destination sent (see [`AttemptOutcome`]).
    ///
    /// `Retry-After` is a floor, not a replacement: the wait is the larger
    /// of the backoff and the `Retry-After` (cut to `max_retry_after`). So a
    /// destination that asks for an hour waits an hour (or the cap), and one
    /// that answers `Retry-After: 0` to everything, or sends a date in the
    /// past, cannot pull retries into a tight loop.
    pub fn next_delay<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let backoff = self.backoff(attempt, rng);
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.max_retry_after)),
            None => backoff,
        }
    }

    /// Time limit for attempt number `attempt` (1-based; 0 counts as 1):
    /// `attempt_timeout * timeout_growth^(attempt - 1)`, capped at
    /// `max_attempt_timeout`.
    pub fn attempt_timeout(&self, attempt: u32) -> Duration {
        let first = self.attempt_timeout.min(self.max_attempt_timeout);
        grow(
            first,
            self.timeout_growth,
            attempt.saturating_sub(1),
            self.max_attempt_timeout,
        )
    }
}

/// What one attempt's result means for the message; the dispatcher's
/// `handle_success` / `handle_failure` branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered (2xx). Also a breaker success.
    Success,
    /// Try again later if attempts are left. `retry_after` is what the
    /// destination asked for, uncapped (the log shows the real ask;
    /// [`RetryPolicy::next_delay`] applies the cap). Also a breaker failure.
    Retryable { retry_after: Option<Duration> },
    /// The destination refused this message and would refuse it again: no
    /// retry, straight to the fallback and the DLQ. The destination itself
    /// answered, so it is not a breaker failure.
    Permanent,
    /// 410: the endpoint is gone for good. Like `Permanent`, and the
    /// destination gets disabled so later messages stop trying it.
    Gone,
}

impl AttemptOutcome {
    /// For failures without a response: timeouts and connection errors.
    pub fn retryable() -> Self {
        AttemptOutcome::Retryable { retry_after: None }
    }

    /// Whether the message may be scheduled for another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AttemptOutcome::Retryable { .. })
    }

    /// Stable label for metrics and the attempt log (`outcome="retryable"`).
    pub fn label(&self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Retryable { .. } => "retryable",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::Gone => "gone",
        }
    }
}

/// What an upstream status means for the message. 2xx is success. 408, 409,
/// 425, 429 and every 5xx are retryable, with the `Retry-After` header
/// (parsed against `now`) when it is valid. 410 is [`AttemptOutcome::Gone`].
/// Every other status is permanent: other 4xx, and 1xx/3xx because
/// redirects are not followed (a destination that moved must be
/// reconfigured), and anything outside 100..=599.
pub fn classify_status(
    status: u16,
    retry_after_header: Option<&str>,
    now: SystemTime,
) -> AttemptOutcome {
    match status {
        200..=299 => AttemptOutcome::Success,
        410 => AttemptOutcome::Gone,
        408 | 409 | 425 | 429 | 500..=599 => AttemptOutcome::Retryable {
            retry_after: retry_after_header.and_then(|value| parse_retry_after(value, now)),
        },
        _ => AttemptOutcome::Permanent,
    }
}

/// Reads a `Retry-After` value (RFC 9110 10.2.3): delta-seconds (`"120"`)
/// or an HTTP-date, as a wait from `now`. A date in the past is a zero wait;
/// a number too large for a `u64` saturates; anything else (negative,
/// fractional, empty, not a date) is `None`, as if the header were absent.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits, so the only way to fail is overflow.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `start * factor^steps`, capped at `cap`; saturates instead of
/// overflowing. A factor below 1 or not finite counts as 1 (validation
/// reports it; this only keeps an unvalidated policy from panicking).
fn grow(start: Duration, factor: f64, steps: u32, cap: Duration) -> Duration {
    let factor = if factor.is_finite() && factor >= 1.0 {
        factor
    } else {
        1.0
    };
    let steps = i32::try_from(steps).unwrap_or(i32::MAX);
    let secs = start.as_secs_f64() * factor.powi(steps);
    if secs >= cap.as_secs_f64() {
        return cap;
    }
    // `secs` is finite and below `cap` here; the fallback is unreachable.
    Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
}

fn check_factor(problems: &mut Vec<String>, name: &str, value: f64) {
    if value.is_nan() || value < 1.0 {
        problems.push(format!("{name} must be at least 1, got {value}"));
    } else if value.is_infinite() {
        problems.push(format!("{name} must be a finite number, got {value}"));
    }
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests;
