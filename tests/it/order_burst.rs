//! `examples/order-burst`, run by the real binary on its own config (only
//! the order system's address moved): a burst of embed-style orders, all
//! acknowledged, parsed into order records; the ones the order system
//! refuses land in the dead-letter queue and "retry all failed" replays them.

use std::collections::BTreeSet;
use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::{ADMIN_TOKEN, GatewayProcess, example_file, host_port};

const WAIT: Duration = Duration::from_secs(60);
const BURST: usize = 300;
const REFUSED: usize = 40;

fn order(n: usize) -> String {
    example_file("order-burst/payloads/order.json").replace("#1042", &format!("#{}", 5000 + n))
}

#[tokio::test]
async fn a_burst_is_acknowledged_parsed_and_its_failures_replayed_from_the_dlq() {
    let orders = TestReceiver::start().await;
    // The order system refuses the first orders it sees (a bad deploy), for
    // good: 422 is not retried, those orders are dead-lettered at once.
    orders.enqueue((0..REFUSED).map(|_| Behaviour::Status(422)));
    orders.respond_with(Behaviour::Status(200));
    let gw = GatewayProcess::start_example(
        "order-burst",
        &[("127.0.0.1:9400", host_port(&orders))],
        &[("HOOKGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );

    // The burst: 300 orders, 30 senders at once; every one acknowledged.
    let client = reqwest::Client::new();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..BURST {
        let (client, url) = (client.clone(), gw.url("/store/orders"));
        sends.spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(order(n))
                .send()
                .await
                .expect("the gateway answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body["id"].as_str().map(str::to_string))
        });
        if sends.len() >= 30 {
            let (status, id) = sends.join_next().await.expect("a send").expect("task");
            assert_eq!((status, id.is_some()), (200, true));
        }
    }
    while let Some(sent) = sends.join_next().await {
        let (status, id) = sent.expect("task");
        assert_eq!((status, id.is_some()), (200, true));
    }

    // Every order reaches the order system once, as a parsed order record.
    let seen = orders.wait_for(BURST, WAIT).await;
    let record: Value = serde_json::from_slice(&seen[0].body).expect("a JSON record");
    assert!(
        record["order_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('5'))
    );
    assert_eq!(record["total"]["currency"], "EUR");
    assert_eq!(record["items"][0]["name"], "Earl Grey 100g");

    // The refused ones are in the dead-letter queue...
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let dead = gw
            .admin_get("/admin/dead-letters?app=shop&route=orders&limit=500")
            .await;
        let count = dead["dead_letters"].as_array().map_or(0, Vec::len);
        if count == REFUSED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{count} dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and "retry all failed" delivers them.
    let (status, replayed) = gw
        .admin_call(
            reqwest::Method::POST,
            "/admin/dead-letters/replay?app=shop&route=orders",
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    let all = orders.wait_for(BURST + REFUSED, WAIT).await;
    // Everything after the first REFUSED requests was answered 200: every
    // order's id is among them.
    let delivered: BTreeSet<String> = all[REFUSED..].iter().filter_map(|r| r.id()).collect();
    let every: BTreeSet<String> = all.iter().filter_map(|r| r.id()).collect();
    assert_eq!(every.len(), BURST);
    assert_eq!(delivered, every, "some orders never got through");
    let dead = gw
        .admin_get("/admin/dead-letters?app=shop&route=orders")
        .await;
    assert_eq!(dead["dead_letters"], Value::Array(vec![]));
}
