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

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

    /// The queue's figures at `now` (ms since the epoch). `due`, `delayed`
    /// and `parked` come from walking the due index's keys and the parked
    /// tree (see [`WalkedCounts`]: with a very large backlog they are reused
    /// for a while instead of walked on every call). Dead letters, never
    /// pruned, are counted as they come and go instead. The trees are read
    /// one after the other, not as one snapshot: a delivery parked or
    /// released meanwhile may count in both `due` and `parked`, or in
    /// neither. `pending`, counted as each write commits, is the figure to
    /// trust.
    pub fn queue_stats(&self, now: u64) -> Result<QueueStats, StoreError> {
        let walked = self.walked.get(now, || self.walk_counts(now))?;
        Ok(QueueStats {
            pending: self.pending.load(Ordering::Relaxed),
            due: walked.due,
            delayed: walked.delayed,
            parked: walked.parked,
            peak: self.peak.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        })
    }

    fn walk_counts(&self, now: u64) -> Result<Walked, StoreError> {
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
        Ok(Walked {
            due,
            delayed,
            parked: self.parked_count()?,
        })
    }
}

/// The figures of [`SledStore::queue_stats`] that take a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walked {
    due: u64,
    delayed: u64,
    parked: u64,
}

/// The last walk's figures, reused while they are younger than
/// [`WALK_REUSE`] times the walk took, if it took [`SLOW_WALK`] or more.
///
/// A walk costs ~0.45 µs per key (a million keys: ~0.45 s, measured with
/// sled 0.34 on the project's machine), and `/health` and `/metrics` each
/// take one: a load balancer probing `/health` several times a second would
/// otherwise spend a core on it exactly when a backlog is draining. So slow
/// walks take at most a tenth of one core however often the figures are
/// asked for, while a journal of a few thousand tasks is walked on every
/// call (for less than the HTTP request that asks costs) and its figures
/// are always current. Callers that arrive during a slow walk wait for it
/// and share its figures.
#[derive(Default)]
pub(in crate::store) struct WalkedCounts {
    last: Mutex<Option<LastWalk>>,
}

struct LastWalk {
    finished: Instant,
    took: Duration,
    /// The `now` the walk split due from delayed at.
    at: u64,
    counts: Walked,
}

/// How many times its own duration a slow walk's figures are reused for.
const WALK_REUSE: u32 = 10;
/// Walks quicker than this (~2,000 keys) are never reused.
const SLOW_WALK: Duration = Duration::from_millis(1);

impl WalkedCounts {
    fn get(
        &self,
        now: u64,
        walk: impl FnOnce() -> Result<Walked, StoreError>,
    ) -> Result<Walked, StoreError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = last.as_ref()
            // A clock that stepped back gets a fresh walk.
            && now >= last.at
            && last.took >= SLOW_WALK
            && last.finished.elapsed() < last.took * WALK_REUSE
        {
            return Ok(last.counts);
        }
        let started = Instant::now();
        let counts = walk()?;
        let finished = Instant::now();
        *last = Some(LastWalk {
            finished,
            took: finished - started,
            at: now,
            counts,
        });
        Ok(counts)
    }

    /// Makes the last walk look as if it took `took`: the tests' way to
    /// stand in for a slow or a quick walk whatever the machine does.
    #[cfg(test)]
    pub(in crate::store) fn pretend_walk_took(&self, took: Duration) {
        if let Some(last) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            last.took = took;
        }
    }
}
