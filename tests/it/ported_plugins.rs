//! The example plugins written in JavaScript (`embed-order`), Python
//! (`postback`) and C (`random-winner`): their rules and edge cases, checked
//! on the real components (the example tests cover the happy path through
//! the gateway). They were Rust crates with these checks as unit tests;
//! ported, their logic only runs inside a component, so it is tested here.
//!
//! The JavaScript and Python components are large (their compiled code is
//! some 40 MB), so each test holds `PROCESS_MEMORY` for reading: it must not
//! overlap the test that measures this process's resident memory.

use std::collections::BTreeSet;
use std::time::Duration;

use hookgate::plugin::{
    Failure, FailureKind, NextStep, Outgoing, Plugin, PluginError, PluginLimits,
};
use hookgate::store::SledStore;
use serde_json::{Value, json};

use crate::support::{PROCESS_MEMORY, load_cached, setup_with, webhook};

/// Default limits but the deadline: this checks behaviour, not speed (a
/// debug build on a busy machine; the examples' configs have the measured
/// limits).
fn limits() -> PluginLimits {
    PluginLimits {
        deadline: Duration::from_secs(5),
        ..PluginLimits::default()
    }
}

async fn transform(
    plugin: &Plugin,
    config: &[(&str, &str)],
    body: &str,
) -> Result<Vec<Outgoing>, PluginError> {
    let kv = SledStore::temporary().expect("store");
    let setup = setup_with("test-app", config, limits(), kv);
    plugin
        .transform(&setup, &webhook(body))
        .await
        .map(|report| report.value)
}

/// The one message a transform answered with.
fn only(answer: Result<Vec<Outgoing>, PluginError>) -> Outgoing {
    let mut out = answer.expect("the transform answers");
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

/// The reason of a deliberate `err` (any other failure fails the test).
fn guest_error<T: std::fmt::Debug>(answer: Result<T, PluginError>) -> String {
    match answer {
        Err(PluginError::Guest(reason)) => reason,
        other => panic!("expected err(reason), got {other:?}"),
    }
}

const EMBED: &str = r#"{"embeds":[{"title":"New order #1042","timestamp":"2026-11-23T10:00:00Z",
    "fields":[{"name":"Customer","value":"Ada Lovelace"},{"name":"TOTAL","value":"€42.50"},
    {"name":"Items","value":"2x Tea\n1x Scone"}]}]}"#;

#[tokio::test]
async fn embed_order_turns_an_embed_into_an_order_record() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("embed-order").await;
    let out = only(transform(&plugin, &[], EMBED).await);
    assert_eq!(out.method.as_deref(), Some("POST"));
    assert_eq!(out.destination, None);
    let headers = out.headers.expect("headers");
    assert_eq!(
        headers,
        [("content-type".to_string(), b"application/json".to_vec())]
    );
    let record: Value = serde_json::from_slice(&out.body.expect("a body")).expect("JSON");
    assert_eq!(
        record,
        json!({"order_id": "1042", "customer": "Ada Lovelace",
               "total": {"amount": "42.50", "currency": "EUR"},
               "items": [{"quantity": 2, "name": "Tea"}, {"quantity": 1, "name": "Scone"}],
               "placed_at": "2026-11-23T10:00:00Z"})
    );
}

#[tokio::test]
async fn embed_order_reads_totals_in_several_spellings_and_refuses_the_rest() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("embed-order").await;
    for (text, amount, currency) in [
        ("$3", "3", "USD"),
        ("42.50 EUR", "42.50", "EUR"),
        ("GBP 1.20", "1.20", "GBP"),
    ] {
        let body = EMBED.replace("€42.50", text);
        let out = only(transform(&plugin, &[], &body).await);
        let record: Value = serde_json::from_slice(&out.body.expect("a body")).expect("JSON");
        assert_eq!(
            record["total"],
            json!({"amount": amount, "currency": currency}),
            "{text}"
        );
    }
    for bad in ["", "€", "forty", "1.2.3 EUR", "12 euro"] {
        let body = EMBED.replace("€42.50", bad);
        let reason = guest_error(transform(&plugin, &[], &body).await);
        assert!(
            reason.contains("cannot read the total"),
            "{bad:?}: {reason}"
        );
    }
}

#[tokio::test]
async fn embed_order_names_what_it_cannot_read() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("embed-order").await;
    for (body, expected) in [
        ("{}".to_string(), "no embed"),
        ("not json".to_string(), "not an embed notification"),
        (EMBED.replace("#1042", "today"), "no order number"),
        (EMBED.replace("2x Tea", "some tea"), "item line"),
        (
            EMBED.replace("Customer", "Client"),
            r#"no "customer" field"#,
        ),
    ] {
        let reason = guest_error(transform(&plugin, &[], &body).await);
        assert!(reason.contains(expected), "{body}: {reason}");
    }
}

#[tokio::test]
async fn postback_builds_a_get_with_encoded_scalars_in_name_order() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("postback").await;
    let config = [
        ("query.uid", "user_id"),
        ("query.amt", "amount"),
        ("query.ok", "ok"),
        ("path_field", "event"),
    ];
    let event = r#"{"event":"credit","user_id":"u 1&2","amount":25.50,"ok":true,"tags":[1]}"#;
    let out = only(transform(&plugin, &config, event).await);
    assert_eq!(out.method.as_deref(), Some("GET"));
    assert_eq!(out.path.as_deref(), Some("credit"));
    // Numbers as the event wrote them; `&` and space form-encoded.
    assert_eq!(out.query.as_deref(), Some("amt=25.50&ok=true&uid=u+1%262"));
    assert_eq!(out.headers, Some(vec![]), "no forwarded headers");
    assert_eq!(out.body, Some(vec![]), "no body");
}

#[tokio::test]
async fn postback_refuses_holes_and_unsafe_path_segments() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("postback").await;
    let event = |value: &str| format!(r#"{{"event":{value},"tags":[1],"none":null}}"#);
    let path = [("path_field", "event")];
    for bad in [
        r#""""#,
        r#"".""#,
        r#""..""#,
        r#""a/b""#,
        r#""../admin""#,
        r#""x?y""#,
    ] {
        let reason = guest_error(transform(&plugin, &path, &event(bad)).await);
        assert!(
            reason.contains("cannot be a path segment"),
            "{bad}: {reason}"
        );
    }
    for (field, expected) in [
        ("nope", r#"the event has no field "nope""#),
        ("tags", "is not a string, number or boolean"),
        ("none", "is not a string, number or boolean"),
    ] {
        let config = [("query.x", field)];
        let reason = guest_error(transform(&plugin, &config, &event(r#""credit""#)).await);
        assert!(reason.contains(expected), "{field}: {reason}");
    }
    for body in ["[1]", "not json", r#"{"event":NaN}"#] {
        let reason = guest_error(transform(&plugin, &path, body).await);
        assert_eq!(reason, "the event is not a JSON object", "{body}");
    }
}

fn failure() -> Failure {
    Failure {
        destination: "app".into(),
        kind: FailureKind::Timeout,
        attempts: 1,
        exhausted: false,
        caller_waiting: true,
    }
}

async fn pick(plugin: &Plugin, config: &[(&str, &str)], body: &str) -> Result<Value, String> {
    let kv = SledStore::temporary().expect("store");
    let setup = setup_with("test-app", config, limits(), kv);
    match plugin.fallback(&setup, &webhook(body), &failure()).await {
        Ok(report) => {
            let decision = report.value;
            assert_eq!(decision.next, NextStep::Done);
            let answer = decision.respond.expect("an answer for the caller");
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.headers,
                [
                    ("content-type".to_string(), b"application/json".to_vec()),
                    ("x-hookgate-fallback".to_string(), b"random-winner".to_vec()),
                ]
            );
            let body: Value = serde_json::from_slice(&answer.body).expect("JSON");
            assert_eq!(body["picked_by"], "fallback");
            Ok(body["winner"].clone())
        }
        Err(error) => Err(guest_error::<()>(Err(error))),
    }
}

#[tokio::test]
async fn random_winner_picks_entries_of_the_list_and_varies() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("random-winner").await;
    let body = r#"{"finalists": ["a", {"b": [1, 2]}, "c"]}"#;
    let config = [("list_field", "finalists")];
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let winner = pick(&plugin, &config, body).await.expect("a winner");
        assert!(
            [json!("a"), json!({"b": [1, 2]}), json!("c")].contains(&winner),
            "{winner}"
        );
        seen.insert(winner.to_string());
    }
    assert!(seen.len() > 1, "200 picks of 3 all landed on one entry");
    // `entries` unless configured; an escaped key is still that key.
    let only = pick(&plugin, &[], r#"{"entr\u0069es": ["only"]}"#).await;
    assert_eq!(only, Ok(json!("only")));
}

#[tokio::test]
async fn random_winner_needs_a_json_object_with_a_non_empty_list() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("random-winner").await;
    for (body, expected) in [
        (r#"{"entries":[]}"#, r#""entries" is empty: no one to pick"#),
        (r#"{"entries":"a"}"#, r#""entries" is not an array"#),
        ("{}", r#"body has no "entries" to pick from"#),
        ("[1]", "body is not a JSON object"),
        (r#"{"entries":["a"]} x"#, "body is not a JSON object"),
        (r#"{"entries":[01]}"#, "body is not a JSON object"),
        (r#"{"entries":["\ud800"]}"#, "body is not a JSON object"),
    ] {
        assert_eq!(
            pick(&plugin, &[], body).await,
            Err(expected.to_string()),
            "{body}"
        );
    }
}
