//! `last-good`: a fallback that answers a failed delivery with the last good
//! answer cached for the message's key, or with a configured default: the
//! "cached result" strategy of a sync route.
//!
//! It fills the cache itself: as the `success` companion of the fallback
//! role, it sees every good (2xx) upstream answer on a sync route and stores
//! its body under the message's key, with a TTL, in the app's key-value
//! store. Entries expire by TTL, and another app never sees them (each app
//! has its own namespace).
//!
//! Config (values are strings):
//! - `key_field`: top-level field of the inbound JSON body whose value names
//!   the cache entry `last-good:<value>` in the app's key-value store (a
//!   string as is, a number or boolean as its JSON text);
//! - `ttl_ms`: how long a stored answer may be served, in milliseconds
//!   (default 300000, five minutes);
//! - `default_status`: status of the default answer, `100`-`599` (default `503`);
//! - `default_body`: body of the default answer, JSON (default
//!   `{"status":"unavailable"}`).
//!
//! Decision:
//! - cache hit: respond 200 with the stored bytes,
//!   `x-hookgate-fallback: cached`, and the message is `done`;
//! - otherwise respond with the default answer, `x-hookgate-fallback: default`.
//!   If retries are exhausted or a caller is waiting (it was just told the
//!   service is unavailable, so delivering behind its back later would be a
//!   surprise) the message is dead-lettered with
//!   `no cached answer: <failure kind>` for an operator; else it is retried
//!   after one second.

use std::time::Duration;

use hookgate_sdk::{
    Decision, Failure, FailureKind, Fallback, Level, NextStep, Response, Success, UpstreamResponse,
    Webhook, config, kv, log,
};
use serde_json::{Map, Value};

const DEFAULT_STATUS: u16 = 503;
const DEFAULT_BODY: &str = r#"{"status":"unavailable"}"#;
/// Delay before retrying when nothing was cached and the message may still
/// be delivered.
const RETRY_AFTER_MS: u64 = 1000;
/// How long a cached answer is served when `ttl_ms` is not set.
const DEFAULT_TTL_MS: u64 = 300_000;

struct LastGood;

impl Fallback for LastGood {
    fn fallback(hook: Webhook, failure: Failure) -> Result<Decision, String> {
        let cached = config("key_field")
            .and_then(|field| cache_key(&field, &hook.body))
            .and_then(|key| kv::get(&key));
        Ok(match cached {
            Some(stored) => Decision {
                respond: Some(answer(200, "cached", stored)),
                next: NextStep::Done,
            },
            None => Decision {
                respond: Some(answer(default_status(), "default", default_body())),
                next: next_step(&failure),
            },
        })
    }
}

impl Success for LastGood {
    fn success(hook: Webhook, response: UpstreamResponse) -> Result<(), String> {
        // No key in this message: nothing to remember it under.
        let Some(key) = config("key_field").and_then(|field| cache_key(&field, &hook.body)) else {
            return Ok(());
        };
        kv::set(&key, &response.body, Some(ttl()?))
    }
}

hookgate_sdk::export!(LastGood: fallback, success);

/// The configured TTL; a value that is not a number is an error (the host
/// logs it), so a typo does not silently cache forever or never.
fn ttl() -> Result<Duration, String> {
    match config("ttl_ms") {
        None => Ok(Duration::from_millis(DEFAULT_TTL_MS)),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("ttl_ms {text:?} is not a number of milliseconds")),
    }
}

/// `last-good:<value>` for the body's `field`, or `None` when the body is not
/// a JSON object or the field is missing or not a scalar: then there is
/// simply nothing cached, which is not an error.
fn cache_key(field: &str, body: &[u8]) -> Option<String> {
    let object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let value = match object.get(field)? {
        Value::String(text) => text.clone(),
        scalar @ (Value::Number(_) | Value::Bool(_)) => scalar.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(format!("last-good:{value}"))
}

fn answer(status: u16, source: &str, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            (
                "x-hookgate-fallback".to_string(),
                source.as_bytes().to_vec(),
            ),
        ],
        body,
    }
}

/// The configured default status. A value that is not an HTTP status is
/// logged and replaced by 503 rather than failing the call: a caller is
/// probably waiting, and a default answer is what this plugin is for.
fn default_status() -> u16 {
    let Some(text) = config("default_status") else {
        return DEFAULT_STATUS;
    };
    match text.trim().parse::<u16>() {
        Ok(status) if (100..=599).contains(&status) => status,
        _ => {
            log(
                Level::Warn,
                "last-good: default_status is not an HTTP status, using 503",
                &[("default_status", &text)],
            );
            DEFAULT_STATUS
        }
    }
}

fn default_body() -> Vec<u8> {
    config("default_body")
        .unwrap_or_else(|| DEFAULT_BODY.to_string())
        .into_bytes()
}

/// What happens to a message nothing was cached for; see the module docs.
fn next_step(failure: &Failure) -> NextStep {
    if failure.exhausted || failure.caller_waiting {
        NextStep::DeadLetter(format!("no cached answer: {}", kind_name(&failure.kind)))
    } else {
        NextStep::RetryAfter(RETRY_AFTER_MS)
    }
}

/// The WIT case name of a failure kind, for the dead-letter reason.
fn kind_name(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "timeout",
        FailureKind::BreakerOpen => "breaker-open",
        FailureKind::Status(_) => "status",
        FailureKind::Network(_) => "network",
        FailureKind::Disabled => "disabled",
    }
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    fn failure(exhausted: bool, caller_waiting: bool) -> Failure {
        Failure {
            destination: "crm".to_string(),
            kind: FailureKind::BreakerOpen,
            attempts: 1,
            exhausted,
            caller_waiting,
        }
    }

    #[test]
    fn cache_key_uses_scalar_field_values() {
        assert_eq!(
            cache_key("id", br#"{"id":"a1"}"#).as_deref(),
            Some("last-good:a1")
        );
        assert_eq!(
            cache_key("id", br#"{"id":42}"#).as_deref(),
            Some("last-good:42")
        );
        assert_eq!(cache_key("id", br#"{"id":null}"#), None);
        assert_eq!(cache_key("id", b"{}"), None);
        assert_eq!(cache_key("id", b"not json"), None);
    }

    #[test]
    fn dead_letters_when_exhausted_or_caller_waiting_else_retries() {
        let reason = |step| match step {
            NextStep::DeadLetter(reason) => Some(reason),
            _ => None,
        };
        let expected = Some("no cached answer: breaker-open".to_string());
        assert_eq!(reason(next_step(&failure(true, false))), expected);
        assert_eq!(reason(next_step(&failure(false, true))), expected);
        assert!(matches!(
            next_step(&failure(false, false)),
            NextStep::RetryAfter(RETRY_AFTER_MS)
        ));
    }
}
