//! Tables for people: each admin answer laid out in columns. The data is
//! the API's JSON, field for field; only the layout differs from `--json`.

use std::fmt::Write as _;

use serde_json::Value;

use super::{AdminCall, DeadCall, table, time};

/// A JSON value as a cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn items<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body[key].as_array().map_or(&[], Vec::as_slice)
}

/// Plugin content hashes cut to the 12 digits the log shows (`--json` has
/// them whole; `admin plugins` names the version each one is).
fn short_hashes(v: &Value) -> String {
    let short = |h: &Value| {
        h.as_str()
            .map_or_else(|| cell(h), |h| h.chars().take(12).collect())
    };
    match v {
        Value::Array(hashes) => hashes.iter().map(short).collect::<Vec<_>>().join(","),
        other => short(other),
    }
}

/// A success rate as a percentage.
fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

pub(super) fn render(call: &AdminCall, body: &Value) -> String {
    match call {
        AdminCall::Health => health(body),
        AdminCall::Queue => queue(body),
        AdminCall::Messages { .. } => messages(body),
        AdminCall::Message { .. } => message(body),
        AdminCall::Dead(DeadCall::List { .. }) => dead_letters(body),
        AdminCall::Dead(DeadCall::Replay { .. }) => done(body, "replayed"),
        AdminCall::Dead(DeadCall::Purge { .. }) => done(body, "purged"),
        AdminCall::Breakers => breakers(items(body, "breakers")),
        AdminCall::ResetBreaker { .. } | AdminCall::Enable { .. } => {
            breakers(std::slice::from_ref(body))
        }
        AdminCall::Plugins => plugins(items(body, "plugins")),
    }
}

fn next_page(out: &mut String, body: &Value) {
    if let Some(next) = body["next"].as_str() {
        let _ = write!(out, "\nnext page: --after {next}");
    }
}

fn messages(body: &Value) -> String {
    let mut t = table(&["ID", "APP", "ROUTE", "STATUS", "RECEIVED", "DELIVERIES"]);
    for m in items(body, "messages") {
        t.add_row(vec![
            cell(&m["id"]),
            cell(&m["app"]),
            cell(&m["route"]),
            cell(&m["status"]),
            time(&m["received_at"]),
            cell(&m["deliveries"]),
        ]);
    }
    let mut out = t.to_string();
    next_page(&mut out, body);
    out
}

fn message(body: &Value) -> String {
    let m = &body["message"];
    let mut out = String::new();
    for (label, value) in [
        ("id", cell(&m["id"])),
        (
            "app/route",
            format!("{}/{}", cell(&m["app"]), cell(&m["route"])),
        ),
        ("status", cell(&m["status"])),
        ("received", time(&m["received_at"])),
        (
            "request",
            format!(
                "{} {} ({} bytes)",
                cell(&body["method"]),
                cell(&body["path"]),
                cell(&body["body_bytes"])
            ),
        ),
    ] {
        let _ = writeln!(out, "{label:<10} {value}");
    }
    let mut t = table(&[
        "DELIVERY",
        "DESTINATION",
        "STATUS",
        "ATTEMPT",
        "STARTED",
        "MS",
        "HTTP",
        "ERROR",
        "PLUGINS",
    ]);
    for d in items(body, "deliveries") {
        let attempts = items(d, "attempts");
        // A pending delivery due later says when (a retry's backoff, a
        // "deliver at"): the wait is otherwise invisible here. One due
        // already is being worked, or parked behind its destination
        // (`admin breakers` says why).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let status = match d["due_at"].as_u64() {
            Some(due) if due > now => {
                format!("{} (due {})", cell(&d["status"]), time(&d["due_at"]))
            }
            _ => cell(&d["status"]),
        };
        let summary = vec![
            cell(&d["index"]),
            cell(&d["destination"]),
            status,
            cell(&d["attempts_made"]),
            "-".into(),
            "-".into(),
            "-".into(),
            cell(&d["reason"]),
            short_hashes(&d["transform_hash"]),
        ];
        t.add_row(summary);
        for a in attempts {
            t.add_row(vec![
                String::new(),
                String::new(),
                String::new(),
                cell(&a["attempt"]),
                time(&a["started_at"]),
                cell(&a["duration_ms"]),
                cell(&a["status"]),
                cell(&a["error"]),
                short_hashes(&a["plugin_hashes"]),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out
}

fn dead_letters(body: &Value) -> String {
    let mut t = table(&[
        "MESSAGE",
        "DELIVERY",
        "APP",
        "ROUTE",
        "DESTINATION",
        "ATTEMPTS",
        "REASON",
    ]);
    for d in items(body, "dead_letters") {
        t.add_row(vec![
            cell(&d["message_id"]),
            cell(&d["index"]),
            cell(&d["app"]),
            cell(&d["route"]),
            cell(&d["destination"]),
            cell(&d["attempts"]),
            cell(&d["reason"]),
        ]);
    }
    let mut out = t.to_string();
    next_page(&mut out, body);
    out
}

fn done(body: &Value, verb: &str) -> String {
    let ids = items(body, verb);
    let mut out = format!("{verb} {} message(s)", ids.len());
    for id in ids {
        let _ = write!(out, "\n  {}", cell(id));
    }
    for b in items(body, "held_back_by") {
        let (app, route, dest) = (cell(&b["app"]), cell(&b["route"]), cell(&b["destination"]));
        let why = if b["disabled"] == Value::Bool(true) {
            format!(
                "is disabled after a 410; `hookgate admin enable {app} {route} {dest}` lets them go"
            )
        } else {
            let when = b["open_for_ms"].as_u64().map_or_else(String::new, |ms| {
                format!(" for {} s more", ms.div_ceil(1000))
            });
            format!(
                "has its breaker {}{when}; `hookgate admin reset-breaker {app} {route} {dest}` sends them now",
                cell(&b["state"])
            )
        };
        let _ = write!(
            out,
            "\nnote: deliveries to {app}/{route}/{dest} wait: it {why}"
        );
    }
    out
}

fn breakers(list: &[Value]) -> String {
    let mut t = table(&[
        "APP",
        "ROUTE",
        "DESTINATION",
        "STATE",
        "PROBES IN MS",
        "DISABLED",
        "OPENED",
        "REJECTED",
        "URL",
    ]);
    for b in list {
        t.add_row(vec![
            cell(&b["app"]),
            cell(&b["route"]),
            cell(&b["destination"]),
            cell(&b["state"]),
            cell(&b["open_for_ms"]),
            cell(&b["disabled"]),
            cell(&b["opened"]),
            cell(&b["rejected"]),
            cell(&b["url"]),
        ]);
    }
    t.to_string()
}

fn plugins(list: &[Value]) -> String {
    let mut t = table(&["NAME", "SHA256", "ROLES", "ERROR", "FILE"]);
    for p in list {
        t.add_row(vec![
            cell(&p["name"]),
            cell(&p["hash"]),
            cell(&p["roles"]),
            cell(&p["error"]),
            cell(&p["file"]),
        ]);
    }
    t.to_string()
}

fn queue(body: &Value) -> String {
    let mut t = table(&[
        "PENDING",
        "DUE",
        "DELAYED",
        "PARKED",
        "PEAK",
        "DEAD LETTERS",
    ]);
    t.add_row(
        [
            "pending",
            "due",
            "delayed",
            "parked",
            "peak",
            "dead_letters",
        ]
        .map(|k| cell(&body[k]))
        .to_vec(),
    );
    t.to_string()
}

fn health(body: &Value) -> String {
    let mut out = format!("status: {}\n", cell(&body["status"]));
    for reason in items(body, "reasons") {
        let _ = writeln!(out, "  - {}", cell(reason));
    }
    let totals = &body["totals"];
    let _ = writeln!(
        out,
        "window: {}s, attempts {}, failures {}, success {}",
        cell(&body["window_seconds"]),
        cell(&totals["window_attempts"]),
        cell(&totals["window_failures"]),
        pct(&totals["success_rate"]),
    );
    if let Some(err) = body["last_error"].as_object() {
        let at = err.get("at").cloned().unwrap_or(Value::Null);
        let message = err.get("message").cloned().unwrap_or(Value::Null);
        let _ = writeln!(out, "last error: {} {}", time(&at), cell(&message));
    }
    out.push('\n');
    let mut t = table(&[
        "APP",
        "ROUTE",
        "RECEIVED",
        "DELIVERED",
        "DEAD",
        "ATTEMPTS",
        "FAILURES",
        "SUCCESS",
    ]);
    for r in items(body, "routes") {
        t.add_row(vec![
            cell(&r["app"]),
            cell(&r["route"]),
            cell(&r["received"]),
            cell(&r["delivered"]),
            cell(&r["dead_lettered"]),
            cell(&r["window_attempts"]),
            cell(&r["window_failures"]),
            pct(&r["success_rate"]),
        ]);
    }
    let _ = writeln!(out, "{t}\n\n{}\n", queue(&body["queue"]));
    let _ = writeln!(out, "{}\n", breakers(items(body, "breakers")));
    out.push_str(&plugins(items(body, "plugins")));
    out
}
