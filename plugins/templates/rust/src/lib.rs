//! A hookgate plugin in Rust that plays all three roles.
//!
//! Every template (Rust, JavaScript, Python, C) behaves exactly the same, so
//! the integration test can send one webhook through each and expect one
//! result:
//!
//! - validate: the header named by config `required_header` (default
//!   `x-event-type`) must be present (else 422) and the body must be a JSON
//!   object (else 400);
//! - transform: one delivery to the route's first destination with the body
//!   `{"event":<header>,"tag":<config tag>,"data":<inbound body>}`;
//! - fallback: counts failures per destination in the key-value store
//!   (`failures:<destination>`), then reroutes to the destination named by
//!   config `backup`, or dead-letters the message.
//!
//! Build: `cargo build --release --target wasm32-wasip2` (see README.md).

use std::borrow::Cow;

use hookgate_sdk::{
    Decision, Failure, Fallback, Level, NextStep, Outgoing, Transform, Validate, Verdict, Webhook,
    config, config_or, kv, log,
};
use serde_json::{Map, Value};

const DEFAULT_HEADER: &str = "x-event-type";

struct Template;

/// A rejection, logged: the sender only sees the status and reason, the
/// operator sees why in the gateway's log. (Acceptances are not logged here:
/// the gateway logs each message's delivery attempts with its id.)
fn reject(status: u16, reason: String) -> Result<Verdict, String> {
    log(
        Level::Info,
        "rejected",
        &[("reason", &reason), ("lang", "rust")],
    );
    Ok(Verdict::reject(status, reason))
}

impl Validate for Template {
    fn validate(hook: Webhook) -> Result<Verdict, String> {
        let name = config_or("required_header", DEFAULT_HEADER);
        // Present is enough, whatever its bytes.
        if hook.header_bytes(&name).is_none() {
            return reject(422, format!("missing header \"{name}\""));
        }
        if hook.json::<Map<String, Value>>().is_err() {
            return reject(400, "body is not a JSON object".into());
        }
        Ok(Verdict::Accept)
    }
}

impl Transform for Template {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        let name = config_or("required_header", DEFAULT_HEADER);
        // Bytes that are not UTF-8 become U+FFFD (as in JavaScript and Python).
        let event = hook
            .header_bytes(&name)
            .map_or(Cow::Borrowed("unknown"), String::from_utf8_lossy);
        let tag = config_or("tag", "template");
        // The inbound body is spliced in as it came: no re-serialization.
        let mut body = format!(
            r#"{{"event":{},"tag":{},"data":"#,
            Value::from(&*event),
            Value::from(tag)
        )
        .into_bytes();
        body.extend_from_slice(&hook.body);
        body.push(b'}');
        Ok(vec![
            Outgoing::json(body).with_header("x-event-type", event.as_bytes()),
        ])
    }
}

impl Fallback for Template {
    fn fallback(_hook: Webhook, failure: Failure) -> Result<Decision, String> {
        let key = format!("failures:{}", failure.destination);
        let failures = kv::get_str(&key)
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        // No TTL: the count stays until deleted.
        kv::set(&key, failures.to_string(), None)?;
        log(
            Level::Warn,
            "delivery failed",
            &[
                ("destination", &failure.destination),
                ("failures", &failures.to_string()),
            ],
        );
        Ok(Decision::next(match config("backup") {
            Some(backup) if backup != failure.destination => NextStep::Reroute(backup),
            _ => NextStep::DeadLetter(format!("{} failed {failures} time(s)", failure.destination)),
        }))
    }
}

hookgate_sdk::export!(Template: validate, transform, fallback);
