//! `/metrics` against a running gateway: scrape, make one kind of event
//! happen, scrape again, and check that its metric moved (and by how much).

use std::time::Duration;

use hookgate_tests::receiver::{Behaviour, TestReceiver};

use crate::support::{GatewayProcess, RELAXED_LIMITS, eventually, metric};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(ok: &TestReceiver, failing: &TestReceiver) -> String {
    format!(
        r#"
{RELAXED_LIMITS}
[apps.shop.routes.orders]
path = "/hooks/orders"
validate = {{ plugin = "json-validator", config = {{ required = "order" }} }}

[apps.shop.routes.orders.destinations.warehouse]
url = "{ok}"

[apps.shop.routes.refunds]
path = "/hooks/refunds"
retry = {{ max_attempts = 1 }}
breaker = {{ failure_threshold = 1, cooldown = "1h" }}

[apps.shop.routes.refunds.destinations.bank]
url = "{failing}"

[apps.shop.routes.signed]
path = "/hooks/signed"
verify = {{ scheme = "standard-webhooks", secret_env = "TEST_INBOUND_SECRET" }}

[apps.shop.routes.signed.destinations.warehouse]
url = "{ok}"

[apps.shop.routes.later]
path = "/hooks/later"
transform = {{ plugin = "reshape", config = {{ delay_ms = 3600000 }} }}

[apps.shop.routes.later.destinations.warehouse]
url = "{ok}"
"#,
        ok = ok.url("/ok"),
        failing = failing.url("/fail"),
    )
}

async fn post(gw: &GatewayProcess, path: &str, body: &str) -> u16 {
    gw.post_json(path, body).await.0
}

#[tokio::test]
async fn each_metric_moves_when_its_event_happens() {
    let ok = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.respond_with(Behaviour::Status(500));
    let gw = GatewayProcess::start_admin(
        &config(&ok, &failing),
        &["json-validator", "reshape"],
        &[("TEST_INBOUND_SECRET", SECRET)],
    );
    let orders = [("app", "shop"), ("route", "orders")];
    let validator = [("plugin", "json-validator"), ("role", "validate")];

    // An accepted webhook: a request, a validate call, a delivery.
    let before = gw.scrape().await;
    assert!(
        before.contains("# TYPE hookgate_journal_depth gauge"),
        "{before}"
    );
    assert_eq!(post(&gw, "/hooks/orders", r#"{"order":1}"#).await, 202);
    ok.wait_for(1, WAIT).await;
    let delivered = [("destination", "warehouse"), ("outcome", "delivered")];
    gw.wait_metric("hookgate_delivery_attempts_total", &delivered, 1.0)
        .await;
    // The delivery's outcome is journaled after the attempt is counted.
    let writes = metric(&before, "hookgate_journal_write_batch_sum", &[]);
    let after = gw
        .wait_metric("hookgate_journal_write_batch_sum", &[], writes + 1.0)
        .await;
    assert!(
        after.contains("# TYPE hookgate_requests counter"),
        "{after}"
    );
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        moved(
            "hookgate_requests_total",
            &[("route", "orders"), ("status", "202")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "hookgate_plugin_calls_total",
            &[("plugin", "json-validator"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        moved("hookgate_plugin_call_duration_seconds_count", &validator),
        1.0
    );
    assert_eq!(moved("hookgate_plugin_call_fuel_count", &validator), 1.0);
    assert!(moved("hookgate_plugin_call_fuel_sum", &validator) > 0.0);
    // A small compiled validator runs on a fresh instance per call.
    assert_eq!(
        moved("hookgate_plugin_instances_started_total", &validator),
        1.0
    );
    assert_eq!(
        moved("hookgate_delivery_latency_seconds_count", &orders),
        1.0
    );
    // The journal: one message made durable, by at least one flush that
    // took some time; the transform's outcome and the attempt's written
    // as one write (the lone delivery was sent in the transform's task).
    assert_eq!(moved("hookgate_journal_flush_messages_sum", &[]), 1.0);
    assert!(moved("hookgate_journal_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(moved("hookgate_journal_flush_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(moved("hookgate_journal_write_batch_sum", &[]), 1.0);

    // A refused webhook: the validator's rejection, counted by status and outcome.
    let before = after;
    assert_eq!(post(&gw, "/hooks/orders", r#"{"nope":1}"#).await, 422);
    let after = gw.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        moved(
            "hookgate_requests_total",
            &[("route", "orders"), ("status", "422")]
        ),
        1.0
    );
    assert_eq!(moved("hookgate_plugin_calls_total", &validator), 1.0);

    // A bad signature.
    let before = after;
    assert_eq!(post(&gw, "/hooks/signed", "{}").await, 401);
    let after = gw.scrape().await;
    let signed = [("app", "shop"), ("route", "signed")];
    assert_eq!(
        metric(&after, "hookgate_verification_failures_total", &signed)
            - metric(&before, "hookgate_verification_failures_total", &signed),
        1.0
    );

    // A failed delivery: an attempt, a dead letter, an open breaker.
    let before = after;
    let bank = [("destination", "bank")];
    assert_eq!(
        metric(
            &before,
            "hookgate_breaker_state",
            &[("destination", "bank"), ("state", "closed")]
        ),
        1.0
    );
    assert_eq!(post(&gw, "/hooks/refunds", "{}").await, 202);
    let after = gw
        .wait_metric("hookgate_dead_letter_queue_depth", &[], 1.0)
        .await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        moved(
            "hookgate_delivery_attempts_total",
            &[("destination", "bank"), ("outcome", "dead")]
        ),
        1.0
    );
    assert_eq!(
        moved("hookgate_dead_letters_total", &[("route", "refunds")]),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "hookgate_breaker_state",
            &[bank[0], ("state", "open")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "hookgate_breaker_state",
            &[bank[0], ("state", "closed")]
        ),
        0.0
    );

    // A delivery held for later: depth and delayed count it until then.
    let before = after;
    let delayed = metric(&before, "hookgate_journal_delayed", &[]);
    if delayed != 0.0 {
        // Seen once in a full-suite run and not reproduced since: keep what
        // the gateway said, so the next occurrence shows which task waits.
        let log = gw.log_lines();
        let tail = &log[log.len().saturating_sub(40)..];
        panic!(
            "{delayed} task(s) delayed before any delay was asked for; the gateway's last log lines:\n{}",
            tail.join("\n")
        );
    }
    assert_eq!(post(&gw, "/hooks/later", "{}").await, 202);
    // The due and delayed gauges are two scans of the due index, not one
    // snapshot: a scrape while the transform runs can count its task as due
    // and the delivery it made as delayed. Wait for the settled view.
    let after = eventually(async || {
        let text = gw.scrape().await;
        let due = metric(&text, "hookgate_journal_due", &[]);
        let delayed = metric(&text, "hookgate_journal_delayed", &[]);
        if (due, delayed) == (0.0, 1.0) {
            Ok(text)
        } else {
            Err(format!("due {due}, delayed {delayed}"))
        }
    })
    .await;
    assert_eq!(metric(&after, "hookgate_journal_depth", &[]), 1.0);
    assert_eq!(
        metric(
            &after,
            "hookgate_plugin_calls_total",
            &[
                ("plugin", "reshape"),
                ("role", "transform"),
                ("outcome", "ok")
            ]
        ),
        1.0
    );
}
