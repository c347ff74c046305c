//! `/health` against a running gateway: the verdict follows what the
//! receivers do, and an operator's breaker reset shows at once.

use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::{GatewayProcess, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn config(receiver: &TestReceiver, health: &str, breaker: &str) -> String {
    format!(
        r#"
[health]
{health}

[apps.shop.routes.orders]
path = "/hooks/orders"
retry = {{ max_attempts = 2, initial_delay = "10ms", max_delay = "20ms", jitter = 0.0 }}
breaker = {{ {breaker} }}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
"#,
        receiver.url("/orders")
    )
}

async fn send(gw: &GatewayProcess) {
    let (status, body) = gw.post_json("/hooks/orders", r#"{"order":1}"#).await;
    assert_eq!(status, 202, "{body}");
}

fn status(report: &Value) -> &str {
    report["status"].as_str().unwrap_or("")
}

#[tokio::test]
async fn health_turns_degraded_when_a_receiver_fails_and_healthy_again_after_recovery() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(500));
    // A short window so the failures age out soon after recovery; a breaker
    // that never opens, so the success rate alone drives the verdict.
    let routes = config(&receiver, r#"window = "1s""#, r#"failure_threshold = 1000"#);
    let gw = GatewayProcess::start_admin(&routes, &[], &[]);
    let before = gw.health().await;
    assert_eq!(status(&before), "healthy", "{before:#}");
    assert_eq!(before["routes"][0]["route"], "orders");
    // Probes may ask with HEAD; other methods are told which to use.
    let client = reqwest::Client::new();
    for path in ["/health", "/metrics"] {
        let head = client.head(gw.admin_url(path)).send().await.expect("HEAD");
        assert_eq!(head.status(), 200, "HEAD {path}");
        let post = client.post(gw.admin_url(path)).send().await.expect("POST");
        assert_eq!(post.status(), 405, "POST {path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD", "POST {path}");
    }

    send(&gw).await;
    let degraded = gw.wait_for_health(|r| status(r) == "degraded").await;
    let reasons = degraded["reasons"].to_string();
    assert!(reasons.contains("success rate"), "{reasons}");
    let last = degraded["last_error"]["message"].as_str().unwrap_or("");
    assert!(last.contains("warehouse: status 500"), "{last}");
    assert!(degraded["routes"][0]["window_failures"].as_u64() >= Some(1));

    receiver.respond_with(Behaviour::Status(200));
    let report = eventually(async || {
        // Fresh successes while the failures leave the window.
        let seen = receiver.count();
        send(&gw).await;
        receiver.wait_for(seen + 1, WAIT).await;
        let report = gw.health().await;
        match status(&report) == "healthy" {
            true => Ok(report),
            false => Err(format!("never healthy again: {report:#}")),
        }
    })
    .await;
    assert_eq!(report["reasons"], serde_json::json!([]));
    assert!(report["totals"]["delivered"].as_u64() >= Some(1));
}

#[tokio::test]
async fn an_open_breaker_degrades_health_until_an_operator_resets_it() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(503));
    // Rates never degrade here: only the breaker does.
    let routes = config(
        &receiver,
        "degraded_below = 0.0",
        r#"failure_threshold = 1, cooldown = "1h""#,
    );
    let gw = GatewayProcess::start_admin(&routes, &[], &[]);
    send(&gw).await;
    let degraded = gw.wait_for_health(|r| status(r) == "degraded").await;
    assert_eq!(
        degraded["reasons"],
        serde_json::json!(["breaker open for shop/orders/warehouse"])
    );
    assert_eq!(degraded["breakers"][0]["state"], "open");

    // The receiver recovers; the operator closes the breaker.
    receiver.respond_with(Behaviour::Status(200));
    let (code, view) = gw
        .admin_call(
            reqwest::Method::POST,
            "/admin/breakers/shop/orders/warehouse/reset",
        )
        .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["state"], "closed");
    let healthy = gw.health().await;
    assert_eq!(status(&healthy), "healthy", "{healthy:#}");
}

#[tokio::test]
async fn a_full_backlog_makes_the_gateway_unhealthy_with_503() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(503));
    // One waiting message fills the route; its retry is an hour away.
    let routes = config(&receiver, "", r#"failure_threshold = 1000"#)
        .replace(
            r#"retry = { max_attempts = 2, initial_delay = "10ms", max_delay = "20ms", jitter = 0.0 }"#,
            "backlog_limit = 1\nretry = { max_attempts = 2, initial_delay = \"1h\", max_delay = \"1h\" }",
        );
    let gw = GatewayProcess::start_admin(&routes, &[], &[]);
    send(&gw).await;
    receiver.wait_for(1, WAIT).await;
    // The request has arrived; its failure is journaled a moment later.
    let (code, report) = eventually(async || {
        let response = reqwest::get(gw.admin_url("/health")).await.expect("health");
        let code = response.status();
        let report: Value = response.json().await.expect("json");
        match report["queue"]["delayed"] == 1 {
            true => Ok((code, report)),
            false => Err(format!("{report:#}")),
        }
    })
    .await;
    assert_eq!(code, 503);
    assert_eq!(status(&report), "unhealthy", "{report:#}");
    let reasons = report["reasons"].to_string();
    assert!(
        reasons.contains("route shop/orders: backlog is full"),
        "{reasons}"
    );
    assert_eq!(report["queue"]["delayed"], 1);

    // One route's full backlog does not take the instance out of rotation:
    // readiness is about the journal, liveness about the process.
    for (probe, key) in [("/ready", "ready"), ("/live", "live")] {
        let response = reqwest::get(gw.admin_url(probe)).await.expect("probe");
        assert_eq!(response.status(), 200, "{probe}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body[key], true, "{probe}: {body}");
    }
}
