//! Deliveries parked while their destination's breaker is open (or while
//! it is disabled after a 410).
//!
//! Rescheduling every waiting delivery to the end of each cool-down costs
//! one journal write per delivery per cool-down, and brings them all due
//! at once, ahead of other destinations' work in the due index. A parked
//! delivery instead leaves the due index for the `parked` tree, under its
//! destination's *place* (an opaque key the dispatcher chooses): one write
//! when it parks, one when it is released. The dispatcher releases one as
//! the half-open probe when the cool-down ends and all of them once the
//! breaker closes.
//!
//! Breakers start closed, so opening the store releases everything parked
//! by an earlier run. A parked delivery is still pending: it counts in
//! `pending` and in its route's backlog.

use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::{
    DeliveryState, TxResult, Write, abort, decode, delivery_key, due_key, parse_due_key,
    put_delivery_state, tx_error,
};
use crate::store::records::{DeliveryStatus, DueTask, TaskKind};
use crate::store::{SledStore, StoreError};

fn place_prefix(place: &[u8]) -> Vec<u8> {
    [place, &[0]].concat()
}

fn park_write(task: &DueTask, place: &[u8]) -> Result<Write, StoreError> {
    let TaskKind::Deliver(_) = task.kind else {
        return Err(StoreError::Invalid("only deliveries are parked".into()));
    };
    let due = due_key(task.due_at, &task.message_id, task.kind);
    Ok(Write::Park {
        parked: [place_prefix(place), due.clone()].concat(),
        due,
        what: format!("task {:?} of message {:?}", task.kind, task.message_id),
    })
}

impl SledStore {
    /// Moves a due delivery task out of the due index, under `place`, in a
    /// transaction of its own (the journal's tests).
    #[cfg(test)]
    pub fn park(&self, task: &DueTask, place: &[u8]) -> Result<(), StoreError> {
        self.apply_alone(&park_write(task, place)?)
    }

    /// Moves a due delivery task out of the due index, under `place`,
    /// applied in one transaction with the writes of other tasks.
    pub async fn park_shared(&self, task: &DueTask, place: &[u8]) -> Result<(), StoreError> {
        self.write_shared(park_write(task, place)?).await
    }

    /// Makes up to `limit` of the deliveries parked under `place` due at
    /// `now`, oldest first; returns how many.
    pub fn release_parked(
        &self,
        place: &[u8],
        limit: usize,
        now: u64,
    ) -> Result<usize, StoreError> {
        let prefix = place_prefix(place);
        let mut parked = Vec::new();
        for key in self.parked.scan_prefix(&prefix).keys().take(limit) {
            let key = key?;
            let task = parse_due_key(&key[prefix.len()..])?;
            parked.push((key.to_vec(), task));
        }
        self.unpark(&parked, now)?;
        Ok(parked.len())
    }

    /// Whether anything is parked under `place`.
    pub fn has_parked(&self, place: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .parked
            .scan_prefix(place_prefix(place))
            .next()
            .transpose()?
            .is_some())
    }

    /// Deliveries parked, all destinations.
    pub fn parked_count(&self) -> Result<u64, StoreError> {
        let mut count = 0;
        for key in self.parked.iter().keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    /// Releases everything parked (at open: every breaker starts closed),
    /// [`UNPARK_BATCH`] per transaction.
    pub(in crate::store) fn with_parked_released(self) -> Result<Self, StoreError> {
        let now = crate::clock::now_ms();
        let mut batch = Vec::with_capacity(UNPARK_BATCH);
        for key in self.parked.iter().keys() {
            let key = key?;
            let split = key
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| StoreError::Corrupt("parked key without a place".into()))?;
            let task = parse_due_key(&key[split + 1..])?;
            batch.push((key.to_vec(), task));
            if batch.len() == UNPARK_BATCH {
                self.unpark(&batch, now)?;
                batch.clear();
            }
        }
        self.unpark(&batch, now)?;
        Ok(self)
    }

    /// Parked tasks (their `parked` key and task) back into the due index at
    /// `now`, in one transaction, each delivery's due time following (an
    /// attempt removes the due entry it names).
    fn unpark(&self, parked: &[(Vec<u8>, DueTask)], now: u64) -> Result<(), StoreError> {
        if parked.is_empty() {
            return Ok(());
        }
        (&self.parked, &self.due, &self.delivery_state)
            .transaction(|(parked_tree, due_tree, dstates)| {
                for (key, task) in parked {
                    unpark_one((parked_tree, due_tree, dstates), key, task, now)?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }
}

/// Most parked tasks released in one transaction at open.
const UNPARK_BATCH: usize = 256;

fn unpark_one(
    (parked_tree, due_tree, dstates): (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    parked: &[u8],
    task: &DueTask,
    now: u64,
) -> TxResult<()> {
    let TaskKind::Deliver(index) = task.kind else {
        return Err(abort(StoreError::Corrupt("a parked transform task".into())));
    };
    let id = task.message_id.as_str();
    if parked_tree.remove(parked)?.is_none() {
        // Released meanwhile by another caller.
        return Ok(());
    }
    // A delivery settled or purged meanwhile has nothing to wait for: its
    // parked entry just goes.
    let Some(raw) = dstates.get(delivery_key(id, index))? else {
        return Ok(());
    };
    let mut state: DeliveryState = decode(&raw, "delivery state").map_err(abort)?;
    if !matches!(state.status, DeliveryStatus::Pending { .. }) {
        return Ok(());
    }
    due_tree.insert(due_key(now, id, task.kind), &[])?;
    state.status = DeliveryStatus::Pending { due_at: now };
    put_delivery_state(dstates, id, index, &state)?;
    Ok(())
}

impl SledStore {
    /// Records that the destination at `place` (see
    /// `delivery::parking::place_of`) is disabled after a 410, or enabled
    /// again by an operator. Kept by name, not by the running destination,
    /// so it holds across config reloads (a destination renamed back, or
    /// edited, is still the one that answered 410) and restarts, until an
    /// operator enables it. Disabling takes effect in memory even when the
    /// journal write fails (nothing more is sent; only a restart would
    /// forget it); enabling writes the journal first, so memory never says
    /// "enabled" where a restart would say "disabled". Not flushed: the next
    /// flush (any acknowledgement, or sled's own within half a second)
    /// makes it durable, and losing it in a crash costs one more 410.
    pub fn set_disabled(&self, place: &[u8], disabled: bool) -> Result<(), StoreError> {
        if disabled {
            self.disabled_set().insert(place.to_vec());
            self.disabled.insert(place, &[])?;
        } else {
            self.disabled.remove(place)?;
            self.disabled_set().remove(place);
        }
        Ok(())
    }

    /// Whether the destination at `place` is disabled after a 410.
    pub fn is_disabled(&self, place: &[u8]) -> bool {
        self.disabled_places
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(place)
    }

    fn disabled_set(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashSet<Vec<u8>>> {
        self.disabled_places
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the disabled destinations an earlier run recorded.
    pub(in crate::store) fn with_disabled_loaded(self) -> Result<Self, StoreError> {
        {
            let mut set = self.disabled_set();
            for key in self.disabled.iter().keys() {
                set.insert(key?.to_vec());
            }
        }
        Ok(self)
    }
}
