//! `postback`: a transform that turns an internal event into an outbound
//! GET postback whose URL is built from the event's own fields, the way ad
//! networks and payment partners expect conversions and balance changes.
//!
//! Config (values are strings):
//! - `query.<name>` = `<field>`: a query parameter `<name>` carrying the
//!   event's top-level `<field>` (strings as they are, numbers and booleans
//!   as their JSON text), percent-encoded; parameters come in name order;
//! - `path_field`: a top-level field whose value is appended to the
//!   destination's URL as a path segment (e.g. `event` -> `/credit`); the
//!   destination must set `allow_path = true`.
//!
//! The postback is a `GET` with no body and no forwarded headers; the
//! gateway adds its own (`webhook-id`, signatures). An event without a
//! field the config names, or with a non-scalar one there, is an `err`: the
//! route's `on_plugin_error` policy dead-letters it, since a postback with
//! a hole in it would be wrong, not late.

wit_bindgen::generate!({ path: "../../wit", world: "transformer" });

use exports::hookgate::plugin::transform::{Guest, Outgoing, Webhook};
use hookgate::plugin::host;
use serde_json::{Map, Value};

struct Postback;

impl Guest for Postback {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        let event: Map<String, Value> = serde_json::from_slice(&hook.body)
            .map_err(|_| "the event is not a JSON object".to_string())?;
        let config = host::config_entries();
        let params = config
            .iter()
            .filter_map(|(key, field)| Some((key.strip_prefix("query.")?, field.as_str())));
        let query = build_query(&event, params)?;
        let path = match host::config("path_field") {
            Some(field) => Some(path_segment(&scalar(&event, &field)?)?),
            None => None,
        };
        Ok(vec![Outgoing {
            destination: None,
            method: Some("GET".to_string()),
            path,
            query: Some(query),
            headers: Some(Vec::new()),
            body: Some(Vec::new()),
            deliver_at: None,
            max_attempts: None,
        }])
    }
}

export!(Postback);

/// `name=value&...` for each `(name, field)`, values from `event`.
fn build_query<'a>(
    event: &Map<String, Value>,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<String, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, field) in params {
        query.append_pair(name, &scalar(event, field)?);
    }
    Ok(query.finish())
}

/// The event's `field` as text: a string as it is, a number or boolean as
/// its JSON text; anything else (missing, null, array, object) is an error.
fn scalar(event: &Map<String, Value>, field: &str) -> Result<String, String> {
    match event.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Ok(value.to_string()),
        Some(_) => Err(format!(
            "field {field:?} is not a string, number or boolean"
        )),
        None => Err(format!("the event has no field {field:?}")),
    }
}

/// A value used as one path segment: letters, digits, `-`, `_` and `.`
/// only (and not `.` or `..`), so an event can never steer the postback to
/// another path on the partner's server.
fn path_segment(value: &str) -> Result<String, String> {
    let safe = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if safe {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} cannot be a path segment"))
    }
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Map<String, Value> {
        serde_json::from_str(r#"{"user_id":"u 1&2","amount":25.5,"ok":true,"tags":[1]}"#)
            .expect("json")
    }

    #[test]
    fn the_query_carries_encoded_scalars_in_order() {
        let params = [("amt", "amount"), ("ok", "ok"), ("uid", "user_id")];
        assert_eq!(
            build_query(&event(), params.into_iter()).as_deref(),
            Ok("amt=25.5&ok=true&uid=u+1%262")
        );
    }

    #[test]
    fn only_plain_words_become_path_segments() {
        assert_eq!(path_segment("credit").as_deref(), Ok("credit"));
        for bad in ["", "..", "a/b", "../admin", "x?y"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_or_structured_field_is_an_error() {
        let missing = [("x", "nope")];
        assert!(build_query(&event(), missing.into_iter()).is_err());
        assert!(scalar(&event(), "tags").is_err());
    }
}
