//! Warm instance pools: reusing a plugin's instance across calls instead of
//! instantiating one per call.
//!
//! A fresh instance per call is right for small compiled guests (Rust, C:
//! instantiation is a few microseconds with the pooling allocator) and is
//! what the gateway does by default for them. The interpreted guests (the
//! JS and Python engines are 12-18 MB components) pay 0.3-1.8 ms to start
//! an instance and 25-70 us to run a call on a warm one, so for them an
//! instance is kept and reused, within bounds:
//!
//! - a pool belongs to one route's use of one plugin version ([`Instances`]
//!   lives in the route's `PluginSetup`, and its entries are tagged with the
//!   version's hash): never shared across apps or routes, and a new version
//!   (hot reload) drains the old version's instances on its first call;
//! - an instance is used by one call at a time (it leaves the pool for the
//!   call), for at most `max_calls` calls, and is dropped after `idle`
//!   without a call (a sweeper thread checks every second);
//! - it is never reused after a trap, a limit hit (fuel, deadline, memory)
//!   or a host failure; a guest that answered `err(..)` on purpose is fine;
//! - each call still gets the route's full fuel and a fresh deadline; the
//!   memory cap applies to the instance as it grows across calls;
//! - warm instances, busy or idle, hold one of the engine's
//!   `WARM_INSTANCES` slots; when none is free a call simply runs on a
//!   fresh instance, so pools can never starve other plugins.
//!
//! What a plugin author must know: with a warm pool, global state a guest
//! keeps in memory can survive from one call to the next of the same
//! route; with `fresh` it never does. A plugin must not rely on either.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime::component::Instance;

use super::host::CallState;

/// Components at least this large get a warm pool under `mode = "auto"`.
/// Compiled guests are tens to hundreds of KB; guests that embed a language
/// engine (StarlingMonkey for JS, CPython) are 12 MB and more. The size is
/// the cheapest reliable tell, and the two groups are far apart.
pub const AUTO_WARM_MIN_SIZE: u64 = 4 << 20;

/// How a route's plugin gets its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstancePolicy {
    /// A new instance for every call: nothing survives a call.
    Fresh,
    /// Reuse instances within these bounds.
    Warm(WarmPolicy),
}

/// Bounds of a warm pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmPolicy {
    /// Calls one instance serves before it is dropped (bounds how long
    /// leaked guest state can build up).
    pub max_calls: u32,
    /// An instance unused this long is dropped (gives its memory back).
    pub idle: Duration,
    /// Idle instances kept at most; a busier route runs extra calls on
    /// instances that are dropped afterwards.
    pub size: usize,
}

impl Default for WarmPolicy {
    fn default() -> Self {
        Self {
            // Long enough to amortize a 1-2 ms start over many calls, short
            // enough that a slow leak in a guest never gets far.
            max_calls: 10_000,
            // A burst's instances outlive the burst briefly, then go.
            idle: Duration::from_secs(60),
            // Two cores run two calls at a time (short calls never yield,
            // see `arm` in call.rs); a few spare cover the long calls that
            // do, parked at an epoch yield.
            size: 4,
        }
    }
}

/// A route binding's instance policy and, for warm policies, its pool
/// (created on the first call, registered with the engine's sweeper).
#[derive(Debug)]
pub struct Instances {
    policy: InstancePolicy,
    pool: OnceLock<Arc<InstancePool>>,
}

impl Default for Instances {
    fn default() -> Self {
        Self::new(InstancePolicy::Fresh)
    }
}

impl Instances {
    pub fn new(policy: InstancePolicy) -> Self {
        Self {
            policy,
            pool: OnceLock::new(),
        }
    }

    pub fn policy(&self) -> InstancePolicy {
        self.policy
    }

    /// The pool, for a warm policy; `register` runs once, when it is made.
    pub(super) fn pool(
        &self,
        register: impl FnOnce(&Arc<InstancePool>),
    ) -> Option<&Arc<InstancePool>> {
        let InstancePolicy::Warm(policy) = self.policy else {
            return None;
        };
        Some(self.pool.get_or_init(|| {
            let pool = Arc::new(InstancePool::new(policy));
            register(&pool);
            pool
        }))
    }

    /// Idle instances held now (for tests and `/health`).
    pub fn idle(&self) -> usize {
        self.pool.get().map_or(0, |pool| pool.idle_count())
    }
}

/// An instance between calls, with what it needs to be used again.
pub(super) struct WarmInstance {
    pub(super) store: Store<CallState>,
    pub(super) instance: Instance,
    /// The engine slot this instance occupies while it lives.
    pub(super) permit: OwnedSemaphorePermit,
    /// Hash of the plugin version it was made from.
    pub(super) version: Arc<str>,
    pub(super) calls: u32,
    last_used: Instant,
}

/// The parts of a warm instance while a call uses it.
pub(super) type WarmParts = (
    Store<CallState>,
    Instance,
    OwnedSemaphorePermit,
    Arc<str>,
    u32,
);

impl WarmInstance {
    /// An instance coming back from a call; `calls` served before it.
    pub(super) fn from_parts(
        store: Store<CallState>,
        instance: Instance,
        permit: OwnedSemaphorePermit,
        version: Arc<str>,
        calls: u32,
    ) -> Self {
        Self {
            store,
            instance,
            permit,
            version,
            calls,
            last_used: Instant::now(),
        }
    }

    pub(super) fn into_parts(self) -> WarmParts {
        (
            self.store,
            self.instance,
            self.permit,
            self.version,
            self.calls,
        )
    }
}

/// The idle instances of one route's use of one plugin.
pub(super) struct InstancePool {
    policy: WarmPolicy,
    idle: Mutex<Idle>,
}

/// Idle instances, all of `version`: the version the latest call asked for.
#[derive(Default)]
struct Idle {
    version: Option<Arc<str>>,
    instances: Vec<WarmInstance>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("policy", &self.policy)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl InstancePool {
    fn new(policy: WarmPolicy) -> Self {
        Self {
            policy,
            idle: Mutex::new(Idle::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // Only pushes, pops and swaps happen under the lock: a poisoned
        // pool is still a valid pool.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle_count(&self) -> usize {
        self.lock().instances.len()
    }

    /// An idle instance of `version` for one call, most recently used first
    /// (its memory is the likeliest to be in cache). When `version` is new,
    /// the previous version's instances are dropped: it was replaced.
    pub(super) fn take(&self, version: &Arc<str>) -> Option<WarmInstance> {
        let stale = {
            let mut idle = self.lock();
            if idle.version.as_ref() == Some(version) {
                return idle.instances.pop();
            }
            idle.version = Some(version.clone());
            std::mem::take(&mut idle.instances)
        };
        // Dropped outside the lock: freeing instances is not free.
        drop(stale);
        None
    }

    /// Takes an instance back after a clean call, unless it has served its
    /// calls, belongs to a replaced version, or the pool is full.
    pub(super) fn put(&self, mut warm: WarmInstance) {
        warm.calls += 1;
        if warm.calls >= self.policy.max_calls {
            return;
        }
        let mut idle = self.lock();
        if idle.version.as_ref() == Some(&warm.version) && idle.instances.len() < self.policy.size {
            idle.instances.push(warm);
        }
    }

    /// Drops instances idle longer than the policy allows.
    fn sweep(&self, now: Instant) {
        let expired: Vec<WarmInstance> = {
            let mut idle = self.lock();
            let (keep, expired) = std::mem::take(&mut idle.instances)
                .into_iter()
                .partition(|w| now.saturating_duration_since(w.last_used) < self.policy.idle);
            idle.instances = keep;
            expired
        };
        drop(expired);
    }
}

/// Every pool of an engine, for the idle sweeper. Pools die with their
/// route binding; dead entries are pruned as the sweeper passes.
#[derive(Default)]
pub(super) struct PoolRegistry {
    pools: Mutex<Vec<Weak<InstancePool>>>,
}

impl PoolRegistry {
    pub(super) fn register(&self, pool: &Arc<InstancePool>) {
        self.lock().push(Arc::downgrade(pool));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<InstancePool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops idle-expired instances in every live pool.
    pub(super) fn sweep(&self) {
        let live: Vec<Arc<InstancePool>> = {
            let mut pools = self.lock();
            pools.retain(|weak| weak.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        let now = Instant::now();
        for pool in live {
            pool.sweep(now);
        }
    }
}
