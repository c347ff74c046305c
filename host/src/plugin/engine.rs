//! The wasmtime `Engine` and `Linker` every plugin shares, and the knobs they
//! are tuned with.
//!
//! One engine per process: compiled code, the instance pool and the epoch
//! counter live here. The engine is built once at startup with the pooling
//! allocator when the machine allows it (a probe), falling back to on-demand
//! allocation otherwise. A ticker thread advances the epoch so that deadlines
//! are enforced without any cooperation from the guest.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::host::CallState;
use super::pool::PoolRegistry;

/// How often the epoch advances. A deadline is noticed at the first tick after
/// it passes, so this bounds the overshoot; 10 ms costs nothing measurable
/// (one atomic increment) and keeps overshoot small next to deadlines in the
/// tens of milliseconds.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Component instances the pool holds at once, which is also how many plugin
/// calls may be in flight. Calls are short and CPU-bound, so a few hundred is
/// far more than two cores can run; the surplus absorbs calls parked at an
/// epoch yield. Calls beyond it wait for a slot instead of failing.
const POOL_INSTANCES: u32 = 256;

/// Of those, how many warm instances (busy or idle, see `pool.rs`) may live
/// at once. The rest is reserved for fresh instances, so warm pools can
/// never starve a call: when all warm slots are taken, a call of a warm
/// plugin runs on a fresh instance. 64 warm JS/Python instances are already
/// a few GiB of guest memory.
const WARM_INSTANCES: u32 = 64;

/// How often idle warm instances are checked against their pool's `idle`
/// bound, in epoch ticks (100 x 10 ms = 1 s).
const SWEEP_EVERY_TICKS: u32 = 100;

/// Core instances and memories per component instance in the pool. Rust and C
/// components carry a handful of core modules (the program, WASI adapters,
/// shims); the JS and Python engines a few more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;

/// Largest linear memory a pooled slot can hold. A route's memory cap must not
/// exceed it; the interpreted guests (JS, Python) need tens of MiB.
pub const MAX_PLUGIN_MEMORY: u64 = 512 << 20;

/// Bytes of each linear memory kept resident (zeroed in place with `memset`
/// instead of being returned to the kernel) when a slot is reused. Plugin
/// calls touch a little memory and end; keeping the first MiB resident avoids
/// a page fault storm on every call (measured with `plugin_call`: 0 B -> 1 MiB
/// took the 1 KB JSON validator from 50 us to 31 us per call; 64 KiB was as
/// good as 1 MiB for our Rust guests, 1 MiB leaves room for larger ones).
const KEEP_RESIDENT: usize = 1 << 20;

/// Size of the host stack a guest runs on (async fibers), and the part of it
/// wasm may use. A deeply recursive guest hits the wasm limit and traps with a
/// stack overflow well before the fiber itself runs out.
const ASYNC_STACK: usize = 2 << 20;
const MAX_WASM_STACK: usize = 1 << 20;

/// The process-wide plugin engine: compile, link and pool.
///
/// Cloning is cheap (an `Arc`); every `Plugin` keeps one so the engine outlives
/// the versions compiled with it.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    /// One permit per fresh-instance slot: a call waits here rather than
    /// failing with "pool exhausted" under a burst.
    call_slots: Semaphore,
    /// One permit per warm instance alive (owned by the instance).
    warm_slots: Arc<Semaphore>,
    /// Every warm pool, for the idle sweeper on the ticker thread.
    pools: Arc<PoolRegistry>,
    pooled: bool,
}

impl PluginEngine {
    /// Builds the engine (pooling allocator if the probe succeeds), links WASI
    /// and our `host` interface, and starts the epoch ticker.
    pub fn new() -> Result<Self, wasmtime::Error> {
        let (engine, pooled) = match Engine::new(&base_config(Some(pool_config()))) {
            Ok(engine) => (engine, true),
            Err(err) => {
                tracing::warn!(
                    cause = %err,
                    "pooling allocator unavailable, using on-demand allocation (slower plugin calls)"
                );
                (Engine::new(&base_config(None))?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::host::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        let pools = Arc::new(PoolRegistry::default());
        start_epoch_ticker(&engine, pools.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                call_slots: Semaphore::new((POOL_INSTANCES - WARM_INSTANCES) as usize),
                warm_slots: Arc::new(Semaphore::new(WARM_INSTANCES as usize)),
                pools,
                pooled,
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<CallState> {
        &self.inner.linker
    }

    pub(crate) fn call_slots(&self) -> &Semaphore {
        &self.inner.call_slots
    }

    /// A slot for a new warm instance, if one is free right now.
    pub(super) fn try_warm_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.warm_slots.clone().try_acquire_owned().ok()
    }

    pub(super) fn pools(&self) -> &PoolRegistry {
        &self.inner.pools
    }

    /// Whether the pooling allocator is in use (reported by `/health` and the
    /// CLI, since it halves the cost of a call).
    pub fn is_pooled(&self) -> bool {
        self.inner.pooled
    }

    /// A fingerprint of everything that makes compiled code loadable by this
    /// engine (wasmtime version, target, settings). Part of the compile-cache
    /// key, so a cache written by another build is never loaded.
    pub fn compatibility_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish()
    }
}

fn base_config(pool: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK);
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn pool_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(POOL_INSTANCES * MEMORIES_PER_COMPONENT)
        .total_tables(POOL_INSTANCES * CORE_INSTANCES_PER_COMPONENT)
        .total_stacks(POOL_INSTANCES)
        .max_memories_per_module(MEMORIES_PER_COMPONENT)
        .max_tables_per_module(CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(MAX_PLUGIN_MEMORY as usize)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Lets the kernel tell which kept-resident pages were touched, so a
        // reused slot resets only those; `Auto` uses it where the kernel has it.
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone,
/// and sweeps idle warm instances every [`SWEEP_EVERY_TICKS`]. A plain
/// thread, not a tokio task: it must keep ticking even when every runtime
/// worker is busy running guest code.
fn start_epoch_ticker(engine: &Engine, pools: Arc<PoolRegistry>) {
    let weak = engine.weak();
    let spawned = thread::Builder::new()
        .name("hookgate-epoch".into())
        .spawn(move || {
            let mut ticks = 0u32;
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                    pools.sweep();
                }
                thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(err) = spawned {
        // Without the ticker deadlines are not enforced; fuel and memory
        // still are. This only happens when the OS refuses a thread.
        tracing::error!(cause = %err, "could not start the epoch ticker: plugin deadlines disabled");
    }
}
