//! The scheduler: finds due tasks in the journal's due-time index and hands
//! each to the dispatcher, never the same task twice at once.
//!
//! It sleeps until the earliest due time (so "deliver at" timers cost nothing
//! while they wait, and survive restarts because they live in the journal),
//! and wakes early when ingress accepts a message or a task finishes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dispatcher::Dispatcher;
use crate::clock::now_ms;
use crate::store::{DueTask, TaskKind};

/// Tasks worked at once across all destinations. Each destination also has
/// its own limit; this bounds memory and the due-index scan.
const MAX_IN_FLIGHT: usize = 512;

/// A scan normally continues after the last task the previous one read
/// (tasks in flight stay in the due index, first in it, and walking past
/// up to [`MAX_IN_FLIGHT`] of them each time a task finishes cost more CPU
/// than the deliveries). New tasks are due now or later, so they land after
/// that cursor; the few that can sort before it (same millisecond, smaller
/// id) are picked up by a scan from the start, made this often and
/// whenever the cursor finds nothing.
const FULL_SCAN_EVERY: Duration = Duration::from_millis(50);

/// Longest sleep when nothing is due: an upper bound on how late a task
/// becomes due if a wake-up were ever missed.
const MAX_IDLE: Duration = Duration::from_secs(1);

type TaskKey = (String, TaskKind);

/// Runs until `shutdown`, then waits up to `grace` for the tasks in flight
/// to finish; any still running then stays due for the next start.
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let in_flight: Arc<Mutex<HashSet<TaskKey>>> = Arc::default();
    let workers = TaskTracker::new();
    let mut cursor: Option<DueTask> = None;
    let mut full_scan = tokio::time::Instant::now();
    loop {
        // Parked deliveries whose breaker now allows it go back to the due
        // index first, so this round sees them.
        let routes = dispatcher.routes.load();
        let parked_wake = match dispatcher.parking.release(&dispatcher.store, &routes) {
            Ok(at) => at,
            Err(err) => {
                tracing::error!(cause = %err, "releasing parked deliveries failed");
                None
            }
        };
        drop(routes);
        if full_scan.elapsed() >= FULL_SCAN_EVERY {
            cursor = None;
        }
        let scan = |from: Option<&DueTask>| match dispatch_due(
            &dispatcher,
            &wake,
            &in_flight,
            &workers,
            from,
        ) {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(cause = %err, "reading the due index failed");
                Found::default()
            }
        };
        let mut found = scan(cursor.as_ref());
        if cursor.is_some() && found.spawned == 0 {
            found = scan(None);
            cursor = None;
        }
        if cursor.is_none() {
            full_scan = tokio::time::Instant::now();
        }
        let spawned = found.spawned;
        if let Some(last) = found.last {
            cursor = Some(last);
        }
        let idle = if spawned > 0 {
            Duration::ZERO
        } else {
            match dispatcher.store.next_due() {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_IDLE),
                _ => MAX_IDLE,
            }
        };
        let idle = match parked_wake {
            Some(at) => idle.min(at.saturating_duration_since(tokio::time::Instant::now())),
            None => idle,
        };
        if idle.is_zero() && spawned > 0 {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(idle.max(Duration::from_millis(5))) => {}
        }
    }
    // Attempts not yet sent give up their turn and stay due; those sent
    // finish (and are journaled) within the grace period.
    dispatcher.stopping.cancel();
    workers.close();
    if tokio::time::timeout(grace, workers.wait()).await.is_err() {
        tracing::warn!(
            in_flight = workers.len(),
            "deliveries still in flight at shutdown stay due"
        );
    }
}

/// What one scan of the due index did.
#[derive(Default)]
struct Found {
    /// Workers started.
    spawned: usize,
    /// The last task read, where the next scan may continue.
    last: Option<DueTask>,
}

/// Spawns a worker for each due task (after `from`, if given) not already
/// in flight.
fn dispatch_due(
    dispatcher: &Arc<Dispatcher>,
    wake: &Arc<Notify>,
    in_flight: &Arc<Mutex<HashSet<TaskKey>>>,
    workers: &TaskTracker,
    from: Option<&DueTask>,
) -> Result<Found, crate::store::StoreError> {
    let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner()).len();
    if busy >= MAX_IN_FLIGHT {
        return Ok(Found::default());
    }
    // Tasks in flight are still in the due index (they leave it when their
    // outcome is journaled), so a scan from the start reads far enough to
    // see past them.
    let due = dispatcher.store.due_after(from, now_ms(), MAX_IN_FLIGHT)?;
    let last = due.last().cloned();
    let mut spawned = 0;
    for task in due {
        let key = (task.message_id.clone(), task.kind);
        if !in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            continue;
        }
        // The due list was read before this mark was set: a worker may have
        // finished the task in between (outcome journaled, mark dropped), and
        // running it again would send a second copy. Checked after the mark,
        // so a task that is still due here cannot finish under our feet.
        let still_due = dispatcher.store.is_due(&task);
        if !matches!(still_due, Ok(true)) {
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            still_due?;
            continue;
        }
        spawned += 1;
        let (dispatcher, wake, in_flight) = (dispatcher.clone(), wake.clone(), in_flight.clone());
        workers.spawn(async move {
            let _done = InFlight {
                key,
                set: in_flight,
                wake,
            };
            work_one(&dispatcher, &task).await;
        });
    }
    Ok(Found { spawned, last })
}

/// Takes a task off the in-flight set when its worker ends, even by a
/// panic, so the task can be picked up again.
struct InFlight {
    key: TaskKey,
    set: Arc<Mutex<HashSet<TaskKey>>>,
    wake: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.wake.notify_one();
    }
}

/// Works one task inside a span naming its message, so every line logged
/// on its way (plugin logs included) carries the message id, and the app,
/// route and attempt once the dispatcher has read them.
async fn work_one(dispatcher: &Dispatcher, task: &DueTask) {
    // ERROR level: a span is only entered when its level is enabled, and
    // this context must reach every line, even under `RUST_LOG=warn`.
    let span = tracing::error_span!(
        "task",
        message_id = %task.message_id,
        app = tracing::field::Empty,
        route = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    work_traced(dispatcher, task).instrument(span).await;
}

async fn work_traced(dispatcher: &Dispatcher, task: &DueTask) {
    if let Err(err) = dispatcher.work(task).await {
        // The task stays due (nothing was committed); back off so a broken
        // record cannot spin the scheduler.
        tracing::error!(message_id = %task.message_id, task = ?task.kind, cause = %err, "delivery task failed");
        if let Err(err) = dispatcher.store.reschedule(task, now_ms() + 5_000) {
            tracing::error!(message_id = %task.message_id, cause = %err, "could not reschedule a failed task");
        }
    }
}
