//! The webhooks the load generator sends: realistic signed JSON bodies that
//! carry their own sequence number and intended send time, so the sink can
//! tell which message arrived and how long after it was meant to be sent,
//! whatever the gateway did to the body on the way (the transform keeps
//! unknown fields).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hookgate::verify::{StandardSecret, sign_standard_webhooks};
use serde_json::Value;

/// The environment variable the gateway reads the inbound secret from.
pub const SECRET_ENV: &str = "HOOKGATE_BENCH_SECRET";

/// Field names the sink looks for; first in the body, so a scan stops early.
const SEQ_FIELD: &str = "\"bench_seq\":";
const DUE_FIELD: &str = "\"bench_due\":";

/// Every intended send time is counted from this instant, in nanoseconds,
/// so it fits in the body and the sink (same process) can subtract it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at`.
pub fn since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// `epoch() + nanos`.
pub fn at_nanos(nanos: u64) -> Instant {
    epoch() + Duration::from_nanos(nanos)
}

/// Body size of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// ~1 KB: an order with eight line items (`hookgate_tests::payload_1k`).
    OneK,
    /// ~64 KB: the same order with as many line items as fit.
    SixtyFourK,
}

impl Size {
    pub fn label(self) -> &'static str {
        match self {
            Size::OneK => "1 KB",
            Size::SixtyFourK => "64 KB",
        }
    }
}

/// Renders and signs webhooks of one size.
pub struct Webhooks {
    /// The order JSON without its opening `{`, so a body is
    /// `{"bench_seq":N,"bench_due":T,` + this.
    rest: String,
    secret: StandardSecret,
    /// `whsec_...`, for the gateway's environment.
    secret_text: String,
}

/// One rendered request: body and signature headers.
pub struct Signed {
    pub body: Bytes,
    pub headers: [(&'static str, String); 3],
}

impl Webhooks {
    pub fn new(size: Size) -> Webhooks {
        let order = match size {
            Size::OneK => hookgate_tests::payload_1k(),
            Size::SixtyFourK => grown_order(64 << 10),
        };
        let rest = order.strip_prefix('{').unwrap_or(&order).to_string();
        let secret_text = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"hookgate-bench-secret-32-bytes!!")
        );
        let secret = StandardSecret::parse(&secret_text).expect("the bench secret is well formed");
        Webhooks {
            rest,
            secret,
            secret_text,
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret_text
    }

    /// Message `seq`, meant to be sent at `due`, signed the Standard
    /// Webhooks way with a sender id of its own.
    pub fn render(&self, seq: u64, due: Instant) -> Signed {
        let body = format!(
            "{{{SEQ_FIELD}{seq},{DUE_FIELD}{},{}",
            since_epoch(due),
            self.rest
        );
        let id = format!("evt_bench_{seq}");
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = sign_standard_webhooks(&self.secret, &id, timestamp, body.as_bytes());
        Signed {
            body: Bytes::from(body),
            headers: [
                ("webhook-id", id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
        }
    }
}

/// `payload_1k`'s order with line items appended until it is `target` bytes.
fn grown_order(target: usize) -> String {
    let mut order: Value =
        serde_json::from_str(&hookgate_tests::payload_1k()).expect("payload_1k is JSON");
    let item = order["items"][0].clone();
    let item_len = item.to_string().len() + 1;
    let have = order.to_string().len();
    if let Some(items) = order["items"].as_array_mut() {
        for i in 0..target.saturating_sub(have) / item_len {
            let mut item = item.clone();
            item["sku"] = Value::String(format!("SKU-{:04}", i % 10_000));
            items.push(item);
        }
    }
    order.to_string()
}

/// The `(seq, due)` a delivered body carries, or `None` for a body that is
/// not one of ours.
pub fn parse_marks(body: &[u8]) -> Option<(u64, u64)> {
    Some((
        number_after(body, SEQ_FIELD)?,
        number_after(body, DUE_FIELD)?,
    ))
}

fn number_after(body: &[u8], field: &str) -> Option<u64> {
    let start = body
        .windows(field.len())
        .position(|w| w == field.as_bytes())?
        + field.len();
    let digits = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&body[start..start + digits])
        .ok()?
        .parse()
        .ok()
}
