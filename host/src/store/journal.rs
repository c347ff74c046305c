//! The message journal on sled: accepted messages, the due-time index the
//! scheduler reads, deliveries, attempts, dead letters and idempotency keys.
//!
//! Every state change touches several trees in one sled transaction, so a
//! crash between two writes never leaves a message that is neither due,
//! delivered nor dead. A write is durable only after [`SledStore::durable`]:
//! concurrent callers share one flush (group commit).
//!
//! Key layout (all integers big-endian, so byte order is numeric order):
//! - `messages`:    id                          -> MessageRecord
//! - `deliveries`:  id 0x00 index(u16)          -> DeliveryRecord
//! - `due`:         due_at(u64) id 0x00 task(u16) -> ()   (task 0xFFFF = transform)
//! - `attempts`:    id 0x00 index(u16) n(u32)   -> AttemptRecord
//! - `dead`:        id 0x00 index(u16)          -> ()
//! - `idempotency`: app 0x00 route 0x00 key     -> expires_at(u64) id

use std::sync::atomic::Ordering;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::records::{
    Accepted, AttemptRecord, AttemptResult, DeadLetter, DeliveryIndex, DeliveryRecord,
    DeliveryStatus, DueTask, InboundMessage, MessageRecord, MessageStatus, TaskKind,
};
use super::{SledStore, StoreError};

/// The due-index task number of a message's transform step.
const TRANSFORM_TASK: u16 = u16::MAX;

/// An inbound idempotency key and how long it is remembered.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// Until when (ms since the Unix epoch) a repeat is a duplicate.
    pub expires_at: u64,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

fn tx_error(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => StoreError::Backend(err.to_string()),
    }
}

fn delivery_key(id: &str, index: DeliveryIndex) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 3);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn task_number(kind: TaskKind) -> u16 {
    match kind {
        TaskKind::Transform => TRANSFORM_TASK,
        TaskKind::Deliver(index) => index,
    }
}

fn due_key(due_at: u64, id: &str, kind: TaskKind) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len() + 3);
    k.extend_from_slice(&due_at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&task_number(kind).to_be_bytes());
    k
}

fn parse_due_key(key: &[u8]) -> Result<DueTask, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("due key of {} bytes", key.len()));
    let (due_at, rest) = key.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (rest, task) = rest.split_last_chunk::<2>().ok_or_else(corrupt)?;
    let id = rest.strip_suffix(&[0]).ok_or_else(corrupt)?;
    let id = std::str::from_utf8(id).map_err(|_| corrupt())?.to_string();
    let task = u16::from_be_bytes(*task);
    Ok(DueTask {
        due_at: u64::from_be_bytes(*due_at),
        message_id: id,
        kind: if task == TRANSFORM_TASK {
            TaskKind::Transform
        } else {
            TaskKind::Deliver(task)
        },
    })
}

/// A `dead` (or `deliveries`) key back into message id and delivery index.
fn parse_dead_key(key: &[u8]) -> Result<(String, DeliveryIndex), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("dead key of {} bytes", key.len()));
    let (rest, index) = key.split_last_chunk::<2>().ok_or_else(corrupt)?;
    let id = rest.strip_suffix(&[0]).ok_or_else(corrupt)?;
    let id = std::str::from_utf8(id).map_err(|_| corrupt())?.to_string();
    Ok((id, u16::from_be_bytes(*index)))
}

fn attempt_key(id: &str, index: DeliveryIndex, n: u32) -> Vec<u8> {
    let mut k = delivery_key(id, index);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn idempotency_key(app: &str, route: &str, key: &str) -> Vec<u8> {
    [app.as_bytes(), &[0], route.as_bytes(), &[0], key.as_bytes()].concat()
}

fn get_message(tree: &TransactionalTree, id: &str) -> TxResult<MessageRecord> {
    let raw = tree
        .get(id.as_bytes())?
        .ok_or_else(|| abort(StoreError::NotFound(format!("message {id:?}"))))?;
    decode(&raw, "message record").map_err(abort)
}

fn get_delivery(
    tree: &TransactionalTree,
    id: &str,
    index: DeliveryIndex,
) -> TxResult<DeliveryRecord> {
    let raw = tree.get(delivery_key(id, index))?.ok_or_else(|| {
        abort(StoreError::NotFound(format!(
            "delivery {index} of message {id:?}"
        )))
    })?;
    decode(&raw, "delivery record").map_err(abort)
}

impl SledStore {
    /// Journals a newly accepted message with its transform due now, unless
    /// `idempotency` names a message accepted within its window: then that
    /// message's id is returned and nothing is written. Not yet durable: await
    /// [`SledStore::durable`] before acknowledging.
    pub fn accept(
        &self,
        message: InboundMessage,
        idempotency: Option<&IdempotencyKey>,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        // Taken by value: the record is encoded once, without copying the body.
        let record = MessageRecord {
            message,
            status: MessageStatus::Pending,
            deliveries: None,
            updated_at: now,
        };
        let encoded = encode(&record)?;
        let message = &record.message;
        let idem_key = idempotency.map(|k| idempotency_key(&message.app, &message.route, &k.key));
        let trees = (&self.messages, &self.due, &self.idempotency);
        let accepted = trees
            .transaction(|(messages, due, idem)| {
                if let (Some(key), Some(idempotency)) = (&idem_key, idempotency) {
                    if let Some(seen) = idem.get(key)?
                        && let Some((expires, id)) = seen.split_first_chunk::<8>()
                        && u64::from_be_bytes(*expires) > now
                    {
                        let id = String::from_utf8_lossy(id).into_owned();
                        return Ok(Accepted::Duplicate(id));
                    }
                    let value = [
                        &idempotency.expires_at.to_be_bytes()[..],
                        message.id.as_bytes(),
                    ]
                    .concat();
                    idem.insert(key.as_slice(), value)?;
                }
                messages.insert(message.id.as_bytes(), encoded.as_slice())?;
                due.insert(due_key(now, &message.id, TaskKind::Transform), &[])?;
                Ok(Accepted::New(message.id.clone()))
            })
            .map_err(tx_error)?;
        if matches!(accepted, Accepted::New(_)) {
            self.add_pending(1);
            self.backlog.add(&message.app, &message.route);
        }
        Ok(accepted)
    }

    /// Tasks due at or before `now`, oldest first, at most `limit`.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<DueTask>, StoreError> {
        let end = (now.saturating_add(1)).to_be_bytes();
        self.due
            .range(..end.as_slice())
            .keys()
            .take(limit)
            .map(|key| parse_due_key(&key?))
            .collect()
    }

    /// Whether `task` is still in the due index as it was read: false once
    /// its outcome (or a reschedule) has been journaled.
    pub fn is_due(&self, task: &DueTask) -> Result<bool, StoreError> {
        Ok(self
            .due
            .contains_key(due_key(task.due_at, &task.message_id, task.kind))?)
    }

    /// The earliest due time in the index, so the scheduler can sleep until
    /// then instead of polling.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        Ok(match self.due.first()? {
            Some((key, _)) => Some(parse_due_key(&key)?.due_at),
            None => None,
        })
    }

    /// Tasks waiting (transforms and pending deliveries), all routes.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts `n` new waiting tasks and keeps the peak.
    fn add_pending(&self, n: u64) {
        let now_pending = self.pending.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now_pending, Ordering::Relaxed);
    }

    /// Messages of `app`/`route` accepted and not finished yet: what the
    /// route's backlog limit is compared with.
    pub fn backlog(&self, app: &str, route: &str) -> u64 {
        self.backlog.get(app, route)
    }

    /// Counts each route's pending messages from the due index (every
    /// pending message has a due task); run once at open.
    pub(super) fn with_backlog_counted(self) -> Result<Self, StoreError> {
        let mut seen = std::collections::HashSet::new();
        for entry in self.due.iter() {
            let (key, _) = entry?;
            let task = parse_due_key(&key)?;
            if !seen.insert(task.message_id.clone()) {
                continue;
            }
            if let Some(record) = self.message(&task.message_id)?
                && record.status == MessageStatus::Pending
            {
                self.backlog.add(&record.message.app, &record.message.route);
            }
        }
        Ok(self)
    }

    pub fn message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        self.messages
            .get(id.as_bytes())?
            .map(|raw| decode(&raw, "message record"))
            .transpose()
    }

    pub fn delivery(
        &self,
        id: &str,
        index: DeliveryIndex,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        self.deliveries
            .get(delivery_key(id, index))?
            .map(|raw| decode(&raw, "delivery record"))
            .transpose()
    }

    /// Every attempt of one delivery, in order.
    pub fn attempts(
        &self,
        id: &str,
        index: DeliveryIndex,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        self.attempts
            .scan_prefix(delivery_key(id, index))
            .values()
            .map(|raw| decode(&raw?, "attempt record"))
            .collect()
    }

    /// Records the transform's outcome: the deliveries it produced (each due
    /// at its own time) replace the message's transform task. No deliveries
    /// means the message was filtered.
    pub fn set_deliveries(
        &self,
        id: &str,
        transform_due_at: u64,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Result<(), StoreError> {
        let added = DeliveryIndex::try_from(deliveries.len()).map_err(|_| {
            StoreError::Invalid(format!("{} deliveries for one message", deliveries.len()))
        })?;
        let encoded = deliveries
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        let trees = (&self.messages, &self.deliveries, &self.due, &self.dead);
        let settled = trees
            .transaction(|(messages, dtree, due, dead)| {
                let old = due.remove(due_key(transform_due_at, id, TaskKind::Transform))?;
                if old.is_none() {
                    return Err(abort(StoreError::NotFound(format!(
                        "transform task of message {id:?}"
                    ))));
                }
                let mut record = get_message(messages, id)?;
                // A replay appends after the earlier deliveries, so their
                // attempt logs stay as they were.
                let offset = record.deliveries.unwrap_or(0);
                let count = offset.checked_add(added).ok_or_else(|| {
                    abort(StoreError::Invalid(format!(
                        "too many deliveries for message {id:?}"
                    )))
                })?;
                insert_deliveries((dtree, due, dead), id, offset, deliveries, &encoded)?;
                record.deliveries = Some(count);
                record.updated_at = now;
                if added == 0 {
                    record.status = MessageStatus::Filtered;
                }
                messages.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
                settle_message(messages, dtree, id, now)
            })
            .map_err(tx_error)?;
        self.left_pending_if(&settled);
        // One transform task became this many delivery tasks.
        self.add_pending(pending_count(deliveries));
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Journals a message whose deliveries are already decided, with the
    /// log of an attempt already made for delivery 0, in one transaction. A
    /// sync route uses it when its fallback queues, reroutes or dead-letters
    /// a message after the inline attempt failed: there is no transform task,
    /// so a crash can never re-run a transform whose answer was acted on.
    pub fn accept_planned(
        &self,
        message: InboundMessage,
        deliveries: &[DeliveryRecord],
        attempt: Option<&AttemptRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        let count = DeliveryIndex::try_from(deliveries.len()).map_err(|_| {
            StoreError::Invalid(format!("{} deliveries for one message", deliveries.len()))
        })?;
        let id = message.id.clone();
        let record = MessageRecord {
            message,
            status: MessageStatus::Pending,
            deliveries: Some(count),
            updated_at: now,
        };
        let encoded_record = encode(&record)?;
        let encoded = deliveries
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        let attempt = attempt
            .map(|log| encode(log).map(|bytes| (log.attempt, bytes)))
            .transpose()?;
        let trees = (
            &self.messages,
            &self.deliveries,
            &self.due,
            &self.attempts,
            &self.dead,
        );
        let settled = trees
            .transaction(|(messages, dtree, due, attempts, dead)| {
                messages.insert(id.as_bytes(), encoded_record.as_slice())?;
                insert_deliveries((dtree, due, dead), &id, 0, deliveries, &encoded)?;
                if let Some((number, bytes)) = &attempt {
                    attempts.insert(attempt_key(&id, 0, *number), bytes.as_slice())?;
                }
                settle_message(messages, dtree, &id, now)
            })
            .map_err(tx_error)?;
        if settled.status == MessageStatus::Pending {
            self.backlog.add(&settled.app, &settled.route);
        }
        self.add_pending(pending_count(deliveries));
        Ok(())
    }

    /// Records one attempt and its consequence, together: the attempt log,
    /// the delivery's new state, the due index, the dead-letter entry and the
    /// message's status change in one transaction.
    pub fn record_attempt(
        &self,
        id: &str,
        index: DeliveryIndex,
        attempt: &AttemptRecord,
        result: &AttemptResult,
        now: u64,
    ) -> Result<(), StoreError> {
        self.record_attempt_with(id, index, attempt, result, None, now)
    }

    /// [`SledStore::record_attempt`], appending `alert` as a new delivery of
    /// the message in the same transaction (the route's dead-letter alert:
    /// a copy to an on-call destination when a delivery dies).
    pub fn record_attempt_with(
        &self,
        id: &str,
        index: DeliveryIndex,
        attempt: &AttemptRecord,
        result: &AttemptResult,
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        let attempt_bytes = encode(attempt)?;
        let alert = alert
            .map(|delivery| encode(delivery).map(|bytes| (delivery, bytes)))
            .transpose()?;
        let trees = (
            &self.messages,
            &self.deliveries,
            &self.due,
            &self.attempts,
            &self.dead,
        );
        let settled = trees
            .transaction(|(messages, dtree, due, attempts, dead)| {
                let mut delivery = get_delivery(dtree, id, index)?;
                let DeliveryStatus::Pending { due_at } = delivery.status else {
                    return Err(abort(StoreError::Invalid(format!(
                        "delivery {index} of message {id:?} is not pending"
                    ))));
                };
                due.remove(due_key(due_at, id, TaskKind::Deliver(index)))?;
                delivery.attempts = delivery.attempts.max(attempt.attempt);
                attempts.insert(
                    attempt_key(id, index, attempt.attempt),
                    attempt_bytes.as_slice(),
                )?;
                delivery.status = match result {
                    AttemptResult::Delivered => DeliveryStatus::Delivered,
                    AttemptResult::Handled => DeliveryStatus::Handled,
                    AttemptResult::RetryAt(at) => {
                        due.insert(due_key(*at, id, TaskKind::Deliver(index)), &[])?;
                        DeliveryStatus::Pending { due_at: *at }
                    }
                    AttemptResult::Reroute { destination, at } => {
                        delivery.request.destination = destination.clone();
                        delivery.budget_start = delivery.attempts;
                        due.insert(due_key(*at, id, TaskKind::Deliver(index)), &[])?;
                        DeliveryStatus::Pending { due_at: *at }
                    }
                    AttemptResult::Dead(reason) => {
                        dead.insert(delivery_key(id, index), &[])?;
                        DeliveryStatus::Dead {
                            reason: reason.clone(),
                        }
                    }
                };
                dtree.insert(delivery_key(id, index), encode(&delivery).map_err(abort)?)?;
                if let Some((alert, bytes)) = &alert {
                    let mut record = get_message(messages, id)?;
                    let offset = record.deliveries.unwrap_or(0);
                    let slice = std::slice::from_ref(bytes);
                    insert_deliveries(
                        (dtree, due, dead),
                        id,
                        offset,
                        std::slice::from_ref(*alert),
                        slice,
                    )?;
                    record.deliveries = Some(offset.saturating_add(1));
                    messages.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
                }
                settle_message(messages, dtree, id, now)
            })
            .map_err(tx_error)?;
        self.left_pending_if(&settled);
        if !matches!(
            result,
            AttemptResult::RetryAt(_) | AttemptResult::Reroute { .. }
        ) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some((alert, _)) = alert {
            self.pending.fetch_add(
                pending_count(std::slice::from_ref(alert)),
                Ordering::Relaxed,
            );
        }
        Ok(())
    }

    /// Moves a due task to a later time without recording an attempt (the
    /// destination's breaker is open: the message waits, burning nothing).
    pub fn reschedule(&self, task: &DueTask, due_at: u64) -> Result<(), StoreError> {
        let (id, kind) = (&task.message_id, task.kind);
        let trees = (&self.deliveries, &self.due);
        trees
            .transaction(|(dtree, due)| {
                if due.remove(due_key(task.due_at, id, kind))?.is_none() {
                    return Err(abort(StoreError::NotFound(format!(
                        "task {kind:?} of message {id:?}"
                    ))));
                }
                due.insert(due_key(due_at, id, kind), &[])?;
                if let TaskKind::Deliver(index) = kind {
                    let mut delivery = get_delivery(dtree, id, index)?;
                    delivery.status = DeliveryStatus::Pending { due_at };
                    dtree.insert(delivery_key(id, index), encode(&delivery).map_err(abort)?)?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }
}

impl SledStore {
    /// Dead letters in message-id order (which is arrival order), starting
    /// after `after` (a message id) when paging, at most `limit`.
    pub fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let start = match after {
            // Past every key of that message: its id, then a byte above the 0x00 separator.
            Some(id) => [id.as_bytes(), &[1]].concat(),
            None => Vec::new(),
        };
        let mut letters = Vec::new();
        for key in self.dead.range(start..).keys().take(limit) {
            let (id, index) = parse_dead_key(&key?)?;
            if let Some(delivery) = self.delivery(&id, index)? {
                letters.push(DeadLetter {
                    message_id: id,
                    index,
                    delivery,
                });
            }
        }
        Ok(letters)
    }

    /// Puts a dead message back on its way: its dead deliveries leave the
    /// dead-letter queue (marked replayed) and the transform runs again now,
    /// so a fixed plugin also fixes replayed messages. Its deliveries are
    /// appended after the earlier ones; receivers deduplicate any copy that
    /// had already succeeded on `webhook-id`.
    pub fn replay(&self, id: &str, now: u64) -> Result<(), StoreError> {
        let trees = (&self.messages, &self.deliveries, &self.due, &self.dead);
        let replayed = trees
            .transaction(|(messages, dtree, due, dead)| {
                let mut record = get_message(messages, id)?;
                if record.status != MessageStatus::Dead {
                    return Err(abort(StoreError::Invalid(format!(
                        "message {id:?} is {}, not dead",
                        record.status.as_str()
                    ))));
                }
                for index in 0..record.deliveries.unwrap_or(0) {
                    let mut delivery = get_delivery(dtree, id, index)?;
                    if matches!(delivery.status, DeliveryStatus::Dead { .. }) {
                        delivery.status = DeliveryStatus::Replayed;
                        dtree.insert(delivery_key(id, index), encode(&delivery).map_err(abort)?)?;
                        dead.remove(delivery_key(id, index))?;
                    }
                }
                record.status = MessageStatus::Pending;
                record.updated_at = now;
                messages.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
                due.insert(due_key(now, id, TaskKind::Transform), &[])?;
                Ok((record.message.app, record.message.route))
            })
            .map_err(tx_error)?;
        self.add_pending(1);
        self.backlog.add(&replayed.0, &replayed.1);
        Ok(())
    }
}

/// Milliseconds since the epoch encoded in a message id (`msg_` + UUIDv7,
/// whose first 48 bits are the creation time); `None` for other ids.
fn id_time(id: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(id.strip_prefix(b"msg_")?.get(..12)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

impl SledStore {
    /// Removes delivered, handled and filtered messages last changed before `before`
    /// (ms since the epoch), with their deliveries and attempt logs, and
    /// idempotency keys expired by then. Pending and dead messages are kept:
    /// those still need delivery or an operator. Returns the number of
    /// messages removed; at most `limit` per call, so a large backlog is
    /// pruned in slices without holding up other writers.
    pub fn prune(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.messages.iter() {
            if removed >= limit {
                break;
            }
            let (key, raw) = entry?;
            // Ids are time-ordered: past `before`, nothing can be old enough.
            if id_time(&key).is_some_and(|t| t >= before) {
                break;
            }
            let record: MessageRecord = decode(&raw, "message record")?;
            let finished = matches!(
                record.status,
                MessageStatus::Delivered | MessageStatus::Filtered | MessageStatus::Handled
            );
            if finished && record.updated_at < before {
                self.remove_message(&record)?;
                removed += 1;
            }
        }
        for entry in self.idempotency.iter() {
            let (key, value) = entry?;
            if let Some(expires) = value.first_chunk::<8>()
                && u64::from_be_bytes(*expires) <= before
            {
                self.idempotency
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                    .ok();
            }
        }
        Ok(removed)
    }

    /// Deletes one finished message and everything recorded about it.
    fn remove_message(&self, record: &MessageRecord) -> Result<(), StoreError> {
        let id = &record.message.id;
        let mut attempt_keys = Vec::new();
        for index in 0..record.deliveries.unwrap_or(0) {
            if let Some(delivery) = self.delivery(id, index)? {
                attempt_keys.extend((1..=delivery.attempts).map(|n| attempt_key(id, index, n)));
            }
        }
        let trees = (&self.messages, &self.deliveries, &self.attempts);
        trees
            .transaction(|(messages, deliveries, attempts)| {
                for key in &attempt_keys {
                    attempts.remove(key.as_slice())?;
                }
                for index in 0..record.deliveries.unwrap_or(0) {
                    deliveries.remove(delivery_key(id, index))?;
                }
                messages.remove(id.as_bytes())?;
                Ok(())
            })
            .map_err(tx_error)
    }
}

/// Writes `deliveries` as the message's deliveries `offset..`, each into the
/// due index (pending) or the dead-letter index (dead).
fn insert_deliveries(
    (dtree, due, dead): (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    id: &str,
    offset: DeliveryIndex,
    deliveries: &[DeliveryRecord],
    encoded: &[Vec<u8>],
) -> TxResult<()> {
    for (n, (delivery, bytes)) in deliveries.iter().zip(encoded).enumerate() {
        let index = offset + n as DeliveryIndex;
        dtree.insert(delivery_key(id, index), bytes.as_slice())?;
        match delivery.status {
            DeliveryStatus::Pending { due_at } => {
                due.insert(due_key(due_at, id, TaskKind::Deliver(index)), &[])?;
            }
            DeliveryStatus::Dead { .. } => {
                dead.insert(delivery_key(id, index), &[])?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// How many of `deliveries` are waiting to be sent: tasks in the due index.
fn pending_count(deliveries: &[DeliveryRecord]) -> u64 {
    deliveries
        .iter()
        .filter(|d| matches!(d.status, DeliveryStatus::Pending { .. }))
        .count() as u64
}

/// Sets the message's status from its deliveries: pending while any is
/// pending, else dead if any is dead, else handled if a fallback settled
/// any, else delivered.
fn settle_message(
    messages: &TransactionalTree,
    deliveries: &TransactionalTree,
    id: &str,
    now: u64,
) -> TxResult<Settled> {
    let mut record = get_message(messages, id)?;
    let count = record.deliveries.unwrap_or(0);
    if count == 0 {
        // Not transformed yet, or filtered: nothing to settle.
        return Ok(Settled::of(record));
    }
    let (mut any_dead, mut any_handled) = (false, false);
    for index in 0..count {
        match get_delivery(deliveries, id, index)?.status {
            DeliveryStatus::Pending { .. } => return Ok(Settled::of(record)),
            DeliveryStatus::Dead { .. } => any_dead = true,
            DeliveryStatus::Handled => any_handled = true,
            DeliveryStatus::Delivered | DeliveryStatus::Replayed => {}
        }
    }
    record.status = if any_dead {
        MessageStatus::Dead
    } else if any_handled {
        MessageStatus::Handled
    } else {
        MessageStatus::Delivered
    };
    record.updated_at = now;
    messages.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
    Ok(Settled::of(record))
}

/// A message's status after a transaction, with its route, so the per-route
/// backlog can follow it once the transaction has committed.
struct Settled {
    status: MessageStatus,
    app: String,
    route: String,
}

impl Settled {
    fn of(record: MessageRecord) -> Settled {
        Settled {
            status: record.status,
            app: record.message.app,
            route: record.message.route,
        }
    }
}

impl SledStore {
    /// Follows a message that was pending before a transaction.
    fn left_pending_if(&self, settled: &Settled) {
        if settled.status != MessageStatus::Pending {
            self.backlog.remove(&settled.app, &settled.route);
        }
    }
}

pub(super) mod admin;
#[cfg(test)]
mod tests;
