//! `json-validator`: a validator that checks an inbound webhook's JSON body
//! against a few declarative rules taken from the route's plugin config.
//!
//! Config (values are strings, as the gateway passes all plugin config):
//! - `required`: comma-separated top-level fields that must be present, e.g.
//!   `required = "user_id, lead_type"`;
//! - `allowed.<field>`: comma-separated values `<field>` may take, e.g.
//!   `"allowed.lead_type" = "hot, cold, calculated"`. An absent field is not
//!   checked by this rule: list it in `required` as well if it must be there.
//!   Other keys are ignored.
//!
//! Verdicts:
//! - body not a JSON object: reject 400 `body is not a JSON object: <serde error>`;
//! - a required field missing: reject 422 `missing required field "user_id"`;
//! - a value outside its list: reject 422
//!   `field "lead_type" has value "warm", allowed: hot, cold, calculated`;
//! - otherwise accept.
//!
//! Every rejection is also logged at debug level. The checks run in a fixed
//! order (required fields as listed, then allowed lists by field name), so the
//! same body always gets the same reason.

wit_bindgen::generate!({ path: "../../wit", world: "validator" });

use exports::hookgate::plugin::validate::{Guest, Verdict, Webhook};
use hookgate::plugin::host::{self, Level};
use hookgate::plugin::types::Rejection;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Config key listing the required fields.
const REQUIRED_KEY: &str = "required";
/// Prefix of the config keys holding a field's allowed values.
const ALLOWED_PREFIX: &str = "allowed.";

struct JsonValidator;

impl Guest for JsonValidator {
    fn validate(hook: Webhook) -> Result<Verdict, String> {
        // One host call for the whole config: cheaper than one `config` call
        // per key, and the only way to discover the `allowed.*` keys.
        let rules = Rules::from_entries(host::config_entries());
        match rules.check(&hook.body) {
            Ok(()) => Ok(Verdict::Accept),
            Err(rejection) => {
                host::log(
                    Level::Debug,
                    "json-validator rejected webhook",
                    &[
                        ("status".to_string(), rejection.status.to_string()),
                        ("reason".to_string(), rejection.reason.clone()),
                    ],
                );
                Ok(Verdict::Reject(rejection))
            }
        }
    }
}

export!(JsonValidator);

/// The rules of one route, parsed from its plugin config.
#[derive(Debug, Default)]
struct Rules {
    /// Fields that must be present, in the order the config lists them.
    required: Vec<String>,
    /// `(field, allowed values)`, in key order (the host sorts the entries).
    allowed: Vec<(String, Vec<String>)>,
}

impl Rules {
    fn from_entries(entries: Vec<(String, String)>) -> Self {
        let mut rules = Rules::default();
        for (key, value) in entries {
            if key == REQUIRED_KEY {
                rules.required = split_list(&value);
            } else if let Some(field) = key.strip_prefix(ALLOWED_PREFIX) {
                rules.allowed.push((field.to_string(), split_list(&value)));
            }
        }
        rules
    }

    /// `Ok(())` when the body passes every rule, else the first rejection.
    fn check(&self, body: &[u8]) -> Result<(), Rejection> {
        // Deserializing straight into a map makes serde report both "not
        // JSON" and "JSON but not an object" (`invalid type: sequence,
        // expected a map`) with its position, in one message style. Values
        // stay raw slices of the body: only the fields a rule names are ever
        // parsed, so a large nested payload costs one syntax check, not a tree
        // of allocations (about half the cost of a call on a 1 KB body).
        let object: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
            .map_err(|err| reject(400, format!("body is not a JSON object: {err}")))?;

        for field in &self.required {
            if !object.contains_key(field) {
                return Err(reject(422, format!("missing required field {field:?}")));
            }
        }

        for (field, allowed) in &self.allowed {
            let Some(value) = object.get(field) else {
                continue;
            };
            // Only strings can match: the config can only name strings.
            let ok = serde_json::from_str::<String>(value.get())
                .is_ok_and(|text| allowed.contains(&text));
            if !ok {
                // A raw value displays as its JSON text, so a string shows
                // quoted ("warm") and a number or object shows as itself.
                return Err(reject(
                    422,
                    format!(
                        "field {field:?} has value {value}, allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn reject(status: u16, reason: String) -> Rejection {
    Rejection { status, reason }
}

/// Splits a comma-separated config value, trimming spaces and skipping empty
/// items, so `"a, b,"` and `"a,b"` mean the same.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

// These tests exercise the pure rule logic, so they run on the host target
// (`cargo test` in `plugins/`); nothing here calls a host import.
#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[(&str, &str)]) -> Rules {
        Rules::from_entries(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn reason(rules: &Rules, body: &str) -> Option<(u16, String)> {
        rules
            .check(body.as_bytes())
            .err()
            .map(|r| (r.status, r.reason))
    }

    #[test]
    fn accepts_body_that_meets_every_rule() {
        let rules = rules(&[
            ("allowed.lead_type", "hot, cold"),
            ("required", "user_id,lead_type"),
        ]);
        assert_eq!(reason(&rules, r#"{"user_id":1,"lead_type":"hot"}"#), None);
    }

    #[test]
    fn rejects_non_object_with_400() {
        let rules = rules(&[]);
        let (status, text) = reason(&rules, "[1,2]").expect("rejected");
        assert_eq!(status, 400);
        assert!(text.starts_with("body is not a JSON object: "), "{text}");
        assert!(reason(&rules, "not json").is_some());
    }

    #[test]
    fn rejects_missing_required_field_with_422() {
        let rules = rules(&[("required", "user_id")]);
        assert_eq!(
            reason(&rules, "{}"),
            Some((422, r#"missing required field "user_id""#.to_string()))
        );
    }

    #[test]
    fn rejects_value_outside_allowed_list() {
        let rules = rules(&[("allowed.lead_type", "hot, cold, calculated")]);
        assert_eq!(
            reason(&rules, r#"{"lead_type":"warm"}"#),
            Some((
                422,
                r#"field "lead_type" has value "warm", allowed: hot, cold, calculated"#.to_string()
            ))
        );
        // A non-string never matches a list of strings.
        assert!(reason(&rules, r#"{"lead_type":7}"#).is_some());
        // An absent field is only `required`'s business.
        assert_eq!(reason(&rules, "{}"), None);
    }
}
