//! `lead-router`: leads from a chatbot on their way to a workflow tool.
//!
//! `validate` (the sender is waiting, nothing is stored on a rejection):
//! - the body is a JSON object with `user_id`, `lead_type` and `timestamp`
//!   (422 naming the first missing field; 400 for a body that is not JSON);
//! - `lead_type` is `hot`, `cold` or `calculated` (422 otherwise);
//! - a `hot` lead has a `priority` (422 otherwise).
//!
//! `transform` (at delivery time): one delivery to the route's first
//! destination, unchanged, with the lead type's retry budget and delay:
//! - `attempts.<type>` = attempts before the lead is dead-lettered (the
//!   route's retry policy when not set);
//! - `delay_ms.<type>` = how long to hold the lead before the first attempt
//!   (journaled, so it survives restarts; none when not set).
//!
//! Config values that are not numbers are an `err`, so a typo shows up in
//! the log and the route's `on_plugin_error` policy instead of silently
//! changing how leads are retried.

wit_bindgen::generate!({ path: "../../wit", world: "validator-transformer" });

use exports::hookgate::plugin::transform::{Guest as TransformGuest, Outgoing};
use exports::hookgate::plugin::validate::{Guest as ValidateGuest, Verdict, Webhook};
use hookgate::plugin::host;
use hookgate::plugin::types::Rejection;
use serde_json::{Map, Value};

const LEAD_TYPES: [&str; 3] = ["hot", "cold", "calculated"];
const REQUIRED: [&str; 3] = ["user_id", "lead_type", "timestamp"];

struct LeadRouter;

impl ValidateGuest for LeadRouter {
    fn validate(hook: Webhook) -> Result<Verdict, String> {
        Ok(match check(&hook.body) {
            Ok(_) => Verdict::Accept,
            Err((status, reason)) => Verdict::Reject(Rejection { status, reason }),
        })
    }
}

impl TransformGuest for LeadRouter {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        // Validated at ingest; checked again because a replay may carry a
        // message validated by an older version of this plugin.
        let lead_type = check(&hook.body).map_err(|(_, reason)| reason)?;
        let max_attempts = number(&format!("attempts.{lead_type}"))?
            .map(|n| u32::try_from(n).map_err(|_| format!("attempts.{lead_type} is too large")))
            .transpose()?;
        let deliver_at = number(&format!("delay_ms.{lead_type}"))?
            .map(|delay| host::now().saturating_add(delay));
        Ok(vec![Outgoing {
            destination: None,
            method: None,
            path: None,
            query: None,
            headers: None,
            body: None,
            deliver_at,
            max_attempts,
        }])
    }
}

export!(LeadRouter);

/// The lead's type when the body is a valid lead, else the rejection.
fn check(body: &[u8]) -> Result<String, (u16, String)> {
    let lead: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| (400, "body is not a JSON object".to_string()))?;
    if let Some(missing) = REQUIRED
        .iter()
        .find(|f| lead.get(**f).is_none_or(Value::is_null))
    {
        return Err((422, format!("missing required field {missing:?}")));
    }
    let lead_type = match lead.get("lead_type") {
        Some(Value::String(t)) if LEAD_TYPES.contains(&t.as_str()) => t.clone(),
        other => {
            let shown = other.map(Value::to_string).unwrap_or_default();
            return Err((
                422,
                format!("lead_type {shown} is not one of hot, cold, calculated"),
            ));
        }
    };
    if lead_type == "hot" && lead.get("priority").is_none_or(Value::is_null) {
        return Err((422, "a hot lead needs a priority".to_string()));
    }
    Ok(lead_type)
}

/// A numeric config value, `None` when not set.
fn number(key: &str) -> Result<Option<u64>, String> {
    host::config(key)
        .map(|text| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("{key} {text:?} is not a number"))
        })
        .transpose()
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_are_checked_field_by_field() {
        let ok = br#"{"user_id":"u","lead_type":"hot","timestamp":1,"priority":"high"}"#;
        assert_eq!(check(ok), Ok("hot".to_string()));
        let cold = br#"{"user_id":"u","lead_type":"cold","timestamp":1}"#;
        assert_eq!(check(cold), Ok("cold".to_string()));
        let cases: [(&[u8], u16, &str); 4] = [
            (b"[]", 400, "body is not a JSON object"),
            (
                br#"{"user_id":"u","lead_type":"hot"}"#,
                422,
                "missing required field \"timestamp\"",
            ),
            (
                br#"{"user_id":"u","lead_type":"warm","timestamp":1}"#,
                422,
                "lead_type \"warm\" is not one of hot, cold, calculated",
            ),
            (
                br#"{"user_id":"u","lead_type":"hot","timestamp":1}"#,
                422,
                "a hot lead needs a priority",
            ),
        ];
        for (body, status, reason) in cases {
            assert_eq!(check(body), Err((status, reason.to_string())));
        }
    }
}
