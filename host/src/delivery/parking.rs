//! Which destinations have deliveries parked (see `store/journal/parking.rs`)
//! and when to let them go: one as the half-open probe once the cool-down
//! ends, one more after each successful probe, and one whenever the breaker
//! is half-open with no probe out (a probe abandoned, or one let out that
//! came back unsent); once the breaker is closed, as many as the
//! destination has room for (free slots and places in its queue for them,
//! `Destination::room`), which is also how the attempts parked because
//! that queue was full go back. For a destination disabled by a 410,
//! nothing until an operator re-enables it.
//! The journal holds the parked tasks; this holds only the places that have
//! some, so the scheduler looks at a handful of breakers, never at the
//! parked tasks themselves.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::clock::now_ms;
use crate::routes::RouteTable;
use crate::store::{SledStore, StoreError};

/// Deliveries released per place per scheduler round once a breaker has
/// closed: enough to keep a recovered destination busy, few enough that
/// one round does not hold up the others.
const RELEASE_BATCH: usize = 256;

/// Below this much room (or the destination's whole `concurrency`, if
/// smaller) a place with a closed breaker waits for more: each release is
/// a journal write.
const RELEASE_MIN: usize = 16;

/// A destination with parked deliveries.
#[derive(Debug, Clone)]
struct Place {
    app: String,
    route: String,
    destination: String,
    /// The cool-down whose probe was released already, so an expired
    /// `Open` that no attempt has turned half-open yet releases one probe,
    /// not one per round.
    probe_for: Option<Instant>,
    /// The half-open breaker's probe count (`awaiting_probe`) when a
    /// delivery was last let out to be its probe: another goes only once
    /// the count has moved.
    probe_at: Option<u64>,
}

/// The places with parked deliveries.
#[derive(Debug, Default)]
pub struct Parking {
    places: Mutex<HashMap<Vec<u8>, Place>>,
}

/// The journal's key for one destination of one route.
pub fn place_of(app: &str, route: &str, destination: &str) -> Vec<u8> {
    // Unit separators: config names never contain control characters.
    format!("{app}\u{1f}{route}\u{1f}{destination}").into_bytes()
}

impl Parking {
    /// Remembers that `place` has parked deliveries, after one parked.
    /// A delivery let out to be a probe may be the one that parked again,
    /// unsent (it found the destination disabled): the next probe may go.
    pub fn note(&self, place: Vec<u8>, app: &str, route: &str, destination: &str) {
        let mut places = self.lock();
        let place = places.entry(place).or_insert_with(|| Place {
            app: app.to_string(),
            route: route.to_string(),
            destination: destination.to_string(),
            probe_for: None,
            probe_at: None,
        });
        place.probe_for = None;
        place.probe_at = None;
    }

    /// Releases what each place's breaker allows now. Returns when to look
    /// again: the earliest end of a cool-down, or now while a closed
    /// breaker still has deliveries parked.
    pub fn release(
        &self,
        store: &SledStore,
        routes: &RouteTable,
    ) -> Result<Option<Instant>, StoreError> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let places: Vec<(Vec<u8>, Place)> = self
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (key, place) in places {
            let dest = routes
                .by_name(&place.app, &place.route)
                .and_then(|route| route.destination(&place.destination));
            // Disabled after a 410: everything stays parked until an
            // operator re-enables it, as long as the config still names
            // the destination (`enable` can reach it). Taken out of the
            // config, it is released below, to be dead-lettered.
            if dest.is_some() && store.is_disabled(&key) {
                continue;
            }
            let limit = match dest.map(|dest| (dest, dest.breaker.state())) {
                // Gone from the config (or replaced, with a fresh closed
                // breaker): back to the due index, where the dispatcher
                // handles an unknown destination.
                None => RELEASE_BATCH,
                // As many as it has room for (slots and queue), once that
                // is worth a write: a slow destination's finished attempts
                // wake the scheduler, which lets the next ones out.
                Some((dest, BreakerState::Closed)) => {
                    let room = dest.room().min(RELEASE_BATCH);
                    if room < RELEASE_MIN.min(dest.config.concurrency) {
                        continue;
                    }
                    room
                }
                Some((_, BreakerState::Open { until })) if until > now => {
                    next = Some(next.map_or(until, |n| n.min(until)));
                    0
                }
                Some((_, BreakerState::Open { until })) if place.probe_for != Some(until) => {
                    self.mark(&key, |place| place.probe_for = Some(until));
                    1
                }
                // One was released for this cool-down: its outcome decides.
                Some((_, BreakerState::Open { .. })) => 0,
                // No probe out, and none let out since the last one started
                // or ended: the next probe. Otherwise the probes' outcome
                // decides (see `probe_succeeded`).
                Some((dest, BreakerState::HalfOpen)) => match dest.breaker.awaiting_probe() {
                    Some(events) if place.probe_at != Some(events) => {
                        self.mark(&key, |place| place.probe_at = Some(events));
                        1
                    }
                    _ => 0,
                },
            };
            if limit == 0 {
                continue;
            }
            let released = store.release_parked(&key, limit, now_ms())?;
            if released == limit && limit == RELEASE_BATCH {
                next = Some(now);
            } else {
                // Under the lock: a delivery parking now notes its place
                // after its park commits, so it either shows here or
                // re-adds the place once it is removed.
                let mut places = self.lock();
                if !store.has_parked(&key)? {
                    places.remove(&key);
                }
            }
        }
        Ok(next)
    }

    /// A probe succeeded and the breaker wants more before it closes:
    /// release the next one.
    pub fn probe_succeeded(
        &self,
        store: &SledStore,
        place: &[u8],
        breaker: &CircuitBreaker,
    ) -> Result<(), StoreError> {
        if self.lock().contains_key(place) {
            store.release_parked(place, 1, now_ms())?;
            if let Some(events) = breaker.awaiting_probe() {
                self.mark(place, |place| place.probe_at = Some(events));
            }
        }
        Ok(())
    }

    fn mark(&self, key: &[u8], change: impl FnOnce(&mut Place)) {
        if let Some(place) = self.lock().get_mut(key) {
            change(place);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Place>> {
        self.places.lock().unwrap_or_else(|p| p.into_inner())
    }
}
