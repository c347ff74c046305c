//! Delivery: from a due task in the journal to an answer from the upstream.
//!
//! - `scheduler.rs`: reads the due-time index, hands out tasks.
//! - `dispatcher.rs`: the transform step, one attempt, its outcome.
//! - `inline.rs`: a sync route's delivery while the caller waits, and its
//!   fallback decision.
//! - `destination.rs`: per-destination breaker, concurrency, signing.
//! - `parking.rs`: deliveries waiting out an open breaker, and their release.
//! - `retry.rs`: backoff, jitter, status classification, Retry-After.

pub mod destination;
pub mod dispatcher;
pub mod inline;
pub mod parking;
pub mod retry;
pub mod scheduler;
