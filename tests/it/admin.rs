//! The admin API and `hookgate admin` against a running gateway: the token
//! guards every call, dead letters replay and purge, messages page by
//! cursor, and the CLI shows what the API answers.

use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, GatewayProcess, RELAXED_LIMITS};

const WAIT: Duration = Duration::from_secs(20);

fn config(receiver: &TestReceiver, extra: &str) -> String {
    format!(
        r#"
{RELAXED_LIMITS}
[apps.shop.routes.orders]
path = "/hooks/orders"
retry = {{ max_attempts = 1 }}
{extra}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
"#,
        receiver.url("/orders")
    )
}

/// [`config`] for the breaker tests: one failure opens the breaker for
/// `cooldown`, one success closes it, and a failed delivery is retried
/// 10 ms later, so that it meets the breaker it opened at once.
fn breaker_config(receiver: &TestReceiver, cooldown: &str) -> String {
    let extra = format!(
        "retry = {{ max_attempts = 5, initial_delay = \"10ms\", max_delay = \"10ms\", jitter = 0.0 }}\n\
         breaker = {{ failure_threshold = 1, cooldown = \"{cooldown}\", success_threshold = 1 }}"
    );
    config(receiver, &extra).replace("retry = { max_attempts = 1 }\n", "")
}

async fn send(gw: &GatewayProcess, body: &str) -> String {
    let (status, json) = gw.post_json("/hooks/orders", body).await;
    assert_eq!(status, 202, "{json}");
    json["id"].as_str().expect("id").to_string()
}

/// Waits until message `id` is delivered; the attempts its first delivery
/// took.
async fn attempts_once_delivered(gw: &GatewayProcess, id: &str) -> usize {
    let record = gw
        .wait_for_admin(&format!("/admin/messages/{id}"), |b| {
            b["message"]["status"] == "delivered"
        })
        .await;
    record["deliveries"][0]["attempts"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn every_admin_call_without_the_token_gets_401() {
    let receiver = TestReceiver::start().await;
    let gw = GatewayProcess::start_admin(&config(&receiver, ""), &[], &[]);
    let calls = [
        (Method::GET, "/admin/messages"),
        (Method::GET, "/admin/messages/msg_x"),
        (Method::GET, "/admin/dead-letters"),
        (Method::POST, "/admin/dead-letters/msg_x/replay"),
        (Method::POST, "/admin/dead-letters/replay?route=orders"),
        (Method::DELETE, "/admin/dead-letters/msg_x"),
        (Method::DELETE, "/admin/dead-letters?all=true"),
        (Method::GET, "/admin/breakers"),
        (Method::POST, "/admin/breakers/shop/orders/warehouse/reset"),
        (
            Method::POST,
            "/admin/destinations/shop/orders/warehouse/enable",
        ),
        (Method::GET, "/admin/plugins"),
        (Method::GET, "/admin/queue"),
        (Method::GET, "/admin/no-such-call"),
    ];
    let client = reqwest::Client::new();
    for (method, path) in &calls {
        for auth in [None, Some("wrong-token"), Some("")] {
            let mut request = client.request(method.clone(), gw.admin_url(path));
            if let Some(token) = auth {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("admin request");
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        // A token without the Bearer scheme is no token either.
        let basic = client
            .request(method.clone(), gw.admin_url(path))
            .header("authorization", ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        assert_eq!(basic.status(), 401, "{method} {path} without the scheme");
    }
    // With the token the same calls get through (to their own answers).
    let (status, _) = gw.admin_call(Method::GET, "/admin/queue").await;
    assert_eq!(status, 200);
    let (status, _) = gw.admin_call(Method::GET, "/admin/messages/msg_x").await;
    assert_eq!(status, 404);
    // Probes and scrapers need no token.
    assert_eq!(
        reqwest::get(gw.admin_url("/health"))
            .await
            .expect("health")
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(gw.admin_url("/metrics"))
            .await
            .expect("metrics")
            .status(),
        200
    );
}

#[tokio::test]
async fn without_a_token_variable_the_admin_listener_stays_off() {
    let receiver = TestReceiver::start().await;
    let gw = GatewayProcess::start_with(
        "admin_listen = \"127.0.0.1:0\"",
        &config(&receiver, ""),
        &[],
        &[],
    );
    assert_eq!(gw.admin, None);
    gw.wait_for_log("admin listener off", WAIT);
}

#[tokio::test]
async fn replay_from_the_dead_letter_queue_delivers() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::StatusWithBody {
        status: 400,
        headers: vec![],
        body: "bad order".into(),
    });
    let gw = GatewayProcess::start_admin(&config(&receiver, ""), &[], &[]);
    let id = send(&gw, r#"{"order":1}"#).await;
    let letters = gw
        .wait_for_admin("/admin/dead-letters", |b| {
            b["dead_letters"].as_array().is_some_and(|l| !l.is_empty())
        })
        .await;
    assert_eq!(letters["dead_letters"][0]["message_id"], id.as_str());
    assert_eq!(letters["dead_letters"][0]["destination"], "warehouse");
    let dead = gw.admin_get(&format!("/admin/messages/{id}")).await;
    assert_eq!(dead["message"]["status"], "dead");
    let attempt = &dead["deliveries"][0]["attempts"][0];
    assert_eq!(attempt["status"], 400);
    assert_eq!(attempt["response"], "bad order");
    assert!(attempt["duration_ms"].is_u64());
    assert_eq!(gw.admin_get("/admin/queue").await["dead_letters"], 1);

    receiver.respond_with(Behaviour::Status(200));
    let (status, body) = gw
        .admin_call(Method::POST, &format!("/admin/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "replayed": [id], "held_back_by": [] }));
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got[1].headers["webhook-id"], id.as_str());
    let delivered = gw
        .wait_for_admin(&format!("/admin/messages/{id}"), |b| {
            b["message"]["status"] == "delivered"
        })
        .await;
    assert_eq!(delivered["deliveries"][1]["attempts"][0]["status"], 200);
    assert_eq!(
        gw.admin_get("/admin/dead-letters").await["dead_letters"],
        json!([])
    );
    // Replaying it again is a conflict: it is not dead any more.
    let (status, _) = gw
        .admin_call(Method::POST, &format!("/admin/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 409);
}

/// `POST .../warehouse/enable`, which must answer with the destination
/// enabled.
async fn enable_warehouse(gw: &GatewayProcess) {
    let (status, body) = gw
        .admin_call(
            Method::POST,
            "/admin/destinations/shop/orders/warehouse/enable",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disabled"], false, "{body}");
}

/// A 410 disables the destination, also across a restart: what comes after
/// waits parked, burning no attempt, and `enable` sends it at once (it used
/// to wait for a re-check a minute later; a restart used to enable it).
#[tokio::test]
async fn enabling_a_destination_disabled_by_a_410_releases_what_it_held() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(410)]);
    let mut gw = GatewayProcess::start_admin(&config(&receiver, ""), &[], &[]);
    send(&gw, r#"{"order":0}"#).await;
    receiver.wait_for(1, WAIT).await;
    let held = send(&gw, r#"{"order":1}"#).await;
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;
    assert_eq!(receiver.count(), 1, "sent to a disabled destination");

    gw.stop();
    gw.restart();
    // A restart releases what was parked; it is parked again, unsent.
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;
    let breakers = gw.admin_get("/admin/breakers").await;
    assert_eq!(breakers["breakers"][0]["disabled"], true, "{breakers}");
    assert_eq!(receiver.count(), 1, "sent to a disabled destination");

    enable_warehouse(&gw).await;
    assert_eq!(attempts_once_delivered(&gw, &held).await, 1);
}

/// A half-open breaker whose probe got a 410: the probe counts as the
/// destination answering, the 410 disables it, and the next delivery let
/// out as a probe finds it disabled and parks again. Once an operator
/// enables it, the parked deliveries go out as probes with no new traffic
/// to start them (the half-open breaker, with no probe out, used to hold
/// them until the next webhook or a restart).
#[tokio::test]
async fn enabling_a_destination_whose_probe_got_a_410_releases_the_rest() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(503), Behaviour::Status(410)]);
    let config = breaker_config(&receiver, "300ms")
        .replace("success_threshold = 1", "success_threshold = 2");
    let gw = GatewayProcess::start_admin(&config, &[], &[]);
    let mut ids = vec![send(&gw, r#"{"order":0}"#).await];
    // The 503 opens the breaker; the first message's retry parks.
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;
    for n in 1..=2 {
        ids.push(send(&gw, &format!(r#"{{"order":{n}}}"#)).await);
    }
    // After the cool-down one of the three is the probe and gets the 410;
    // the two left are parked, and nothing more is sent.
    let queue = gw
        .wait_for_admin("/admin/queue", |q| {
            q["parked"] == 2 && q["dead_letters"] == 1 && q["due"] == 0
        })
        .await;
    assert_eq!(queue["pending"], 2, "{queue}");
    assert_eq!(receiver.count(), 2, "sent to a disabled destination");

    enable_warehouse(&gw).await;
    receiver.wait_for(4, WAIT).await;
    let mut delivered = 0;
    for id in &ids {
        let record = gw
            .wait_for_admin(&format!("/admin/messages/{id}"), |b| {
                b["message"]["status"] == "delivered" || b["message"]["status"] == "dead"
            })
            .await;
        delivered += usize::from(record["message"]["status"] == "delivered");
    }
    assert_eq!(delivered, 2);
    let breakers = gw.admin_get("/admin/breakers").await;
    assert_eq!(breakers["breakers"][0]["state"], "closed", "{breakers}");
}

/// Deliveries queued for the destination's one slot while an attempt ahead
/// of them gets a 410 are parked, not sent into the 410 one by one (each
/// would have been dead-lettered).
#[tokio::test]
async fn a_410_parks_the_deliveries_queued_behind_it() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Delay(
        Duration::from_millis(500),
        Box::new(Behaviour::Status(410)),
    )]);
    let routes = config(&receiver, "").replace("url = \"", "concurrency = 1\nurl = \"");
    let gw = GatewayProcess::start_admin(&routes, &[], &[]);
    send(&gw, r#"{"order":0}"#).await;
    receiver.wait_for(1, WAIT).await;
    let queued = [
        send(&gw, r#"{"order":1}"#).await,
        send(&gw, r#"{"order":2}"#).await,
    ];
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 2)
        .await;
    assert_eq!(receiver.count(), 1, "sent to a disabled destination");
    assert_eq!(gw.admin_get("/admin/queue").await["dead_letters"], 1);

    enable_warehouse(&gw).await;
    for id in &queued {
        assert_eq!(attempts_once_delivered(&gw, id).await, 1);
    }
}

#[tokio::test]
async fn an_open_breaker_parks_its_messages_and_a_reset_releases_them_at_once() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(503)]);
    // One failure opens the breaker for a minute: longer than the test may
    // wait, so only the operator's reset can release the parked messages.
    let gw = GatewayProcess::start_admin(&breaker_config(&receiver, "60s"), &[], &[]);
    let first = send(&gw, r#"{"order":0}"#).await;
    receiver.wait_for(1, WAIT).await;
    // The receiver has answered, but the breaker opens only once the
    // gateway has read that answer: until the first message is parked, a
    // second one could still be sent (and delivered).
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;
    let mut ids = vec![first.clone()];
    for n in 1..=5 {
        ids.push(send(&gw, &format!(r#"{{"order":{n}}}"#)).await);
    }
    // Each waits in the parking tree, out of the due index, still pending.
    // (The queue's figures are read one tree after the other: while the
    // last one moves, it may show in both, so wait for both figures.)
    let queue = gw
        .wait_for_admin("/admin/queue", |q| q["parked"] == 6 && q["due"] == 0)
        .await;
    assert_eq!(queue["pending"], 6, "{queue}");
    assert_eq!(
        receiver.count(),
        1,
        "nothing is sent while the breaker is open"
    );

    let (status, body) = gw
        .admin_call(Method::POST, "/admin/breakers/shop/orders/warehouse/reset")
        .await;
    assert_eq!(status, 200, "{body}");
    receiver.wait_for(7, WAIT).await;
    for id in &ids {
        // Waiting burnt no attempt: the first failed once, then each got
        // through on its first try.
        let expected = if *id == first { 2 } else { 1 };
        assert_eq!(attempts_once_delivered(&gw, id).await, expected, "{id}");
    }
    assert_eq!(gw.admin_get("/admin/queue").await["parked"], 0);
}

/// A receiver that answers nothing holds its one slot, and its route's
/// backlog queues behind it: as many attempts as it takes wait for the
/// slot (64, the least queue), the rest are parked. The scheduler's tasks
/// in flight stay free for the other routes, whose deliveries go on (they
/// used to wait behind the 512 oldest tasks, all waiting for the slow
/// receiver).
#[tokio::test]
async fn a_slow_receivers_backlog_does_not_hold_up_another_routes_deliveries() {
    let slow = TestReceiver::start().await;
    slow.respond_with(Behaviour::Hang);
    let fast = TestReceiver::start().await;
    let config = format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
concurrency = 1
timeout = "60s"

[apps.shop.routes.refunds]
path = "/hooks/refunds"

[apps.shop.routes.refunds.destinations.ledger]
url = "{}"
"#,
        slow.url("/orders"),
        fast.url("/refunds")
    );
    let gw = GatewayProcess::start_admin(&config, &[], &[]);
    // More than the 512 tasks the scheduler runs at once.
    for n in 0..530 {
        send(&gw, &format!(r#"{{"order":{n}}}"#)).await;
    }
    slow.wait_for(1, WAIT).await;
    let queue = gw
        .wait_for_admin("/admin/queue", |q| q["parked"] == 465)
        .await;
    assert_eq!(queue["pending"], 530, "{queue}");

    let (status, body) = gw.post_json("/hooks/refunds", r#"{"refund":1}"#).await;
    assert_eq!(status, 202, "{body}");
    let got = fast.wait_for(1, WAIT).await;
    assert_eq!(&got[0].body[..], br#"{"refund":1}"#);
    assert_eq!(
        slow.count(),
        1,
        "one request at a time to the slow receiver"
    );
}

#[tokio::test]
async fn attempts_waiting_for_a_slot_are_parked_once_the_breaker_opens() {
    let receiver = TestReceiver::start().await;
    // Every answer is a slow failure: each request holds the destination's
    // only slot for 300 ms.
    let slow_failure =
        Behaviour::Delay(Duration::from_millis(300), Box::new(Behaviour::Status(503)));
    receiver.respond_with(slow_failure);
    // The destination's table ends the config: the key lands in it.
    let config = breaker_config(&receiver, "60s") + "concurrency = 1\n";
    let gw = GatewayProcess::start_admin(&config, &[], &[]);
    // Five messages within the first answer's 300 ms: one is sent, the
    // others wait for its slot.
    for n in 0..5 {
        send(&gw, &format!(r#"{{"order":{n}}}"#)).await;
    }
    receiver.wait_for(1, WAIT).await;
    // The first failure opens the breaker for a minute: the four that were
    // waiting for the slot, and the first's retry, are parked unsent.
    let queue = gw
        .wait_for_admin("/admin/queue", |q| q["parked"] == 5)
        .await;
    assert_eq!(queue["pending"], 5, "{queue}");
    assert_eq!(
        receiver.count(),
        1,
        "nothing is sent once the breaker is open, even by an attempt that was waiting for a slot"
    );
}

#[tokio::test]
async fn an_attempt_during_a_probe_is_parked_and_released_when_the_probe_succeeds() {
    let receiver = TestReceiver::start().await;
    // One failure opens the breaker; after its cool-down the probe is
    // answered slowly, and successfully.
    let slow_success = Behaviour::Delay(Duration::from_secs(2), Box::new(Behaviour::Status(200)));
    receiver.enqueue([Behaviour::Status(503), slow_success]);
    let gw = GatewayProcess::start_admin(&breaker_config(&receiver, "300ms"), &[], &[]);
    let first = send(&gw, r#"{"order":1}"#).await;
    // The failure, then the first message's retry as the half-open probe.
    receiver.wait_for(2, WAIT).await;
    let second = send(&gw, r#"{"order":2}"#).await;
    // The probe is still out: the second message waits for its outcome in
    // the parking tree, not sent and not rescheduled.
    let queue = gw
        .wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;
    assert_eq!(queue["pending"], 2, "{queue}");
    assert_eq!(receiver.count(), 2, "nothing is sent beside the probe");
    // The probe's success closes the breaker and releases it.
    receiver.wait_for(3, WAIT).await;
    assert_eq!(attempts_once_delivered(&gw, &first).await, 2);
    assert_eq!(attempts_once_delivered(&gw, &second).await, 1);
}

#[tokio::test]
async fn dead_letters_replay_and_purge_in_bulk_by_route() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(422));
    let gw = GatewayProcess::start_admin(&config(&receiver, ""), &[], &[]);
    let ids = [
        send(&gw, "{}").await,
        send(&gw, "{}").await,
        send(&gw, "{}").await,
    ];
    gw.wait_for_admin("/admin/queue", |q| q["dead_letters"] == 3)
        .await;
    let (status, _) = gw
        .admin_call(Method::POST, "/admin/dead-letters/replay")
        .await;
    assert_eq!(status, 400, "a bulk call without a filter needs all=true");

    // Purge one, replay the rest of the route.
    let (status, body) = gw
        .admin_call(Method::DELETE, &format!("/admin/dead-letters/{}", ids[0]))
        .await;
    assert_eq!((status, &body), (200, &json!({ "purged": [ids[0]] })));
    let (status, _) = gw
        .admin_call(Method::GET, &format!("/admin/messages/{}", ids[0]))
        .await;
    assert_eq!(status, 404, "a purged message is gone");
    // A filter naming what is not configured is a 404 with the reason, not
    // a silent "0 replayed".
    for (query, reason) in [
        (
            "route=order",
            "no route \"order\" in the config (routes: shop/orders)",
        ),
        (
            "app=shop&route=shop/orders&destination=warehous",
            "no destination \"warehous\"",
        ),
    ] {
        let (status, body) = gw
            .admin_call(Method::POST, &format!("/admin/dead-letters/replay?{query}"))
            .await;
        assert_eq!(status, 404, "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(reason)),
            "{query}: {body}"
        );
    }
    let (status, body) = gw
        .admin_call(
            Method::POST,
            "/admin/dead-letters/replay?app=crm&route=shop/orders",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    receiver.respond_with(Behaviour::Status(200));
    // `app/route`, as `admin message` prints it, names the route too.
    let (status, body) = gw
        .admin_call(Method::POST, "/admin/dead-letters/replay?route=shop/orders")
        .await;
    assert_eq!(
        (status, &body),
        (
            200,
            &json!({ "replayed": [ids[1], ids[2]], "held_back_by": [] })
        )
    );
    receiver
        .wait_until(WAIT, |r| {
            r.iter()
                .filter(|r| r.id().as_deref() != Some(ids[0].as_str()))
                .count()
                >= 4
        })
        .await;
    gw.wait_for_admin("/admin/messages?status=delivered", |b| {
        b["messages"].as_array().map(Vec::len) == Some(2)
    })
    .await;
}

#[tokio::test]
async fn messages_page_by_cursor_and_filter_by_status() {
    let receiver = TestReceiver::start().await;
    let extra = r#"fallback = { plugin = "misbehave", config = { fallback_next = "done" } }"#;
    let gw = GatewayProcess::start_admin(&config(&receiver, extra), &["misbehave"], &[]);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(send(&gw, &format!(r#"{{"n":{n}}}"#)).await);
    }
    receiver.wait_for(3, WAIT).await;
    // One more the receiver refuses: the fallback settles it as handled.
    receiver.respond_with(Behaviour::Status(400));
    let handled = send(&gw, "{}").await;
    gw.wait_for_admin("/admin/messages?status=handled", |b| {
        b["messages"][0]["id"] == handled.as_str()
    })
    .await;

    let first = gw
        .wait_for_admin("/admin/messages?status=delivered&limit=2", |b| {
            b["messages"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    let page: Vec<_> = first["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[0]), json!(ids[1])], "oldest first");
    let next = first["next"].as_str().expect("a next cursor");
    let second = gw
        .admin_get(&format!(
            "/admin/messages?status=delivered&limit=2&after={next}"
        ))
        .await;
    assert_eq!(second["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["messages"][0]["id"], ids[2].as_str());
    assert_eq!(second["next"], Value::Null);
    let (status, body) = gw
        .admin_call(Method::GET, "/admin/messages?status=lost")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"lost\"")),
        "{body}"
    );
    // A cursor that no page gave is refused, not read as "from the start".
    let (status, body) = gw
        .admin_call(Method::GET, "/admin/messages?after=garbage")
        .await;
    assert_eq!(status, 400, "{body}");
    // A known call asked with the wrong method says which it takes.
    let response = reqwest::Client::new()
        .post(gw.admin_url("/admin/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    let plugins = gw.admin_get("/admin/plugins").await;
    assert_eq!(plugins["plugins"][0]["name"], "misbehave");
    assert_eq!(
        plugins["plugins"][0]["roles"],
        json!(["validate", "transform", "fallback"])
    );
    assert_eq!(plugins["plugins"][0]["error"], Value::Null);
}

/// Runs `hookgate admin ARGS` against the gateway; stdout and the exit code.
fn cli(gw: &GatewayProcess, token: Option<&str>, args: &[&str]) -> (String, Option<i32>) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
    command
        .arg("admin")
        .args(["--addr", &gw.admin_url("")])
        .args(args)
        .env_remove("HOOKGATE_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("HOOKGATE_ADMIN_TOKEN", token);
    }
    let out = command.output().expect("hookgate admin runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

#[tokio::test]
async fn the_cli_prints_the_same_data_as_the_api() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(400));
    let gw = GatewayProcess::start_admin(&config(&receiver, ""), &[], &[]);
    let id = send(&gw, r#"{"order":7}"#).await;
    gw.wait_for_admin("/admin/queue", |q| q["dead_letters"] == 1)
        .await;

    let token = Some(ADMIN_TOKEN);
    for (args, path) in [
        (vec!["messages"], "/admin/messages".to_string()),
        (
            vec!["messages", "--status", "dead", "--limit", "5"],
            "/admin/messages?status=dead&limit=5".to_string(),
        ),
        (
            vec!["message", id.as_str()],
            format!("/admin/messages/{id}"),
        ),
        (
            vec!["dead", "list", "--route", "orders"],
            "/admin/dead-letters?route=orders".to_string(),
        ),
        (vec!["breakers"], "/admin/breakers".to_string()),
        (vec!["plugins"], "/admin/plugins".to_string()),
        (vec!["queue"], "/admin/queue".to_string()),
    ] {
        let (out, code) = cli(&gw, token, &[&["--json"], args.as_slice()].concat());
        assert_eq!(code, Some(0), "{args:?}: {out}");
        let printed: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert_eq!(printed, gw.admin_get(&path).await, "{args:?}");
    }
    // Tables carry the same data.
    let (table, code) = cli(&gw, token, &["dead", "list"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("MESSAGE") && table.contains(&id), "{table}");
    assert!(
        table.contains("permanent failure on attempt 1: status 400"),
        "{table}"
    );
    let (table, _) = cli(&gw, token, &["message", &id]);
    assert!(table.contains("dead") && table.contains("400"), "{table}");
    let (table, _) = cli(&gw, token, &["health"]);
    assert!(table.starts_with("status: "), "{table}");

    // Replay through the CLI delivers like the API does.
    receiver.respond_with(Behaviour::Status(200));
    let (out, code) = cli(&gw, token, &["dead", "replay", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("replayed 1 message(s)") && out.contains(&id),
        "{out}"
    );
    receiver.wait_for(2, WAIT).await;

    // Without a token: exit 2; with a wrong one: the API's 401, exit 1.
    assert_eq!(cli(&gw, None, &["queue"]).1, Some(2));
    assert_eq!(cli(&gw, Some("wrong"), &["queue"]).1, Some(1));
}

/// An operator replays a dead letter once the receiver is back, but the
/// destination's breaker is still open from the failures: the replay says
/// so and how to send now, instead of seeming to do nothing for a minute.
#[tokio::test]
async fn a_replay_names_the_open_breaker_that_holds_it_back() {
    let receiver = TestReceiver::start().await;
    // The first message is refused for good (dead at once, the breaker
    // untouched); the second meets an outage, which opens the breaker for
    // a minute.
    receiver.enqueue([Behaviour::Status(422), Behaviour::Status(503)]);
    let gw = GatewayProcess::start_admin(&breaker_config(&receiver, "60s"), &[], &[]);
    let dead = send(&gw, r#"{"order":1}"#).await;
    gw.wait_for_admin("/admin/queue", |q| q["dead_letters"] == 1)
        .await;
    let parked = send(&gw, r#"{"order":2}"#).await;
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;

    // The token after the subcommand, where people type it.
    let (out, code) = cli(
        &gw,
        None,
        &["dead", "replay", &dead, "--token", ADMIN_TOKEN],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: deliveries to shop/orders/warehouse wait: it has its breaker open for")
            && out.contains("`hookgate admin reset-breaker shop orders warehouse` sends them now"),
        "{out}"
    );
    assert_eq!(
        receiver.count(),
        2,
        "nothing is sent while the breaker is open"
    );
    let (out, code) = cli(
        &gw,
        Some(ADMIN_TOKEN),
        &["reset-breaker", "shop", "orders", "warehouse"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(attempts_once_delivered(&gw, &parked).await, 2);
    gw.wait_for_admin(&format!("/admin/messages/{dead}"), |b| {
        b["message"]["status"] == "delivered"
    })
    .await;
}
