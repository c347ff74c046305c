//! The files in `examples/` are fixtures: each payload goes through the
//! plugin and config that examples/README.md shows, with the outcome the
//! README promises.

use std::path::PathBuf;

use hookgate::plugin::{NextStep, Verdict};
use hookgate::store::{KeyValue, SledStore};

use crate::support::{load, setup, setup_with, webhook};

fn payload(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/payloads")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const LEAD_RULES: &[(&str, &str)] = &[
    ("required", "user_id,lead_type,timestamp"),
    ("allowed.lead_type", "hot,cold,calculated"),
];

#[tokio::test]
async fn readme_validator_rejects_the_warm_lead_and_accepts_the_hot_one() {
    let plugin = load("json-validator").await;
    let warm = plugin
        .validate(&setup(LEAD_RULES), &webhook(&payload("lead-warm.json")))
        .await;
    let Verdict::Reject(rejection) = warm.expect("call").value else {
        panic!("the warm lead is rejected");
    };
    assert_eq!(rejection.status, 422);
    assert_eq!(
        rejection.reason,
        r#"field "lead_type" has value "warm", allowed: hot, cold, calculated"#
    );
    let hot = plugin
        .validate(&setup(LEAD_RULES), &webhook(&payload("lead-hot.json")))
        .await;
    assert_eq!(hot.expect("call").value, Verdict::Accept);
}

#[tokio::test]
async fn readme_transform_routes_the_hot_lead_to_sales() {
    let plugin = load("reshape").await;
    let config = [
        ("rename.lead_type", "type"),
        ("route_by", "lead_type"),
        ("destination.hot", "sales"),
        ("default_destination", "crm"),
    ];
    let out = plugin
        .transform(&setup(&config), &webhook(&payload("lead-hot.json")))
        .await
        .expect("call")
        .value;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].destination.as_deref(), Some("sales"));
}

#[tokio::test]
async fn readme_fallback_answers_the_quiz_from_the_cache() {
    let plugin = load("last-good").await;
    let kv = SledStore::temporary().expect("store");
    kv.set(
        "cli",
        "last-good:q42",
        br#"{"correct":true}"#,
        None,
        u64::MAX,
    )
    .expect("seed");
    let setup = setup_with(
        "cli",
        &[("key_field", "question_id")],
        Default::default(),
        kv,
    );
    let failure = hookgate::plugin::Failure {
        destination: "quiz".into(),
        kind: hookgate::plugin::FailureKind::Timeout,
        attempts: 1,
        exhausted: false,
        caller_waiting: true,
    };
    let decision = plugin
        .fallback(&setup, &webhook(&payload("quiz-answer.json")), &failure)
        .await
        .expect("call")
        .value;
    assert_eq!(
        decision.respond.expect("an answer").body,
        br#"{"correct":true}"#
    );
    assert_eq!(decision.next, NextStep::Done);
}

/// examples/gateway.toml loads, validates, and serves its route with the
/// plugins it names (run in-process on port 0 with a temporary data dir).
#[tokio::test]
async fn the_example_gateway_config_serves_its_route() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.toml");
    let mut config = hookgate::config::Config::load(&path).expect("the example config is valid");
    let data = tempfile::tempdir().expect("tempdir");
    config.server.data_dir = data.path().to_path_buf();
    config.server.plugins_dir = hookgate_tests::guest_dir().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = tokio::spawn(hookgate::run(config, listener, shutdown.clone()));

    let url = format!("http://{addr}/hooks/leads");
    let client = reqwest::Client::new();
    let warm = client
        .post(&url)
        .header("content-type", "application/json")
        .body(payload("lead-warm.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(warm.status(), 422, "the validator refuses a warm lead");
    let hot = client
        .post(&url)
        .header("content-type", "application/json")
        .body(payload("lead-hot.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(hot.status(), 200, "success_status = 200");

    shutdown.cancel();
    gateway.await.expect("join").expect("clean shutdown");
}
