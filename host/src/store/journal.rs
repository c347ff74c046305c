//! The message journal on sled: accepted messages, the due-time index the
//! scheduler reads, deliveries, attempts, dead letters and idempotency keys.
//!
//! Every state change touches several trees in one sled transaction, so a
//! crash between two writes never leaves a message that is neither due,
//! delivered nor dead. A write is durable only after [`SledStore::durable`]:
//! concurrent callers share one flush (group commit). Ingress and the
//! dispatcher go through the journal rounds (`sled.rs`) instead, which also
//! share the transaction: [`SledStore::accept_durable`] and the writes in
//! `journal/writes.rs`.
//!
//! Bodies are written once. What a message or a delivery *is* (the inbound
//! request; the request a transform produced) never changes after it is
//! journaled, so it lives apart from what *happens* to it (status, attempt
//! counts), which changes on every attempt and is a few dozen bytes. sled
//! rewrites the pages a write touches; keeping bodies out of the records
//! that change keeps it from rewriting them (the gateway benchmark measured
//! ~65 KB written per 1 KB message before this split, see BENCHMARKS.md).
//!
//! Key layout (all integers big-endian, so byte order is numeric order):
//! - `messages`:       id                          -> InboundMessage (immutable)
//! - `message_state`:  id                          -> MessageState
//! - `deliveries`:     id 0x00 index(u16)          -> DeliveryPlan (immutable)
//! - `delivery_state`: id 0x00 index(u16)          -> DeliveryState
//! - `due`:            due_at(u64) id 0x00 task(u16) -> ()   (task 0xFFFF = transform)
//! - `attempts`:       id 0x00 index(u16) n(u32)   -> AttemptRecord
//! - `dead`:           id 0x00 index(u16)          -> ()
//! - `idempotency`:    app 0x00 route 0x00 key     -> expires_at(u64) id
//! - `parked`:         place 0x00 due key          -> ()   (see `parking.rs`)
//! - `disabled`:       place                       -> ()   (410-disabled destinations)

use std::sync::atomic::Ordering;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use serde::{Deserialize, Serialize};

use super::records::{
    Accepted, AttemptRecord, DeadLetter, DeliveryIndex, DeliveryRecord, DeliveryStatus, DueTask,
    InboundMessage, MessageRecord, MessageStatus, OutgoingRequest, TaskKind,
};
use super::{SledStore, StoreError};

/// The due-index task number of a message's transform step.
const TRANSFORM_TASK: u16 = u16::MAX;

/// An inbound idempotency key and how long it is remembered.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The header's bytes as sent: a key need not be text.
    pub key: Vec<u8>,
    /// Until when (ms since the Unix epoch) a repeat is a duplicate.
    pub expires_at: u64,
}

/// A message ready to be journaled: encoded on the caller's thread, so the
/// one thread that writes a batch only copies bytes.
pub(super) struct Acceptance {
    message: InboundMessage,
    encoded: Vec<u8>,
    state: Vec<u8>,
    /// The idempotency tree's key and until when it holds.
    idempotency: Option<(Vec<u8>, u64)>,
    now: u64,
}

impl Acceptance {
    pub(super) fn new(
        message: InboundMessage,
        idempotency: Option<&IdempotencyKey>,
        now: u64,
    ) -> Result<Self, StoreError> {
        let encoded = encode(&message)?;
        let state = encode(&MessageState {
            app: message.app.clone(),
            route: message.route.clone(),
            status: MessageStatus::Pending,
            deliveries: None,
            updated_at: now,
        })?;
        let idempotency = idempotency.map(|k| {
            (
                idempotency_key(&message.app, &message.route, &k.key),
                k.expires_at,
            )
        });
        Ok(Acceptance {
            message,
            encoded,
            state,
            idempotency,
            now,
        })
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The changing part of a message (`message_state`). Its app and route are
/// repeated from the message so that listing and the backlog count never
/// read bodies.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageState {
    app: String,
    route: String,
    status: MessageStatus,
    deliveries: Option<DeliveryIndex>,
    updated_at: u64,
}

impl MessageState {
    fn into_record(self, message: InboundMessage) -> MessageRecord {
        MessageRecord {
            message,
            status: self.status,
            deliveries: self.deliveries,
            updated_at: self.updated_at,
        }
    }
}

/// The fixed part of a delivery (`deliveries`): the request the transform
/// produced. `body: None` means "the inbound body, unchanged" (pass-through
/// routes, transforms that only touch headers), so it is not stored twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryPlan {
    method: String,
    path: Option<String>,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    body: Option<Vec<u8>>,
    max_attempts: Option<u32>,
    transform_hash: Option<String>,
}

/// The changing part of a delivery (`delivery_state`). The destination is
/// here because a fallback may reroute the delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryState {
    destination: String,
    status: DeliveryStatus,
    attempts: u32,
    budget_start: u32,
}

/// Splits a delivery into what is written once and what changes.
fn split_delivery(delivery: &DeliveryRecord, inbound_body: &[u8]) -> (DeliveryPlan, DeliveryState) {
    let request = &delivery.request;
    let plan = DeliveryPlan {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        body: (request.body != inbound_body).then(|| request.body.clone()),
        max_attempts: delivery.max_attempts,
        transform_hash: delivery.transform_hash.clone(),
    };
    let state = DeliveryState {
        destination: request.destination.clone(),
        status: delivery.status.clone(),
        attempts: delivery.attempts,
        budget_start: delivery.budget_start,
    };
    (plan, state)
}

/// Puts a delivery back together; `inbound` is read only when the plan
/// reuses the inbound body.
fn join_delivery(
    plan: DeliveryPlan,
    state: DeliveryState,
    inbound: impl FnOnce() -> Result<Vec<u8>, StoreError>,
) -> Result<DeliveryRecord, StoreError> {
    let body = match plan.body {
        Some(body) => body,
        None => inbound()?,
    };
    Ok(DeliveryRecord {
        request: OutgoingRequest {
            destination: state.destination,
            method: plan.method,
            path: plan.path,
            query: plan.query,
            headers: plan.headers,
            body,
        },
        status: state.status,
        attempts: state.attempts,
        budget_start: state.budget_start,
        max_attempts: plan.max_attempts,
        transform_hash: plan.transform_hash,
    })
}

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

fn idempotency_key(app: &str, route: &str, key: &[u8]) -> Vec<u8> {
    [app.as_bytes(), &[0], route.as_bytes(), &[0], key].concat()
}

fn get_state(tree: &TransactionalTree, id: &str) -> TxResult<MessageState> {
    let raw = tree
        .get(id.as_bytes())?
        .ok_or_else(|| abort(StoreError::NotFound(format!("message {id:?}"))))?;
    decode(&raw, "message state").map_err(abort)
}

fn put_state(tree: &TransactionalTree, id: &str, state: &MessageState) -> TxResult<()> {
    tree.insert(id.as_bytes(), encode(state).map_err(abort)?)?;
    Ok(())
}

fn get_delivery_state(
    tree: &TransactionalTree,
    id: &str,
    index: DeliveryIndex,
) -> TxResult<DeliveryState> {
    let raw = tree.get(delivery_key(id, index))?.ok_or_else(|| {
        abort(StoreError::NotFound(format!(
            "delivery {index} of message {id:?}"
        )))
    })?;
    decode(&raw, "delivery state").map_err(abort)
}

fn put_delivery_state(
    tree: &TransactionalTree,
    id: &str,
    index: DeliveryIndex,
    state: &DeliveryState,
) -> TxResult<()> {
    tree.insert(delivery_key(id, index), encode(state).map_err(abort)?)?;
    Ok(())
}

impl SledStore {
    /// Journals a newly accepted message with its transform due now, unless
    /// `idempotency` names a message accepted within its window: then that
    /// message's id is returned and nothing is written. Not yet durable: await
    /// [`SledStore::durable`] before acknowledging, or use
    /// [`SledStore::accept_durable`], which does both for many callers at once.
    pub fn accept(
        &self,
        message: InboundMessage,
        idempotency: Option<&IdempotencyKey>,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let acceptance = Acceptance::new(message, idempotency, now)?;
        let mut accepted = self.write_accepts(std::slice::from_ref(&acceptance))?;
        accepted
            .pop()
            .ok_or_else(|| StoreError::Backend("a batch of one accepted nothing".into()))
    }

    /// Journals a batch of accepted messages in one transaction, in order: a
    /// message whose idempotency key an earlier one in the batch (or in the
    /// journal, within its window) holds is a duplicate of it. One sled
    /// transaction per message costs about three times what one per batch
    /// does (BENCHMARKS.md, the *journal alone* rows).
    pub(super) fn write_accepts(&self, batch: &[Acceptance]) -> Result<Vec<Accepted>, StoreError> {
        let trees = (
            &self.messages,
            &self.message_state,
            &self.due,
            &self.idempotency,
        );
        let accepted = trees
            .transaction(|(messages, states, due, idem)| {
                let mut accepted = Vec::with_capacity(batch.len());
                for one in batch {
                    let id = &one.message.id;
                    if let Some((key, expires_at)) = &one.idempotency {
                        if let Some(seen) = idem.get(key)?
                            && let Some((expires, first)) = seen.split_first_chunk::<8>()
                            && u64::from_be_bytes(*expires) > one.now
                        {
                            let first = String::from_utf8_lossy(first).into_owned();
                            accepted.push(Accepted::Duplicate(first));
                            continue;
                        }
                        let value = [&expires_at.to_be_bytes()[..], id.as_bytes()].concat();
                        idem.insert(key.as_slice(), value)?;
                    }
                    messages.insert(id.as_bytes(), one.encoded.as_slice())?;
                    states.insert(id.as_bytes(), one.state.as_slice())?;
                    due.insert(due_key(one.now, id, TaskKind::Transform), &[])?;
                    accepted.push(Accepted::New(id.clone()));
                }
                Ok(accepted)
            })
            .map_err(tx_error)?;
        for (one, accepted) in batch.iter().zip(&accepted) {
            if matches!(accepted, Accepted::New(_)) {
                self.add_pending(1);
                self.backlog.add(&one.message.app, &one.message.route);
            }
        }
        Ok(accepted)
    }

    /// Tasks due at or before `now`, oldest first, at most `limit`.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<DueTask>, StoreError> {
        self.due_after(None, now, limit)
    }

    /// [`SledStore::due`], starting after `after` (a task read before), so
    /// a scheduler need not walk again past the tasks it is already
    /// working on.
    pub fn due_after(
        &self,
        after: Option<&DueTask>,
        now: u64,
        limit: usize,
    ) -> Result<Vec<DueTask>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let end = (now.saturating_add(1)).to_be_bytes().to_vec();
        let start = match after {
            Some(task) => Excluded(due_key(task.due_at, &task.message_id, task.kind)),
            None => Unbounded,
        };
        if let Excluded(start) = &start
            && start.as_slice() >= end.as_slice()
        {
            return Ok(Vec::new());
        }
        self.due
            .range((start, Excluded(end)))
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

    /// Counts `n` new entries in the dead-letter index.
    fn add_dead_letters(&self, n: u64) {
        self.dead_letters.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` entries gone from the dead-letter index.
    fn remove_dead_letters(&self, n: u64) {
        self.dead_letters.fetch_sub(n, Ordering::Relaxed);
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
            if let Some(state) = self.state(&task.message_id)?
                && state.status == MessageStatus::Pending
            {
                self.backlog.add(&state.app, &state.route);
            }
        }
        Ok(self)
    }

    /// A message with its progress.
    pub fn message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let (Some(message), Some(state)) = (self.inbound(id)?, self.state(id)?) else {
            return Ok(None);
        };
        Ok(Some(state.into_record(message)))
    }

    /// A message as it was accepted, without reading its progress.
    pub fn inbound(&self, id: &str) -> Result<Option<InboundMessage>, StoreError> {
        self.messages
            .get(id.as_bytes())?
            .map(|raw| decode(&raw, "message"))
            .transpose()
    }

    fn state(&self, id: &str) -> Result<Option<MessageState>, StoreError> {
        self.message_state
            .get(id.as_bytes())?
            .map(|raw| decode(&raw, "message state"))
            .transpose()
    }

    pub fn delivery(
        &self,
        id: &str,
        index: DeliveryIndex,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        self.read_delivery(id, index, || {
            self.inbound(id)?
                .map(|message| message.body)
                .ok_or_else(|| StoreError::NotFound(format!("message {id:?}")))
        })
    }

    /// [`SledStore::delivery`] of a message the caller has read already.
    pub fn delivery_of(
        &self,
        message: &InboundMessage,
        index: DeliveryIndex,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        self.read_delivery(&message.id, index, || Ok(message.body.clone()))
    }

    fn read_delivery(
        &self,
        id: &str,
        index: DeliveryIndex,
        inbound_body: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let key = delivery_key(id, index);
        let (Some(plan), Some(state)) =
            (self.deliveries.get(&key)?, self.delivery_state.get(&key)?)
        else {
            return Ok(None);
        };
        let plan: DeliveryPlan = decode(&plan, "delivery")?;
        let state: DeliveryState = decode(&state, "delivery state")?;
        join_delivery(plan, state, inbound_body).map(Some)
    }

    /// Attempts made so far on each of a message's deliveries.
    fn attempt_counts(&self, id: &str, count: DeliveryIndex) -> Result<Vec<u32>, StoreError> {
        (0..count)
            .map(|index| {
                Ok(match self.delivery_state.get(delivery_key(id, index))? {
                    Some(raw) => decode::<DeliveryState>(&raw, "delivery state")?.attempts,
                    None => 0,
                })
            })
            .collect()
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
        let state = MessageState {
            app: message.app.clone(),
            route: message.route.clone(),
            status: MessageStatus::Pending,
            deliveries: Some(count),
            updated_at: now,
        };
        let encoded_message = encode(&message)?;
        let encoded = encode_deliveries(deliveries, &message.body)?;
        let attempt = attempt
            .map(|log| encode(log).map(|bytes| (log.attempt, bytes)))
            .transpose()?;
        let trees = (
            &self.messages,
            &self.message_state,
            &self.deliveries,
            &self.delivery_state,
            &self.due,
            &self.attempts,
            &self.dead,
        );
        let settled = trees
            .transaction(|(messages, states, plans, dstates, due, attempts, dead)| {
                messages.insert(id.as_bytes(), encoded_message.as_slice())?;
                insert_deliveries((plans, dstates, due, dead), &id, 0, &encoded)?;
                if let Some((number, bytes)) = &attempt {
                    attempts.insert(attempt_key(&id, 0, *number), bytes.as_slice())?;
                }
                settle_message(states, dstates, &id, (state.clone(), true), now)
            })
            .map_err(tx_error)?;
        if settled.status == MessageStatus::Pending {
            self.backlog.add(&settled.app, &settled.route);
        }
        self.add_pending(pending_count(&encoded));
        self.add_dead_letters(dead_count(&encoded));
        Ok(())
    }

    /// Moves a due task to a later time without recording an attempt (the
    /// destination's breaker is open: the message waits, burning nothing).
    pub fn reschedule(&self, task: &DueTask, due_at: u64) -> Result<(), StoreError> {
        let (id, kind) = (&task.message_id, task.kind);
        let trees = (&self.delivery_state, &self.due);
        trees
            .transaction(|(dstates, due)| {
                if due.remove(due_key(task.due_at, id, kind))?.is_none() {
                    return Err(abort(StoreError::NotFound(format!(
                        "task {kind:?} of message {id:?}"
                    ))));
                }
                due.insert(due_key(due_at, id, kind), &[])?;
                if let TaskKind::Deliver(index) = kind {
                    let mut delivery = get_delivery_state(dstates, id, index)?;
                    delivery.status = DeliveryStatus::Pending { due_at };
                    put_delivery_state(dstates, id, index, &delivery)?;
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
    /// had already succeeded on `webhook-id`. Returns the message's app and
    /// route.
    pub fn replay(&self, id: &str, now: u64) -> Result<(String, String), StoreError> {
        let trees = (
            &self.message_state,
            &self.delivery_state,
            &self.due,
            &self.dead,
        );
        let replayed = trees
            .transaction(|(states, dstates, due, dead)| {
                let mut state = get_state(states, id)?;
                if state.status != MessageStatus::Dead {
                    return Err(abort(StoreError::Invalid(format!(
                        "message {id:?} is {}, not dead",
                        state.status.as_str()
                    ))));
                }
                let mut revived = 0;
                for index in 0..state.deliveries.unwrap_or(0) {
                    let mut delivery = get_delivery_state(dstates, id, index)?;
                    if matches!(delivery.status, DeliveryStatus::Dead { .. }) {
                        delivery.status = DeliveryStatus::Replayed;
                        put_delivery_state(dstates, id, index, &delivery)?;
                        if dead.remove(delivery_key(id, index))?.is_some() {
                            revived += 1;
                        }
                    }
                }
                state.status = MessageStatus::Pending;
                state.updated_at = now;
                put_state(states, id, &state)?;
                due.insert(due_key(now, id, TaskKind::Transform), &[])?;
                Ok((state.app, state.route, revived))
            })
            .map_err(tx_error)?;
        self.add_pending(1);
        self.backlog.add(&replayed.0, &replayed.1);
        self.remove_dead_letters(replayed.2);
        Ok((replayed.0, replayed.1))
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
        for entry in self.message_state.iter() {
            if removed >= limit {
                break;
            }
            let (key, raw) = entry?;
            // Ids are time-ordered: past `before`, nothing can be old enough.
            if id_time(&key).is_some_and(|t| t >= before) {
                break;
            }
            let state: MessageState = decode(&raw, "message state")?;
            let finished = matches!(
                state.status,
                MessageStatus::Delivered | MessageStatus::Filtered | MessageStatus::Handled
            );
            if finished && state.updated_at < before {
                let id = String::from_utf8_lossy(&key);
                self.remove_message(&id, state.deliveries.unwrap_or(0), None)?;
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

    /// Deletes a message with its `count` deliveries and everything
    /// recorded about them, in one transaction. With `only_if`, refused
    /// unless the message is then in that status.
    pub(super) fn remove_message(
        &self,
        id: &str,
        count: DeliveryIndex,
        only_if: Option<MessageStatus>,
    ) -> Result<(), StoreError> {
        let mut attempt_keys = Vec::new();
        for (index, attempts) in (0..count).zip(self.attempt_counts(id, count)?) {
            attempt_keys.extend((1..=attempts).map(|n| attempt_key(id, index, n)));
        }
        let trees = (
            &self.messages,
            &self.message_state,
            &self.deliveries,
            &self.delivery_state,
            &self.attempts,
            &self.dead,
        );
        let letters = trees
            .transaction(|(messages, states, plans, dstates, attempts, dead)| {
                if let Some(wanted) = only_if {
                    let state = get_state(states, id)?;
                    if state.status != wanted {
                        return Err(abort(StoreError::Invalid(format!(
                            "message {id:?} is {}, not {}",
                            state.status.as_str(),
                            wanted.as_str()
                        ))));
                    }
                }
                for key in &attempt_keys {
                    attempts.remove(key.as_slice())?;
                }
                let mut letters = 0;
                for index in 0..count {
                    plans.remove(delivery_key(id, index))?;
                    dstates.remove(delivery_key(id, index))?;
                    if dead.remove(delivery_key(id, index))?.is_some() {
                        letters += 1;
                    }
                }
                messages.remove(id.as_bytes())?;
                states.remove(id.as_bytes())?;
                Ok(letters)
            })
            .map_err(tx_error)?;
        self.remove_dead_letters(letters);
        Ok(())
    }
}

/// A delivery's plan and state, encoded, with the status that decides
/// which index it joins.
pub(in crate::store) struct EncodedDelivery {
    plan: Vec<u8>,
    state: Vec<u8>,
    status: DeliveryStatus,
}

/// Each delivery's plan and state, encoded, ahead of a transaction.
fn encode_deliveries(
    deliveries: &[DeliveryRecord],
    inbound_body: &[u8],
) -> Result<Vec<EncodedDelivery>, StoreError> {
    deliveries
        .iter()
        .map(|delivery| {
            let (plan, state) = split_delivery(delivery, inbound_body);
            Ok(EncodedDelivery {
                plan: encode(&plan)?,
                state: encode(&state)?,
                status: delivery.status.clone(),
            })
        })
        .collect()
}

type DeliveryTrees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

/// Writes `deliveries` as the message's deliveries `offset..`, each into the
/// due index (pending) or the dead-letter index (dead).
fn insert_deliveries(
    (plans, dstates, due, dead): DeliveryTrees<'_>,
    id: &str,
    offset: DeliveryIndex,
    encoded: &[EncodedDelivery],
) -> TxResult<()> {
    for (n, delivery) in encoded.iter().enumerate() {
        let index = offset + n as DeliveryIndex;
        plans.insert(delivery_key(id, index), delivery.plan.as_slice())?;
        dstates.insert(delivery_key(id, index), delivery.state.as_slice())?;
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
fn pending_count(encoded: &[EncodedDelivery]) -> u64 {
    encoded
        .iter()
        .filter(|d| matches!(d.status, DeliveryStatus::Pending { .. }))
        .count() as u64
}

/// How many of `deliveries` are dead on arrival: entries in the dead index.
fn dead_count(encoded: &[EncodedDelivery]) -> u64 {
    encoded
        .iter()
        .filter(|d| matches!(d.status, DeliveryStatus::Dead { .. }))
        .count() as u64
}

/// Sets the message's status from its deliveries (pending while any is
/// pending, else dead if any is dead, else handled if a fallback settled
/// any, else delivered) and writes `state` if that changed it or the
/// caller did (`dirty`). Returns it, so the per-route backlog can follow
/// the message once the transaction has committed.
fn settle_message(
    states: &TransactionalTree,
    dstates: &TransactionalTree,
    id: &str,
    (mut state, dirty): (MessageState, bool),
    now: u64,
) -> TxResult<MessageState> {
    let settled = match state.deliveries.unwrap_or(0) {
        // Not transformed yet, or filtered: nothing to settle.
        0 => None,
        count => settled_status(dstates, id, count)?,
    };
    if let Some(status) = settled {
        state.status = status;
        state.updated_at = now;
    }
    if dirty || settled.is_some() {
        put_state(states, id, &state)?;
    }
    Ok(state)
}

/// The status a message's `count` deliveries settle it in; `None` while
/// any is pending.
fn settled_status(
    dstates: &TransactionalTree,
    id: &str,
    count: DeliveryIndex,
) -> TxResult<Option<MessageStatus>> {
    let (mut any_dead, mut any_handled) = (false, false);
    for index in 0..count {
        match get_delivery_state(dstates, id, index)?.status {
            DeliveryStatus::Pending { .. } => return Ok(None),
            DeliveryStatus::Dead { .. } => any_dead = true,
            DeliveryStatus::Handled => any_handled = true,
            DeliveryStatus::Delivered | DeliveryStatus::Replayed => {}
        }
    }
    Ok(Some(if any_dead {
        MessageStatus::Dead
    } else if any_handled {
        MessageStatus::Handled
    } else {
        MessageStatus::Delivered
    }))
}

impl SledStore {
    /// Follows a message that was pending before a transaction.
    fn left_pending_if(&self, settled: &MessageState) {
        if settled.status != MessageStatus::Pending {
            self.backlog.remove(&settled.app, &settled.route);
        }
    }
}

pub(super) mod admin;
mod parking;
mod writes;
pub(super) use writes::Write;
#[cfg(test)]
mod tests;
