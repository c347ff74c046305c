//! `examples/chat-inbox`, run by the real binary on its own config (only
//! addresses moved): the provider always gets a fast 200, the database gets
//! every message once it is back, and its breaker opens while it is down.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;
use sha2::Sha256;

use crate::support::{GatewayProcess, example_file, host_port};

const SECRET: &str = "chat-provider-test-secret";
const WAIT: Duration = Duration::from_secs(60);
/// "Within milliseconds" on a loaded CI machine: far below the few seconds
/// after which providers give up on a webhook.
const FAST: Duration = Duration::from_millis(500);

fn message(n: usize) -> String {
    example_file("chat-inbox/payloads/message.json").replace("m_90311", &format!("m_{n}"))
}

/// Sends message `n` as the provider does; the status, the id and the time.
async fn deliver(gw: &GatewayProcess, n: usize) -> (u16, Value, Duration) {
    let body = message(n);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(gw.url("/chat/messages"))
        .header("content-type", "application/json")
        .header("x-chat-signature", hex::encode(mac.finalize().into_bytes()))
        .header("x-chat-message-id", format!("m_{n}"))
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json, started.elapsed())
}

#[tokio::test]
async fn the_provider_always_gets_a_fast_200_and_the_database_gets_everything_later() {
    let database = TestReceiver::start().await;
    database.respond_with(Behaviour::Status(503));
    let gw = GatewayProcess::start_example(
        "chat-inbox",
        &[("127.0.0.1:9200", host_port(&database))],
        &[("CHAT_PROVIDER_SECRET", SECRET)],
    );

    // The database is down: every webhook still gets 200 at once.
    let mut ids = Vec::new();
    for n in 0..40 {
        let (status, body, took) = deliver(&gw, n).await;
        assert_eq!(status, 200, "{body}");
        assert!(took < FAST, "message {n} took {took:?}");
        ids.push(body["id"].as_str().expect("an id").to_string());
    }
    // A resend of the same provider message is acknowledged, not stored twice.
    let (status, again, _) = deliver(&gw, 7).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&Value::from(ids[7].clone()), &Value::Bool(true))
    );

    // The database keeps failing: its breaker opens, and the provider still
    // gets a fast 200.
    gw.wait_for_log("circuit breaker opened", WAIT);
    let (status, body, took) = deliver(&gw, 40).await;
    assert_eq!(status, 200);
    assert!(took < FAST, "{took:?}");
    ids.push(body["id"].as_str().expect("an id").to_string());

    // The database is back, slow: after the cool-down every message arrives,
    // shaped as the database wants it.
    database.respond_with(Behaviour::Delay(
        Duration::from_millis(100),
        Box::new(Behaviour::Status(200)),
    ));
    let arrived = database
        .wait_until(WAIT, |received| {
            let seen: std::collections::BTreeSet<String> =
                received.iter().filter_map(|r| r.id()).collect();
            ids.iter().all(|id| seen.contains(id))
        })
        .await;
    gw.wait_for_log("circuit breaker closed", WAIT);
    let last = arrived.last().expect("a delivery");
    let row: Value = serde_json::from_slice(&last.body).expect("json");
    assert_eq!(row["source"], "chat-provider");
    assert!(
        row.get("body").is_some() && row.get("conversation").is_some(),
        "{row}"
    );
}
