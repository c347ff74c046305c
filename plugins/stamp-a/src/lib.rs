//! `stamp-a` and `stamp-b`: one test-only plugin built twice (`stamp-b`'s
//! manifest points at this file), so hot-reload tests have two versions
//! that differ only in who they say they are: the crate name, `VERSION`.
//!
//! - validate: rejects with status 409 and reason `VERSION` a JSON body whose
//!   field `"forbid"` is `VERSION`; accepts anything else;
//! - transform: forwards the body with a field `"stamp": VERSION` added (a
//!   body that is not a JSON object is forwarded unchanged).
//!
//! A route using it for both roles answers in a way that names the version
//! of each step: a caller that sends `"forbid": "stamp-a"` and gets an
//! answer stamped `stamp-a` has seen validate of `stamp-b` and transform of
//! `stamp-a` within one request, a mix the gateway must never make.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::hookgate::plugin::{fallback, transform, validate};
use hookgate::plugin::types::{Decision, NextStep, Outgoing, Rejection, Verdict, Webhook};
use serde_json::{Map, Value};

/// Who this build is: `stamp-a` or `stamp-b`.
const VERSION: &str = env!("CARGO_PKG_NAME");

fn object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

struct Stamp;

impl validate::Guest for Stamp {
    fn validate(hook: Webhook) -> Result<Verdict, String> {
        let forbidden = object(&hook.body)
            .is_some_and(|map| map.get("forbid").and_then(Value::as_str) == Some(VERSION));
        Ok(if forbidden {
            Verdict::Reject(Rejection {
                status: 409,
                reason: VERSION.to_string(),
            })
        } else {
            Verdict::Accept
        })
    }
}

impl transform::Guest for Stamp {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        let body = match object(&hook.body) {
            Some(mut map) => {
                map.insert("stamp".into(), Value::String(VERSION.into()));
                Value::Object(map).to_string().into_bytes()
            }
            None => hook.body,
        };
        Ok(vec![Outgoing {
            destination: None,
            method: None,
            path: None,
            query: None,
            headers: Some(vec![(
                "content-type".to_string(),
                b"application/json".to_vec(),
            )]),
            body: Some(body),
            deliver_at: None,
            max_attempts: None,
        }])
    }
}

impl fallback::Guest for Stamp {
    fn fallback(_hook: Webhook, _failure: fallback::Failure) -> Result<Decision, String> {
        Ok(Decision {
            respond: None,
            next: NextStep::DeadLetter(format!("{VERSION} has no fallback")),
        })
    }
}

export!(Stamp);
