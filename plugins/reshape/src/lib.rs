//! `reshape`: a transformer that rewrites a JSON body's top-level fields and
//! picks the destination from a field's value, all driven by plugin config.
//!
//! Config (values are strings):
//! - `rename.<from>` = `<to>`: rename a field (it keeps its position; renaming
//!   onto an existing field replaces that field). Renames apply all at once,
//!   so `rename.a = "b"` and `rename.b = "c"` give `b` and `c`, not a chain;
//! - `drop`: comma-separated fields to remove (names after renaming);
//! - `set.<field>` = `<value>`: set a field to that string (after dropping);
//! - `wrap` = `<name>`: the result becomes `{"<name>": <object>}`;
//! - `route_by` = `<field>` with `destination.<value>` = `<destination>`: send
//!   to the destination named for the field's value; `default_destination`
//!   when the field or its mapping is missing; else the route's first
//!   destination (`none`);
//! - `filter_field` + `filter_value`: when the field equals the value, drop
//!   the message (return no outgoing at all). Set both or neither;
//! - `fan_out`: comma-separated destination names; the rewritten body goes to
//!   each of them (one outgoing each, delivered and retried on its own),
//!   instead of the single destination `route_by` picks;
//! - `delay_ms`: deliver no sooner than this many milliseconds from now (a
//!   "deliver at" timer, journaled by the host so it survives restarts);
//! - `max_attempts`: override the route's retry count for these messages.
//!
//! `route_by` and the filter look at the body as it arrived, before any
//! rewrite, so the config can name the sender's fields. A field "equals" a
//! config string when it is that string, or a number or boolean whose JSON
//! text is that string (`filter_value = "true"` matches `true`).
//!
//! Output (without `fan_out`): one `outgoing` with the rewritten body and
//! `content-type: application/json`; every other field is `none`. A body
//! that is not a JSON object is an `err`, so the route's `on_plugin_error`
//! policy decides what happens to the message.

wit_bindgen::generate!({ path: "../../wit", world: "transformer" });

use std::borrow::Cow;
use std::collections::BTreeMap;

use exports::hookgate::plugin::transform::{Guest, Outgoing, Webhook};
use hookgate::plugin::host;
use serde_json::{Map, Value};

struct Reshape;

impl Guest for Reshape {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        let plan = Plan::from_entries(host::config_entries())?;
        let Some(reshaped) = plan.apply(&hook.body)? else {
            // Filtered out: an empty list tells the host to record the
            // message as filtered and deliver nothing.
            return Ok(Vec::new());
        };
        let deliver_at = plan.delay_ms.map(|ms| host::now().saturating_add(ms));
        let destinations = if plan.fan_out.is_empty() {
            vec![reshaped.destination]
        } else {
            plan.fan_out.iter().cloned().map(Some).collect()
        };
        Ok(destinations
            .into_iter()
            .map(|destination| Outgoing {
                destination,
                method: None,
                path: None,
                query: None,
                headers: Some(vec![(
                    "content-type".to_string(),
                    b"application/json".to_vec(),
                )]),
                body: Some(reshaped.body.clone()),
                deliver_at,
                max_attempts: plan.max_attempts,
            })
            .collect())
    }
}

export!(Reshape);

/// What to do to a body, parsed from the plugin config.
#[derive(Debug, Default)]
struct Plan {
    renames: BTreeMap<String, String>,
    drop: Vec<String>,
    set: Vec<(String, String)>,
    wrap: Option<String>,
    route_by: Option<String>,
    destinations: BTreeMap<String, String>,
    default_destination: Option<String>,
    /// `(field, value)`: drop messages whose field equals the value.
    filter: Option<(String, String)>,
    /// Destinations every message goes to (fan-out); empty = one delivery.
    fan_out: Vec<String>,
    delay_ms: Option<u64>,
    max_attempts: Option<u32>,
}

/// A rewritten body and where it goes.
#[derive(Debug, PartialEq)]
struct Reshaped {
    destination: Option<String>,
    body: Vec<u8>,
}

impl Plan {
    fn from_entries(entries: Vec<(String, String)>) -> Result<Self, String> {
        let mut plan = Plan::default();
        let (mut filter_field, mut filter_value) = (None, None);
        for (key, value) in entries {
            if let Some(from) = key.strip_prefix("rename.") {
                plan.renames.insert(from.to_string(), value);
            } else if let Some(field) = key.strip_prefix("set.") {
                plan.set.push((field.to_string(), value));
            } else if let Some(selector) = key.strip_prefix("destination.") {
                plan.destinations.insert(selector.to_string(), value);
            } else {
                // An empty string in TOML most likely means "off" here.
                let named = Some(value).filter(|v| !v.is_empty());
                match key.as_str() {
                    "drop" => plan.drop = named.as_deref().map(split_list).unwrap_or_default(),
                    "delay_ms" => plan.delay_ms = Some(parse_number(&key, named)?),
                    "max_attempts" => plan.max_attempts = Some(parse_number(&key, named)?),
                    "fan_out" => {
                        plan.fan_out = named.as_deref().map(split_list).unwrap_or_default()
                    }
                    "wrap" => plan.wrap = named,
                    "route_by" => plan.route_by = named,
                    "default_destination" => plan.default_destination = named,
                    "filter_field" => filter_field = named,
                    "filter_value" => filter_value = named,
                    _ => {} // unknown keys are ignored
                }
            }
        }
        // Half a filter is a config mistake: failing loudly (every message
        // goes through `on_plugin_error`) beats silently not filtering.
        plan.filter = match (filter_field, filter_value) {
            (Some(field), Some(value)) => Some((field, value)),
            (None, None) => None,
            _ => return Err("filter_field and filter_value must be set together".to_string()),
        };
        Ok(plan)
    }

    /// `Ok(None)` when the filter drops the message.
    fn apply(&self, body: &[u8]) -> Result<Option<Reshaped>, String> {
        let object: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|err| format!("body is not a JSON object: {err}"))?;

        if let Some((field, wanted)) = &self.filter
            && object.get(field).and_then(scalar_text).as_deref() == Some(wanted.as_str())
        {
            return Ok(None);
        }
        let destination = self.destination_for(&object);

        // Rebuilding the map (instead of remove + insert) keeps each renamed
        // field where the sender put it.
        let mut object: Map<String, Value> = object
            .into_iter()
            .map(|(key, value)| match self.renames.get(&key) {
                Some(to) => (to.clone(), value),
                None => (key, value),
            })
            .collect();
        for field in &self.drop {
            // `shift_remove` (serde_json's `preserve_order` feature) keeps the
            // remaining fields in order.
            object.shift_remove(field);
        }
        for (field, value) in &self.set {
            object.insert(field.clone(), Value::String(value.clone()));
        }
        let mut result = Value::Object(object);
        if let Some(name) = &self.wrap {
            result = Value::Object(Map::from_iter([(name.clone(), result)]));
        }

        let body =
            serde_json::to_vec(&result).map_err(|err| format!("cannot encode body: {err}"))?;
        Ok(Some(Reshaped { destination, body }))
    }

    fn destination_for(&self, object: &Map<String, Value>) -> Option<String> {
        let by_field = self
            .route_by
            .as_ref()
            .and_then(|field| object.get(field))
            .and_then(scalar_text)
            .and_then(|selector| self.destinations.get(selector.as_ref()));
        by_field.or(self.default_destination.as_ref()).cloned()
    }
}

/// The text a config string is compared with: a string's contents, or the
/// JSON text of a number or boolean. `null`, arrays and objects match nothing.
fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(_) | Value::Bool(_) => Some(Cow::Owned(value.to_string())),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Parses a numeric config value, naming the key when it is not a number.
fn parse_number<T: std::str::FromStr>(key: &str, value: Option<String>) -> Result<T, String> {
    let value = value.unwrap_or_default();
    value
        .trim()
        .parse()
        .map_err(|_| format!("config {key:?} must be a number, got {value:?}"))
}

/// Splits a comma-separated config value, trimming spaces and skipping empty
/// items.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    fn plan(entries: &[(&str, &str)]) -> Result<Plan, String> {
        Plan::from_entries(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn run(entries: &[(&str, &str)], body: &str) -> Option<(Option<String>, String)> {
        let reshaped = plan(entries)
            .expect("valid config")
            .apply(body.as_bytes())
            .expect("valid body")?;
        let text = String::from_utf8(reshaped.body).expect("utf-8 JSON");
        Some((reshaped.destination, text))
    }

    #[test]
    fn renames_drops_sets_and_wraps_in_order() {
        let out = run(
            &[
                ("drop", "secret, b"),
                ("rename.a", "b"),
                ("rename.z", "y"),
                ("set.source", "crm"),
                ("wrap", "data"),
            ],
            r#"{"z":1,"a":2,"secret":3}"#,
        );
        // `a` was renamed to `b` before the drop, so it is gone too.
        assert_eq!(
            out,
            Some((None, r#"{"data":{"y":1,"source":"crm"}}"#.to_string()))
        );
    }

    #[test]
    fn routes_by_field_value_with_default() {
        let config = [
            ("route_by", "kind"),
            ("destination.order", "orders"),
            ("default_destination", "misc"),
        ];
        let to = |body| run(&config, body).and_then(|(destination, _)| destination);
        assert_eq!(to(r#"{"kind":"order"}"#).as_deref(), Some("orders"));
        assert_eq!(to(r#"{"kind":"refund"}"#).as_deref(), Some("misc"));
        assert_eq!(to("{}").as_deref(), Some("misc"));
    }

    #[test]
    fn filter_drops_matching_message() {
        let config = [("filter_field", "test"), ("filter_value", "true")];
        assert_eq!(run(&config, r#"{"test":true}"#), None);
        assert!(run(&config, r#"{"test":false}"#).is_some());
        assert!(plan(&[("filter_field", "test")]).is_err());
    }

    #[test]
    fn non_object_body_is_an_error() {
        let err = plan(&[])
            .expect("empty config")
            .apply(b"42")
            .expect_err("not an object");
        assert!(err.starts_with("body is not a JSON object: "), "{err}");
    }
}
