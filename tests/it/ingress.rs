//! The webhook listener, end to end through the real binary: inbound checks,
//! signature, validate plugin, durable acknowledgement, idempotency,
//! backpressure, and the journal after a graceful shutdown.

use hmac::{Hmac, KeyInit, Mac};
use hookgate::store::{MessageStatus, SledStore};
use serde_json::Value;
use sha2::Sha256;

use crate::support::{ADMIN_TOKEN, GatewayProcess, eventually, metric};
use hookgate::verify::{StandardSecret, sign_standard_webhooks};

const SECRET: &str = "It's a Secret to Everybody";

const ROUTES: &str = r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
require_json = true
max_body = "4KiB"
backlog_limit = 3
retry = { initial_delay = "1h", max_delay = "1h" }
verify = { scheme = "github", secret_env = "TEST_GITHUB_SECRET" }
idempotency = { header = "x-github-delivery", window = "1h" }
validate = { plugin = "json-validator", config = { required = "id,kind" } }

[apps.shop.routes.orders.destinations.warehouse]
url = "http://127.0.0.1:9/orders"

# Nothing listens on port 9 and retries are an hour apart: what these
# routes accept stays pending for the whole test.
[apps.shop.routes.refunds]
path = "/hooks/refunds"
retry = { initial_delay = "1h", max_delay = "1h" }

[apps.shop.routes.refunds.destinations.warehouse]
url = "http://127.0.0.1:9/refunds"

[apps.shop.routes.payments]
path = "/hooks/payments"
retry = { initial_delay = "1h", max_delay = "1h" }
idempotency = { header = "idempotency-key", window = "1h" }

[apps.shop.routes.payments.destinations.warehouse]
url = "http://127.0.0.1:9/payments"
"#;

fn start() -> GatewayProcess {
    GatewayProcess::start(
        ROUTES,
        &["json-validator"],
        &[("TEST_GITHUB_SECRET", SECRET)],
    )
}

fn github_signature(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(gw: &GatewayProcess, body: &str, delivery: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", github_signature(body))
        .header("x-github-delivery", delivery)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn inbound_checks_answer_with_their_status_and_reason() {
    let gw = start();
    let client = reqwest::Client::new();
    let unknown = client.post(gw.url("/nope")).send().await.expect("request");
    assert_eq!(unknown.status(), 404);

    let get = client
        .get(gw.url("/hooks/orders"))
        .send()
        .await
        .expect("request");
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");

    let text = client
        .post(gw.url("/hooks/orders"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("request");
    assert_eq!(text.status(), 415);

    let big = "x".repeat(5000);
    let too_big = client
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("request");
    assert_eq!(too_big.status(), 413);

    let unsigned = client
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .body(r#"{"id":1,"kind":"a"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(unsigned.status(), 401);
    let reason: Value = unsigned.json().await.expect("json");
    assert_eq!(reason["error"], "missing header \"x-hub-signature-256\"");
}

#[tokio::test]
async fn a_validator_rejection_reaches_the_sender_and_stores_nothing() {
    let mut gw = start();
    let (status, body) = post(&gw, r#"{"id":1}"#, "d-1").await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "missing required field \"kind\"");
    // At the default level the operator sees it, with the route and why.
    gw.wait_for_log(
        "validate plugin rejected the webhook",
        std::time::Duration::from_secs(20),
    );
    let log = gw.stop();
    let line = log
        .iter()
        .find(|l| l.contains("validate plugin rejected the webhook"))
        .map_or("", String::as_str);
    for field in [
        "\"plugin\":\"json-validator\"",
        "\"status\":422",
        "missing required field",
    ] {
        assert!(line.contains(field), "{field} not in {line}");
    }
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(store.pending(), 0);
}

#[tokio::test]
async fn an_acknowledged_message_is_journaled_and_a_repeat_is_deduplicated() {
    let mut gw = start();
    let (status, first) = post(&gw, r#"{"id":1,"kind":"order"}"#, "d-1").await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(first["duplicate"], false);

    let (status, again) = post(&gw, r#"{"id":1,"kind":"order"}"#, "d-1").await;
    assert_eq!(status, 202);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["duplicate"], true);

    // A key that is not text (bytes past ASCII are valid in a header) is a
    // key all the same.
    let body = r#"{"id":2,"kind":"order"}"#;
    let key = reqwest::header::HeaderValue::from_bytes(b"d-\xff\xfe").expect("obs-text");
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(gw.url("/hooks/orders"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", github_signature(body))
            .header("x-github-delivery", key.clone())
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await.expect("json"));
    }
    assert_eq!(answers[0]["id"], answers[1]["id"]);
    assert_eq!(
        [&answers[0]["duplicate"], &answers[1]["duplicate"]],
        [false, true]
    );

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    let record = store.message(&id).expect("read").expect("journaled");
    assert_eq!(record.status, MessageStatus::Pending);
    assert_eq!(record.message.body, br#"{"id":1,"kind":"order"}"#);
    assert_eq!(store.pending(), 2, "the repeats stored nothing");
}

/// A payment posted with `key` as its idempotency key: the status and the
/// answer's JSON.
async fn payment(gw: &GatewayProcess, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/payments"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(r#"{"amount":1}"#)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_empty_idempotency_key_is_no_key_and_an_overlong_one_is_refused() {
    let mut gw = start();
    // Two messages with an empty key are two messages, not a message and
    // its duplicate.
    let (first, second) = (payment(&gw, "").await, payment(&gw, "").await);
    assert_eq!((first.0, second.0), (202, 202), "{first:?} {second:?}");
    assert_ne!(first.1["id"], second.1["id"]);
    assert_eq!(
        [&first.1["duplicate"], &second.1["duplicate"]],
        [false, false]
    );

    let longest = "k".repeat(256);
    let (status, kept) = payment(&gw, &longest).await;
    assert_eq!(status, 202, "{kept}");
    let (status, again) = payment(&gw, &longest).await;
    assert_eq!((status, &again["id"]), (202, &kept["id"]));

    let (status, refused) = payment(&gw, &"k".repeat(257)).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["error"],
        "idempotency key in idempotency-key is 257 bytes, over 256"
    );

    gw.stop();
    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store.pending(),
        3,
        "two without a key, one with the long key"
    );
}

#[tokio::test]
async fn past_the_backlog_limit_senders_get_503_with_retry_after() {
    let mut gw = start();
    for n in 0..3 {
        let (status, _) = post(&gw, r#"{"id":1,"kind":"order"}"#, &format!("d-{n}")).await;
        assert_eq!(status, 202);
    }
    let body = r#"{"id":1,"kind":"order"}"#;
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", github_signature(body))
        .header("x-github-delivery", "d-overflow")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");

    // The limit is the route's own: another route still takes messages.
    assert_eq!(refund(&gw, body).await, 202);

    // The counts come back from the journal after a restart.
    gw.stop();
    gw.restart();
    let (status, _) = post(&gw, body, "d-after-restart").await;
    assert_eq!(status, 503);
    assert_eq!(refund(&gw, body).await, 202);
}

async fn refund(gw: &GatewayProcess, body: &str) -> u16 {
    reqwest::Client::new()
        .post(gw.url("/hooks/refunds"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[test]
fn a_route_naming_a_missing_plugin_stops_the_start_with_its_key_path() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nplugins_dir = \"plugins\"\n{ROUTES}"),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("TEST_GITHUB_SECRET", SECRET)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apps.shop.routes.orders.validate.plugin:")
            && stderr.contains("json-validator.wasm"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_config_lists_every_problem_and_exits_2() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("gateway.toml");
    let bad = ROUTES
        .replace("/hooks/orders", "hooks/orders")
        .replace("backlog_limit = 3", "success_status = 500");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"nowhere\"\ndata_dir = \"data\"\nplugins_dir = \"plugins\"\n{bad}"
        ),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for fragment in [
        "server.listen: \"nowhere\"",
        "apps.shop.routes.orders.path: \"hooks/orders\"",
        "apps.shop.routes.orders.success_status: 500",
        "TEST_GITHUB_SECRET",
    ] {
        assert!(
            stderr.contains(fragment),
            "missing {fragment:?} in {stderr}"
        );
    }
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn stripe_standard_webhooks_and_generic_hmac_signatures_are_checked() {
    let sink = "[apps.a.routes.{name}.destinations.sink]\nurl = \"http://127.0.0.1:9/\"\n";
    let routes = [
        ("stripe", r#"{ scheme = "stripe", secret_env = "S_STRIPE" }"#),
        ("standard", r#"{ scheme = "standard-webhooks", secret_env = "S_STANDARD" }"#),
        ("generic", r#"{ scheme = "hmac-sha256", secret_env = "S_GENERIC", header = "x-signature", encoding = "base64" }"#),
    ]
    .iter()
    .map(|(name, verify)| {
        format!("[apps.a.routes.{name}]\npath = \"/{name}\"\nverify = {verify}\n\n{}", sink.replace("{name}", name))
    })
    .collect::<Vec<_>>()
    .join("\n");
    let gw = GatewayProcess::start(
        &routes,
        &[],
        &[
            ("S_STRIPE", "whsec_stripe_test"),
            ("S_STANDARD", WHSEC),
            ("S_GENERIC", "generic-key"),
        ],
    );
    let client = reqwest::Client::new();
    let body = r#"{"event":"paid"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let status = |r: reqwest::Response| r.status().as_u16();

    let stripe_sig = hex::encode(hmac_sha256(
        b"whsec_stripe_test",
        format!("{now}.{body}").as_bytes(),
    ));
    let ok = client
        .post(gw.url("/stripe"))
        .header("stripe-signature", format!("t={now},v1={stripe_sig}"))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(status(ok), 202);
    let stale = client
        .post(gw.url("/stripe"))
        .header(
            "stripe-signature",
            format!("t={},v1={stripe_sig}", now - 600),
        )
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(status(stale), 401);

    let secret = StandardSecret::parse(WHSEC).expect("secret");
    let signature = sign_standard_webhooks(&secret, "msg_1", now as i64, body.as_bytes());
    let standard = |payload: &'static str| {
        client
            .post(gw.url("/standard"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature.clone())
            .body(payload)
    };
    assert_eq!(status(standard(body).send().await.expect("request")), 202);
    let tampered = standard(r#"{"event":"refunded"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(tampered.status(), 401);
    let reason: Value = tampered.json().await.expect("json");
    assert_eq!(reason["error"], "signature mismatch");

    use base64::Engine as _;
    let generic = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha256(b"generic-key", body.as_bytes()));
    let ok = client
        .post(gw.url("/generic"))
        .header("x-signature", generic)
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(status(ok), 202);
    let wrong = client
        .post(gw.url("/generic"))
        .header("x-signature", "bm9wZQ==")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(status(wrong), 401);
}

#[test]
fn check_validates_the_config_and_its_plugins_without_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nplugins_dir = \"plugins\"\n{ROUTES}"),
    )
    .expect("write");
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["check", "--config"])
            .arg(&config)
            .env("TEST_GITHUB_SECRET", SECRET)
            .output()
            .expect("runs")
    };
    // A plugin that plays another role is refused with the key path.
    std::fs::copy(
        hookgate_tests::guest("reshape"),
        plugins.join("json-validator.wasm"),
    )
    .expect("copy");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apps.shop.routes.orders.validate.plugin:")
            && stderr.contains("does not play the validate role"),
        "{stderr}"
    );
    std::fs::copy(
        hookgate_tests::guest("json-validator"),
        plugins.join("json-validator.wasm"),
    )
    .expect("copy");
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 routes)"));
    assert!(!dir.path().join("data").exists(), "check writes nothing");
}

/// Reads from `stream` until the server answers or closes; returns what it sent.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the server held a slow client for 10 s");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    use tokio::io::AsyncWriteExt as _;
    let server = "header_timeout = \"300ms\"\nbody_timeout = \"300ms\"";
    let routes = "[apps.a.routes.r]\npath = \"/in\"\n[apps.a.routes.r.destinations.d]\nurl = \"http://127.0.0.1:9/\"\n";
    let gw = GatewayProcess::start_with(server, routes, &[], &[]);

    // Headers that never finish: the connection is closed.
    let mut slow_head = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    slow_head
        .write_all(b"POST /in HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut slow_head).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");

    // A body that never arrives: 408.
    let mut slow_body = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    slow_body
        .write_all(b"POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        .await
        .expect("write");
    let answer = read_answer(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Inbound connections past `server.max_connections` wait in the accept
/// queue instead of taking file descriptors and memory; a request head past
/// `server.max_header_bytes` is refused, since headers are journaled too.
#[tokio::test]
async fn connections_and_request_heads_are_capped() {
    use tokio::io::AsyncWriteExt as _;
    let server = "max_connections = 2\nmax_header_bytes = \"16KiB\"";
    let routes = "[apps.a.routes.r]\npath = \"/in\"\n[apps.a.routes.r.destinations.d]\nurl = \"http://127.0.0.1:9/\"\n";
    let gw = GatewayProcess::start_with(server, routes, &[], &[]);
    let client = reqwest::Client::new();
    let post = |header: String| {
        client
            .post(gw.url("/in"))
            .header("content-type", "application/json")
            .header("x-pad", header)
            .body("{}")
            .send()
    };

    let big = post("x".repeat(20 << 10)).await.expect("answered");
    assert_eq!(big.status(), 431);

    // Two silent connections take both slots (until header_timeout, 10 s).
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect"),
        );
    }
    let mut waiting = tokio::spawn(post(String::new()));
    let held = tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting).await;
    assert!(held.is_err(), "a third connection was served past the cap");
    // One of them goes: the waiting request is served.
    let mut gone = idle.pop().expect("two");
    gone.shutdown().await.expect("close");
    drop(gone);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot freed")
        .expect("task")
        .expect("answered");
    assert_eq!(answer.status(), 202);
}

/// A request head past `server.max_header_bytes` is refused with the
/// reason, however it arrived (hyper's read-buffer bound alone let some
/// through at up to ~1.75 times the limit and cut others at it with an
/// empty 431); one just under it is served.
#[tokio::test]
async fn the_request_head_limit_is_held_exactly() {
    let server = "max_header_bytes = \"64KiB\"";
    let routes = "[apps.a.routes.r]\npath = \"/in\"\n[apps.a.routes.r.destinations.d]\nurl = \"http://127.0.0.1:9/\"\n";
    let gw = GatewayProcess::start_with(server, routes, &[], &[]);
    let client = reqwest::Client::new();
    let post = |pad: usize| {
        client
            .post(gw.url("/in"))
            .header("content-type", "application/json")
            .header("x-pad", "x".repeat(pad))
            .body("{}")
            .send()
    };
    for pad in [66 << 10, 80 << 10, 100 << 10] {
        let over = post(pad).await.expect("answered");
        assert_eq!(over.status(), 431, "{pad}");
        let reason = over.text().await.unwrap_or_default();
        assert!(reason.contains("the limit is 65536"), "{pad}: {reason:?}");
    }
    let under = post(63 << 10).await.expect("answered");
    assert_eq!(under.status(), 202);
}

/// Bodies being read count against `server.body_memory`: past it a request
/// is answered 503 before its body is read, and the memory comes back when
/// a request is answered.
#[tokio::test]
async fn request_bodies_share_a_memory_budget() {
    use tokio::io::AsyncWriteExt as _;
    let server = "body_memory = \"64KiB\"";
    let routes = "[apps.a.routes.r]\npath = \"/in\"\nmax_body = \"64KiB\"\n[apps.a.routes.r.destinations.d]\nurl = \"http://127.0.0.1:9/\"\n";
    let gw = GatewayProcess::start_with(
        &format!("{server}\nadmin_listen = \"127.0.0.1:0\""),
        routes,
        &[],
        &[("HOOKGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(40_000));
    let head = format!(
        "POST /in HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // A sender that announces 40 KB and sends half of it, then stalls.
    let mut slow = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    slow.write_all(head.as_bytes()).await.expect("write");
    slow.write_all(&body.as_bytes()[..20_000])
        .await
        .expect("write");
    let post = || {
        reqwest::Client::new()
            .post(gw.url("/in"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    // Once the gateway holds its 40 KB, the next 40 KB does not fit.
    eventually(async || {
        let held = metric(
            &gw.scrape().await,
            "hookgate_request_body_memory_bytes",
            &[],
        );
        if held == 40960.0 {
            Ok(())
        } else {
            Err(format!("{held} bytes of body memory held"))
        }
    })
    .await;
    let refused = post().await.expect("answered");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    // The slow one finishes: it is accepted, and the budget comes back.
    slow.write_all(&body.as_bytes()[20_000..])
        .await
        .expect("write");
    let answer = read_answer_head(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(post().await.expect("answered").status(), 202);
}

/// Reads until the end of an answer's head.
async fn read_answer_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut chunk))
                .await
                .expect("answered within 30 s")
                .expect("read");
        if read == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A route can give a plugin only the inbound headers it needs: the
/// sender's signature and credentials stay out of a plugin that has no use
/// for them. `misbehave` in `headers` mode answers the names it was given.
#[tokio::test]
async fn a_plugin_sees_only_the_headers_its_route_gives_it() {
    let routes = r#"
[apps.shop.routes.narrow]
path = "/hooks/narrow"
validate = { plugin = "misbehave", config = { mode = "headers" }, headers = ["X-Event-Type", "content-type", "x-absent"] }

[apps.shop.routes.narrow.destinations.d]
url = "http://127.0.0.1:9/narrow"

[apps.shop.routes.wide]
path = "/hooks/wide"
validate = { plugin = "misbehave", config = { mode = "headers" } }

[apps.shop.routes.wide.destinations.d]
url = "http://127.0.0.1:9/wide"
"#;
    let gw = GatewayProcess::start(routes, &["misbehave"], &[]);
    let seen = async |path: &str| {
        let response = reqwest::Client::new()
            .post(gw.url(path))
            .header("content-type", "application/json")
            .header("x-event-type", "order.created")
            .header("authorization", "Bearer s3cret")
            .header("webhook-signature", "v1,abc")
            .body("{}")
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            409,
            "headers mode rejects with the names"
        );
        let answer: Value = response.json().await.expect("json");
        let mut names: Vec<String> = answer["error"]
            .as_str()
            .expect("reason")
            .split(',')
            .map(str::to_string)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        seen("/hooks/narrow").await,
        ["content-type", "x-event-type"]
    );
    let wide = seen("/hooks/wide").await;
    for name in [
        "authorization",
        "content-type",
        "webhook-signature",
        "x-event-type",
    ] {
        assert!(wide.iter().any(|n| n == name), "{name} not in {wide:?}");
    }
}
