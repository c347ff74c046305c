//! `examples/postback`, run by the real binary on its own config (only
//! addresses moved): events become GET postbacks built from their fields,
//! retried with exponential backoff, every attempt visible in the admin API.

use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::{ADMIN_TOKEN, GatewayProcess, example_file, host_port};

const WAIT: Duration = Duration::from_secs(30);

fn payload(name: &str) -> String {
    example_file(&format!("postback/payloads/{name}"))
}

fn start(partner: &TestReceiver) -> GatewayProcess {
    GatewayProcess::start_example(
        "postback",
        &[("127.0.0.1:9300", host_port(partner))],
        &[("HOOKGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

async fn post_event(gw: &GatewayProcess, name: &str) -> String {
    let response = reqwest::Client::new()
        .post(gw.url("/ledger/events"))
        .header("content-type", "application/json")
        .header("x-event-id", name)
        .body(payload(name))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("an id").to_string()
}

#[tokio::test]
async fn an_event_becomes_a_get_postback_retried_with_backoff_and_logged_per_attempt() {
    let partner = TestReceiver::start().await;
    // Down twice, then up.
    partner.enqueue([
        Behaviour::StatusWithBody {
            status: 503,
            headers: vec![],
            body: "busy".into(),
        },
        Behaviour::Status(502),
    ]);
    partner.respond_with(Behaviour::StatusWithBody {
        status: 200,
        headers: vec![],
        body: "OK tx_88a1".into(),
    });
    let gw = start(&partner);
    let id = post_event(&gw, "credit.json").await;

    let tries = partner.wait_for(3, WAIT).await;
    for request in &tries {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.path_and_query,
            "/postback/credit?amount=25.00&currency=EUR&txid=tx_88a1&uid=u_1042"
        );
        assert!(request.body.is_empty());
        assert_eq!(request.id().as_deref(), Some(id.as_str()));
    }
    // Exponential backoff from 1 s with +-25% jitter: the first retry comes
    // after 0.75-1.25 s, the second 1.5-2.5 s after that (plus scheduling).
    let gaps: Vec<Duration> = tries
        .windows(2)
        .map(|w| w[1].received_at - w[0].received_at)
        .collect();
    assert!(gaps[0] >= Duration::from_millis(750), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1500), "{gaps:?}");

    // Every attempt, its timing, status and answer, through the admin API.
    let deadline = std::time::Instant::now() + WAIT;
    let message = loop {
        let message = gw.admin_get(&format!("/admin/messages/{id}")).await;
        if message["deliveries"][0]["status"] == "delivered" {
            break message;
        }
        assert!(std::time::Instant::now() < deadline, "{message:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempts = message["deliveries"][0]["attempts"]
        .as_array()
        .expect("attempts");
    let seen: Vec<(u64, &str)> = attempts
        .iter()
        .map(|a| {
            (
                a["status"].as_u64().unwrap_or(0),
                a["response"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(seen, [(503, "busy"), (502, ""), (200, "OK tx_88a1")]);
    assert!(attempts.iter().all(|a| a["started_at"].as_u64().is_some()
        && a["duration_ms"].as_u64().is_some()
        && a["plugin_hashes"].as_array().is_some_and(|h| !h.is_empty())));
}

#[tokio::test]
async fn an_event_missing_a_postback_field_is_refused_at_the_door() {
    let partner = TestReceiver::start().await;
    let gw = start(&partner);
    let response = reqwest::Client::new()
        .post(gw.url("/ledger/events"))
        .header("content-type", "application/json")
        .body(r#"{"event":"refund","user_id":"u_1"}"#)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 422);
    assert_eq!(partner.count(), 0);
}
