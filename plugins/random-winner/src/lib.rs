//! `random-winner`: a fallback that answers a waiting caller on its own when
//! the upstream cannot: it picks one entry of a list in the payload at
//! random and answers with it. The "default behaviour" strategy of a sync
//! route: e.g. a winner selection that must produce a winner even when the
//! app that normally chooses is down.
//!
//! Config (values are strings):
//! - `list_field`: top-level field of the inbound JSON body holding the
//!   candidates, an array (default `entries`).
//!
//! Decision: respond `200` with `{"winner": <entry>, "picked_by": "fallback"}`
//! and `x-hookgate-fallback: random-winner`; the message is `done` (nothing
//! is journaled). A body without a non-empty list is an `err`: the route's
//! safe answer is used and the message is dead-lettered for an operator.
//!
//! The randomness comes from the WASI random source the host gives every
//! plugin, through the standard library's hasher seeds, so this crate needs
//! no dependency for it.

wit_bindgen::generate!({ path: "../../wit", world: "fallback-handler" });

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use exports::hookgate::plugin::fallback::{Decision, Failure, Guest, Webhook};
use hookgate::plugin::host;
use hookgate::plugin::types::{NextStep, Response};
use serde_json::{Map, Value, json};

const DEFAULT_LIST_FIELD: &str = "entries";

struct RandomWinner;

impl Guest for RandomWinner {
    fn fallback(hook: Webhook, _failure: Failure) -> Result<Decision, String> {
        let field = host::config("list_field").unwrap_or_else(|| DEFAULT_LIST_FIELD.to_string());
        let candidates = candidates(&hook.body, &field)?;
        let winner = &candidates[pick(candidates.len())];
        let body = json!({ "winner": winner, "picked_by": "fallback" });
        Ok(Decision {
            respond: Some(Response {
                status: 200,
                headers: vec![
                    ("content-type".to_string(), b"application/json".to_vec()),
                    ("x-hookgate-fallback".to_string(), b"random-winner".to_vec()),
                ],
                body: body.to_string().into_bytes(),
            }),
            next: NextStep::Done,
        })
    }
}

export!(RandomWinner);

/// The non-empty array in `field` of the JSON object `body`.
fn candidates(body: &[u8], field: &str) -> Result<Vec<Value>, String> {
    let mut object: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "body is not a JSON object".to_string())?;
    match object.remove(field) {
        Some(Value::Array(list)) if !list.is_empty() => Ok(list),
        Some(Value::Array(_)) => Err(format!("{field:?} is empty: no one to pick")),
        Some(_) => Err(format!("{field:?} is not an array")),
        None => Err(format!("body has no {field:?} to pick from")),
    }
}

/// A random index below `len` (> 0). Fresh `RandomState` keys come from the
/// platform's random source; hashing anything with them gives a random u64.
/// The modulo bias is below 2^-50 for any list a webhook can carry.
fn pick(len: usize) -> usize {
    (RandomState::new().hash_one(0u8) % len as u64) as usize
}

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_must_be_a_non_empty_array() {
        assert_eq!(
            candidates(br#"{"entries":["a","b"]}"#, "entries"),
            Ok(vec![json!("a"), json!("b")])
        );
        assert!(candidates(br#"{"entries":[]}"#, "entries").is_err());
        assert!(candidates(br#"{"entries":"a"}"#, "entries").is_err());
        assert!(candidates(br#"{}"#, "entries").is_err());
        assert!(candidates(b"[1]", "entries").is_err());
    }

    #[test]
    fn picks_stay_in_range_and_vary() {
        let picks: std::collections::BTreeSet<usize> = (0..200).map(|_| pick(3)).collect();
        assert!(picks.iter().all(|&i| i < 3));
        assert!(picks.len() > 1, "200 picks of 3 all landed on one entry");
    }
}
