//! The embedded sled backend: one data directory, no server to run.
//!
//! One tree per kind of record. The journal's trees are described in
//! `journal.rs`; the key-value store's (`kv`) in `kv.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::StoreError;
use super::backlog::Backlog;
use super::journal::admin::WalkedCounts;
use super::journal::{Acceptance, IdempotencyKey, Write};
use super::kv::KvUsage;
use super::records::{Accepted, InboundMessage};
use crate::clock::mono_ms;

/// A sled database holding every tree the gateway uses. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    pub(super) kv: sled::Tree,
    /// Bytes each app's key-value entries hold, against its quota.
    pub(super) kv_usage: Arc<KvUsage>,
    pub(super) messages: sled::Tree,
    pub(super) message_state: sled::Tree,
    pub(super) deliveries: sled::Tree,
    pub(super) delivery_state: sled::Tree,
    pub(super) due: sled::Tree,
    pub(super) attempts: sled::Tree,
    pub(super) dead: sled::Tree,
    pub(super) idempotency: sled::Tree,
    /// Deliveries waiting for their destination's breaker, out of the due
    /// index (see `journal/parking.rs`).
    pub(super) parked: sled::Tree,
    /// Destinations disabled after a 410, by place (see
    /// `journal/parking.rs`), so that a restart keeps them disabled; and
    /// the same set in memory, read before every attempt.
    pub(super) disabled: sled::Tree,
    pub(super) disabled_places: Arc<std::sync::RwLock<std::collections::HashSet<Vec<u8>>>>,
    /// Entries in `due` and `parked` (tasks waiting, parked or not), kept
    /// in memory: sled's `len` walks the whole tree, and ingest checks the
    /// backlog on every request.
    pub(super) pending: Arc<AtomicU64>,
    /// Highest `pending` seen since the store was opened (for `/health`).
    pub(super) peak: Arc<AtomicU64>,
    /// Entries in `dead`, kept in memory: dead letters are never pruned,
    /// and `/health` and `/metrics` report them on every call.
    pub(super) dead_letters: Arc<AtomicU64>,
    /// Pending messages per route, for each route's backlog limit.
    pub(super) backlog: Arc<Backlog>,
    /// The queue figures that take a walk of the due and parked trees.
    pub(super) walked: Arc<WalkedCounts>,
    group: Arc<GroupCommit>,
}

/// The journal rounds: what waits for the next round, and whether rounds are
/// running. A round writes the queued accepted messages in one transaction,
/// flushes once (when anyone waits for disk) and answers them, then applies
/// the delivery-pipeline writes that have waited [`WRITE_GATHER`] in one
/// transaction. Whatever arrives during a round waits for the next one,
/// since its writes may postdate the flush's start.
///
/// Sharing is the point: sled charges far more per transaction and per
/// flush than per key (the gateway benchmark's *journal alone* rows: one
/// transaction per 1 KB message ~9.5k/s, one per round ~29k/s), because
/// each transaction and each flush seals sled's log buffer, and each
/// sealed buffer is a synced write that wakes all seven of sled's IO
/// threads (a context switch each, which at moderate rates is most of what
/// the gateway spends). Under load, a round waits [`GATHER`] first so that
/// more callers share it; the first round after a quiet spell starts at
/// once, so a lone webhook is not delayed.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<GroupState>,
    /// When the round in progress started writing (ms since the Unix
    /// epoch), 0 between rounds: a write that never returns (sled can wedge
    /// on a failed blob file) shows as a stall on `/health`.
    busy_since: AtomicU64,
    /// Why the journal failed for good, once a flush has failed: sled keeps
    /// its first IO error (a full disk, a file-size limit, a failing device)
    /// and refuses every later write, so only a restart, which recovers from
    /// its log, brings it back.
    failed: watch::Sender<Option<String>>,
    /// Told what each round did: the gateway's metrics (and the tests that
    /// show callers share flushes and transactions).
    observer: OnceLock<Arc<dyn RoundObserver>>,
}

/// Hears what the journal rounds do, for metrics. Called on the rounds'
/// thread, once per flush or write transaction (not per message): keep it
/// cheap and never block.
pub trait RoundObserver: Send + Sync {
    /// A flush took `took` and made `messages` newly accepted messages
    /// durable: 0 when its round had none (only callers of
    /// [`SledStore::durable`], or only duplicates of earlier messages) or
    /// when the write or the flush failed.
    fn flushed(&self, took: Duration, messages: usize);
    /// A round is about to apply `writes` of the delivery side's writes, in
    /// one transaction (or one each, should that transaction fail).
    fn writes_applied(&self, writes: usize);
}

#[derive(Default)]
struct GroupState {
    flushing: bool,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Messages to journal in the next round's transaction, each with who
    /// waits for it to be on disk.
    accepts: Vec<(Acceptance, oneshot::Sender<Result<Accepted, StoreError>>)>,
    /// Delivery-pipeline writes to apply in the next round's transaction;
    /// they need no flush of their own.
    writes: Vec<(Write, oneshot::Sender<Result<(), StoreError>>)>,
}

/// How long a journal round may write before it counts as stalled. A
/// round's flush takes well under a millisecond on a healthy disk and tens
/// of milliseconds on a slow one.
pub const JOURNAL_STALL: Duration = Duration::from_secs(5);

/// How long a journal round may write before the gateway gives up on the
/// disk and stops (exit 1), as it does when a write fails: a full disk can
/// hang sled's writes instead of failing them, and a gateway that answers
/// every sender 503 for good looks alive to everything but its probes. A
/// supervisor's restart then tries the disk again; nothing acknowledged is
/// at stake, since an acknowledgement waits for its write.
pub const JOURNAL_GIVE_UP: Duration = Duration::from_secs(60);

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Backend(err.to_string())
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with sled's default page
    /// cache (1 GiB).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::from_db(sled::Config::new().path(dir).open()?)
    }

    /// [`SledStore::open`] with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::from_db(
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()?,
        )
    }

    /// How long the journal round in progress has been writing, once that
    /// is [`JOURNAL_STALL`] or more: the disk is not taking writes, and
    /// nothing is acknowledged until it does.
    pub fn stalled_for(&self) -> Option<Duration> {
        let since = self.group.busy_since.load(Ordering::Relaxed);
        let busy = Duration::from_millis(mono_ms().saturating_sub(since));
        (since != 0 && busy >= JOURNAL_STALL).then_some(busy)
    }

    /// Why the journal failed for good, if it has: see
    /// [`SledStore::failed`].
    pub fn failure(&self) -> Option<String> {
        self.group.failed.borrow().clone()
    }

    /// Waits until a flush fails, and says why. sled keeps its first IO
    /// error and refuses every write after it, so from then on nothing can
    /// be acknowledged until the process restarts: the gateway stops (what it
    /// acknowledged was flushed before).
    pub async fn failed(&self) -> Option<String> {
        let mut failure = self.group.failed.subscribe();
        // Only an error if the sender is gone, and the store holds it.
        let cause = failure.wait_for(Option::is_some).await.ok()?;
        cause.clone()
    }

    /// Makes the journal look as if a round had been writing for `busy`,
    /// for tests of what a stall does.
    #[cfg(test)]
    pub(crate) fn pretend_busy_for(&self, busy: Duration) {
        let since = mono_ms() - busy.as_millis() as u64;
        self.group.busy_since.store(since, Ordering::Relaxed);
    }

    /// Records that the journal failed for good (the first cause is kept):
    /// [`SledStore::failed`] wakes, and the gateway stops.
    pub fn fail(&self, cause: String) {
        self.group.failed.send_if_modified(|failed| {
            let first = failed.is_none();
            if first {
                *failed = Some(cause);
            }
            first
        });
    }

    /// A store that lives in memory and a temporary file removed on drop; for
    /// `hookgate plugin run` and tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        check_format(&db)?;
        let dead = db.open_tree("dead")?;
        Self {
            kv: db.open_tree("kv")?,
            kv_usage: Arc::default(),
            messages: db.open_tree("messages")?,
            message_state: db.open_tree("message_state")?,
            deliveries: db.open_tree("deliveries")?,
            delivery_state: db.open_tree("delivery_state")?,
            attempts: db.open_tree("attempts")?,
            dead_letters: Arc::new(AtomicU64::new(dead.len() as u64)),
            dead,
            idempotency: db.open_tree("idempotency")?,
            parked: db.open_tree("parked")?,
            disabled_places: Arc::default(),
            disabled: db.open_tree("disabled")?,
            due: db.open_tree("due")?,
            peak: Arc::default(),
            pending: Arc::default(),
            backlog: Arc::default(),
            walked: Arc::default(),
            group: Arc::default(),
            db,
        }
        .with_parked_released()?
        .with_disabled_loaded()?
        .with_pending_counted()
        .with_backlog_counted()?
        .with_kv_counted()
    }

    /// Counts the due index into `pending` (and its peak); run at open once
    /// the parked deliveries are back in it.
    fn with_pending_counted(self) -> Self {
        let due = self.due.len() as u64;
        self.pending.store(due, Ordering::Relaxed);
        self.peak.store(due, Ordering::Relaxed);
        self
    }

    /// Tells `observer` what each journal round does from now on. Only the
    /// first observer set is kept; returns whether this one was.
    pub fn observe_rounds(&self, observer: Arc<dyn RoundObserver>) -> bool {
        self.group.observer.set(observer).is_ok()
    }

    /// Returns once every write made before the call is on disk. Concurrent
    /// callers share flushes: whoever finds no flush running starts a round
    /// on a blocking thread and keeps going while waiters keep arriving.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.next_round(|state, reply| state.waiters.push(reply))
            .await
    }

    /// [`SledStore::accept`], returning once the message is on disk. The
    /// messages of concurrent callers are journaled in one transaction and
    /// flushed together: the round that would have flushed them one by one
    /// writes them as one batch.
    pub async fn accept_durable(
        &self,
        message: InboundMessage,
        idempotency: Option<&IdempotencyKey>,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let acceptance = Acceptance::new(message, idempotency, now)?;
        self.next_round(|state, reply| state.accepts.push((acceptance, reply)))
            .await
    }

    /// Applies `write` in the next round, in one transaction with the other
    /// writes queued for it. Not flushed: a later flush, or sled's own
    /// within half a second, makes it durable, and a crash before that
    /// repeats the step (at-least-once).
    pub(super) async fn write_shared(&self, write: Write) -> Result<(), StoreError> {
        self.next_round(|state, reply| state.writes.push((write, reply)))
            .await
    }

    /// Queues for the next round (`enqueue` puts the reply channel where
    /// the round answers it) and waits for the answer.
    async fn next_round<T>(
        &self,
        enqueue: impl FnOnce(&mut GroupState, oneshot::Sender<Result<T, StoreError>>),
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.join_round(|state| enqueue(state, reply));
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Backend("journal rounds ended".into())))
    }

    /// Queues for the next round and starts the rounds if none run.
    fn join_round(&self, enqueue: impl FnOnce(&mut GroupState)) {
        let lead = {
            let mut state = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            enqueue(&mut state);
            !std::mem::replace(&mut state.flushing, true)
        };
        if lead {
            let store = self.clone();
            let rounds = Rounds {
                group: self.group.clone(),
                finished: false,
            };
            tokio::task::spawn_blocking(move || flush_rounds(&store, rounds));
        }
    }
}

/// The journal layout this build reads and writes, kept in the default tree.
/// A data directory written with another layout is refused at open, with a
/// message saying so, rather than misread.
const FORMAT_KEY: &[u8] = b"hookgate.journal-format";
const FORMAT: u32 = 2;

fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY)? {
        Some(raw) if raw.as_ref() == FORMAT.to_be_bytes() => Ok(()),
        Some(raw) => Err(StoreError::Corrupt(format!(
            "journal format {:?} is not the format {FORMAT} this hookgate reads",
            raw.as_ref()
        ))),
        // Format 1 had no marker: a journal with messages but no marker is
        // one, and cannot be read as format 2.
        None if db.open_tree("messages")?.is_empty() => {
            db.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
            Ok(())
        }
        None => Err(StoreError::Corrupt(format!(
            "the journal was written by an older hookgate (format 1); this one reads format {FORMAT}: \
             drain it with the older version, or move the data directory aside"
        ))),
    }
}

/// The rounds' claim to run. Should they end without finding the queue
/// empty (a panic, or a runtime shutting down before the blocking task
/// started), the callers waiting get an error (their channel closes) and the
/// next caller starts new rounds, instead of every later acknowledgement
/// waiting for rounds that are gone.
struct Rounds {
    group: Arc<GroupCommit>,
    finished: bool,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiters.clear();
            state.accepts.clear();
            state.writes.clear();
            state.flushing = false;
        }
    }
}

/// How long a round under load waits for more acknowledgements before it
/// flushes: a fraction of what one flush takes on an SSD, so the ack
/// latency it adds stays well under a millisecond.
const GATHER: Duration = Duration::from_micros(300);

/// Rounds until one finds nobody waiting: each journals its accepted
/// messages in one transaction, flushes once if anyone waits for disk and
/// answers them, then applies the delivery-pipeline writes queued for
/// [`WRITE_GATHER`] or longer in one transaction (flushed by a later round,
/// or by sled within half a second). Acknowledgements go first and never
/// wait for company longer than [`GATHER`]: a sender is waiting on each,
/// and nobody waits on the delivery side's writes for a flush. Runs on one
/// blocking thread for the whole busy spell (no hand-off to a new thread per
/// round).
fn flush_rounds(store: &SledStore, mut rounds: Rounds) {
    let group = &store.group;
    let mut busy = false;
    // When the oldest write still queued was first seen.
    let mut writes_waiting: Option<Instant> = None;
    loop {
        if busy {
            std::thread::sleep(GATHER);
        }
        let (waiters, accepts, writes) = {
            let mut state = group.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.waiters.is_empty() && state.accepts.is_empty() && state.writes.is_empty() {
                state.flushing = false;
                rounds.finished = true;
                return;
            }
            let writes = if state.writes.is_empty() {
                Vec::new()
            } else {
                let since = *writes_waiting.get_or_insert_with(Instant::now);
                if since.elapsed() >= WRITE_GATHER || state.writes.len() >= WRITE_BATCH {
                    writes_waiting = None;
                    std::mem::take(&mut state.writes)
                } else {
                    Vec::new()
                }
            };
            (
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.accepts),
                writes,
            )
        };
        group.busy_since.store(mono_ms(), Ordering::Relaxed);
        if !waiters.is_empty() || !accepts.is_empty() {
            acknowledge(store, waiters, accepts);
        }
        if !writes.is_empty() {
            let (batch, repliers): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
            if let Some(observer) = group.observer.get() {
                observer.writes_applied(batch.len());
            }
            for (reply, result) in repliers.into_iter().zip(store.apply_writes(&batch)) {
                let _ = reply.send(result);
            }
        }
        group.busy_since.store(0, Ordering::Relaxed);
        busy = true;
    }
}

/// How long the delivery side's writes (transform and attempt outcomes,
/// parks) wait for company before a round applies them, unless
/// [`WRITE_BATCH`] are queued sooner. Each step of a delivery waits for its
/// write; a message whose lone delivery is sent in its transform's task
/// (`Write::SentAtOnce`) makes one, others one per step. What it buys is
/// at moderate rates, where a round would otherwise apply one or two
/// writes: at 1000 msg/s with validate + transform, a sixth of the
/// gateway's CPU and a third of its context switches, for ~1 ms of
/// end-to-end latency
/// (BENCHMARKS.md, *What session 8 changed*).
pub(super) const WRITE_GATHER: Duration = Duration::from_millis(2);
/// Queued writes that a round applies at once, without waiting out
/// [`WRITE_GATHER`].
const WRITE_BATCH: usize = 256;

/// One round's acknowledgements: journals the accepted messages in one
/// transaction, flushes, and answers the acceptances and everyone waiting
/// for disk.
fn acknowledge(
    store: &SledStore,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    accepts: Vec<(Acceptance, oneshot::Sender<Result<Accepted, StoreError>>)>,
) {
    let (batch, repliers): (Vec<_>, Vec<_>) = accepts.into_iter().unzip();
    let written = if batch.is_empty() {
        Ok(Vec::new())
    } else {
        store.write_accepts(&batch)
    };
    let started = Instant::now();
    let flushed = store.db.flush().map(|_| ()).map_err(StoreError::from);
    if let Err(err) = &flushed {
        store.fail(err.to_string());
    }
    if let Some(observer) = store.group.observer.get() {
        let messages = match (&written, &flushed) {
            (Ok(accepted), Ok(())) => accepted
                .iter()
                .filter(|a| matches!(a, Accepted::New(_)))
                .count(),
            _ => 0,
        };
        observer.flushed(started.elapsed(), messages);
    }
    for waiter in waiters {
        let _ = waiter.send(flushed.clone());
    }
    match written.and_then(|accepted| flushed.map(|()| accepted)) {
        Ok(accepted) => {
            for (reply, accepted) in repliers.into_iter().zip(accepted) {
                let _ = reply.send(Ok(accepted));
            }
        }
        Err(err) => {
            for reply in repliers {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round that has written for the stall threshold shows as stalled;
    /// an idle journal and a round in its first seconds do not.
    #[tokio::test]
    async fn a_round_writing_past_the_threshold_is_a_stall() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.durable().await?;
        assert_eq!(store.stalled_for(), None, "rounds leave it idle");
        store.pretend_busy_for(Duration::from_millis(1));
        assert_eq!(store.stalled_for(), None);
        store.pretend_busy_for(JOURNAL_STALL + Duration::from_millis(500));
        let stalled = store.stalled_for().unwrap_or_default();
        // The clock moved on by a little since.
        assert!(
            stalled >= JOURNAL_STALL + Duration::from_millis(500)
                && stalled < JOURNAL_STALL + Duration::from_secs(5),
            "{stalled:?}"
        );
        Ok(())
    }
}
