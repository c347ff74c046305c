use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::store::{AttemptResult, OutgoingRequest, RoundObserver, SledStore};

fn message(id: &str) -> InboundMessage {
    InboundMessage {
        id: id.into(),
        app: "shop".into(),
        route: "orders".into(),
        method: "POST".into(),
        path: "/hooks/orders".into(),
        query: String::new(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: br#"{"id":1}"#.to_vec(),
        received_at: 1_000,
        validate_hash: None,
    }
}

fn delivery(destination: &str, due_at: u64) -> DeliveryRecord {
    DeliveryRecord {
        request: OutgoingRequest {
            destination: destination.into(),
            method: "POST".into(),
            path: None,
            query: None,
            headers: vec![],
            body: b"{}".to_vec(),
        },
        status: DeliveryStatus::Pending { due_at },
        attempts: 0,
        budget_start: 0,
        max_attempts: None,
        transform_hash: None,
    }
}

fn attempt(n: u32, status: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        started_at: 2_000,
        duration_ms: 5,
        status,
        response: b"nope".to_vec(),
        error: None,
        plugin_hashes: vec!["abc".into()],
    }
}

/// Opens the store in `dir` again after the previous handle was dropped:
/// sled releases its file lock from a background thread after the drop, so
/// the first tries may find it still held.
fn reopen(dir: &std::path::Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return Ok(store),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Opens `dir` once sled's lock from an earlier handle is released, and
/// returns the store's own verdict (not a lock error).
fn reopen_until_unlocked(dir: &std::path::Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Err(StoreError::Backend(reason))
                if reason.contains("lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn store() -> SledStore {
    SledStore::temporary().expect("temporary store")
}

/// Counts the journal rounds' flushes and write transactions, as the
/// gateway's metrics hear of them.
#[derive(Default)]
struct RoundCount {
    flushes: AtomicU64,
    write_transactions: AtomicU64,
}

impl RoundObserver for RoundCount {
    fn flushed(&self, _took: std::time::Duration, _messages: usize) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn writes_applied(&self, _writes: usize) {
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
    }
}

impl RoundCount {
    /// A count of `store`'s rounds from now on.
    fn of(store: &SledStore) -> Arc<RoundCount> {
        let count = Arc::new(RoundCount::default());
        assert!(
            store.observe_rounds(count.clone()),
            "one observer per store"
        );
        count
    }

    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    fn write_transactions(&self) -> u64 {
        self.write_transactions.load(Ordering::Relaxed)
    }
}

/// Accepts `id`, gives it one delivery, and kills that delivery with one
/// failed attempt (status `status`, reason `reason`).
fn dead_message(store: &SledStore, id: &str, status: u16, reason: &str) -> Result<(), StoreError> {
    store.accept(message(id), None, 1_000)?;
    store.set_deliveries(&message(id), 1_000, &[delivery("a", 1_000)], 1_000)?;
    store.record_attempt(
        id,
        0,
        &attempt(1, Some(status)),
        &AttemptResult::Dead(reason.into()),
        2_000,
    )
}

#[tokio::test]
async fn an_accepted_message_is_due_for_its_transform() -> Result<(), StoreError> {
    let store = store();
    let accepted = store.accept(message("m1"), None, 1_000)?;
    store.durable().await?;
    assert_eq!(accepted, Accepted::New("m1".into()));
    assert_eq!(store.pending(), 1);
    assert_eq!(store.due(999, 10)?, vec![]);
    let due = store.due(1_000, 10)?;
    assert_eq!(
        due,
        vec![DueTask {
            due_at: 1_000,
            message_id: "m1".into(),
            kind: TaskKind::Transform
        }]
    );
    assert_eq!(store.next_due()?, Some(1_000));
    let record = store.message("m1")?.expect("record");
    assert_eq!(record.status, MessageStatus::Pending);
    assert_eq!(record.message, message("m1"));
    Ok(())
}

#[tokio::test]
async fn a_repeated_idempotency_key_gets_the_first_id_until_it_expires() -> Result<(), StoreError> {
    let store = store();
    let key = IdempotencyKey {
        key: "delivery-7".into(),
        expires_at: 5_000,
    };
    assert_eq!(
        store.accept(message("m1"), Some(&key), 1_000)?,
        Accepted::New("m1".into())
    );
    assert_eq!(
        store.accept(message("m2"), Some(&key), 2_000)?,
        Accepted::Duplicate("m1".into())
    );
    assert!(store.message("m2")?.is_none(), "no second message");
    assert_eq!(store.pending(), 1);
    let later = IdempotencyKey {
        key: "delivery-7".into(),
        expires_at: 9_000,
    };
    assert_eq!(
        store.accept(message("m3"), Some(&later), 5_000)?,
        Accepted::New("m3".into())
    );
    Ok(())
}

#[test]
fn the_transform_replaces_its_task_with_one_task_per_delivery() -> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    let fan_out = [delivery("warehouse", 1_000), delivery("audit", 60_000)];
    store.set_deliveries(&message("m1"), 1_000, &fan_out, 1_001)?;
    assert_eq!(store.pending(), 2);
    let due = store.due(1_000, 10)?;
    assert_eq!(
        due,
        vec![DueTask {
            due_at: 1_000,
            message_id: "m1".into(),
            kind: TaskKind::Deliver(0)
        }]
    );
    assert_eq!(store.due(60_000, 10)?.len(), 2);
    assert_eq!(store.message("m1")?.expect("record").deliveries, Some(2));
    // The transform task is gone: running it twice is refused.
    assert!(matches!(
        store.set_deliveries(&message("m1"), 1_000, &fan_out, 1_002),
        Err(StoreError::NotFound(_))
    ));
    Ok(())
}

#[test]
fn a_transform_that_drops_everything_filters_the_message() -> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    store.set_deliveries(&message("m1"), 1_000, &[], 1_001)?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Filtered
    );
    assert_eq!(store.due(u64::MAX - 1, 10)?, vec![]);
    assert_eq!(store.pending(), 0);
    Ok(())
}

#[test]
fn a_planned_message_is_journaled_with_its_inline_attempt_and_no_transform_task()
-> Result<(), StoreError> {
    let store = store();
    let mut queued = delivery("upstream", 5_000);
    queued.attempts = 1;
    store.accept_planned(
        message("q1"),
        &[queued],
        Some(&attempt(1, Some(503))),
        1_000,
    )?;
    assert_eq!(store.pending(), 1);
    // Due once, as a delivery: nothing would run the transform again.
    assert_eq!(store.due(4_999, 10)?, vec![]);
    assert_eq!(
        store.due(5_000, 10)?,
        vec![DueTask {
            due_at: 5_000,
            message_id: "q1".into(),
            kind: TaskKind::Deliver(0)
        }]
    );
    assert_eq!(store.attempts("q1", 0)?, vec![attempt(1, Some(503))]);
    let record = store.message("q1")?.expect("record");
    assert_eq!(
        (record.status, record.deliveries),
        (MessageStatus::Pending, Some(1))
    );

    let mut dead = delivery("upstream", 1_000);
    dead.status = DeliveryStatus::Dead {
        reason: "pending manual handling".into(),
    };
    store.accept_planned(message("d1"), &[dead], None, 1_000)?;
    assert_eq!(store.pending(), 1, "a dead delivery is not pending");
    assert_eq!(
        store.message("d1")?.expect("record").status,
        MessageStatus::Dead
    );
    assert_eq!(store.dead_letters(None, 10)?.len(), 1);
    Ok(())
}

#[test]
fn attempts_move_the_due_time_and_settle_the_message() -> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    store.set_deliveries(
        &message("m1"),
        1_000,
        &[delivery("a", 1_000), delivery("b", 1_000)],
        1_000,
    )?;

    store.record_attempt(
        "m1",
        0,
        &attempt(1, Some(503)),
        &AttemptResult::RetryAt(3_000),
        2_000,
    )?;
    let due: Vec<_> = store
        .due(10_000, 10)?
        .into_iter()
        .map(|t| (t.due_at, t.kind))
        .collect();
    assert_eq!(
        due,
        vec![(1_000, TaskKind::Deliver(1)), (3_000, TaskKind::Deliver(0))]
    );

    store.record_attempt(
        "m1",
        1,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        2_000,
    )?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Pending
    );
    store.record_attempt(
        "m1",
        0,
        &attempt(2, Some(200)),
        &AttemptResult::Delivered,
        3_000,
    )?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Delivered
    );
    assert_eq!(store.pending(), 0);

    let log = store.attempts("m1", 0)?;
    assert_eq!(
        log.iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(200))]
    );
    assert_eq!(store.delivery("m1", 0)?.expect("delivery").attempts, 2);
    // A settled delivery takes no more attempts.
    let again = store.record_attempt(
        "m1",
        0,
        &attempt(3, Some(200)),
        &AttemptResult::Delivered,
        4_000,
    );
    assert!(matches!(again, Err(StoreError::Invalid(_))));
    Ok(())
}

/// A transform's lone delivery sent at once: its plan and its first
/// attempt land in one write, which leaves the journal as the two writes
/// it stands for would (the delivery in the due index only when it is to
/// be retried), and the counts follow.
#[test]
fn a_delivery_sent_at_once_is_journaled_with_its_attempt() -> Result<(), StoreError> {
    let store = store();
    for id in ["m1", "m2", "m3"] {
        store.accept(message(id), None, 1_000)?;
    }
    assert_eq!((store.pending(), store.backlog("shop", "orders")), (3, 3));
    let sent = |id, status, result: &AttemptResult| {
        let log = attempt(1, Some(status));
        let write = Write::sent_at_once(
            &message(id),
            1_000,
            &delivery("crm", 1_000),
            (&log, result),
            None,
            2_000,
        )?;
        store.apply_alone(&write)
    };
    sent("m1", 200, &AttemptResult::Delivered)?;
    sent("m2", 503, &AttemptResult::RetryAt(3_000))?;
    sent("m3", 400, &AttemptResult::Dead("permanent".into()))?;

    let status = |id| store.message(id).map(|r| r.map(|r| r.status));
    assert_eq!(status("m1")?, Some(MessageStatus::Delivered));
    assert_eq!(status("m2")?, Some(MessageStatus::Pending));
    assert_eq!(status("m3")?, Some(MessageStatus::Dead));
    for id in ["m1", "m2", "m3"] {
        let log = store.attempts(id, 0)?;
        assert_eq!(log.len(), 1, "{id}: {log:?}");
        assert_eq!(store.delivery(id, 0)?.map(|d| d.attempts), Some(1), "{id}");
    }
    // Only the retry waits, at its retry time; no transform task is left.
    let due: Vec<_> = store
        .due(10_000, 10)?
        .into_iter()
        .map(|t| (t.due_at, t.message_id, t.kind))
        .collect();
    assert_eq!(due, vec![(3_000, "m2".to_string(), TaskKind::Deliver(0))]);
    assert_eq!((store.pending(), store.backlog("shop", "orders")), (1, 1));
    assert_eq!(store.queue_stats(10_000)?.dead_letters, 1);

    // The transform task is gone now: a second write of the step finds
    // nothing to replace and changes nothing.
    assert!(matches!(
        sent("m1", 200, &AttemptResult::Delivered),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.attempts("m1", 0)?.len(), 1);
    assert_eq!(store.pending(), 1);
    Ok(())
}

/// After a replay, the delivery sent at once is the message's next one: the
/// earlier delivery and its attempts stay as they were.
#[test]
fn a_replayed_message_sent_at_once_appends_its_delivery() -> Result<(), StoreError> {
    let store = store();
    dead_message(&store, "m1", 500, "exhausted")?;
    store.replay("m1", 3_000)?;
    let log = attempt(1, Some(200));
    let write = Write::sent_at_once(
        &message("m1"),
        3_000,
        &delivery("crm", 3_000),
        (&log, &AttemptResult::Delivered),
        None,
        3_001,
    )?;
    store.apply_alone(&write)?;
    assert_eq!(
        store.delivery("m1", 0)?.map(|d| d.status),
        Some(DeliveryStatus::Replayed)
    );
    assert_eq!(
        store.attempts("m1", 0)?.len(),
        1,
        "the old attempt log is kept"
    );
    assert_eq!(
        store.delivery("m1", 1)?.map(|d| (d.status, d.attempts)),
        Some((DeliveryStatus::Delivered, 1))
    );
    assert_eq!(
        store.message("m1")?.map(|r| r.status),
        Some(MessageStatus::Delivered)
    );
    assert_eq!(
        (store.pending(), store.queue_stats(10_000)?.dead_letters),
        (0, 0)
    );
    Ok(())
}

#[test]
fn a_dead_delivery_makes_a_dead_message_never_a_pending_one() -> Result<(), StoreError> {
    let store = store();
    dead_message(&store, "m1", 400, "status 400")?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Dead
    );
    assert_eq!(
        store.delivery("m1", 0)?.expect("delivery").status,
        DeliveryStatus::Dead {
            reason: "status 400".into()
        }
    );
    assert_eq!(store.due(u64::MAX - 1, 10)?, vec![]);
    Ok(())
}

/// A delivery dead-lettered without being sent (its destination left the
/// config): no attempt is recorded, the counts move as for any dead
/// delivery, and the route's alert joins the message as a new delivery.
#[tokio::test]
async fn an_unsent_dead_letter_records_no_attempt_and_keeps_the_counts() -> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    store.set_deliveries(&message("m1"), 1_000, &[delivery("gone", 1_000)], 1_000)?;
    assert_eq!((store.pending(), store.backlog("shop", "orders")), (1, 1));

    let alert = delivery("oncall", 2_000);
    store
        .dead_letter_unsent_shared(&message("m1"), 0, "destination left", Some(&alert), 2_000)
        .await?;
    assert_eq!(store.attempts("m1", 0)?, vec![]);
    assert_eq!(
        store.delivery("m1", 0)?.expect("delivery").status,
        DeliveryStatus::Dead {
            reason: "destination left".into()
        }
    );
    assert_eq!(store.queue_stats(2_000)?.dead_letters, 1);
    // The alert is pending, so the message is too.
    assert_eq!((store.pending(), store.backlog("shop", "orders")), (1, 1));
    assert_eq!(store.due(u64::MAX - 1, 10)?.len(), 1);

    // Dead-lettering it again is refused: it is not pending any more.
    assert!(
        store
            .dead_letter_unsent_shared(&message("m1"), 0, "again", None, 3_000)
            .await
            .is_err()
    );
    assert_eq!(store.queue_stats(3_000)?.dead_letters, 1);
    Ok(())
}

#[test]
fn a_rescheduled_task_waits_without_an_attempt() -> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    store.set_deliveries(&message("m1"), 1_000, &[delivery("a", 1_000)], 1_000)?;
    let task = store.due(1_000, 1)?.remove(0);
    store.reschedule(&task, 61_000)?;
    assert_eq!(store.due(60_999, 10)?, vec![]);
    assert_eq!(store.due(61_000, 10)?.len(), 1);
    assert!(store.attempts("m1", 0)?.is_empty());
    assert_eq!(store.pending(), 1);
    Ok(())
}

#[tokio::test]
async fn durable_messages_survive_reopening_the_store() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    {
        let store = SledStore::open(dir.path())?;
        store.accept(message("m1"), None, 1_000)?;
        store.accept(message("m2"), None, 1_001)?;
        store.durable().await?;
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.pending(),
        2,
        "the in-memory count is rebuilt from disk"
    );
    let ids: Vec<_> = store
        .due(2_000, 10)?
        .into_iter()
        .map(|t| t.message_id)
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acknowledgements_share_flushes() -> Result<(), StoreError> {
    let store = store();
    let rounds = RoundCount::of(&store);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store.accept(message(&format!("m{i:03}")), None, 1_000)?;
            store.durable().await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| StoreError::Backend(e.to_string()))??;
    }
    let flushes = rounds.flushes();
    assert!(flushes >= 1, "every acknowledgement waited for a flush");
    assert!(
        flushes < 200,
        "200 acknowledgements took {flushes} flushes: no sharing"
    );
    assert_eq!(store.pending(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_are_journaled_in_shared_rounds_and_survive_reopening()
-> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let key = IdempotencyKey {
        key: "delivery-7".into(),
        expires_at: 60_000,
    };
    let answers = {
        let store = SledStore::open(dir.path())?;
        let rounds = RoundCount::of(&store);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (store, key) = (store.clone(), key.clone());
            tasks.spawn(async move {
                let id = format!("m{i:03}");
                // Every tenth sender retries the same delivery.
                let idempotency = (i % 10 == 0).then_some(&key);
                let accepted = store
                    .accept_durable(message(&id), idempotency, 1_000)
                    .await?;
                Ok::<_, StoreError>((id, i % 10 == 0, accepted))
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.map_err(|e| StoreError::Backend(e.to_string()))??);
        }
        assert!(
            rounds.flushes() < 200,
            "200 accepts took {} flushes: no sharing",
            rounds.flushes()
        );
        answers
    };
    let store = reopen(dir.path())?;
    let keyed: Vec<_> = answers.iter().filter(|(_, keyed, _)| *keyed).collect();
    let firsts: Vec<_> = keyed
        .iter()
        .filter(|(_, _, a)| matches!(a, Accepted::New(_)))
        .collect();
    assert_eq!(firsts.len(), 1, "one keyed sender wins: {keyed:?}");
    let first = firsts[0].2.id();
    for (_, _, accepted) in &keyed {
        assert_eq!(accepted.id(), first, "a repeat gets the first message's id");
    }
    for (id, keyed, accepted) in &answers {
        if !keyed {
            assert_eq!(accepted, &Accepted::New(id.clone()));
        }
    }
    assert_eq!(store.pending(), 181, "180 unkeyed and one keyed message");
    assert!(store.message(first)?.is_some(), "the winner is on disk");
    Ok(())
}

#[test]
fn a_failing_write_in_a_batch_fails_alone() -> Result<(), StoreError> {
    let store = store();
    for id in ["m1", "m2"] {
        store.accept(message(id), None, 1_000)?;
    }
    store.set_deliveries(&message("m1"), 1_000, &[delivery("crm", 1_000)], 1_000)?;
    // m2's transform task is due at 1_000: a write naming another time finds
    // no task, as when the message was replayed or purged meanwhile.
    let stale = Write::deliveries(&message("m2"), 999, &[delivery("crm", 1_000)], 1_000)?;
    let delivered = AttemptResult::Delivered;
    let good = Write::attempt("m1", 0, &attempt(1, Some(200)), &delivered, None, 1_001)?;
    let results = store.apply_writes(&[stale, good]);
    assert!(
        matches!(results[0], Err(StoreError::NotFound(_))),
        "{results:?}"
    );
    assert_eq!(results[1], Ok(()));
    let status = |id| store.message(id).map(|r| r.map(|r| r.status));
    assert_eq!(status("m1")?, Some(MessageStatus::Delivered));
    assert_eq!(status("m2")?, Some(MessageStatus::Pending));
    assert_eq!(store.pending(), 1, "only m2's transform is still due");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipeline_writes_share_transactions_and_settle_every_message()
-> Result<(), StoreError> {
    let store = store();
    let ids: Vec<String> = (0..100).map(|i| format!("m{i:03}")).collect();
    for id in &ids {
        store.accept(message(id), None, 1_000)?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let store = store.clone();
        tasks.spawn(async move {
            let inbound = message(&id);
            let plan = [delivery("crm", 1_000), delivery("erp", 1_000)];
            store
                .set_deliveries_shared(&inbound, 1_000, &plan, 1_000)
                .await?;
            for index in 0..2 {
                let delivered = AttemptResult::Delivered;
                let log = attempt(1, Some(200));
                store
                    .record_attempt_shared(&inbound, index, &log, &delivered, None, 1_001)
                    .await?;
            }
            Ok::<_, StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| StoreError::Backend(e.to_string()))??;
    }
    assert_eq!(store.pending(), 0);
    for id in &ids {
        let record = store.message(id)?.expect("journaled");
        assert_eq!(record.status, MessageStatus::Delivered, "{id}");
        assert_eq!(store.attempts(id, 1)?.len(), 1, "{id}: one attempt logged");
    }
    Ok(())
}

/// A delivery write waits `WRITE_GATHER` for company before a round
/// applies it, so writes queued a moment apart (two tasks finishing
/// together) share one transaction instead of one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_writes_queued_together_share_one_transaction() -> Result<(), StoreError> {
    let store = store();
    let (first, second) = (message("m1"), message("m2"));
    store.accept(first.clone(), None, 1_000)?;
    store.accept(second.clone(), None, 1_000)?;
    let rounds = RoundCount::of(&store);
    let plan = [delivery("crm", 1_000)];
    let queued = std::time::Instant::now();
    let (a, b) = tokio::join!(
        store.set_deliveries_shared(&first, 1_000, &plan, 1_000),
        store.set_deliveries_shared(&second, 1_000, &plan, 1_000),
    );
    a?;
    b?;
    assert!(
        queued.elapsed() >= crate::store::sled::WRITE_GATHER,
        "the writes waited for company"
    );
    assert_eq!(rounds.write_transactions(), 1, "one transaction for both");
    assert_eq!(
        store.due(2_000, 10)?.len(),
        2,
        "each message's delivery is due"
    );
    Ok(())
}

#[tokio::test]
async fn the_dead_letter_count_follows_every_way_in_and_out_and_survives_reopening()
-> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let dead = |store: &SledStore| store.queue_stats(10_000).map(|q| q.dead_letters);
    {
        let store = SledStore::open(dir.path())?;
        // An attempt that dead-letters its delivery.
        dead_message(&store, "m1", 400, "400")?;
        dead_message(&store, "m2", 400, "400")?;
        assert_eq!(dead(&store)?, 2);
        // A failed transform dead-letters its deliveries as it journals them.
        store.accept(message("m3"), None, 1_000)?;
        let mut doomed = delivery("a", 1_000);
        doomed.status = DeliveryStatus::Dead {
            reason: "transform failed".into(),
        };
        store.set_deliveries(&message("m3"), 1_000, &[doomed.clone(), doomed], 1_000)?;
        assert_eq!(dead(&store)?, 4);
        // A replay takes a message's letters out; its new delivery may die
        // again.
        store.replay("m1", 3_000)?;
        assert_eq!(dead(&store)?, 3);
        store.set_deliveries(&message("m1"), 3_000, &[delivery("a", 3_000)], 3_000)?;
        let again = AttemptResult::Dead("again".into());
        store.record_attempt("m1", 1, &attempt(1, Some(400)), &again, 4_000)?;
        assert_eq!(dead(&store)?, 4);
        // A purge removes all of a message's letters.
        store.purge("m3")?;
        assert_eq!(dead(&store)?, 2);
        store.durable().await?;
    }
    let store = reopen(dir.path())?;
    assert_eq!(dead(&store)?, 2, "counted from the index at open");
    assert_eq!(store.dead_letters(None, 10)?.len(), 2);
    Ok(())
}

#[test]
fn dead_letters_are_listed_in_order_and_paged() -> Result<(), StoreError> {
    let store = store();
    for id in ["m1", "m2", "m3"] {
        dead_message(&store, id, 400, "400")?;
    }
    let first: Vec<_> = store
        .dead_letters(None, 2)?
        .into_iter()
        .map(|d| d.message_id)
        .collect();
    assert_eq!(first, ["m1", "m2"]);
    let rest: Vec<_> = store
        .dead_letters(Some("m2"), 10)?
        .into_iter()
        .map(|d| d.message_id)
        .collect();
    assert_eq!(rest, ["m3"]);
    Ok(())
}

#[test]
fn a_replay_reruns_the_transform_and_keeps_the_old_attempts() -> Result<(), StoreError> {
    let store = store();
    dead_message(&store, "m1", 500, "exhausted")?;
    assert!(matches!(
        store.replay("m2", 3_000),
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(
        store.replay("m1", 3_000)?,
        ("shop".to_string(), "orders".to_string())
    );
    assert_eq!(store.dead_letters(None, 10)?, vec![]);
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Pending
    );
    let due = store.due(3_000, 10)?;
    assert_eq!(
        due,
        vec![DueTask {
            due_at: 3_000,
            message_id: "m1".into(),
            kind: TaskKind::Transform
        }]
    );
    // Only dead messages can be replayed.
    assert!(matches!(
        store.replay("m1", 3_001),
        Err(StoreError::Invalid(_))
    ));

    store.set_deliveries(&message("m1"), 3_000, &[delivery("a", 3_000)], 3_000)?;
    assert_eq!(
        store.delivery("m1", 0)?.expect("old").status,
        DeliveryStatus::Replayed
    );
    assert_eq!(
        store.attempts("m1", 0)?.len(),
        1,
        "the old attempt log is kept"
    );
    store.record_attempt(
        "m1",
        1,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        4_000,
    )?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Delivered
    );
    assert_eq!(store.pending(), 0);
    Ok(())
}

#[test]
fn retention_prunes_finished_messages_and_keeps_the_rest() -> Result<(), StoreError> {
    let store = store();
    // Real ids are time-ordered (UUIDv7); these encode times 1 s and 2 s.
    let old = "msg_0000000003e8700080000000000000001";
    let pending = "msg_0000000003e9700080000000000000002";
    let dead = "msg_0000000003ea700080000000000000003";
    let key = IdempotencyKey {
        key: "k".into(),
        expires_at: 5_000,
    };
    store.accept(message(old), Some(&key), 1_000)?;
    store.set_deliveries(&message(old), 1_000, &[delivery("a", 1_000)], 1_000)?;
    store.record_attempt(
        old,
        0,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        1_500,
    )?;
    store.accept(message(pending), None, 1_001)?;
    store.accept(message(dead), None, 1_002)?;
    store.set_deliveries(&message(dead), 1_002, &[delivery("a", 1_002)], 1_002)?;
    store.record_attempt(
        dead,
        0,
        &attempt(1, Some(400)),
        &AttemptResult::Dead("400".into()),
        1_600,
    )?;

    assert_eq!(
        store.prune(1_500, 100)?,
        0,
        "changed at 1500: not before it"
    );
    assert_eq!(store.prune(10_000, 100)?, 1);
    assert!(store.message(old)?.is_none());
    assert!(store.delivery(old, 0)?.is_none());
    assert!(store.attempts(old, 0)?.is_empty());
    // Nothing of it is left in any tree, parts that change included.
    let key = delivery_key(old, 0);
    assert!(!store.messages.contains_key(old)?);
    assert!(!store.message_state.contains_key(old)?);
    assert!(!store.deliveries.contains_key(&key)?);
    assert!(!store.delivery_state.contains_key(&key)?);
    assert!(
        store.message(pending)?.is_some(),
        "pending messages are kept"
    );
    assert!(
        store.message(dead)?.is_some(),
        "dead letters wait for an operator"
    );
    // The expired idempotency key is gone: the same key is new again.
    let again = IdempotencyKey {
        key: "k".into(),
        expires_at: 20_000,
    };
    assert!(matches!(
        store.accept(message("msg_new"), Some(&again), 10_000)?,
        Accepted::New(_)
    ));
    Ok(())
}

#[test]
fn each_route_counts_its_pending_messages_and_the_count_survives_a_reopen() -> Result<(), StoreError>
{
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let store = SledStore::open(dir.path())?;
    let backlog = |store: &SledStore| store.backlog("shop", "orders");
    store.accept(message("filtered"), None, 1_000)?;
    store.accept(message("delivered"), None, 1_000)?;
    store.accept(message("waiting"), None, 1_000)?;
    assert_eq!(backlog(&store), 3);
    assert_eq!(store.backlog("shop", "refunds"), 0);

    store.set_deliveries(&message("filtered"), 1_000, &[], 1_001)?;
    assert_eq!(backlog(&store), 2, "a filtered message is finished");
    store.set_deliveries(&message("delivered"), 1_000, &[delivery("a", 1_000)], 1_001)?;
    let ok = attempt(1, Some(200));
    store.record_attempt("delivered", 0, &ok, &AttemptResult::Delivered, 1_002)?;
    assert_eq!(backlog(&store), 1, "a delivered message is finished");
    dead_message(&store, "dead", 500, "gave up")?;
    assert_eq!(backlog(&store), 1, "a dead message is finished");
    store.replay("dead", 2_000)?;
    assert_eq!(backlog(&store), 2, "a replayed message is pending again");

    drop(store);
    let store = reopen(dir.path())?;
    assert_eq!(backlog(&store), 2, "rebuilt from the due index");
    Ok(())
}

#[tokio::test]
async fn a_dead_delivery_with_an_alert_keeps_the_message_pending_until_the_alert_is_sent()
-> Result<(), StoreError> {
    let store = store();
    store.accept(message("m1"), None, 1_000)?;
    store.set_deliveries(&message("m1"), 1_000, &[delivery("crm", 1_000)], 1_000)?;
    let dead = AttemptResult::Dead("attempts exhausted".into());
    let alert = delivery("alert", 2_000);
    store
        .record_attempt_shared(
            &message("m1"),
            0,
            &attempt(5, Some(503)),
            &dead,
            Some(&alert),
            2_000,
        )
        .await?;
    let record = store.message("m1")?.expect("record");
    assert_eq!(
        (record.status, record.deliveries),
        (MessageStatus::Pending, Some(2))
    );
    assert_eq!(store.pending(), 1, "the alert is due");
    assert_eq!(
        store.dead_letters(None, 10)?.len(),
        1,
        "and the lead is in the DLQ"
    );
    let due = store.due(2_000, 10)?;
    assert_eq!(due[0].kind, TaskKind::Deliver(1));
    store.record_attempt(
        "m1",
        1,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        2_001,
    )?;
    assert_eq!(
        store.message("m1")?.expect("record").status,
        MessageStatus::Dead
    );
    assert_eq!(store.pending(), 0);
    Ok(())
}

#[test]
fn a_body_is_journaled_once_and_every_delivery_reads_back_whole() -> Result<(), StoreError> {
    let store = store();
    let inbound = message("m1");
    store.accept(inbound.clone(), None, 1_000)?;
    let mut unchanged = delivery("a", 1_000);
    unchanged.request.body = inbound.body.clone();
    let mut reshaped = delivery("b", 1_000);
    reshaped.request.body = br#"{"order":1}"#.to_vec();
    store.set_deliveries(
        &message("m1"),
        1_000,
        &[unchanged.clone(), reshaped.clone()],
        1_000,
    )?;

    // The pass-through delivery points at the inbound body instead of
    // holding a copy; the reshaped one keeps its own.
    let stored = store.deliveries.get(delivery_key("m1", 0))?.expect("plan");
    let plan: DeliveryPlan = decode(&stored, "plan")?;
    assert_eq!(plan.body, None);
    assert_eq!(store.delivery("m1", 0)?, Some(unchanged.clone()));
    assert_eq!(store.delivery_of(&inbound, 0)?, Some(unchanged));
    assert_eq!(store.delivery("m1", 1)?, Some(reshaped));

    // An attempt rewrites only the small state records: the plan and the
    // message are byte for byte what they were.
    let message_before = store.messages.get("m1")?;
    store.record_attempt(
        "m1",
        0,
        &attempt(1, Some(503)),
        &AttemptResult::RetryAt(5_000),
        2_000,
    )?;
    assert_eq!(store.messages.get("m1")?, message_before);
    assert_eq!(store.deliveries.get(delivery_key("m1", 0))?, Some(stored));
    let retried = store.delivery("m1", 0)?.expect("delivery");
    assert_eq!(
        (retried.status, retried.attempts),
        (DeliveryStatus::Pending { due_at: 5_000 }, 1)
    );
    Ok(())
}

#[test]
fn a_journal_in_another_format_is_refused_with_a_reason() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    {
        // What the first journal format left: messages, and no marker.
        let db = sled::Config::new().path(dir.path()).open()?;
        db.open_tree("messages")?
            .insert("m1", b"old record".as_slice())?;
        db.flush()?;
    }
    let err = match reopen_until_unlocked(dir.path()) {
        Ok(_) => panic!("a format-1 journal opened"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("format 1"), "{err}");
    Ok(())
}

#[test]
fn a_batch_release_makes_the_waiting_deliveries_due_and_drops_the_settled_one()
-> Result<(), StoreError> {
    let store = store();
    for id in ["m1", "m2", "m3"] {
        store.accept(message(id), None, 1_000)?;
        store.set_deliveries(&message(id), 1_000, &[delivery("a", 1_000)], 1_000)?;
    }
    for task in store.due(1_000, 10)? {
        store.park(&task, b"shop/orders/a")?;
    }
    // Settled while parked (an operator's replay elsewhere, say).
    store.record_attempt(
        "m2",
        0,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        2_000,
    )?;
    assert_eq!(store.release_parked(b"shop/orders/a", 10, 5_000)?, 3);
    let due: Vec<_> = store
        .due(5_000, 10)?
        .into_iter()
        .map(|t| (t.message_id, t.due_at))
        .collect();
    assert_eq!(due, [("m1".to_string(), 5_000), ("m3".to_string(), 5_000)]);
    assert_eq!(store.queue_stats(5_000)?.parked, 0);
    Ok(())
}

#[test]
fn a_parked_delivery_leaves_the_due_index_until_released_and_a_reopen_releases_it()
-> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Backend(e.to_string()))?;
    let store = SledStore::open(dir.path())?;
    store.accept(message("m1"), None, 1_000)?;
    store.accept(message("m2"), None, 1_000)?;
    store.set_deliveries(&message("m1"), 1_000, &[delivery("a", 1_000)], 1_000)?;
    store.set_deliveries(&message("m2"), 1_000, &[delivery("a", 1_000)], 1_000)?;
    let tasks = store.due(1_000, 10)?;
    assert_eq!(tasks.len(), 2);
    for task in &tasks {
        store.park(task, b"shop/orders/a")?;
    }
    // Parked: not due, still pending, counted apart.
    assert!(store.due(u64::MAX - 1, 10)?.is_empty());
    assert_eq!(store.pending(), 2);
    assert_eq!(store.queue_stats(1_000)?.parked, 2);
    assert!(store.has_parked(b"shop/orders/a")?);
    assert!(!store.has_parked(b"shop/orders/b")?);
    // A place is not a prefix match for a longer one.
    assert_eq!(store.release_parked(b"shop/orders/", 10, 5_000)?, 0);
    assert!(
        store.park(&tasks[0], b"shop/orders/a").is_err(),
        "a task that is not due cannot be parked twice"
    );

    // Released one at a time (a probe), due at the release time, and an
    // attempt on it finds the due entry its delivery names.
    assert_eq!(store.release_parked(b"shop/orders/a", 1, 5_000)?, 1);
    let due = store.due(5_000, 10)?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].due_at, 5_000);
    let id = due[0].message_id.clone();
    store.record_attempt(
        &id,
        0,
        &attempt(1, Some(200)),
        &AttemptResult::Delivered,
        5_001,
    )?;
    assert_eq!(
        store.message(&id)?.expect("record").status,
        MessageStatus::Delivered
    );

    // The other one is still parked when the gateway stops; a new start
    // (breakers closed) makes it due again.
    drop(store);
    let store = reopen(dir.path())?;
    assert_eq!(store.queue_stats(u64::MAX - 1)?.parked, 0);
    let due = store.due(u64::MAX - 1, 10)?;
    assert_eq!(due.len(), 1);
    assert_ne!(due[0].message_id, id);
    assert_eq!(store.backlog("shop", "orders"), 1);
    assert_eq!(store.pending(), 1, "the released delivery is pending");
    Ok(())
}

#[test]
fn a_scan_can_continue_after_the_last_task_it_read() -> Result<(), StoreError> {
    let store = store();
    for (id, at) in [("a", 1_000), ("b", 1_000), ("c", 2_000), ("d", 9_000)] {
        store.accept(message(id), None, at)?;
    }
    let first = store.due_after(None, 5_000, 2)?;
    let ids = |tasks: &[DueTask]| {
        tasks
            .iter()
            .map(|t| t.message_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["a", "b"]);
    let rest = store.due_after(first.last(), 5_000, 10)?;
    assert_eq!(ids(&rest), ["c"], "not yet due: d");
    assert!(store.due_after(rest.last(), 5_000, 10)?.is_empty());
    // A cursor past `now` reads nothing rather than a reversed range.
    let late = store.due_after(None, 10_000, 10)?;
    assert!(store.due_after(late.last(), 5_000, 10)?.is_empty());
    Ok(())
}

#[test]
fn queue_figures_of_a_slow_walk_are_reused_for_a_while_those_of_a_quick_one_never()
-> Result<(), StoreError> {
    use std::time::Duration;
    let store = SledStore::temporary()?;
    store.accept(message("m1"), None, 1_000)?;
    assert_eq!(store.queue_stats(5_000)?.due, 1);
    // A quick walk (a small journal) is never reused: the next message
    // shows at once.
    store.walked.pretend_walk_took(Duration::from_micros(50));
    store.accept(message("m2"), None, 1_000)?;
    assert_eq!(store.queue_stats(5_000)?.due, 2);

    // A slow walk's figures (this one "took" 6 minutes, so they stand for
    // an hour) stand in for a while; `pending`, counted as writes commit,
    // stays current.
    store.walked.pretend_walk_took(Duration::from_secs(360));
    store.accept(message("m3"), None, 1_000)?;
    let stats = store.queue_stats(5_000)?;
    assert_eq!((stats.due, stats.pending), (2, 3));
    // A clock that stepped back walks again.
    let stats = store.queue_stats(4_000)?;
    assert_eq!((stats.due, stats.pending), (3, 3));
    Ok(())
}

/// The journal's records, byte for byte as format 2 has always written them:
/// a change to how a field is encoded must come with a new `FORMAT` and a
/// migration, never silently.
#[test]
fn records_keep_the_bytes_format_2_wrote() -> Result<(), StoreError> {
    let inbound = message("m1");
    let plan = DeliveryPlan {
        method: "POST".into(),
        path: None,
        query: None,
        headers: vec![("x-a".into(), b"1".to_vec())],
        body: Some(b"{}".to_vec()),
        max_attempts: Some(3),
        transform_hash: None,
    };
    let logged = AttemptRecord {
        response: b"no".to_vec(),
        ..attempt(2, Some(503))
    };
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(encode(&inbound)?),
        "026d310473686f70066f726465727304504f53540d2f686f6f6b732f6f72646572730001\
         0c636f6e74656e742d74797065106170706c69636174696f6e2f6a736f6e087b226964223a317de80700"
    );
    assert_eq!(
        hex(encode(&plan)?),
        "04504f535400000103782d61013101027b7d010300"
    );
    assert_eq!(hex(encode(&logged)?), "02d00f0501f703026e6f000103616263");
    assert_eq!(
        decode::<InboundMessage>(&encode(&inbound)?, "message")?,
        inbound
    );
    assert_eq!(
        decode::<AttemptRecord>(&encode(&logged)?, "attempt")?,
        logged
    );
    Ok(())
}
