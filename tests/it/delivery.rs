//! Delivery end to end: the real binary accepts webhooks and delivers them
//! to a scripted receiver, retrying, signing and dead-lettering as the route
//! says; the journal is read after a graceful shutdown.

use std::time::Duration;

use hookgate::store::{DeliveryStatus, MessageStatus, SledStore};
use hookgate::verify::{Verifier, VerifyConfig};
use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::{GatewayProcess, eventually, metric};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(20);

fn routes(receiver: &TestReceiver, extra: &str) -> String {
    format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
retry = {{ max_attempts = 3, initial_delay = "20ms", max_delay = "50ms", jitter = 0.0 }}
{extra}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
secret_env = "TEST_OUTBOUND_SECRET"
"#,
        receiver.url("/orders")
    )
}

fn start(receiver: &TestReceiver, extra: &str, plugins: &[&str]) -> GatewayProcess {
    GatewayProcess::start(
        &routes(receiver, extra),
        plugins,
        &[("TEST_OUTBOUND_SECRET", SECRET)],
    )
}

async fn send(gw: &GatewayProcess, body: &str) -> String {
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let json: Value = response.json().await.expect("json");
    json["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn an_accepted_message_is_delivered_signed_with_a_stable_id() {
    let receiver = TestReceiver::start().await;
    let mut gw = start(&receiver, "", &[]);
    let id = send(&gw, r#"{"order":42}"#).await;
    let got = receiver.wait_for(1, WAIT).await;
    let request = &got[0];
    assert_eq!(request.body.as_ref(), br#"{"order":42}"#);
    assert_eq!(request.headers["webhook-id"], id.as_str());
    assert_eq!(request.headers["x-request-id"], id.as_str());
    assert!(request.headers.contains_key("x-timeout-ms"));
    let config = VerifyConfig::StandardWebhooks {
        secret_env: "S".into(),
        tolerance: Duration::from_secs(300),
    };
    let verifier = Verifier::from_config(&config, |_| Some(SECRET.to_string())).expect("secret");
    verifier
        .verify(
            &request.headers,
            &request.body,
            std::time::SystemTime::now(),
        )
        .expect("the receiver can verify the signature");

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Delivered
    );
}

#[tokio::test]
async fn retryable_failures_are_retried_with_the_same_id_until_success() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(503), Behaviour::Status(429)]);
    let mut gw = start(&receiver, "", &[]);
    let id = send(&gw, r#"{"order":1}"#).await;
    let got = receiver.wait_for(3, WAIT).await;
    assert!(got.iter().all(|r| r.headers["webhook-id"] == id.as_str()));

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let attempts = store.attempts(&id, 0).expect("attempts");
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(429), Some(200)]);
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Delivered
    );
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_after_one_attempt() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(400));
    let mut gw = start(&receiver, "", &[]);
    let id = send(&gw, r#"{"order":2}"#).await;
    receiver.wait_for(1, WAIT).await;

    gw.stop();
    assert_eq!(receiver.count(), 1, "a 400 is not retried");
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Dead
    );
    let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
    assert!(
        matches!(delivery.status, DeliveryStatus::Dead { .. }),
        "{:?}",
        delivery.status
    );
}

#[tokio::test]
async fn exhausted_attempts_dead_letter_the_message() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(500));
    let mut gw = start(&receiver, "", &[]);
    let id = send(&gw, r#"{"order":3}"#).await;
    receiver.wait_for(3, WAIT).await;

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
    let DeliveryStatus::Dead { reason } = &delivery.status else {
        panic!("expected dead, got {:?}", delivery.status);
    };
    assert!(
        reason.starts_with("attempts exhausted (3 of 3): status 500"),
        "{reason}"
    );
    assert_eq!(store.attempts(&id, 0).expect("attempts").len(), 3);
}

/// A destination nobody listens on: the attempt log and the dead letter say
/// why the connection failed, not only that it did.
#[tokio::test]
async fn a_refused_connection_is_recorded_with_its_cause() {
    // A port that was free a moment ago and now has no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
retry = {{ max_attempts = 1 }}

[apps.shop.routes.orders.destinations.warehouse]
url = "http://127.0.0.1:{port}/orders"
"#
    );
    let mut gw = GatewayProcess::start(&config, &[], &[]);
    let id = send(&gw, r#"{"order":4}"#).await;
    gw.wait_for_log("\"outcome\":\"dead\"", WAIT);
    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let attempts = store.attempts(&id, 0).expect("attempts");
    let error = attempts[0].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("connection failed: ") && error.to_lowercase().contains("refused"),
        "{error}"
    );
}

#[tokio::test]
async fn the_transform_runs_at_delivery_and_can_filter() {
    let receiver = TestReceiver::start().await;
    let extra = r#"transform = { plugin = "reshape", config = { "rename.order" = "order_id", filter_field = "kind", filter_value = "ping" } }"#;
    let mut gw = start(&receiver, extra, &["reshape"]);
    let dropped = send(&gw, r#"{"kind":"ping"}"#).await;
    let kept = send(&gw, r#"{"kind":"order","order":7}"#).await;
    let got = receiver.wait_for(1, WAIT).await;
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body, serde_json::json!({"kind": "order", "order_id": 7}));
    assert_eq!(got[0].headers["webhook-id"], kept.as_str());

    gw.stop();
    assert_eq!(receiver.count(), 1, "the ping was filtered");
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store
            .message(&dropped)
            .expect("read")
            .expect("record")
            .status,
        MessageStatus::Filtered
    );
    let delivery = store.delivery(&kept, 0).expect("read").expect("delivery");
    let hash = delivery
        .transform_hash
        .expect("the transform's version is recorded");
    assert_eq!(hash.len(), 64);
}

// Two threads: `stop` blocks one while the receiver, on the other, answers
// the requests still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_never_has_more_requests_at_once_than_its_concurrency() {
    let receiver = TestReceiver::start().await;
    let slow = Behaviour::Delay(Duration::from_millis(300), Box::new(Behaviour::Status(200)));
    receiver.respond_with(slow);
    // The destination's table ends the config: the key lands in it.
    let config = format!("{}concurrency = 2\n", routes(&receiver, ""));
    let mut gw = GatewayProcess::start(&config, &[], &[("TEST_OUTBOUND_SECRET", SECRET)]);
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(send(&gw, &format!(r#"{{"n":{n}}}"#)).await);
    }
    receiver.wait_for(8, WAIT).await;
    // Eight messages are waiting and each answer takes 300 ms: the limit,
    // not a lack of work, is what keeps it at two.
    assert_eq!(receiver.peak_in_flight(), 2);

    gw.stop();
    assert_eq!(receiver.missing(&ids), Vec::<String>::new());
    assert_eq!(receiver.count(), 8, "each message delivered once");
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    for id in &ids {
        let record = store.message(id).expect("read").expect("record");
        assert_eq!(record.status, MessageStatus::Delivered, "{id}");
    }
}

#[tokio::test]
async fn fan_out_delivers_to_each_destination_on_its_own() {
    let receiver = TestReceiver::start().await;
    // The audit destination fails once; the warehouse copy must not be resent.
    let audit = TestReceiver::start().await;
    audit.enqueue([Behaviour::Status(500)]);
    let extra = format!(
        "transform = {{ plugin = \"reshape\", config = {{ fan_out = \"warehouse,audit\" }} }}\n\n\
         [apps.shop.routes.orders.destinations.audit]\nurl = \"{}\"\n",
        audit.url("/audit")
    );
    let mut gw = start(&receiver, &extra, &["reshape"]);
    let id = send(&gw, r#"{"order":9}"#).await;
    receiver.wait_for(1, WAIT).await;
    let copies = audit.wait_for(2, WAIT).await;
    assert!(
        copies
            .iter()
            .all(|r| r.headers["webhook-id"] == id.as_str())
    );

    gw.stop();
    assert_eq!(receiver.count(), 1, "each delivery is retried on its own");
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store
            .message(&id)
            .expect("read")
            .expect("record")
            .deliveries,
        Some(2)
    );
    assert_eq!(store.attempts(&id, 1).expect("attempts").len(), 2);
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Delivered
    );
}

#[tokio::test]
async fn an_open_breaker_holds_messages_without_burning_attempts() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(503), Behaviour::Status(503)]);
    // Two failures open the breaker; its cool-down is longer than the
    // retry backoff, so the retry waits on the breaker, not the policy.
    let extra = r#"breaker = { failure_threshold = 2, cooldown = "300ms", success_threshold = 1 }
retry = { max_attempts = 3, initial_delay = "10ms", max_delay = "10ms", jitter = 0.0 }"#;
    let routes = routes(&receiver, extra).replace(
        "retry = { max_attempts = 3, initial_delay = \"20ms\", max_delay = \"50ms\", jitter = 0.0 }\n",
        "",
    );
    let mut gw = GatewayProcess::start(&routes, &[], &[("TEST_OUTBOUND_SECRET", SECRET)]);
    // The first message fails twice (its attempt and its retry): that opens
    // the breaker. Only then does the second arrive, so no attempt of it can
    // be in flight while the breaker is still closed.
    let first = send(&gw, r#"{"n":1}"#).await;
    receiver.wait_for(2, WAIT).await;
    let second = send(&gw, r#"{"n":2}"#).await;
    // The half-open probe, then the other message.
    let got = receiver.wait_for(4, WAIT).await;
    // The probe comes at least a cool-down after the second failure.
    let gap = got[2].received_at.duration_since(got[1].received_at);
    assert!(
        gap >= Duration::from_millis(290),
        "probe came after {gap:?}"
    );

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    // Waiting on the open breaker burnt nothing: the first message used its
    // three attempts (two failures, one success), the second only one.
    for (id, expected) in [(&first, 3), (&second, 1)] {
        let record = store.message(id).expect("read").expect("record");
        assert_eq!(record.status, MessageStatus::Delivered, "{id}");
        let attempts = store.attempts(id, 0).expect("attempts").len();
        assert_eq!(
            attempts, expected,
            "{id}: waiting on the breaker burnt attempts"
        );
    }
}

#[tokio::test]
async fn a_410_disables_the_destination() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(410)]);
    let mut gw = start(&receiver, "", &[]);
    let gone = send(&gw, r#"{"n":1}"#).await;
    receiver.wait_for(1, WAIT).await;
    let held = send(&gw, r#"{"n":2}"#).await;

    gw.stop();
    assert_eq!(
        receiver.count(),
        1,
        "nothing is sent to a disabled destination"
    );
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store.message(&gone).expect("read").expect("record").status,
        MessageStatus::Dead
    );
    assert_eq!(
        store.message(&held).expect("read").expect("record").status,
        MessageStatus::Pending
    );
}

#[tokio::test]
async fn retry_after_from_the_receiver_is_honoured() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::StatusWithBody {
        status: 429,
        headers: vec![("retry-after".into(), "1".into())],
        body: String::new(),
    }]);
    // The policy alone would retry after 20 ms.
    let gw = start(&receiver, "", &[]);
    send(&gw, r#"{"n":1}"#).await;
    let got = receiver.wait_for(2, WAIT).await;
    let gap = got[1].received_at.duration_since(got[0].received_at);
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
}

#[tokio::test]
async fn a_deliver_at_timer_survives_a_restart() {
    let receiver = TestReceiver::start().await;
    let extra = r#"transform = { plugin = "reshape", config = { delay_ms = 1500 } }"#;
    let mut gw = start(&receiver, extra, &["reshape"]);
    let accepted_at = std::time::Instant::now();
    let id = send(&gw, r#"{"n":1}"#).await;
    gw.kill();
    gw.restart();
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["webhook-id"], id.as_str());
    let waited = got[0].received_at.duration_since(accepted_at);
    assert!(
        waited >= Duration::from_millis(1500),
        "delivered after {waited:?}, before its time"
    );
}

#[tokio::test]
async fn a_replayed_dead_letter_runs_the_current_transform() {
    let receiver = TestReceiver::start().await;
    // The route's transform is "fixer.wasm": first a plugin that fails...
    let extra =
        r#"transform = { plugin = "fixer", config = { mode = "error", "set.fixed" = "yes" } }"#;
    let mut gw = GatewayProcess::start(
        &routes(&receiver, extra),
        &["fixer=misbehave"],
        &[("TEST_OUTBOUND_SECRET", SECRET)],
    );
    let fixer = gw.dir.path().join("plugins/fixer.wasm");
    let id = send(&gw, r#"{"n":1}"#).await;
    gw.wait_for_log("transform failed", WAIT);
    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let record = store.message(&id).expect("read").expect("record");
    assert_eq!(record.status, MessageStatus::Dead);
    let letters = store.dead_letters(None, 10).expect("dead letters");
    assert_eq!(letters.len(), 1);

    // ...then a fixed plugin is dropped in, and the dead letter replayed.
    std::fs::copy(hookgate_tests::guest("reshape"), &fixer).expect("install the fix");
    store.replay(&id, 0).expect("replay");
    drop(store);
    gw.restart();
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["webhook-id"], id.as_str());
    let body: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body, serde_json::json!({"n": 1, "fixed": "yes"}));
}

#[tokio::test]
async fn a_fallback_reroutes_an_exhausted_message_to_another_destination() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(503));
    let alert = TestReceiver::start().await;
    // The alert destination comes second: the warehouse stays the default.
    let config = routes(
        &receiver,
        r#"fallback = { plugin = "misbehave", config = { fallback_next = "reroute:alert" } }"#,
    ) + &format!(
        "\n[apps.shop.routes.orders.destinations.alert]\nurl = \"{}\"\n",
        alert.url("/alert")
    );
    let mut gw =
        GatewayProcess::start(&config, &["misbehave"], &[("TEST_OUTBOUND_SECRET", SECRET)]);
    let id = send(&gw, r#"{"lead":"hot"}"#).await;
    let got = alert.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["webhook-id"], id.as_str());

    gw.stop();
    assert_eq!(receiver.count(), 3, "the retry budget was spent first");
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let attempts = store.attempts(&id, 0).expect("attempts");
    assert_eq!(attempts.len(), 4, "three to the warehouse, one to alert");
    assert_eq!(attempts[3].status, Some(200));
    assert_eq!(
        attempts[2].plugin_hashes.len(),
        1,
        "the fallback's version is recorded"
    );
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Delivered
    );
}

#[tokio::test]
async fn without_a_fallback_or_when_it_fails_the_message_is_dead_lettered() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(422));
    let extra = r#"fallback = { plugin = "misbehave", config = { mode = "panic" } }"#;
    let mut gw = start(&receiver, extra, &["misbehave"]);
    let id = send(&gw, r#"{"n":1}"#).await;
    receiver.wait_for(1, WAIT).await;

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
    let DeliveryStatus::Dead { reason } = delivery.status else {
        panic!("expected dead, got {:?}", delivery.status);
    };
    assert!(
        reason.starts_with(
            "permanent failure on attempt 1: status 422; fallback failed: plugin trapped"
        ),
        "{reason}"
    );
}

#[tokio::test]
async fn a_transform_that_overruns_its_deadline_runs_again_before_it_is_dead_lettered() {
    let receiver = TestReceiver::start().await;
    // An endless loop with fuel to spare: only the wall-clock deadline
    // stops it, as an overloaded machine might stop a healthy transform.
    let extra = r#"transform = { plugin = "misbehave", config = { mode = "loop" }, limits = { fuel = 1_000_000_000_000, deadline = "20ms" } }"#;
    let mut gw = GatewayProcess::start_admin(
        &routes(&receiver, extra),
        &["misbehave"],
        &[("TEST_OUTBOUND_SECRET", SECRET)],
    );
    let id = send(&gw, r#"{"n":1}"#).await;

    // Three more runs (after 0.25, 0.5 and 1 s) before the policy applies.
    let dead = eventually(async || {
        let text = gw.scrape().await;
        let overruns = metric(
            &text,
            "hookgate_plugin_calls_total",
            &[("role", "transform"), ("outcome", "deadline")],
        );
        let dead = metric(&text, "hookgate_dead_letter_queue_depth", &[]);
        if dead >= 1.0 {
            Ok(overruns)
        } else {
            Err(format!("{overruns} overruns, nothing dead yet"))
        }
    })
    .await;
    assert_eq!(dead, 4.0, "one run and three retries");

    gw.stop();
    assert_eq!(receiver.count(), 0);
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
    let DeliveryStatus::Dead { reason } = delivery.status else {
        panic!("expected dead, got {:?}", delivery.status);
    };
    assert!(reason.contains("deadline"), "{reason}");
}

/// A transform answer no request could carry (here an invalid method) is
/// the plugin's fault: the message is dead-lettered as malformed before any
/// attempt, and the destination's breaker never hears of it.
#[tokio::test]
async fn a_transform_answer_no_request_could_carry_is_dead_lettered_without_an_attempt() {
    let receiver = TestReceiver::start().await;
    let extra = r#"transform = { plugin = "misbehave", config = { out_method = "GE T" } }"#;
    let mut gw = GatewayProcess::start_admin(
        &routes(&receiver, extra),
        &["misbehave"],
        &[("TEST_OUTBOUND_SECRET", SECRET)],
    );
    let id = send(&gw, r#"{"n":1}"#).await;
    let text = gw
        .wait_metric("hookgate_dead_letter_queue_depth", &[], 1.0)
        .await;
    let malformed = &[("role", "transform"), ("outcome", "malformed")];
    assert_eq!(metric(&text, "hookgate_plugin_calls_total", malformed), 1.0);
    let closed = &[("destination", "warehouse"), ("state", "closed")];
    assert_eq!(metric(&text, "hookgate_breaker_state", closed), 1.0);

    gw.stop();
    assert_eq!(receiver.count(), 0);
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
    assert_eq!(delivery.attempts, 0);
    let DeliveryStatus::Dead { reason } = delivery.status else {
        panic!("expected dead, got {:?}", delivery.status);
    };
    assert!(
        reason.contains("malformed") && reason.contains(r#"invalid method "GE T""#),
        "{reason}"
    );
}

/// A transform cannot frame the request nor pick the virtual host: its
/// `host` and `content-length` headers (which a transform forwarding the
/// inbound headers with a new body carries) are left out, and the receiver
/// gets the whole body at the destination's host. (A `content-length` of 1
/// used to cut the body to one byte, counted as delivered.)
#[tokio::test]
async fn a_transforms_host_and_framing_headers_are_the_gateways() {
    let receiver = TestReceiver::start().await;
    let extra = r#"transform = { plugin = "misbehave", config = { out_headers = "content-length=1;host=evil.example;connection=close;x-tag=kept" } }"#;
    let gw = start(&receiver, extra, &["misbehave"]);
    send(&gw, r#"{"n":1}"#).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].body.as_ref(), br#"{"n":1}"#);
    let header = |name: &str| {
        got[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let host = header("host").unwrap_or_default();
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    assert_eq!(header("x-tag").as_deref(), Some("kept"));
}

/// An answer past the route's cap (8 x `max_body`, here 8 KiB) would turn
/// a small webhook into megabytes in the journal: refused, dead-lettered
/// before any attempt, with the reason. A body that is the webhook's own
/// counts nothing (it is not stored again), so forwarding a full-size
/// webhook to many destinations is not refused.
#[tokio::test]
async fn a_transform_answer_past_the_routes_cap_is_dead_lettered() {
    let cases = [
        (
            "out_body_bytes = \"3000\", out_copies = \"3\"",
            Some("carries 9000 bytes of bodies and headers; the route allows 8192"),
        ),
        ("out_copies = \"9\"", None),
    ];
    for (config, refused) in cases {
        let receiver = TestReceiver::start().await;
        let extra = format!(
            "max_body = \"1KiB\"\ntransform = {{ plugin = \"misbehave\", config = {{ {config} }} }}"
        );
        let mut gw = GatewayProcess::start_admin(
            &routes(&receiver, &extra),
            &["misbehave"],
            &[("TEST_OUTBOUND_SECRET", SECRET)],
        );
        let id = send(&gw, &format!(r#"{{"pad":"{}"}}"#, "p".repeat(1000))).await;
        let Some(expected) = refused else {
            receiver.wait_for(9, WAIT).await;
            continue;
        };
        gw.wait_metric("hookgate_dead_letter_queue_depth", &[], 1.0)
            .await;
        gw.stop();
        assert_eq!(receiver.count(), 0, "{config}");
        let store = SledStore::open(&gw.journal_dir()).expect("journal");
        let delivery = store.delivery(&id, 0).expect("read").expect("delivery");
        assert_eq!(delivery.attempts, 0, "{config}");
        let DeliveryStatus::Dead { reason } = delivery.status else {
            panic!("{config}: expected dead, got {:?}", delivery.status);
        };
        assert!(reason.contains(expected), "{config}: {reason}");
    }
}

/// A header the transform answers twice reaches the receiver twice, in
/// order; the gateway's own headers still win over the transform's.
#[tokio::test]
async fn a_transforms_repeated_headers_are_all_sent() {
    let receiver = TestReceiver::start().await;
    let extra = r#"transform = { plugin = "misbehave", config = { out_headers = "x-tag=a;x-tag=b;webhook-id=forged" } }"#;
    let gw = start(&receiver, extra, &["misbehave"]);
    let id = send(&gw, r#"{"n":1}"#).await;
    let got = receiver.wait_for(1, WAIT).await;
    let tags: Vec<&str> = got[0]
        .headers
        .get_all("x-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(tags, ["a", "b"]);
    assert_eq!(got[0].id(), Some(id));
    assert_eq!(got[0].headers.get_all("webhook-id").iter().count(), 1);
}
