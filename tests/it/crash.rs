//! Crash safety: SIGKILL the gateway in the middle of a burst, start it again
//! on the same journal, and every message it acknowledged reaches the
//! receiver (at least once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;
use tokio::sync::watch;

use crate::support::GatewayProcess;

const BURST: usize = 400;
const SENDERS: usize = 16;
const KILL_AFTER_ACKS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_sigkill() {
    let receiver = TestReceiver::start().await;
    // A slowish receiver, so deliveries lag behind acknowledgements and the
    // kill finds messages journaled but not yet delivered.
    receiver.respond_with(Behaviour::Delay(
        Duration::from_millis(20),
        Box::new(Behaviour::Status(200)),
    ));
    let routes = format!(
        "[apps.shop.routes.orders]\npath = \"/hooks/orders\"\n\n\
         [apps.shop.routes.orders.destinations.warehouse]\nurl = \"{}\"\nconcurrency = 4\n",
        receiver.url("/orders")
    );
    let mut gw = GatewayProcess::start(&routes, &[], &[]);
    let url = gw.url("/hooks/orders");

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (progress, mut watch_acks) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (url, acked, progress) = (url.clone(), acked.clone(), progress.clone());
        senders.spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..BURST / SENDERS {
                let body = format!(r#"{{"sender":{sender},"n":{n}}}"#);
                let Ok(response) = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                else {
                    return; // the gateway is gone: this request was never acknowledged
                };
                if response.status() != 202 {
                    return;
                }
                let Ok(json) = response.json::<Value>().await else {
                    return;
                };
                if let Some(id) = json["id"].as_str() {
                    acked.lock().expect("acked").push(id.to_string());
                    progress.send_modify(|n| *n += 1);
                }
            }
        });
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        watch_acks.wait_for(|n| *n >= KILL_AFTER_ACKS),
    )
    .await
    .expect("acknowledgements within a minute")
    .expect("progress channel");
    gw.kill();
    while senders.join_next().await.is_some() {}

    let acked = acked.lock().expect("acked").clone();
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
