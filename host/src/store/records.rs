//! What the journal keeps: messages, their deliveries, every attempt, and
//! dead letters. Plain data, encoded with postcard; the sled layout that holds
//! them is in `journal.rs`.
//!
//! One inbound message becomes zero or more deliveries when the transform
//! runs (filter = zero, fan-out = several). Each delivery is scheduled,
//! attempted and dead-lettered on its own; the message is finished when all
//! of its deliveries are.

use serde::{Deserialize, Serialize};

/// Index of a delivery within its message (fan-out position).
pub type DeliveryIndex = u16;

/// An accepted webhook, as the sender delivered it: everything needed to
/// rebuild what a plugin sees, at delivery time or on replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub id: String,
    pub app: String,
    pub route: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub received_at: u64,
    /// SHA-256 of the validate plugin version that let the message in (none
    /// without a validate plugin): every attempt's log names it, with the
    /// transform's and the fallback's, so an operator can tell which code
    /// handled which message.
    pub validate_hash: Option<String>,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageStatus {
    /// Waiting for its transform, or some delivery is still pending.
    Pending,
    /// Every delivery succeeded.
    Delivered,
    /// The transform dropped it (a filter).
    Filtered,
    /// At least one delivery is dead and none is pending.
    Dead,
    /// None is pending or dead, and a fallback plugin settled at least one
    /// delivery without it reaching its destination (kept apart from
    /// `Delivered` so operators can tell the two apart). Last variant:
    /// postcard numbers variants, so older records still decode.
    Handled,
}

impl MessageStatus {
    /// Stable label for the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Filtered => "filtered",
            MessageStatus::Dead => "dead",
            MessageStatus::Handled => "handled",
        }
    }

    pub const ALL: [MessageStatus; 5] = [
        MessageStatus::Pending,
        MessageStatus::Delivered,
        MessageStatus::Filtered,
        MessageStatus::Dead,
        MessageStatus::Handled,
    ];
}

impl std::str::FromStr for MessageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?} (expected pending, delivered, filtered, dead or handled)"
                )
            })
    }
}

/// A message and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub message: InboundMessage,
    pub status: MessageStatus,
    /// How many deliveries the transforms produced so far (a replay appends
    /// after the earlier ones); `None` before the first transform ran.
    pub deliveries: Option<DeliveryIndex>,
    /// Last change, ms since the Unix epoch (drives retention).
    pub updated_at: u64,
}

/// The request one delivery sends, as the transform produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRequest {
    /// Name of a destination of the message's route.
    pub destination: String,
    pub method: String,
    /// Appended to the destination URL (only where it allows a path).
    pub path: Option<String>,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Where a delivery is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Due at this time (ms since the Unix epoch); also in the due index.
    Pending {
        due_at: u64,
    },
    Delivered,
    /// In the dead-letter queue, with the reason.
    Dead {
        reason: String,
    },
    /// Settled by a fallback decision without being delivered.
    Handled,
    /// Was dead, then replayed: the replay's deliveries follow it.
    Replayed,
}

/// One fan-out delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub request: OutgoingRequest,
    pub status: DeliveryStatus,
    /// Attempts made so far (all destinations; numbers the attempt log).
    pub attempts: u32,
    /// Attempts made before the current destination's budget started (a
    /// reroute starts a fresh budget without renumbering the log).
    pub budget_start: u32,
    /// The transform's override of the route's maximum attempts.
    pub max_attempts: Option<u32>,
    /// Content hash of the transform plugin that produced the request, if any.
    pub transform_hash: Option<String>,
}

/// One delivery attempt, kept for operators (admin API) until retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it started, ms since the Unix epoch.
    pub started_at: u64,
    pub duration_ms: u64,
    /// HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// The first bytes of the answer (bounded by the dispatcher).
    #[serde(with = "serde_bytes")]
    pub response: Vec<u8>,
    /// Timeout, connection error, breaker open...; `None` on an answer.
    pub error: Option<String>,
    /// Content hashes of the plugin versions that handled this attempt.
    pub plugin_hashes: Vec<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Try again at this time (ms since the Unix epoch).
    RetryAt(u64),
    /// Into the dead-letter queue.
    Dead(String),
    /// Settled by a fallback.
    Handled,
    /// A fallback sent it to another destination of the route, due now
    /// (ms since the Unix epoch), with a fresh attempt budget.
    Reroute {
        destination: String,
        at: u64,
    },
}

/// One entry of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub index: DeliveryIndex,
    pub delivery: DeliveryRecord,
}

/// A unit of work the scheduler hands to a dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Run the transform, producing the deliveries.
    Transform,
    /// Attempt one delivery.
    Deliver(DeliveryIndex),
}

/// A due task: which message, what to do, and when it was due.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DueTask {
    pub due_at: u64,
    pub message_id: String,
    pub kind: TaskKind,
}

/// The answer to an accept: a new message, or the one the idempotency key
/// already names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    New(String),
    Duplicate(String),
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Accepted::New(id) | Accepted::Duplicate(id) => id,
        }
    }
}
