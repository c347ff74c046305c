//! The running state of each destination: its breaker, its concurrency
//! limit, its signing secret and headers. (Whether a 410 disabled it is
//! kept by the journal, by name, so that it outlives reloads and restarts:
//! `SledStore::is_disabled`.)
//!
//! Destinations are per route (`app/route/name`, held by the route, see
//! `routes.rs`): two routes pointing at the same URL still get separate
//! breakers, so one app's failures never stop another app's deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::Semaphore;

use crate::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::config::{Defaults, DestinationConfig, RouteConfig};
use crate::delivery::retry::RetryPolicy;
use crate::verify::{BodySigner, StandardSecret};

/// Attempts that may wait for a destination's slot, beyond the ones it is
/// sending: as many as its `concurrency`, within these bounds. An attempt
/// past them is parked (`parking.rs`) until the destination has room, so a
/// slow receiver's backlog cannot take every task the scheduler runs at once
/// (`MAX_IN_FLIGHT`, 512) and hold up all the other routes' deliveries.
/// The floor keeps a recovered destination's backlog draining at full
/// speed: with 16 waiting for a default destination's 16 slots, the
/// backlog drain fell from ~14k to ~8.5k msg/s, with 64 it read ~13k
/// (BENCHMARKS.md, *What session 15 measured*).
const QUEUE_MIN: usize = 64;
const QUEUE_MAX: usize = 128;

/// Everything a dispatcher needs to send to one destination.
pub struct Destination {
    pub name: String,
    pub config: DestinationConfig,
    pub retry: RetryPolicy,
    pub breaker: CircuitBreaker,
    /// One permit per request in flight.
    pub slots: Semaphore,
    /// Attempts waiting for a slot ([`Destination::join_queue`]).
    queued: AtomicUsize,
    queue_limit: usize,
    pub secret: Option<StandardSecret>,
    /// Body signature in a header of the receiver's choosing.
    pub body_signer: Option<BodySigner>,
    /// Headers from config, values from the file or the environment.
    pub headers: Vec<(String, String)>,
}

impl Destination {
    /// Reports an attempt's outcome to the breaker, and logs the state
    /// change it caused, if any: an operator wants to see a destination's
    /// breaker open and close.
    pub fn report(&self, permit: Permit, failed: bool) {
        let transition = if failed {
            permit.failure()
        } else {
            permit.success()
        };
        match transition.map(|t| t.to) {
            Some(BreakerState::Open { .. }) => {
                tracing::warn!(destination = %self.name, "circuit breaker opened: nothing is sent until the cool-down ends")
            }
            Some(BreakerState::Closed) => {
                tracing::info!(destination = %self.name, "circuit breaker closed: the destination recovered")
            }
            Some(BreakerState::HalfOpen) | None => {}
        }
    }

    /// A place among the attempts waiting for a slot, or `None` when as
    /// many wait as the destination takes: the attempt is parked instead.
    /// The place is left when the guard drops (once the slot is had).
    pub fn join_queue(&self) -> Option<Queued<'_>> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue_limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(&self.queued))
    }

    /// Attempts the destination could take now without parking them: free
    /// slots and free places in the queue.
    pub fn room(&self) -> usize {
        let queued = self.queued.load(Ordering::Acquire);
        self.slots.available_permits() + self.queue_limit.saturating_sub(queued)
    }

    /// The per-attempt timeout: the destination's own, else the policy's.
    pub fn attempt_timeout(&self, attempt: u32) -> Duration {
        self.config
            .timeout
            .unwrap_or_else(|| self.retry.attempt_timeout(attempt))
    }
}

/// Builds one route's destinations, in config order. A destination whose
/// settings (its table, the route's retry policy and breaker) are the same
/// as in `previous` (the running route, on a config reload) is kept as it
/// is: its breaker state and requests in flight carry over. (Whether a 410
/// disabled it is the journal's to say, by name: see
/// `SledStore::is_disabled`.) Secrets and header variables were checked by
/// config validation; a variable that vanished since is reported in
/// `problems`.
pub fn build_destinations(
    key: &str,
    route: &RouteConfig,
    defaults: &Defaults,
    previous: Option<&IndexMap<String, Arc<Destination>>>,
    problems: &mut Vec<String>,
) -> IndexMap<String, Arc<Destination>> {
    let retry = route.retry.as_ref().unwrap_or(&defaults.retry);
    let breaker = route.breaker.as_ref().unwrap_or(&defaults.breaker);
    let mut built = IndexMap::new();
    for (name, dest) in &route.destinations {
        let kept = previous.and_then(|p| p.get(name)).filter(|old| {
            old.config == *dest && old.retry == *retry && *old.breaker.config() == *breaker
        });
        if let Some(old) = kept {
            built.insert(name.clone(), old.clone());
            continue;
        }
        let key = format!("{key}.destinations.{name}");
        let secret = dest.secret_env.as_ref().and_then(|var| {
            match std::env::var(var).map(|s| StandardSecret::parse(s.trim())) {
                Ok(Ok(secret)) => Some(secret),
                Ok(Err(err)) => {
                    problems.push(format!(
                        "{key}.secret_env: {var:?} does not hold a whsec_ secret: {err}"
                    ));
                    None
                }
                Err(_) => {
                    problems.push(format!(
                        "{key}.secret_env: environment variable {var:?} is not set"
                    ));
                    None
                }
            }
        });
        let mut headers: Vec<(String, String)> = dest
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (header, var) in &dest.headers_env {
            match std::env::var(var) {
                Ok(value) => headers.push((header.clone(), value)),
                Err(_) => problems.push(format!(
                    "{key}.headers_env.{header}: environment variable {var:?} is not set"
                )),
            }
        }
        let body_signer = dest.signature.as_ref().and_then(|config| {
            BodySigner::from_config(config, |var| std::env::var(var).ok())
                .map_err(|err| problems.push(format!("{key}.signature.secret_env: {err}")))
                .ok()
        });
        let destination = Destination {
            name: name.clone(),
            config: dest.clone(),
            retry: retry.clone(),
            breaker: CircuitBreaker::new(breaker.clone()),
            slots: Semaphore::new(dest.concurrency),
            queued: AtomicUsize::new(0),
            queue_limit: dest.concurrency.clamp(QUEUE_MIN, QUEUE_MAX),
            secret,
            body_signer,
            headers,
        };
        built.insert(name.clone(), Arc::new(destination));
    }
    built
}

/// A place in a destination's queue for a slot; see
/// [`Destination::join_queue`].
pub struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
