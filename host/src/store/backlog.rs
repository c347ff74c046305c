//! Messages accepted and not finished yet (pending), counted per route in
//! memory, so ingest can hold each route to its own backlog limit: one route
//! whose receiver is down fills its own backlog, not everyone's.
//!
//! The journal updates the counts after each transaction that moves a
//! message into or out of `pending` commits (never inside the transaction
//! closure, which sled may run more than once). At open they are rebuilt
//! from the due index: every pending message has at least one due task.

use std::collections::HashMap;
use std::sync::Mutex;

/// Pending messages per app, then per route.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    counts: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl Backlog {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, HashMap<String, u64>>) -> T) -> T {
        // Nothing under the lock can panic halfway: a poisoned map is whole.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut counts)
    }

    /// One more pending message on `app`/`route`.
    pub(super) fn add(&self, app: &str, route: &str) {
        self.with(|counts| {
            *counts
                .entry(app.to_string())
                .or_default()
                .entry(route.to_string())
                .or_default() += 1;
        });
    }

    /// One message of `app`/`route` is no longer pending.
    pub(super) fn remove(&self, app: &str, route: &str) {
        self.with(|counts| {
            if let Some(count) = counts.get_mut(app).and_then(|r| r.get_mut(route)) {
                *count = count.saturating_sub(1);
            }
        });
    }

    /// Pending messages of `app`/`route`.
    pub(super) fn get(&self, app: &str, route: &str) -> u64 {
        self.with(|counts| {
            counts
                .get(app)
                .and_then(|r| r.get(route))
                .copied()
                .unwrap_or(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_route_and_never_negative() {
        let backlog = Backlog::default();
        backlog.add("shop", "orders");
        backlog.add("shop", "orders");
        backlog.add("shop", "refunds");
        backlog.remove("crm", "leads");
        assert_eq!(backlog.get("shop", "orders"), 2);
        assert_eq!(backlog.get("shop", "refunds"), 1);
        assert_eq!(backlog.get("crm", "leads"), 0);
        for _ in 0..3 {
            backlog.remove("shop", "refunds");
        }
        assert_eq!(backlog.get("shop", "refunds"), 0);
    }
}
