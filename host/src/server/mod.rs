//! The HTTP side of the gateway: the webhook listener (ingress) and, later,
//! the admin API. Maps everything to HTTP here and only here; talks to
//! storage through the store's API, never to sled directly.
//!
//! [`run`] takes its listener and a shutdown token as arguments, so tests
//! start a real gateway on port 0 and stop it when they like.

mod admin;
mod health;
mod ingress;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tokio::sync::{Notify, Semaphore};

use crate::clock::now_ms;
use crate::config::Config;
use crate::delivery::dispatcher::Dispatcher;
use crate::delivery::parking::Parking;
use crate::delivery::scheduler;
use crate::metrics::Metrics;
use crate::plugin::{PluginEngine, PluginRegistry};
use crate::reload::{Reloader, SharedConfigStatus};
use crate::routes::{RouteTable, SharedRoutes};
use crate::store::{JOURNAL_GIVE_UP, JOURNAL_STALL, KeyValue, SledStore, StoreError};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the data directory {dir}: {cause}")]
    Store { dir: String, cause: StoreError },
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// Routes that cannot be served (plugins that do not load, secrets);
    /// one problem per entry, each with its key path.
    #[error("{file}: {} problem(s) with the routes:\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Routes { file: String, problems: Vec<String> },
    #[error("cannot listen on {addr} (server.admin_listen): {cause}")]
    AdminListen { addr: String, cause: std::io::Error },
    #[error("cannot start the delivery runtime: {0}")]
    Runtime(String),
    #[error("cannot start the journal watch thread: {0}")]
    Watch(String),
    /// At shutdown the journal was not taking writes (a full or failing
    /// disk); what was acknowledged had been flushed before.
    #[error("the journal stopped taking writes: {0}")]
    JournalStalled(String),
    /// A flush failed (a full disk, a file-size limit, a failing device):
    /// sled refuses every write after its first IO error, so the gateway
    /// stopped. What it acknowledged was flushed before.
    #[error(
        "the journal failed ({0}), so the gateway stopped; every acknowledged message is on disk: restart once the disk is fixed"
    )]
    JournalFailed(String),
}

/// How often finished messages past their retention are pruned, and how
/// many at most per round: often enough that disk use tracks the retention
/// closely, in slices small enough not to stall ingest writes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_SLICE: usize = 10_000;

/// Removes finished messages older than the retention, and expired
/// key-value entries, every [`PRUNE_EVERY`].
async fn prune_periodically(store: SledStore, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let store = store.clone();
        // Apart: one failing (a corrupt record) must not stop the other.
        let pruned = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let before = now.saturating_sub(retention.as_millis() as u64);
            (store.prune(before, PRUNE_SLICE), store.prune_kv(now))
        })
        .await;
        let (messages, kv_entries) = match pruned {
            Ok(both) => both,
            Err(err) => {
                tracing::error!(cause = %err, "pruning task failed");
                continue;
            }
        };
        match messages {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "pruned messages past their retention"),
            Err(err) => tracing::error!(cause = %err, "pruning the journal failed"),
        }
        match kv_entries {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "swept expired key-value entries"),
            Err(err) => tracing::error!(cause = %err, "sweeping the key-value store failed"),
        }
    }
}

/// The state every request handler shares.
pub(crate) struct Gateway {
    /// The routes in service; a request takes one snapshot at its start.
    pub(crate) routes: SharedRoutes,
    pub(crate) store: SledStore,
    pub(crate) body_timeout: Duration,
    /// `server.max_header_bytes`, held here (hyper's read buffer bound is
    /// set to twice it: see `run`).
    pub(crate) max_head: usize,
    /// Wakes the scheduler when a message is accepted.
    pub(crate) wake: Arc<Notify>,
    /// Sync routes deliver inline through the same dispatcher (breakers,
    /// concurrency limits, HTTP client) the scheduler uses.
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) metrics: Arc<Metrics>,
    /// Plugin versions serving and files refused, for `/health` and the
    /// admin API.
    pub(crate) plugins: Arc<PluginRegistry>,
    /// The config file's reload state, for `/health`.
    pub(crate) config_status: SharedConfigStatus,
    /// Memory the request bodies being handled may take.
    pub(crate) bodies: BodyBudget,
}

/// Memory the request bodies being handled may take at once
/// (`server.body_memory`), counted in KiB.
pub(crate) struct BodyBudget {
    kib: Semaphore,
    total_kib: usize,
}

impl BodyBudget {
    fn new(bytes: u64) -> Self {
        let total_kib = usize::try_from(bytes >> 10)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        BodyBudget {
            kib: Semaphore::new(total_kib),
            total_kib,
        }
    }

    /// `bytes` (at least 1 KiB) of the budget until the permit is dropped;
    /// `None` when that much is not free now.
    pub(crate) fn reserve(&self, bytes: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        self.kib.try_acquire_many(kib).ok()
    }

    /// Bytes reserved now.
    pub(crate) fn held(&self) -> u64 {
        (self.total_kib.saturating_sub(self.kib.available_permits()) as u64) << 10
    }
}

/// Runs the gateway on `listener` until `shutdown` is cancelled: then it
/// stops accepting, lets requests in flight finish (up to the configured
/// grace period), and returns. Messages not yet delivered stay journaled for
/// the next start.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (gateway, reloader) = start(&config).await?;
    let gateway = Arc::new(gateway);
    admin::start(&config, &gateway, shutdown.child_token()).await?;
    reloader.spawn(shutdown.child_token());
    tokio::spawn(prune_periodically(
        gateway.store.clone(),
        config.defaults.retention,
        shutdown.child_token(),
    ));
    tokio::spawn(stop_on_journal_failure(
        gateway.store.clone(),
        shutdown.clone(),
    ));
    watch_for_a_hung_journal(
        gateway.store.clone(),
        shutdown.clone(),
        Duration::from_secs(1),
        config.server.shutdown_grace + 2 * JOURNAL_STALL,
    )?;
    let delivery = delivery_runtime()?;
    let scheduler = delivery.handle.spawn(scheduler::run(
        gateway.dispatcher.clone(),
        gateway.wake.clone(),
        shutdown.child_token(),
        config.server.shutdown_grace,
    ));
    let local = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    // Tests and scripts read the bound address from this line.
    tracing::info!(addr = %local, routes = gateway.routes.load().len(), "hookgate listening");
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.server.header_timeout)
        // Validated to be at least hyper's minimum, so this cannot panic.
        // Twice the limit: hyper's bound is loose (a head may pass at up to
        // ~1.75 times it, or be cut at it with an empty 431, depending on
        // how it arrived), so the ingress holds the limit itself, with a
        // reason (`ingress::head_size`); hyper's bound only caps the
        // buffer's memory.
        .max_buf_size(config.server.max_header_bytes.0 as usize * 2)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(connection_cap(
        config.server.max_connections,
    )));
    let mut warned_full = None;
    loop {
        if connections.available_permits() == 0 && !warned_recently(&mut warned_full) {
            tracing::warn!(
                max = config.server.max_connections,
                "connection cap reached: new connections wait in the accept queue"
            );
        }
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = connections.clone().acquire_owned() => slot,
        };
        // Never closed: the semaphore lives as long as this loop.
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off a little
                    // rather than spin; the listener itself is still fine.
                    tracing::warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(ingress::handle(&gateway, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, cause = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(config.server.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.server.shutdown_grace, "requests still in flight after the grace period; their messages stay journaled");
    }
    // The token is cancelled, so the scheduler stops picking up tasks; the
    // ones it is working finish or stay due for the next start. Both waits
    // are bounded: a journal that stopped taking writes (a full disk) must
    // not keep the process from exiting, and whatever was acknowledged is
    // already on disk.
    let grace = config.server.shutdown_grace;
    if tokio::time::timeout(grace + JOURNAL_STALL, scheduler)
        .await
        .is_err()
    {
        tracing::error!(
            "deliveries did not stop in time (the journal is not taking writes); exiting anyway"
        );
    }
    drop(delivery);
    if let Some(cause) = gateway.store.failure() {
        return Err(ServeError::JournalFailed(cause));
    }
    match tokio::time::timeout(JOURNAL_STALL, gateway.store.durable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ServeError::JournalStalled(format!(
            "the final flush failed: {err}"
        ))),
        Err(_) => Err(ServeError::JournalStalled(format!(
            "the final flush did not finish in {} s; acknowledged messages were already on disk",
            JOURNAL_STALL.as_secs()
        ))),
    }
}

/// Stops the gateway once the journal fails for good: it can acknowledge
/// nothing more (senders get 503 + Retry-After meanwhile), and only a
/// restart brings sled back. Exiting lets a supervisor restart it, where
/// staying up would look alive to everything but `/health`.
async fn stop_on_journal_failure(store: SledStore, shutdown: CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        Some(cause) = store.failed() => {
            tracing::error!(%cause, "the journal failed: stopping; every acknowledged message is on disk, restart once the disk is fixed");
            shutdown.cancel();
        }
    }
}

/// Starts a thread of its own (not a task: a hung disk can hold every
/// worker thread, in a plugin's `kv-set` say) that looks at the journal
/// every `every` and, once a write has hung for [`JOURNAL_GIVE_UP`] (a full
/// disk can hang sled instead of failing its writes), fails the journal
/// and starts the shutdown, as a failed write does. If the process is
/// still there `exit_after` later, the runtime could not stop (its threads
/// wait on the disk too): it exits 1 there and then. Every acknowledged
/// message was on disk before its acknowledgement, so nothing is lost.
fn watch_for_a_hung_journal(
    store: SledStore,
    shutdown: CancellationToken,
    every: Duration,
    exit_after: Duration,
) -> Result<(), ServeError> {
    std::thread::Builder::new()
        .name("journal-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                if shutdown.is_cancelled() && store.failure().is_none() {
                    return;
                }
                let Some(stalled) = store.stalled_for().filter(|s| *s >= JOURNAL_GIVE_UP) else {
                    continue;
                };
                let cause = format!(
                    "a write has not finished in {} s: the disk is not taking writes",
                    stalled.as_secs()
                );
                // `stop_on_journal_failure` logs the cause and stops the
                // gateway; cancelling here too covers a runtime whose
                // workers all wait on the disk.
                store.fail(cause.clone());
                shutdown.cancel();
                std::thread::sleep(exit_after);
                tracing::error!(%cause, "the gateway could not stop while the journal hangs: exiting (1)");
                std::process::exit(1);
            }
        })
        .map(drop)
        .map_err(|err| ServeError::Watch(err.to_string()))
}

/// File descriptors kept for everything but inbound connections: the
/// journal's files (and a blob file per large record, whose failed creation
/// sled 0.34 does not recover from), outbound connections, the admin
/// listener, file watches, the runtimes.
const RESERVED_FDS: u64 = 1024;

/// How many inbound connections to serve at once: `wanted`, raising the
/// process's open-file limit toward what that needs (up to its hard limit),
/// or what the limit leaves after [`RESERVED_FDS`] (at least half of it).
fn connection_cap(wanted: usize) -> usize {
    let needed = wanted as u64 + RESERVED_FDS;
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit >= needed => wanted,
        Ok(limit) => {
            let cap = limit.saturating_sub(RESERVED_FDS).max(limit / 2).max(1);
            tracing::warn!(
                max_connections = wanted,
                open_file_limit = limit,
                cap,
                "the open-file limit is too low for server.max_connections: serving fewer at once (raise `ulimit -n`)"
            );
            usize::try_from(cap).unwrap_or(wanted).min(wanted)
        }
        Err(err) => {
            tracing::warn!(cause = %err, "could not read or raise the open-file limit");
            wanted
        }
    }
}

/// Whether a warning was logged in the last 10 s; notes it if not.
fn warned_recently(last: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(10)) {
        return true;
    }
    *last = Some(now);
    false
}

/// The runtime the scheduler, its deliveries and their transforms run on,
/// apart from the one serving inbound requests. With a worker per core on
/// each, the OS shares the CPU between the two sides when both are busy, so
/// a backlog being delivered (with its transform plugins) cannot starve
/// acknowledgements of their share, and either side may use every core when
/// the other is idle. The gateway benchmark at 3500 msg/s with validate +
/// transform measured the ack p99 at 49 ms on one shared runtime, 19.5 ms
/// with this one, at the same delivery rate (BENCHMARKS.md).
fn delivery_runtime() -> Result<DeliveryRuntime, ServeError> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(1))
        .thread_name("hookgate-delivery")
        .enable_all()
        .build()
        .map(|runtime| DeliveryRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
        .map_err(|err| ServeError::Runtime(err.to_string()))
}

/// Shuts its runtime down without blocking when dropped, which may happen
/// inside the serving runtime (a runtime dropped there the usual way
/// panics). By then the scheduler has finished its tasks, or the gateway
/// was cancelled and anything unfinished stays journaled.
struct DeliveryRuntime {
    handle: tokio::runtime::Handle,
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for DeliveryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Checks that `config` could be served: every plugin a route names loads
/// and plays its role, every secret is set. Opens no store and no listener;
/// compiles with no cache, so nothing is written. For `hookgate check`.
pub async fn check(config: &Config) -> Result<usize, ServeError> {
    let engine = PluginEngine::new().map_err(|e| ServeError::Engine(e.to_string()))?;
    let kv: Arc<dyn KeyValue> =
        Arc::new(SledStore::temporary().map_err(|cause| ServeError::Store {
            dir: "(temporary)".into(),
            cause,
        })?);
    let registry = PluginRegistry::new(engine, &config.server.plugins_dir, None);
    let routes = RouteTable::build(config, &registry, kv, None)
        .await
        .map_err(|problems| ServeError::Routes {
            file: config.file_name(),
            problems,
        })?;
    Ok(routes.len())
}

/// Opens the store, starts the plugin engine, resolves the routes and
/// their destinations.
async fn start(config: &Config) -> Result<(Gateway, Reloader), ServeError> {
    let dir = &config.server.data_dir;
    let store = SledStore::open_with_cache(&dir.join("journal"), config.server.journal_cache.0)
        .map_err(|cause| ServeError::Store {
            dir: dir.display().to_string(),
            cause,
        })?;
    let engine = PluginEngine::new().map_err(|e| ServeError::Engine(e.to_string()))?;
    let kv: Arc<dyn KeyValue> = Arc::new(store.clone());
    let cache = dir.join("compiled");
    let registry = PluginRegistry::new(engine, &config.server.plugins_dir, Some(&cache))
        .keeping_last_good(&dir.join("plugins-last-good"));
    let routes = RouteTable::build(config, &registry, kv.clone(), None)
        .await
        .map_err(|problems| ServeError::Routes {
            file: config.file_name(),
            problems,
        })?;
    registry.started();
    let routes: SharedRoutes = Arc::new(ArcSwap::from_pointee(routes));
    let registry = Arc::new(registry);
    let reloader = Reloader::new(
        config.clone(),
        routes.clone(),
        registry.clone(),
        kv,
        store.clone(),
    );
    let client = reqwest::Client::builder()
        // Redirects are not followed: a 3xx is the destination's answer.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| ServeError::Engine(format!("http client: {e}")))?;
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new(config.health.window));
    store.observe_rounds(metrics.clone());
    let dispatcher = Dispatcher {
        store: store.clone(),
        routes: routes.clone(),
        client,
        wake: wake.clone(),
        metrics: metrics.clone(),
        parking: Parking::default(),
        transform_deadlines: Default::default(),
        stopping: CancellationToken::new(),
    };
    let gateway = Gateway {
        config_status: reloader.status(),
        plugins: registry,
        routes,
        store,
        body_timeout: config.server.body_timeout,
        max_head: config.server.max_header_bytes.0 as usize,
        bodies: BodyBudget::new(config.server.body_memory.0),
        wake,
        dispatcher: Arc::new(dispatcher),
        metrics,
    };
    Ok((gateway, reloader))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write hung for less than the give-up limit is a stall (`/ready`
    /// says so); past it, the watch thread fails the journal and starts the
    /// shutdown (exit 1).
    #[test]
    fn a_journal_write_hung_past_the_limit_fails_the_journal() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        let shutdown = CancellationToken::new();
        store.pretend_busy_for(JOURNAL_GIVE_UP - Duration::from_secs(5));
        let hour = Duration::from_secs(3600);
        let every = Duration::from_millis(10);
        watch_for_a_hung_journal(store.clone(), shutdown.clone(), every, hour)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        // Polled with a deadline: the thread looks every 10 ms.
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            assert_eq!(store.failure(), None);
            std::thread::sleep(every);
        }
        assert!(!shutdown.is_cancelled());

        store.pretend_busy_for(JOURNAL_GIVE_UP + Duration::from_secs(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !shutdown.is_cancelled() && std::time::Instant::now() < deadline {
            std::thread::sleep(every);
        }
        assert!(shutdown.is_cancelled(), "the shutdown starts");
        let cause = store.failure().unwrap_or_default();
        assert!(cause.contains("has not finished in"), "{cause:?}");
        Ok(())
    }
}
