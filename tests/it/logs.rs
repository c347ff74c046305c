//! Logs as an operator's log shipper sees them (`--log-format json`): every
//! line about a message names its app, route, message id and attempt, and a
//! plugin's own log lines name the plugin and its version.

use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::{Map, Value};

use crate::support::{GatewayProcess, RELAXED_LIMITS};

const WAIT: Duration = Duration::from_secs(20);

/// A line's fields: its own, then those of the spans it was logged in.
fn fields(line: &Value) -> Map<String, Value> {
    let mut all = line.as_object().cloned().unwrap_or_default();
    for span in line["spans"].as_array().into_iter().flatten() {
        for (k, v) in span.as_object().into_iter().flatten() {
            all.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    all
}

/// The JSON lines of a captured log, each as its fields.
fn json_lines(log: &[String]) -> Vec<Map<String, Value>> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| fields(&l))
        .collect()
}

#[tokio::test]
async fn every_line_about_a_message_names_its_app_route_id_and_attempt() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(503)]);
    let config = format!(
        r#"
{RELAXED_LIMITS}
[apps.shop.routes.orders]
path = "/hooks/orders"
validate = {{ plugin = "json-validator", config = {{ required = "order" }} }}
transform = {{ plugin = "reshape", config = {{ "set.seen" = "yes" }} }}
retry = {{ max_attempts = 3, initial_delay = "10ms", max_delay = "10ms", jitter = 0.0 }}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
"#,
        receiver.url("/orders")
    );
    // Debug for hookgate: the validator logs its rejections at debug.
    let mut gw = GatewayProcess::start(
        &config,
        &["json-validator", "reshape"],
        &[("RUST_LOG", "hookgate=debug,info")],
    );
    assert_eq!(gw.post_json("/hooks/orders", r#"{"order":1}"#).await.0, 202);
    assert_eq!(gw.post_json("/hooks/orders", r#"{"nope":1}"#).await.0, 422);
    receiver.wait_for(2, WAIT).await;
    gw.wait_for_log(r#""status":200"#, WAIT);
    let log = gw.stop();

    let lines = json_lines(&log);
    let about_messages: Vec<_> = lines
        .iter()
        .filter(|f| f.contains_key("message_id"))
        .collect();
    assert!(about_messages.len() >= 4, "{log:#?}");
    for line in &about_messages {
        for key in ["app", "route", "message_id", "attempt"] {
            assert!(line.contains_key(key), "no {key} in {line:?}");
        }
        assert_eq!(line["app"], "shop", "{line:?}");
        assert_eq!(line["route"], "orders", "{line:?}");
    }
    let attempts: Vec<_> = about_messages
        .iter()
        .filter(|f| f["message"] == "delivery attempt")
        .map(|f| f["attempt"].clone())
        .collect();
    assert_eq!(attempts, [1, 2], "{log:#?}");
    let plugin_line = about_messages
        .iter()
        .find(|f| f["message"] == "json-validator rejected webhook")
        .unwrap_or_else(|| panic!("no plugin log line:\n{log:#?}"));
    assert_eq!(plugin_line["plugin"], "json-validator");
    let version = plugin_line["version"].as_str().unwrap_or("");
    assert!(
        version.len() == 12 && version.chars().all(|c| c.is_ascii_hexdigit()),
        "{plugin_line:?}"
    );
}

#[tokio::test]
async fn the_message_context_survives_a_quiet_log_level() {
    let receiver = TestReceiver::start().await;
    let config = format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
transform = {{ plugin = "misbehave", config = {{ mode = "error" }} }}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
"#,
        receiver.url("/orders")
    );
    // Delivery at `warn` (the server's info only so the test sees the
    // listening line): the task span must still be there.
    let env = [("RUST_LOG", "warn,hookgate::server=info")];
    let mut gw = GatewayProcess::start(&config, &["misbehave"], &env);
    let (status, body) = gw.post_json("/hooks/orders", "{}").await;
    assert_eq!(status, 202, "{body}");
    gw.wait_for_log("transform failed", WAIT);
    let log = gw.stop();
    let line = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "transform failed")
        .expect("the warning");
    // The attempt is the span's field, not the line's own.
    assert_eq!(line.get("attempt"), None, "{line}");
    assert_eq!(fields(&line)["attempt"], 0, "{line}");
    assert_eq!(fields(&line)["message_id"], body["id"], "{line}");
}

/// A plugin that logs in a loop gets 16 KiB of log per call (here four of
/// its 4 KiB lines), then one line saying how many more it tried; twice
/// over, for two calls: the budget is per call. It used to write every
/// line, ~15 MB of log for one request.
#[tokio::test]
async fn a_plugin_logging_in_a_loop_is_held_to_its_budget_per_call() {
    let receiver = TestReceiver::start().await;
    let config = format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
validate = {{ plugin = "misbehave", config = {{ mode = "flood", log_lines = "1000" }}, limits = {{ deadline = "5s", fuel = 5_000_000_000 }} }}

[apps.shop.routes.orders.destinations.warehouse]
url = "{}"
"#,
        receiver.url("/orders")
    );
    let mut gw = GatewayProcess::start(&config, &["misbehave"], &[]);
    for _ in 0..2 {
        assert_eq!(gw.post_json("/hooks/orders", "{}").await.0, 202);
    }
    receiver.wait_for(2, WAIT).await;
    let log = gw.stop();
    let lines = json_lines(&log);
    let flood = lines
        .iter()
        .filter(|f| f["message"].as_str().is_some_and(|m| m.starts_with("xxxx")))
        .count();
    assert_eq!(flood, 2 * 4, "lines kept");
    let dropped: Vec<_> = lines
        .iter()
        .filter(|f| f.contains_key("dropped_lines"))
        .map(|f| f["dropped_lines"].clone())
        .collect();
    assert_eq!(dropped, [996, 996], "{dropped:?}");
}
