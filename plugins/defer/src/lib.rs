//! `defer`: a fallback that keeps the message for later and tells the
//! waiting caller so. It covers two strategies of a sync route:
//!
//! - "queue for later" (`then = "queue"`): the message is journaled and
//!   delivered asynchronously to the same destination, after `delay_ms`,
//!   with the route's retry policy; the caller gets `202` and the message id
//!   (or the `notice`);
//! - "user notification" (`then = "dead-letter"` or `"reroute:<destination>"`):
//!   the caller is told the operation is pending (the `notice`), while the
//!   message goes to the dead-letter queue, or to another of the route's
//!   destinations (a manual-review inbox, say), for handling by people.
//!
//! Config (values are strings):
//! - `then`: `queue` (default), `dead-letter`, or `reroute:<destination>`;
//! - `delay_ms`: for `queue`, the wait before the first asynchronous attempt
//!   (default 1000);
//! - `notice`: a JSON body to answer the caller with; without it the host
//!   answers `202` with the message id;
//! - `notice_status`: status of the notice, 100-599 (default 202).
//!
//! A config value it cannot use is an `err`: the route's safe answer is
//! used and the message is dead-lettered, so nothing is lost to a typo.

wit_bindgen::generate!({ path: "../../wit", world: "fallback-handler" });

use exports::hookgate::plugin::fallback::{Decision, Failure, Guest, Webhook};
use hookgate::plugin::host;
use hookgate::plugin::types::{FailureKind, NextStep, Response};

const DEFAULT_DELAY_MS: u64 = 1000;
const DEFAULT_NOTICE_STATUS: u16 = 202;

struct Defer;

impl Guest for Defer {
    fn fallback(_hook: Webhook, failure: Failure) -> Result<Decision, String> {
        let then = host::config("then").unwrap_or_else(|| "queue".to_string());
        let delay = number("delay_ms", DEFAULT_DELAY_MS)?;
        let next = next_step(&then, delay, &failure)?;
        let respond = match host::config("notice") {
            None => None,
            Some(notice) => Some(Response {
                status: status("notice_status", DEFAULT_NOTICE_STATUS)?,
                headers: vec![
                    ("content-type".to_string(), b"application/json".to_vec()),
                    ("x-hookgate-fallback".to_string(), b"defer".to_vec()),
                ],
                body: notice.into_bytes(),
            }),
        };
        Ok(Decision { respond, next })
    }
}

export!(Defer);

/// What `then` asks for; the dead-letter reason names the failure.
fn next_step(then: &str, delay_ms: u64, failure: &Failure) -> Result<NextStep, String> {
    match then.split_once(':') {
        None if then == "queue" => Ok(NextStep::RetryAfter(delay_ms)),
        None if then == "dead-letter" => Ok(NextStep::DeadLetter(format!(
            "pending manual handling after {} on {}",
            kind_name(&failure.kind),
            failure.destination
        ))),
        Some(("reroute", destination)) if !destination.is_empty() => {
            Ok(NextStep::Reroute(destination.to_string()))
        }
        _ => Err(format!(
            "then {then:?}: expected queue, dead-letter or reroute:<destination>"
        )),
    }
}

fn number(key: &str, default: u64) -> Result<u64, String> {
    match host::config(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{key} {text:?} is not a number")),
    }
}

fn status(key: &str, default: u16) -> Result<u16, String> {
    let value = number(key, u64::from(default))?;
    u16::try_from(value)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("{key} {value} is not an HTTP status"))
}

/// The WIT case name of a failure kind, for the dead-letter reason.
fn kind_name(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "timeout",
        FailureKind::BreakerOpen => "breaker-open",
        FailureKind::Status(_) => "an error status",
        FailureKind::Network(_) => "a network error",
        FailureKind::Disabled => "disabled",
    }
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Failure {
        Failure {
            destination: "app".to_string(),
            kind: FailureKind::Timeout,
            attempts: 1,
            exhausted: false,
            caller_waiting: true,
        }
    }

    #[test]
    fn then_chooses_the_next_step() {
        assert!(matches!(
            next_step("queue", 250, &failure()),
            Ok(NextStep::RetryAfter(250))
        ));
        assert!(matches!(
            next_step("dead-letter", 0, &failure()),
            Ok(NextStep::DeadLetter(reason)) if reason == "pending manual handling after timeout on app"
        ));
        assert!(matches!(
            next_step("reroute:manual", 0, &failure()),
            Ok(NextStep::Reroute(to)) if to == "manual"
        ));
        assert!(next_step("reroute:", 0, &failure()).is_err());
        assert!(next_step("later", 0, &failure()).is_err());
    }
}
