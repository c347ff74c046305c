//! What operators ask of the journal (the admin API, `/health`, metrics):
//! messages by app, route and status a page at a time, dead letters by
//! route or destination, purging a dead message, and queue figures.
//!
//! Paging uses a cursor, the last message id of the page: ids are UUIDv7,
//! time-ordered, so the `messages` tree is in arrival order and a page
//! resumes exactly where the last one stopped, whatever was added since.
//! A filtered page reads at most [`SCAN_BUDGET`] records; when it stops on
//! the budget it still returns a cursor, so a rare status never makes one
//! request walk the whole journal.

use std::sync::atomic::Ordering;

use super::{MessageState, decode, parse_dead_key};
use crate::store::records::{DeadLetter, MessageRecord, MessageStatus};
use crate::store::{SledStore, StoreError};

/// Most records one page reads before it answers with what it found.
pub const SCAN_BUDGET: usize = 10_000;

/// Which messages an operator asks for; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub app: Option<String>,
    pub route: Option<String>,
    pub status: Option<MessageStatus>,
    /// For dead letters: the delivery's destination.
    pub destination: Option<String>,
}

impl MessageFilter {
    fn matches(&self, app: &str, route: &str, status: MessageStatus) -> bool {
        self.app.as_ref().is_none_or(|a| a == app)
            && self.route.as_ref().is_none_or(|r| r == route)
            && self.status.is_none_or(|s| s == status)
    }

    /// True when nothing is filtered (bulk operations refuse that unless
    /// the caller says "all" explicitly).
    pub fn is_empty(&self) -> bool {
        self.app.is_none()
            && self.route.is_none()
            && self.status.is_none()
            && self.destination.is_none()
    }
}

/// One page and where the next one starts (`None`: nothing after it).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A dead letter with the message it belongs to.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    pub message: MessageRecord,
    pub letter: DeadLetter,
}

/// The queue at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Tasks waiting (transforms and deliveries).
    pub pending: u64,
    /// Of those, due now (or overdue).
    pub due: u64,
    /// Of those, due later (backoff, "deliver at").
    pub delayed: u64,
    /// Of those, deliveries parked while their destination's breaker is
    /// open.
    pub parked: u64,
    /// Highest `pending` since the gateway started.
    pub peak: u64,
    /// Deliveries in the dead-letter queue.
    pub dead_letters: u64,
}

impl SledStore {
    /// Messages matching `filter` in arrival order, after the cursor
    /// `after`, at most `limit`.
    pub fn list_messages(
        &self,
        filter: &MessageFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<MessageRecord>, StoreError> {
        let start = after
            .map(|id| [id.as_bytes(), &[0]].concat())
            .unwrap_or_default();
        let mut items = Vec::new();
        let mut last = None;
        // The small state records are scanned; a message is read only
        // when it matches.
        for (scanned, entry) in self.message_state.range(start..).enumerate() {
            let (key, raw) = entry?;
            if items.len() >= limit || scanned >= SCAN_BUDGET {
                return Ok(Page { items, next: last });
            }
            let id = String::from_utf8_lossy(&key).into_owned();
            let state: MessageState = decode(&raw, "message state")?;
            if filter.matches(&state.app, &state.route, state.status)
                && let Some(message) = self.inbound(&id)?
            {
                items.push(state.into_record(message));
            }
            last = Some(id);
        }
        Ok(Page { items, next: None })
    }

    /// Dead letters matching `filter` (app, route, destination; its status
    /// is ignored), after the message id `after`. A page holds whole
    /// messages: it stops at the first message past `limit` letters.
    pub fn list_dead_letters(
        &self,
        filter: &MessageFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeadLetterEntry>, StoreError> {
        let filter = MessageFilter {
            status: None,
            ..filter.clone()
        };
        let start = after
            .map(|id| [id.as_bytes(), &[1]].concat())
            .unwrap_or_default();
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut message: Option<MessageRecord> = None;
        for (scanned, key) in self.dead.range(start..).keys().enumerate() {
            let (id, index) = parse_dead_key(&key?)?;
            if cursor.as_deref() != Some(id.as_str()) {
                if items.len() >= limit || scanned >= SCAN_BUDGET {
                    return Ok(Page {
                        items,
                        next: cursor,
                    });
                }
                message = self.message(&id)?;
                cursor = Some(id.clone());
            }
            let (Some(record), Some(delivery)) = (&message, self.delivery(&id, index)?) else {
                continue;
            };
            let to = &delivery.request.destination;
            let m = &record.message;
            if filter.matches(&m.app, &m.route, record.status)
                && filter.destination.as_ref().is_none_or(|d| d == to)
            {
                items.push(DeadLetterEntry {
                    message: record.clone(),
                    letter: DeadLetter {
                        message_id: id,
                        index,
                        delivery,
                    },
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// Deletes a dead message and everything recorded about it: the
    /// operator has given up on it. Refused for a message that is not dead.
    pub fn purge(&self, id: &str) -> Result<(), StoreError> {
        let Some(record) = self.message(id)? else {
            return Err(StoreError::NotFound(format!("message {id:?}")));
        };
        let count = record.deliveries.unwrap_or(0);
        self.remove_message(id, count, Some(MessageStatus::Dead))
    }

    /// The queue's figures at `now` (ms since the epoch). Walks the due
    /// index's keys and the parked tree, which the backlog limits bound:
    /// cheap next to a delivery, but not free with a very large backlog
    /// (see ARCHITECTURE.md). Dead letters, never pruned, are counted as
    /// they come and go instead. The trees are read one after the other, not
    /// as one snapshot: a delivery parked or released meanwhile may count in
    /// both `due` and `parked`, or in neither. `pending`, counted as each
    /// write commits, is the figure to trust.
    pub fn queue_stats(&self, now: u64) -> Result<QueueStats, StoreError> {
        let end = now.saturating_add(1).to_be_bytes();
        let mut due = 0;
        for key in self.due.range(..end.as_slice()).keys() {
            key?;
            due += 1;
        }
        let mut delayed = 0;
        for key in self.due.range(end.as_slice()..).keys() {
            key?;
            delayed += 1;
        }
        Ok(QueueStats {
            pending: self.pending.load(Ordering::Relaxed),
            due,
            delayed,
            parked: self.parked_count()?,
            peak: self.peak.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        })
    }
}
