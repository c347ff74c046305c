//! The example plugins' decisions on real payloads.

use hookgate::plugin::PluginLimits;
use hookgate::plugin::{Failure, FailureKind, NextStep, Rejection, Verdict};
use hookgate::store::{KeyValue, SledStore};
use serde_json::{Value, json};

use crate::support::{load, setup, setup_with, webhook};

const LEAD_RULES: &[(&str, &str)] = &[
    ("required", "user_id,lead_type,timestamp"),
    ("allowed.lead_type", "hot,cold,calculated"),
];

async fn validate(config: &[(&str, &str)], body: &str) -> Verdict {
    let plugin = load("json-validator").await;
    plugin
        .validate(&setup(config), &webhook(body))
        .await
        .expect("validator answers")
        .value
}

#[tokio::test]
async fn validator_rejects_a_missing_field_with_422() {
    let body = r#"{"user_id":"u1","lead_type":"hot"}"#;
    let Verdict::Reject(Rejection { status, reason }) = validate(LEAD_RULES, body).await else {
        panic!("expected a rejection");
    };
    assert_eq!(status, 422);
    assert!(reason.contains("\"timestamp\""), "{reason}");
}

#[tokio::test]
async fn validator_rejects_a_body_that_is_not_json_with_400() {
    let Verdict::Reject(Rejection { status, .. }) = validate(LEAD_RULES, "user_id=u1").await else {
        panic!("expected a rejection");
    };
    assert_eq!(status, 400);
}

#[tokio::test]
async fn transformer_reshapes_and_routes_by_field() {
    let plugin = load("reshape").await;
    let config = [
        ("rename.lead_type", "type"),
        ("drop", "internal_note"),
        ("set.source", "chatbot"),
        ("route_by", "lead_type"),
        ("destination.hot", "sales"),
        ("default_destination", "crm"),
    ];
    let body = r#"{"user_id":"u1","lead_type":"hot","internal_note":"x"}"#;
    let out = plugin
        .transform(&setup(&config), &webhook(body))
        .await
        .expect("transform answers")
        .value;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].destination.as_deref(), Some("sales"));
    let sent: Value =
        serde_json::from_slice(out[0].body.as_deref().expect("a body")).expect("JSON body");
    assert_eq!(
        sent,
        json!({"user_id": "u1", "type": "hot", "source": "chatbot"})
    );

    let cold = r#"{"user_id":"u2","lead_type":"cold"}"#;
    let out = plugin
        .transform(&setup(&config), &webhook(cold))
        .await
        .expect("transform")
        .value;
    assert_eq!(out[0].destination.as_deref(), Some("crm"));
}

#[tokio::test]
async fn transformer_filters_matching_messages() {
    let plugin = load("reshape").await;
    let config = [("filter_field", "kind"), ("filter_value", "ping")];
    let dropped = plugin
        .transform(&setup(&config), &webhook(r#"{"kind":"ping"}"#))
        .await
        .expect("transform")
        .value;
    assert!(dropped.is_empty());
    let kept = plugin
        .transform(&setup(&config), &webhook(r#"{"kind":"order"}"#))
        .await
        .expect("transform")
        .value;
    assert_eq!(kept.len(), 1);
}

fn timeout_failure() -> Failure {
    Failure {
        destination: "quiz-app".into(),
        kind: FailureKind::Timeout,
        attempts: 1,
        exhausted: false,
        caller_waiting: true,
    }
}

#[tokio::test]
async fn fallback_answers_with_the_last_good_result_of_its_own_app_only() {
    let plugin = load("last-good").await;
    let kv = SledStore::temporary().expect("store");
    kv.set(
        "quiz",
        "last-good:q42",
        br#"{"correct":true}"#,
        None,
        u64::MAX,
    )
    .expect("seed");
    let config = [("key_field", "question_id")];
    let hook = webhook(r#"{"question_id":"q42"}"#);

    let quiz = setup_with("quiz", &config, PluginLimits::default(), kv.clone());
    let decision = plugin
        .fallback(&quiz, &hook, &timeout_failure())
        .await
        .expect("fallback")
        .value;
    let answer = decision.respond.expect("an answer for the waiting caller");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, br#"{"correct":true}"#);
    assert_eq!(decision.next, NextStep::Done);

    // Another app on the same store sees nothing and falls back to the default.
    let other = setup_with("other", &config, PluginLimits::default(), kv);
    let decision = plugin
        .fallback(&other, &hook, &timeout_failure())
        .await
        .expect("fallback")
        .value;
    let answer = decision.respond.expect("a default answer");
    assert_eq!(answer.status, 503);
    assert!(
        matches!(decision.next, NextStep::DeadLetter(_)),
        "{:?}",
        decision.next
    );
}
