//! The writes of the delivery pipeline: the transform's outcome (its
//! deliveries), each attempt's outcome, both at once for a lone delivery
//! sent in the transform's task, and a delivery parked behind an open
//! breaker. Each is a [`Write`]: encoded ahead, applied inside a
//! transaction, followed by the in-memory bookkeeping once that commits.
//!
//! The dispatcher sends them through the store's rounds
//! ([`SledStore::set_deliveries_shared`], [`SledStore::record_attempt_shared`],
//! [`SledStore::set_delivery_sent_shared`], [`SledStore::park_shared`]):
//! the writes of concurrent tasks are applied in one sled transaction, since
//! sled charges per transaction far more than per key (BENCHMARKS.md, the
//! *journal alone* rows). Should one write of a batch fail (its task was
//! replayed or purged meanwhile), the batch is applied again one write per
//! transaction, so that only that write fails.

use std::sync::atomic::Ordering;

use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::{
    EncodedDelivery, MessageState, TxResult, abort, attempt_key, dead_count, delivery_key, due_key,
    encode, encode_deliveries, get_delivery_state, get_state, insert_deliveries, pending_count,
    put_delivery_state, settle_message, tx_error,
};
use crate::store::records::{
    AttemptRecord, AttemptResult, DeliveryIndex, DeliveryRecord, DeliveryStatus, InboundMessage,
    MessageStatus, TaskKind,
};
use crate::store::{SledStore, StoreError};

/// One write of the delivery pipeline, ready to apply.
pub(in crate::store) enum Write {
    /// The transform's outcome: its deliveries replace the transform task.
    Deliveries(Planned),
    /// An attempt of delivery `index` of message `id` and its consequence.
    Attempt {
        id: String,
        index: DeliveryIndex,
        outcome: Outcome,
    },
    /// The transform's outcome, one delivery, and that delivery's first
    /// attempt, made before either was journaled (the dispatcher sends a
    /// lone delivery due now in the transform's task): one write where
    /// there would be two, and the delivery never enters the due index
    /// unless it is to be retried or rerouted. Until it commits, the
    /// transform task stays due, so a crash runs the transform again and
    /// sends its (possibly different) answer: ARCHITECTURE.md, *Life of a
    /// webhook*, step 3.
    SentAtOnce { planned: Planned, outcome: Outcome },
    /// A due delivery moved out of the due index while its destination's
    /// breaker is open (`parking.rs`).
    Park {
        /// Its due-index key, and its key in `parked`.
        due: Vec<u8>,
        parked: Vec<u8>,
        what: String,
    },
}

/// The deliveries a transform made of message `id`, encoded.
pub(in crate::store) struct Planned {
    id: String,
    transform_due_at: u64,
    added: DeliveryIndex,
    encoded: Vec<EncodedDelivery>,
    now: u64,
}

/// What an attempt did to its delivery, encoded, with the dead-letter
/// alert a dying delivery adds to the message.
pub(in crate::store) struct Outcome {
    /// The attempt's number and record; `None` for a delivery settled
    /// without being sent (its destination left the config).
    log: Option<(u32, Vec<u8>)>,
    result: AttemptResult,
    alert: Option<Box<EncodedDelivery>>,
    now: u64,
}

/// The trees a [`Write`] touches, inside a transaction: message and
/// delivery state, plans, the due index, attempts, dead letters, parked.
type WriteTrees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

impl Planned {
    /// The transform's outcome for `message` (as journaled: a delivery whose
    /// body is its body stores no copy). No deliveries means it was filtered.
    fn new(
        message: &InboundMessage,
        transform_due_at: u64,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Result<Planned, StoreError> {
        let added = DeliveryIndex::try_from(deliveries.len()).map_err(|_| {
            StoreError::Invalid(format!("{} deliveries for one message", deliveries.len()))
        })?;
        Ok(Planned {
            id: message.id.clone(),
            transform_due_at,
            added,
            encoded: encode_deliveries(deliveries, &message.body)?,
            now,
        })
    }

    /// Replaces the transform task with the deliveries, after any earlier
    /// ones (a replay's), and settles the message.
    fn apply(
        &self,
        (states, plans, dstates, due, _attempts, dead, _parked): WriteTrees<'_>,
    ) -> TxResult<MessageState> {
        let id = self.id.as_str();
        let old = due.remove(due_key(self.transform_due_at, id, TaskKind::Transform))?;
        if old.is_none() {
            return Err(abort(StoreError::NotFound(format!(
                "transform task of message {id:?}"
            ))));
        }
        let mut state = get_state(states, id)?;
        // A replay appends after the earlier deliveries, so their attempt logs
        // stay as they were.
        let offset = state.deliveries.unwrap_or(0);
        let count = offset.checked_add(self.added).ok_or_else(|| {
            abort(StoreError::Invalid(format!(
                "too many deliveries for message {id:?}"
            )))
        })?;
        insert_deliveries((plans, dstates, due, dead), id, offset, &self.encoded)?;
        state.deliveries = Some(count);
        state.updated_at = self.now;
        if self.added == 0 {
            state.status = MessageStatus::Filtered;
        }
        settle_message(states, dstates, id, (state, true), self.now)
    }

    /// The in-memory counts that follow: one transform task became this
    /// many delivery tasks.
    fn count(&self, store: &SledStore) {
        // The transform task leaves first, so the peak never counts it
        // together with the tasks that replace it.
        store.pending.fetch_sub(1, Ordering::Relaxed);
        store.add_pending(pending_count(&self.encoded));
        store.add_dead_letters(dead_count(&self.encoded));
    }
}

impl Outcome {
    /// `attempt` (none for a delivery settled unsent) and what follows from
    /// it; `alert` is appended as a new delivery of the message, whose
    /// inbound body it is given with.
    fn new(
        attempt: Option<&AttemptRecord>,
        result: &AttemptResult,
        alert: Option<(&DeliveryRecord, &[u8])>,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        Ok(Outcome {
            log: attempt
                .map(|attempt| Ok::<_, StoreError>((attempt.attempt, encode(attempt)?)))
                .transpose()?,
            result: result.clone(),
            alert: encode_alert(alert)?,
            now,
        })
    }

    /// Records the attempt of delivery `index` of message `id`, moves the
    /// delivery on (due again, settled or dead), appends the alert, and
    /// settles the message.
    fn apply(
        &self,
        (states, plans, dstates, due, attempts, dead, _parked): WriteTrees<'_>,
        (id, index): (&str, DeliveryIndex),
    ) -> TxResult<MessageState> {
        let mut delivery = get_delivery_state(dstates, id, index)?;
        let DeliveryStatus::Pending { due_at } = delivery.status else {
            return Err(abort(StoreError::Invalid(format!(
                "delivery {index} of message {id:?} is not pending"
            ))));
        };
        due.remove(due_key(due_at, id, TaskKind::Deliver(index)))?;
        if let Some((number, log)) = &self.log {
            delivery.attempts = delivery.attempts.max(*number);
            attempts.insert(attempt_key(id, index, *number), log.as_slice())?;
        }
        delivery.status = match &self.result {
            AttemptResult::Delivered => DeliveryStatus::Delivered,
            AttemptResult::Handled => DeliveryStatus::Handled,
            AttemptResult::RetryAt(at) => {
                due.insert(due_key(*at, id, TaskKind::Deliver(index)), &[])?;
                DeliveryStatus::Pending { due_at: *at }
            }
            AttemptResult::Reroute { destination, at } => {
                delivery.destination = destination.clone();
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
        put_delivery_state(dstates, id, index, &delivery)?;
        let mut state = get_state(states, id)?;
        if let Some(alert) = &self.alert {
            let offset = state.deliveries.unwrap_or(0);
            insert_deliveries(
                (plans, dstates, due, dead),
                id,
                offset,
                std::slice::from_ref(alert.as_ref()),
            )?;
            state.deliveries = Some(offset.saturating_add(1));
        }
        settle_message(states, dstates, id, (state, self.alert.is_some()), self.now)
    }

    /// The in-memory counts that follow: the task leaves the due index
    /// unless it is due again; a dead delivery is a dead letter; an alert
    /// is a new task.
    fn count(&self, store: &SledStore) {
        if !matches!(
            self.result,
            AttemptResult::RetryAt(_) | AttemptResult::Reroute { .. }
        ) {
            store.pending.fetch_sub(1, Ordering::Relaxed);
        }
        if matches!(self.result, AttemptResult::Dead(_)) {
            store.add_dead_letters(1);
        }
        if let Some(alert) = &self.alert {
            store.add_pending(pending_count(std::slice::from_ref(alert)));
        }
    }
}

impl Write {
    /// The transform's outcome for `message`: see [`Planned::new`].
    pub(in crate::store) fn deliveries(
        message: &InboundMessage,
        transform_due_at: u64,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Result<Write, StoreError> {
        Planned::new(message, transform_due_at, deliveries, now).map(Write::Deliveries)
    }

    /// An attempt of delivery `index` of message `id` and what follows from
    /// it; `alert` is appended as a new delivery of the message, whose
    /// inbound body it is given with.
    pub(in crate::store) fn attempt(
        id: &str,
        index: DeliveryIndex,
        attempt: &AttemptRecord,
        result: &AttemptResult,
        alert: Option<(&DeliveryRecord, &[u8])>,
        now: u64,
    ) -> Result<Write, StoreError> {
        Ok(Write::Attempt {
            id: id.to_string(),
            index,
            outcome: Outcome::new(Some(attempt), result, alert, now)?,
        })
    }

    /// Delivery `index` of `message` dead-lettered without an attempt, with
    /// the route's alert appended as for any delivery that dies.
    pub(in crate::store) fn unsent(
        message: &InboundMessage,
        index: DeliveryIndex,
        reason: &str,
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<Write, StoreError> {
        let alert = alert.map(|delivery| (delivery, message.body.as_slice()));
        Ok(Write::Attempt {
            id: message.id.clone(),
            index,
            outcome: Outcome::new(None, &AttemptResult::Dead(reason.to_string()), alert, now)?,
        })
    }

    /// The transform's one delivery and its first attempt: see
    /// [`Write::SentAtOnce`].
    pub(in crate::store) fn sent_at_once(
        message: &InboundMessage,
        transform_due_at: u64,
        delivery: &DeliveryRecord,
        (attempt, result): (&AttemptRecord, &AttemptResult),
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<Write, StoreError> {
        let alert = alert.map(|delivery| (delivery, message.body.as_slice()));
        Ok(Write::SentAtOnce {
            planned: Planned::new(
                message,
                transform_due_at,
                std::slice::from_ref(delivery),
                now,
            )?,
            outcome: Outcome::new(Some(attempt), result, alert, now)?,
        })
    }

    /// Applies the write; returns the message's state after it, when it
    /// changed it. May run more than once (sled retries a transaction on
    /// conflict).
    fn apply(&self, trees: WriteTrees<'_>) -> TxResult<Option<MessageState>> {
        match self {
            Write::Deliveries(planned) => planned.apply(trees).map(Some),
            Write::Attempt { id, index, outcome } => outcome.apply(trees, (id, *index)).map(Some),
            Write::SentAtOnce { planned, outcome } => {
                let state = planned.apply(trees)?;
                // The delivery just planned is the message's last (a replay
                // appends after the earlier ones).
                let index = state
                    .deliveries
                    .unwrap_or(0)
                    .checked_sub(1)
                    .ok_or_else(|| {
                        abort(StoreError::Invalid(format!(
                            "message {:?} has no delivery to record an attempt of",
                            planned.id
                        )))
                    })?;
                outcome.apply(trees, (&planned.id, index)).map(Some)
            }
            Write::Park {
                due: due_key,
                parked: parked_key,
                what,
            } => {
                let (_, _, _, due, _, _, parked) = trees;
                if due.remove(due_key.as_slice())?.is_none() {
                    return Err(abort(StoreError::NotFound(what.clone())));
                }
                parked.insert(parked_key.as_slice(), &[])?;
                Ok(None)
            }
        }
    }

    /// The in-memory counts that follow the committed write; `settled` is
    /// the message's state after it.
    fn after(&self, store: &SledStore, settled: Option<&MessageState>) {
        if let Some(settled) = settled {
            store.left_pending_if(settled);
        }
        match self {
            Write::Deliveries(planned) => planned.count(store),
            Write::Attempt { outcome, .. } => outcome.count(store),
            Write::SentAtOnce { planned, outcome } => {
                planned.count(store);
                outcome.count(store);
            }
            // A parked delivery is still pending: it left the due index, not
            // the backlog.
            Write::Park { .. } => {}
        }
    }
}

/// A dead-letter alert (a delivery, with the inbound body it may share),
/// encoded.
fn encode_alert(
    alert: Option<(&DeliveryRecord, &[u8])>,
) -> Result<Option<Box<EncodedDelivery>>, StoreError> {
    let Some((delivery, inbound_body)) = alert else {
        return Ok(None);
    };
    Ok(
        encode_deliveries(std::slice::from_ref(delivery), inbound_body)?
            .pop()
            .map(Box::new),
    )
}

impl SledStore {
    /// Records the transform's outcome: the deliveries it produced (each due
    /// at its own time) replace the message's transform task. No deliveries
    /// means the message was filtered. `message` is the message as
    /// journaled: a delivery whose body is its body stores no copy.
    #[cfg(test)]
    pub fn set_deliveries(
        &self,
        message: &InboundMessage,
        transform_due_at: u64,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Result<(), StoreError> {
        let write = Write::deliveries(message, transform_due_at, deliveries, now)?;
        self.apply_alone(&write)
    }

    /// Records the transform's outcome (see `set_deliveries`, its form alone
    /// in a transaction, for the journal's tests), applied in one
    /// transaction with the writes of other tasks.
    pub async fn set_deliveries_shared(
        &self,
        message: &InboundMessage,
        transform_due_at: u64,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Result<(), StoreError> {
        let write = Write::deliveries(message, transform_due_at, deliveries, now)?;
        self.write_shared(write).await
    }

    /// Records one attempt and its consequence, together: the attempt log,
    /// the delivery's new state, the due index, the dead-letter entry and the
    /// message's status change in one transaction.
    #[cfg(test)]
    pub fn record_attempt(
        &self,
        id: &str,
        index: DeliveryIndex,
        attempt: &AttemptRecord,
        result: &AttemptResult,
        now: u64,
    ) -> Result<(), StoreError> {
        let write = Write::attempt(id, index, attempt, result, None, now)?;
        self.apply_alone(&write)
    }

    /// Records one attempt of a delivery of `message` and its consequence
    /// (the attempt log, the delivery's new state, the due index, the
    /// dead-letter entry and the message's status change), appending `alert`
    /// as a new delivery of the message (the route's dead-letter alert: a
    /// copy to an on-call destination when a delivery dies), applied in one
    /// transaction with the writes of other tasks.
    pub async fn record_attempt_shared(
        &self,
        message: &InboundMessage,
        index: DeliveryIndex,
        attempt: &AttemptRecord,
        result: &AttemptResult,
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        let alert = alert.map(|delivery| (delivery, message.body.as_slice()));
        let write = Write::attempt(&message.id, index, attempt, result, alert, now)?;
        self.write_shared(write).await
    }

    /// Records the transform's outcome, one delivery, together with that
    /// delivery's first attempt and its consequence, as
    /// [`SledStore::set_deliveries_shared`] and then
    /// [`SledStore::record_attempt_shared`] would, in one write (see
    /// [`Write::SentAtOnce`]).
    pub async fn set_delivery_sent_shared(
        &self,
        message: &InboundMessage,
        transform_due_at: u64,
        delivery: &DeliveryRecord,
        attempt: (&AttemptRecord, &AttemptResult),
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        let write = Write::sent_at_once(message, transform_due_at, delivery, attempt, alert, now)?;
        self.write_shared(write).await
    }

    /// Dead-letters delivery `index` of `message` without sending it (its
    /// destination is no longer in the route's config), appending `alert`
    /// as [`SledStore::record_attempt_shared`] does; applied in one
    /// transaction with the writes of other tasks.
    pub async fn dead_letter_unsent_shared(
        &self,
        message: &InboundMessage,
        index: DeliveryIndex,
        reason: &str,
        alert: Option<&DeliveryRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        let write = Write::unsent(message, index, reason, alert, now)?;
        self.write_shared(write).await
    }

    pub(in crate::store) fn apply_alone(&self, write: &Write) -> Result<(), StoreError> {
        self.apply_writes(std::slice::from_ref(write))
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("a batch of one applied nothing".into())))
    }

    /// Applies `batch` in one transaction; one result per write, in order.
    pub(in crate::store) fn apply_writes(&self, batch: &[Write]) -> Vec<Result<(), StoreError>> {
        let trees = (
            &self.message_state,
            &self.deliveries,
            &self.delivery_state,
            &self.due,
            &self.attempts,
            &self.dead,
            &self.parked,
        );
        let applied = trees.transaction(|(states, plans, dstates, due, attempts, dead, parked)| {
            batch
                .iter()
                .map(|write| write.apply((states, plans, dstates, due, attempts, dead, parked)))
                .collect::<TxResult<Vec<_>>>()
        });
        match applied {
            Ok(settled) => batch
                .iter()
                .zip(settled)
                .map(|(write, settled)| {
                    write.after(self, settled.as_ref());
                    Ok(())
                })
                .collect(),
            // One write failed and took the batch with it: apply each alone,
            // so that only it fails.
            Err(_) if batch.len() > 1 => batch.iter().map(|w| self.apply_alone(w)).collect(),
            Err(err) => vec![Err(tx_error(err))],
        }
    }
}
