//! Crash safety: SIGKILL the gateway in the middle of a burst, or let its
//! disk fail under it, start it again on the same journal, and every message
//! it acknowledged reaches the receiver (at least once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;
use tokio::sync::watch;

use crate::support::GatewayProcess;

const BURST: usize = 400;
const SENDERS: usize = 16;
const KILL_AFTER_ACKS: usize = 150;

/// One route to `receiver`, which answers slowly (20 ms, 4 at a time), so
/// that deliveries lag behind acknowledgements and a stop finds messages
/// journaled but not yet delivered.
fn slow_route(receiver: &TestReceiver) -> String {
    receiver.respond_with(Behaviour::Delay(
        Duration::from_millis(20),
        Box::new(Behaviour::Status(200)),
    ));
    format!(
        "[apps.shop.routes.orders]\npath = \"/hooks/orders\"\n\n\
         [apps.shop.routes.orders.destinations.warehouse]\nurl = \"{}\"\nconcurrency = 4\n",
        receiver.url("/orders")
    )
}

/// What a burst of webhooks got back.
#[derive(Default)]
struct Burst {
    /// Ids of the acknowledged messages.
    acked: Vec<String>,
    /// Every answer that was not an acknowledgement: status and body.
    refused: Vec<(u16, String)>,
}

/// Sends `per_sender` webhooks (`padding` extra bytes each) from each of
/// `senders` concurrent senders, a sender stopping at its first answer that
/// is not a 202 or when the gateway is gone. `progress` counts the
/// acknowledgements as they come.
async fn burst(
    url: &str,
    senders: usize,
    per_sender: usize,
    padding: usize,
    progress: Arc<watch::Sender<usize>>,
) -> Burst {
    let seen: Arc<Mutex<Burst>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..senders {
        let (url, seen, progress) = (url.to_string(), seen.clone(), progress.clone());
        let pad = "x".repeat(padding);
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..per_sender {
                let body = format!(r#"{{"sender":{sender},"n":{n},"pad":"{pad}"}}"#);
                let Ok(response) = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                else {
                    return; // the gateway is gone: this request was never acknowledged
                };
                let status = response.status().as_u16();
                let Ok(text) = response.text().await else {
                    return;
                };
                let id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|json| json["id"].as_str().map(str::to_string));
                let mut seen = seen.lock().expect("burst");
                match id {
                    Some(id) if status == 202 => {
                        seen.acked.push(id);
                        progress.send_modify(|n| *n += 1);
                    }
                    _ => {
                        seen.refused.push((status, text));
                        return;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *seen.lock().expect("burst"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_sigkill() {
    let receiver = TestReceiver::start().await;
    let mut gw = GatewayProcess::start(&slow_route(&receiver), &[], &[]);
    let url = gw.url("/hooks/orders");

    let (progress, mut watch_acks) = watch::channel(0usize);
    let sending =
        tokio::spawn(
            async move { burst(&url, SENDERS, BURST / SENDERS, 0, Arc::new(progress)).await },
        );
    tokio::time::timeout(
        Duration::from_secs(60),
        watch_acks.wait_for(|n| *n >= KILL_AFTER_ACKS),
    )
    .await
    .expect("acknowledgements within a minute")
    .expect("progress channel");
    gw.kill();
    let acked = sending.await.expect("senders").acked;

    assert!(acked.len() >= KILL_AFTER_ACKS);
    let delivered_before = receiver.unique_ids().len();
    assert!(
        delivered_before < acked.len(),
        "the kill should interrupt deliveries, got all {delivered_before}"
    );

    gw.restart();
    receiver
        .wait_until(Duration::from_secs(60), |_| {
            receiver.missing(&acked).is_empty()
        })
        .await;
    assert_eq!(receiver.missing(&acked), Vec::<String>::new());
}

/// SIGTERM with a backlog: the request already at the receiver is finished
/// and journaled; the deliveries still waiting for the destination's one
/// slot are not started during the grace period (they were, one after the
/// other, until it ran out) but stay due, and after a restart every message
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_finishes_the_request_sent_and_starts_no_other() {
    let receiver = TestReceiver::start().await;
    // The first delivery is answered 5 s after it arrives, long after the
    // SIGTERM below; the others, after the restart, at once.
    receiver.enqueue([Behaviour::Delay(
        Duration::from_secs(5),
        Box::new(Behaviour::Status(200)),
    )]);
    let routes = format!(
        "[apps.shop.routes.orders]\npath = \"/hooks/orders\"\n\n\
         [apps.shop.routes.orders.destinations.warehouse]\nurl = \"{}\"\nconcurrency = 1\n",
        receiver.url("/orders")
    );
    let mut gw = GatewayProcess::start(&routes, &[], &[]);
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for n in 0..5 {
        let answer = client
            .post(gw.url("/hooks/orders"))
            .json(&serde_json::json!({ "n": n }))
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 202);
        let body: serde_json::Value = answer.json().await.expect("json");
        acked.push(body["id"].as_str().expect("id").to_string());
    }
    // The first delivery is at the receiver, waiting for its answer.
    receiver.wait_for(1, Duration::from_secs(20)).await;
    gw.stop();
    assert_eq!(
        receiver.count(),
        1,
        "deliveries were started during the shutdown"
    );

    gw.restart();
    receiver
        .wait_until(Duration::from_secs(60), |_| {
            receiver.missing(&acked).is_empty()
        })
        .await;
    assert_eq!(receiver.count(), 5, "a delivery was sent twice");
}

/// The journal's file may not grow past 4 MB (`prlimit --fsize`), so its
/// writes fail partway through the burst as they would on a full disk: the
/// sender whose write failed is told to retry (503), the gateway stops with
/// exit code 1 instead of staying up unable to acknowledge anything, and
/// after a restart with room on disk every message it acknowledged is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_stops_the_gateway_and_loses_nothing_acknowledged() {
    let receiver = TestReceiver::start().await;
    let mut gw = GatewayProcess::start_with_file_limit(&slow_route(&receiver), 4_000_000);
    let url = gw.url("/hooks/orders");

    // 4 MB of journal holds a few thousand 1 KB webhooks: the senders stop
    // at the first refusal long before they run out.
    let (progress, _) = watch::channel(0usize);
    let sent = burst(&url, 4, 10_000, 1_000, Arc::new(progress)).await;
    let exit = gw.wait_exit(Duration::from_secs(60));
    let log = gw.log_lines().join("\n");
    assert_eq!(exit.code(), Some(1), "exit status {exit}:\n{log}");
    assert!(
        log.contains("the journal failed") && log.contains("File too large"),
        "the log names the failure:\n{log}"
    );
    assert!(
        sent.refused
            .iter()
            .any(|(status, body)| *status == 503 && body.contains("retry later")),
        "a sender is told to retry: {:?}",
        sent.refused
    );
    assert!(!sent.acked.is_empty());
    assert!(
        receiver.unique_ids().len() < sent.acked.len(),
        "the stop should leave deliveries queued"
    );

    gw.restart();
    receiver
        .wait_until(Duration::from_secs(60), |_| {
            receiver.missing(&sent.acked).is_empty()
        })
        .await;
    assert_eq!(receiver.missing(&sent.acked), Vec::<String>::new());
}
