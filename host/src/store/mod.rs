//! Durable state behind small traits, so a networked backend can be added
//! without touching the code that uses it.
//!
//! - the message journal (`journal.rs`, records in `records.rs`): accepted
//!   messages, the due-time index, deliveries, attempts, dead letters and
//!   idempotency keys, changed together in transactions, durable after a
//!   shared flush (group commit);
//! - the per-app key-value store plugins reach through the WIT `host`
//!   interface.
//!
//! `sled` is the embedded default (`sled.rs`).

mod backlog;
mod journal;
mod kv;
mod records;
mod sled;

pub use self::journal::IdempotencyKey;
pub use self::journal::admin::{DeadLetterEntry, MessageFilter, Page, QueueStats};
pub use self::kv::KV_ENTRY_OVERHEAD;
pub use self::records::{
    Accepted, AttemptRecord, AttemptResult, DeadLetter, DeliveryIndex, DeliveryRecord,
    DeliveryStatus, DueTask, InboundMessage, MessageRecord, MessageStatus, OutgoingRequest,
    TaskKind,
};
pub use self::sled::{JOURNAL_GIVE_UP, JOURNAL_STALL, RoundObserver, SledStore};

/// Longest key a plugin may store, in bytes.
pub const KV_MAX_KEY: usize = 512;
/// Largest value a plugin may store, in bytes. The store is for small
/// answers and rules, not payload archives.
pub const KV_MAX_VALUE: usize = 64 << 10;

/// Errors from the storage layer. The cause is kept for the log; callers map
/// it to a short answer without internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// An app's key-value store is at its quota.
    #[error("{0}")]
    Full(String),
    /// The change does not fit the record's state (a caller bug or a race
    /// another worker won).
    #[error("invalid change: {0}")]
    Invalid(String),
}

/// A key-value store with a namespace per app and an optional expiry per
/// entry. Plugins of one app never see another app's keys: the namespace is
/// chosen by the host from the route, never by the guest.
pub trait KeyValue: Send + Sync + 'static {
    /// The value of `key` in `namespace`, or `None` if absent or expired at
    /// `now_ms` (milliseconds since the Unix epoch).
    fn get(&self, namespace: &str, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value`, replacing any previous one; `expires_at` is in ms
    /// since the Unix epoch, `None` for no expiry. [`StoreError::Full`] if
    /// the namespace's entries would then hold more than `quota` bytes
    /// (each entry's key and value, plus [`KV_ENTRY_OVERHEAD`]).
    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        expires_at: Option<u64>,
        quota: u64,
    ) -> Result<(), StoreError>;

    /// Removes `key`; absent keys are not an error.
    fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
}
