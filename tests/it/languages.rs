//! The plugin templates (`plugins/templates/<lang>`): the same webhook sent
//! through the real gateway with each language's plugin playing all three
//! roles gets the same answers, the same delivered bytes, the same fallback
//! decision and the same key-value write.
//!
//! A template whose toolchain could not be installed fails its test with the
//! build script's reason (`hookgate_tests::template`); nothing is skipped.
//!
//! The JavaScript and Python components take seconds to compile, so every
//! gateway here shares one compile cache (under the target dir, so it also
//! survives between runs); the restart check proves they load from it.

use std::time::Duration;

use hookgate::store::{KeyValue as _, MessageStatus, SledStore};
use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::Value;

use crate::support::GatewayProcess;

const WAIT: Duration = Duration::from_secs(30);

/// What every template delivers for `{"order":42}` with
/// `x-order-event: order.created` and config `tag = "orders"`.
const EXPECTED_BODY: &str = r#"{"event":"order.created","tag":"orders","data":{"order":42}}"#;

/// One route with the template in every role; the primary destination
/// refuses (400, permanent), so the fallback runs and reroutes to `backup`.
/// The event header is not the templates' default one, so each reads its
/// config (the JavaScript one keeps it between calls).
/// The deadline is generous because this test checks behaviour, not speed
/// (a debug build on a busy machine); BENCHMARKS.md has the real costs.
fn routes(primary: &TestReceiver, backup: &TestReceiver) -> String {
    let plugin = r#"{ plugin = "template", config = { tag = "orders", backup = "backup", required_header = "x-order-event" }, limits = { fuel = 500_000_000, deadline = "5s", memory = "128MiB" } }"#;
    format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
retry = {{ max_attempts = 1, initial_delay = "20ms", max_delay = "50ms", jitter = 0.0 }}
validate = {plugin}
transform = {plugin}
fallback = {plugin}

[apps.shop.routes.orders.destinations.primary]
url = "{}"

[apps.shop.routes.orders.destinations.backup]
url = "{}"
"#,
        primary.url("/orders"),
        backup.url("/orders"),
    )
}

/// A gateway with `template-<lang>` installed as `template.wasm`, whose
/// compile cache (`data/compiled`) is the shared one.
fn start(lang: &str, routes: &str) -> GatewayProcess {
    let component = hookgate_tests::template(lang);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
    std::fs::copy(&component, dir.path().join("plugins/template.wasm")).expect("copy plugin");
    hookgate_tests::share_compile_cache(dir.path());
    GatewayProcess::start_in(dir, "", routes, &[])
}

async fn post(gw: &GatewayProcess, event: Option<&str>, body: &str) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(event) = event {
        request = request.header("x-order-event", event);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The answer body a sender gets for a plugin's rejection.
fn rejection(reason: &str) -> String {
    serde_json::json!({ "error": reason }).to_string()
}

/// The whole round: validate's two rejections and its acceptance, the
/// transformed delivery, the fallback's reroute and key-value count, the
/// plugin's own log line, and a restart that loads from the compile cache.
async fn same_webhook_same_result(lang: &str) {
    let primary = TestReceiver::start().await;
    primary.respond_with(Behaviour::Status(400));
    let backup = TestReceiver::start().await;
    let mut gw = start(lang, &routes(&primary, &backup));

    assert_eq!(
        post(&gw, None, r#"{"order":42}"#).await,
        (422, rejection(r#"missing header "x-order-event""#)),
        "{lang}"
    );
    assert_eq!(
        post(&gw, Some("order.created"), "[1,2,3]").await,
        (400, rejection("body is not a JSON object")),
        "{lang}"
    );
    let (status, answer) = post(&gw, Some("order.created"), r#"{"order":42}"#).await;
    assert_eq!(status, 202, "{lang}: {answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json answer");
    let id = answer["id"].as_str().expect("message id").to_string();

    for (name, receiver) in [("primary", &primary), ("backup", &backup)] {
        let got = receiver.wait_for(1, WAIT).await;
        let request = &got[0];
        assert_eq!(
            std::str::from_utf8(&request.body).expect("utf-8"),
            EXPECTED_BODY,
            "{lang}: body at {name}"
        );
        assert_eq!(request.headers["x-event-type"], "order.created", "{lang}");
        assert_eq!(
            request.headers["content-type"], "application/json",
            "{lang}"
        );
        assert_eq!(request.headers["webhook-id"], id.as_str(), "{lang}");
    }
    // Each rejection is logged with its reason.
    gw.wait_for_log(&format!(r#"\"lang\": \"{lang}\""#), WAIT);
    gw.wait_for_log("body is not a JSON object", WAIT);

    // A restart finds the compiled code in the cache.
    gw.stop();
    gw.restart();
    gw.wait_for_log(r#""from_cache":true"#, WAIT);
    gw.stop();

    let store = SledStore::open(&gw.journal_dir()).expect("journal");
    assert_eq!(
        store.message(&id).expect("read").expect("record").status,
        MessageStatus::Delivered,
        "{lang}"
    );
    let count = store
        .get("shop", "failures:primary", hookgate::clock::now_ms())
        .expect("kv read");
    assert_eq!(count.as_deref(), Some(&b"1"[..]), "{lang}: failure count");
}

#[tokio::test]
async fn the_rust_template_gives_the_common_result() {
    same_webhook_same_result("rust").await;
}

#[tokio::test]
async fn the_javascript_template_gives_the_common_result() {
    same_webhook_same_result("javascript").await;
}

#[tokio::test]
async fn the_python_template_gives_the_common_result() {
    same_webhook_same_result("python").await;
}

#[tokio::test]
async fn the_c_template_gives_the_common_result() {
    same_webhook_same_result("c").await;
}

/// A header value that is not UTF-8 (HTTP allows any byte above 0x7f, and
/// tabs) is the event all the same: every template accepts it and delivers
/// it with each ill-formed sequence as U+FFFD and the tab escaped, so the
/// body stays valid JSON, byte for byte the same in every language.
async fn a_header_that_is_not_utf8_is_decoded_alike(lang: &str) {
    let primary = TestReceiver::start().await;
    let backup = TestReceiver::start().await;
    let gw = start(lang, &routes(&primary, &backup));
    let response = reqwest::Client::new()
        .post(gw.url("/hooks/orders"))
        .header("content-type", "application/json")
        .header(
            "x-order-event",
            reqwest::header::HeaderValue::from_bytes(b"order.\t\xff\xe2\x82").expect("obs-text"),
        )
        .body(r#"{"order":42}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202, "{lang}");
    let got = primary.wait_for(1, WAIT).await;
    assert_eq!(
        std::str::from_utf8(&got[0].body).expect("valid UTF-8"),
        format!(
            r#"{{"event":"order.\t{r}{r}","tag":"orders","data":{{"order":42}}}}"#,
            r = '\u{fffd}'
        ),
        "{lang}"
    );
    assert_eq!(
        got[0].headers["x-event-type"].as_bytes(),
        "order.\t\u{fffd}\u{fffd}".as_bytes(),
        "{lang}"
    );
}

#[tokio::test]
async fn the_rust_template_decodes_a_non_utf8_header_alike() {
    a_header_that_is_not_utf8_is_decoded_alike("rust").await;
}

#[tokio::test]
async fn the_javascript_template_decodes_a_non_utf8_header_alike() {
    a_header_that_is_not_utf8_is_decoded_alike("javascript").await;
}

#[tokio::test]
async fn the_python_template_decodes_a_non_utf8_header_alike() {
    a_header_that_is_not_utf8_is_decoded_alike("python").await;
}

#[tokio::test]
async fn the_c_template_decodes_a_non_utf8_header_alike() {
    a_header_that_is_not_utf8_is_decoded_alike("c").await;
}
