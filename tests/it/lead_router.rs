//! `examples/lead-router`, run by the real binary on its own config, with
//! addresses moved and its timers shortened (retry delays to milliseconds,
//! the 60-minute hold to seconds): no test waits an hour.

use std::time::{Duration, Instant};

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::{ADMIN_TOKEN, GatewayProcess, example_file, host_port};

const WAIT: Duration = Duration::from_secs(30);

fn payload(name: &str) -> String {
    example_file(&format!("lead-router/payloads/{name}"))
}

/// The example with its receivers, and the calculated hold set to `hold`.
fn start(workflow: &TestReceiver, alert: &TestReceiver, hold: Duration) -> GatewayProcess {
    GatewayProcess::start_example(
        "lead-router",
        &[
            ("127.0.0.1:9000", host_port(workflow)),
            ("127.0.0.1:9001", host_port(alert)),
            ("initial_delay = \"2s\"", "initial_delay = \"20ms\"".into()),
            ("max_delay = \"1m\"", "max_delay = \"50ms\"".into()),
            ("3_600_000", hold.as_millis().to_string()),
        ],
        &[("HOOKGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

async fn send(gw: &GatewayProcess, name: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/leads"))
        .header("content-type", "application/json")
        .body(payload(name))
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn leads_are_checked_and_each_type_gets_its_retries_then_the_dlq_and_an_alert() {
    let (workflow, alert) = (TestReceiver::start().await, TestReceiver::start().await);
    workflow.respond_with(Behaviour::Status(503));
    let gw = start(&workflow, &alert, Duration::from_secs(3600));

    let (status, body) = send(&gw, "hot-without-priority.json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("a hot lead needs a priority"))
    );

    let (status, hot) = send(&gw, "hot.json").await;
    assert_eq!(status, 200, "{hot}");
    let (_, cold) = send(&gw, "cold.json").await;
    let (hot, cold) = (
        hot["id"].as_str().expect("id"),
        cold["id"].as_str().expect("id"),
    );

    // Both run out of attempts: hot after 5, cold after 2. Each dead lead
    // reaches the alert inbox with the reason.
    let alerts = alert.wait_for(2, WAIT).await;
    let tries = |id: &str| {
        workflow
            .received()
            .iter()
            .filter(|r| r.id().as_deref() == Some(id))
            .count()
    };
    assert_eq!((tries(hot), tries(cold)), (5, 2));
    let hot_alert = alerts
        .iter()
        .find(|r| r.id().as_deref() == Some(hot))
        .expect("an alert for the hot lead");
    assert_eq!(hot_alert.body, payload("hot.json").into_bytes());
    let reason = hot_alert.headers["x-hookgate-dead-reason"]
        .to_str()
        .expect("ascii");
    assert!(reason.contains("attempts exhausted (5 of 5)"), "{reason}");
    assert_eq!(hot_alert.headers["x-hookgate-dead-destination"], "workflow");

    // And both are in the dead-letter queue.
    let dead = gw
        .admin_get("/admin/dead-letters?app=crm&route=leads")
        .await;
    let ids: Vec<&str> = dead["dead_letters"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|d| d["message_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(ids.contains(&hot) && ids.contains(&cold), "{dead:#}");
}

#[tokio::test]
async fn a_calculated_lead_is_held_for_its_delay_even_across_a_restart() {
    let (workflow, alert) = (TestReceiver::start().await, TestReceiver::start().await);
    let hold = Duration::from_secs(3);
    let mut gw = start(&workflow, &alert, hold);
    let sent = Instant::now();
    let (status, body) = send(&gw, "calculated.json").await;
    assert_eq!(status, 200, "{body}");
    // The gateway stops and starts again while the lead is held.
    gw.stop();
    gw.restart();
    let delivered = &workflow.wait_for(1, WAIT).await[0];
    assert_eq!(delivered.id().as_deref(), body["id"].as_str());
    let held = delivered.received_at.duration_since(sent);
    assert!(
        held >= hold,
        "delivered after {held:?}, before its {hold:?} hold"
    );
}
