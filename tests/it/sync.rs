//! Sync routes end to end: the real binary forwards inline and, when the
//! upstream hangs, resets, answers 5xx or sits behind an open breaker, the
//! route's fallback plugin answers the waiting caller within the route's
//! timeout plus a small bound. One route per fallback strategy:
//!
//! - `default`: `random-winner` computes an answer from the payload;
//! - `cached`: `last-good` serves the last good upstream answer it stored;
//! - `queue`: `defer` journals the message for asynchronous delivery (202);
//! - `notify`: `defer` tells the caller it is pending and reroutes the
//!   message to a manual-review destination.

use std::time::{Duration, Instant};

use hookgate::store::{MessageStatus, SledStore};
use hookgate_tests::receiver::{Behaviour, TestReceiver};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::support::GatewayProcess;

/// The routes' timeout; every answer must come within it plus `SLACK`.
const TIMEOUT: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(20);
const PAYLOAD: &str = r#"{"quiz_id":"q1","entries":["ann","bob","cy"]}"#;
const STRATEGIES: [&str; 4] = ["default", "cached", "queue", "notify"];
const PLUGINS: &[&str] = &["random-winner", "last-good", "defer", "reshape"];

/// Four sync routes of app `app`, one per strategy, all forwarding to
/// `upstream`; `notify` reroutes to `manual`.
fn strategy_routes(app: &str, upstream: &str, manual: &str, breaker_threshold: u32) -> String {
    let fallbacks = [
        ("default", r#"{ plugin = "random-winner" }"#),
        (
            "cached",
            r#"{ plugin = "last-good", config = { key_field = "quiz_id", ttl_ms = 60000 } }"#,
        ),
        (
            "queue",
            r#"{ plugin = "defer", config = { then = "queue", delay_ms = 10 } }"#,
        ),
        (
            "notify",
            r#"{ plugin = "defer", config = { then = "reroute:manual", notice = '{"status":"pending approval"}' } }"#,
        ),
    ];
    fallbacks
        .iter()
        .map(|(name, fallback)| {
            format!(
                r#"
[apps.{app}.routes.{name}]
path = "/{app}/{name}"
mode = "sync"
timeout = "{timeout}ms"
fallback = {fallback}
retry = {{ max_attempts = 50, initial_delay = "20ms", max_delay = "100ms", jitter = 0.0 }}
breaker = {{ failure_threshold = {breaker_threshold}, cooldown = "60s" }}

[apps.{app}.routes.{name}.destinations.upstream]
url = "{upstream}"
timeout = "2s"

[apps.{app}.routes.{name}.destinations.manual]
url = "{manual}"
"#,
                timeout = TIMEOUT.as_millis()
            )
        })
        .collect()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    elapsed: Duration,
}

async fn call(gw: &GatewayProcess, path: &str, body: &str) -> Answer {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let elapsed = started.elapsed();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
        elapsed,
    }
}

fn fallback_header(answer: &Answer) -> &str {
    answer
        .headers
        .get("x-hookgate-fallback")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Checks the answer `strategy` gives when the upstream failed, and returns
/// the message id when the message was queued for later.
fn assert_fallback_answer(strategy: &str, answer: &Answer, situation: &str) -> Option<String> {
    let context = format!(
        "{strategy} route, {situation}: {} {}",
        answer.status, answer.body
    );
    assert!(
        answer.elapsed < TIMEOUT + SLACK,
        "{context}: answered after {:?}",
        answer.elapsed
    );
    match strategy {
        "default" => {
            assert_eq!(answer.status, 200, "{context}");
            assert_eq!(fallback_header(answer), "random-winner", "{context}");
            let winner = answer.body["winner"].as_str().unwrap_or_default();
            assert!(["ann", "bob", "cy"].contains(&winner), "{context}");
            None
        }
        "cached" => {
            assert_eq!(answer.status, 200, "{context}");
            assert_eq!(fallback_header(answer), "cached", "{context}");
            assert_eq!(
                answer.body,
                json!({"answer": "upstream says hi"}),
                "{context}"
            );
            None
        }
        "queue" => {
            assert_eq!(answer.status, 202, "{context}");
            assert_eq!(answer.body["queued"], true, "{context}");
            answer.body["id"].as_str().map(str::to_string)
        }
        "notify" => {
            assert_eq!(answer.status, 202, "{context}");
            assert_eq!(
                answer.body,
                json!({"status": "pending approval"}),
                "{context}"
            );
            None
        }
        other => panic!("unknown strategy {other}"),
    }
}

fn good_upstream_answer() -> Behaviour {
    Behaviour::StatusWithBody {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"answer":"upstream says hi"}"#.into(),
    }
}

#[tokio::test]
async fn each_strategy_answers_in_time_when_the_upstream_hangs_resets_or_fails() {
    let upstream = TestReceiver::start().await;
    let manual = TestReceiver::start().await;
    let config = strategy_routes("quiz", &upstream.url("/quiz"), &manual.url("/manual"), 1000);
    let mut gw = GatewayProcess::start(&config, PLUGINS, &[]);

    // A good answer first, which `last-good` remembers.
    upstream.respond_with(good_upstream_answer());
    let healthy = call(&gw, "/quiz/cached", PAYLOAD).await;
    assert_eq!(healthy.status, 200);
    assert_eq!(
        fallback_header(&healthy),
        "",
        "a good answer is the upstream's own"
    );

    let mut queued = Vec::new();
    let situations = [
        ("hang", Behaviour::Hang),
        ("reset", Behaviour::Reset),
        ("503", Behaviour::Status(503)),
    ];
    for (situation, behaviour) in &situations {
        upstream.respond_with(behaviour.clone());
        for strategy in STRATEGIES {
            let answer = call(&gw, &format!("/quiz/{strategy}"), PAYLOAD).await;
            queued.extend(assert_fallback_answer(strategy, &answer, situation));
        }
    }
    // "Pending approval" messages went to the manual destination, one per
    // situation.
    manual.wait_for(situations.len(), WAIT).await;
    // Queued messages are delivered once the upstream is back: each arrives
    // again after the switch (earlier arrivals were answered with failures).
    upstream.respond_with(Behaviour::Status(200));
    let back = upstream.count();
    upstream
        .wait_until(WAIT, |received| {
            let after = &received[back.min(received.len())..];
            queued
                .iter()
                .all(|id| after.iter().any(|r| r.id().as_ref() == Some(id)))
        })
        .await;

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    for id in &queued {
        let record = store.message(id).expect("read").expect("journaled");
        assert_eq!(record.status, MessageStatus::Delivered, "{id}");
        let attempts = store.attempts(id, 0).expect("attempts");
        assert!(
            attempts.len() >= 2 && attempts[0].status != Some(200),
            "the inline attempt is the first in the log: {attempts:?}"
        );
    }
}

#[tokio::test]
async fn an_open_breaker_gets_the_fallback_without_calling_the_upstream() {
    let upstream = TestReceiver::start().await;
    let manual = TestReceiver::start().await;
    let config = strategy_routes("quiz", &upstream.url("/quiz"), &manual.url("/manual"), 1);
    let gw = GatewayProcess::start(&config, PLUGINS, &[]);
    upstream.respond_with(good_upstream_answer());
    assert_eq!(call(&gw, "/quiz/cached", PAYLOAD).await.status, 200);
    upstream.respond_with(Behaviour::Status(503));
    // One failure each opens every route's breaker (threshold 1)...
    for strategy in STRATEGIES {
        let answer = call(&gw, &format!("/quiz/{strategy}"), PAYLOAD).await;
        assert_fallback_answer(strategy, &answer, "503");
    }
    // ...then no request reaches the upstream, and the fallback still answers.
    // Queued messages wait behind the open breaker too, so nothing arrives.
    let seen = upstream.count();
    for strategy in STRATEGIES {
        let answer = call(&gw, &format!("/quiz/{strategy}"), PAYLOAD).await;
        assert_fallback_answer(strategy, &answer, "open breaker");
    }
    assert_eq!(
        upstream.count(),
        seen,
        "a request went through an open breaker"
    );
}

/// Sync routes `/quiz/NAME` to `upstream`, each with `extra` lines, whose
/// fallback is `misbehave` with `settings` (the rest of its table after the
/// plugin's name) and whose safe answer is 503 `{"error":"try again shortly"}`.
fn misbehaving_fallbacks(
    upstream: &TestReceiver,
    extra: &str,
    routes: &[(&str, String)],
) -> String {
    routes
        .iter()
        .map(|(name, settings)| {
            format!(
                r#"
[apps.quiz.routes.{name}]
path = "/quiz/{name}"
mode = "sync"
{extra}
timeout = "{timeout}ms"
fallback = {{ plugin = "misbehave", {settings} }}
fallback_response = {{ status = 503, body = '{{"error":"try again shortly"}}' }}

[apps.quiz.routes.{name}.destinations.upstream]
url = "{url}"
"#,
                timeout = TIMEOUT.as_millis(),
                url = upstream.url("/quiz")
            )
        })
        .collect()
}

#[tokio::test]
async fn a_failing_fallback_gets_the_routes_safe_answer_and_the_message_is_dead_lettered() {
    let upstream = TestReceiver::start().await;
    upstream.respond_with(Behaviour::Status(503));
    let routes = misbehaving_fallbacks(
        &upstream,
        "",
        &["panic", "loop"].map(|mode| {
            (
                mode,
                format!(r#"config = {{ mode = "{mode}" }}, limits = {{ deadline = "100ms" }}"#),
            )
        }),
    );
    let mut gw = GatewayProcess::start(&routes, &["misbehave"], &[]);
    for mode in ["panic", "loop"] {
        let answer = call(&gw, &format!("/quiz/{mode}"), PAYLOAD).await;
        assert_eq!(answer.status, 503, "{mode}");
        assert_eq!(answer.body, json!({"error": "try again shortly"}), "{mode}");
        assert!(
            answer.elapsed < TIMEOUT + SLACK,
            "{mode}: {:?}",
            answer.elapsed
        );
    }
    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let dead = store.dead_letters(None, 10).expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
}

/// A fallback's response the caller could not be given as it is gets the
/// route's `fallback_response` instead: an interim (1xx) status, on which
/// hyper used to answer a bare 500 or switch protocols, and a body past the
/// route's answer cap (8 x `max_body`). One within the cap is relayed.
#[tokio::test]
async fn a_fallback_response_no_caller_should_get_is_replaced_by_the_safe_answer() {
    let upstream = TestReceiver::start().await;
    upstream.respond_with(Behaviour::Status(503));
    let cases = [
        ("interim", "respond_status = \"101\""),
        ("huge", "respond_bytes = \"8200\""),
        ("fits", "respond_bytes = \"8000\""),
    ]
    .map(|(name, config)| (name, format!("config = {{ {config} }}")));
    let routes = misbehaving_fallbacks(&upstream, "max_body = \"1KiB\"", &cases);
    let gw = GatewayProcess::start(&routes, &["misbehave"], &[]);
    for name in ["interim", "huge"] {
        let answer = call(&gw, &format!("/quiz/{name}"), PAYLOAD).await;
        assert_eq!(answer.status, 503, "{name}");
        assert_eq!(answer.body, json!({"error": "try again shortly"}), "{name}");
    }
    let answer = call(&gw, "/quiz/fits", PAYLOAD).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, Value::String("x".repeat(8000)));
}

#[tokio::test]
async fn cached_answers_expire_by_their_ttl() {
    let upstream = TestReceiver::start().await;
    let routes = format!(
        r#"
[apps.quiz.routes.rules]
path = "/quiz/rules"
mode = "sync"
timeout = "500ms"
fallback = {{ plugin = "last-good", config = {{ key_field = "quiz_id", ttl_ms = 1000, default_status = 503 }} }}

[apps.quiz.routes.rules.destinations.upstream]
url = "{}"
"#,
        upstream.url("/rules")
    );
    let gw = GatewayProcess::start(&routes, &["last-good"], &[]);
    upstream.respond_with(good_upstream_answer());
    assert_eq!(call(&gw, "/quiz/rules", PAYLOAD).await.status, 200);
    let stored = Instant::now();
    upstream.respond_with(Behaviour::Status(503));
    let cached = call(&gw, "/quiz/rules", PAYLOAD).await;
    assert_eq!(fallback_header(&cached), "cached");
    // Poll until the entry is gone; it must not go before its TTL.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = call(&gw, "/quiz/rules", PAYLOAD).await;
        if fallback_header(&answer) == "default" {
            assert_eq!(answer.status, 503);
            assert!(
                stored.elapsed() >= Duration::from_millis(1000),
                "expired after {:?}",
                stored.elapsed()
            );
            break;
        }
        assert_eq!(fallback_header(&answer), "cached");
        assert!(Instant::now() < deadline, "the cached answer never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_apps_cached_answers_are_invisible_to_another_app() {
    let upstream = TestReceiver::start().await;
    let manual = TestReceiver::start().await;
    let config = [
        strategy_routes(
            "alpha",
            &upstream.url("/quiz"),
            &manual.url("/manual"),
            1000,
        ),
        strategy_routes("beta", &upstream.url("/quiz"), &manual.url("/manual"), 1000),
    ]
    .concat();
    let gw = GatewayProcess::start(&config, PLUGINS, &[]);
    upstream.respond_with(good_upstream_answer());
    assert_eq!(call(&gw, "/alpha/cached", PAYLOAD).await.status, 200);
    upstream.respond_with(Behaviour::Status(503));
    // Same plugin, same key, same config: alpha has it, beta does not.
    assert_eq!(
        fallback_header(&call(&gw, "/alpha/cached", PAYLOAD).await),
        "cached"
    );
    let beta = call(&gw, "/beta/cached", PAYLOAD).await;
    assert_eq!(fallback_header(&beta), "default");
    assert_eq!(beta.status, 503);
}

#[tokio::test]
async fn a_sync_route_returns_the_upstreams_answer_to_the_transformed_request() {
    let upstream = TestReceiver::start().await;
    let routes = format!(
        r#"
[apps.quiz.routes.answers]
path = "/quiz/answers"
mode = "sync"
timeout = "2s"
transform = {{ plugin = "reshape", config = {{ "set.source" = "gateway" }} }}

[apps.quiz.routes.answers.destinations.upstream]
url = "{}"
"#,
        upstream.url("/answers")
    );
    let gw = GatewayProcess::start(&routes, &["reshape"], &[]);
    upstream.respond_with(Behaviour::StatusWithBody {
        status: 201,
        headers: vec![("x-upstream".into(), "yes".into())],
        body: r#"{"correct":true}"#.into(),
    });
    let answer = call(&gw, "/quiz/answers", r#"{"answer":"b"}"#).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.headers["x-upstream"], "yes");
    assert_eq!(answer.body, json!({"correct": true}));
    let sent = &upstream.received()[0];
    let forwarded: Value = serde_json::from_slice(&sent.body).expect("json");
    assert_eq!(forwarded, json!({"answer": "b", "source": "gateway"}));
    assert!(sent.id().is_some_and(|id| id.starts_with("msg_")));

    // A 4xx is the upstream's answer too, not a failure for the fallback.
    upstream.respond_with(Behaviour::Status(404));
    assert_eq!(
        call(&gw, "/quiz/answers", r#"{"answer":"b"}"#).await.status,
        404
    );
}
