//! Hot reload: a changed plugin file or config file is picked up by the
//! running gateway, checked off the request path, and swapped in only if it
//! passes; otherwise the old one keeps serving and the reason is logged and
//! kept for `/health`.
//!
//! - `watch.rs`: `notify` events -> [`Change`]s (debounced, temp files and
//!   dotfiles ignored), and waiting for a file to settle.
//! - here: the [`Reloader`] task. A changed plugin file is prepared
//!   (settled, compiled, smoke-tested) in a task of its own, so a slow one
//!   (a JavaScript engine compiles for seconds) holds up no other file;
//!   the route table is written only by the reloader's loop, one swap or
//!   config reload at a time, so they never race.
//!
//! A swap is one store into the [`SharedRoutes`] `ArcSwap`: requests already
//! running keep the snapshot they started with, new ones see the new table.

mod watch;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use watch::{Change, plugin_name, settle};

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::delivery::parking::place_of;
use crate::plugin::{Candidate, Plugin, PluginRegistry, vet};
use crate::routes::{RouteTable, SharedRoutes};
use crate::store::{KeyValue, SledStore};

/// The config file's reload state, for `/health` and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigStatus {
    /// Why the file on disk is not the config in service (every problem),
    /// if it is not; cleared by the next good reload.
    pub error: Option<String>,
    /// Keys whose new values only take effect after a restart
    /// (`server.listen`...), until a reload no longer differs there.
    pub restart_needed: Vec<String>,
    /// When the config was last reloaded or refused, ms since the epoch;
    /// 0 before any reload.
    pub since: u64,
    /// Why hot reload is off (the file watcher could not start, e.g. the
    /// host's inotify limits), if it is.
    pub watch_error: Option<String>,
}

/// Shared view of [`ConfigStatus`].
pub type SharedConfigStatus = Arc<Mutex<ConfigStatus>>;

/// Applies changes to the running gateway, one at a time.
pub struct Reloader {
    /// The config in service. Its `[server]` table is the one the process
    /// started with, whatever later files say (those keys need a restart).
    config: Config,
    routes: SharedRoutes,
    registry: Arc<PluginRegistry>,
    kv: Arc<dyn KeyValue>,
    /// The journal, asked how much a reload leaves without a route.
    store: SledStore,
    status: SharedConfigStatus,
    /// A digest of the config file's text as last read: an event that left
    /// it unchanged (a file beside it, a touch) is no change.
    config_text: Option<u64>,
}

/// A digest of the file at `path`, if it can be read.
fn text_digest(path: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

impl Reloader {
    pub fn new(
        config: Config,
        routes: SharedRoutes,
        registry: Arc<PluginRegistry>,
        kv: Arc<dyn KeyValue>,
        store: SledStore,
    ) -> Reloader {
        Reloader {
            config_text: config.source.as_deref().and_then(text_digest),
            config,
            routes,
            registry,
            kv,
            store,
            status: SharedConfigStatus::default(),
        }
    }

    /// The config file's reload state.
    pub fn status(&self) -> SharedConfigStatus {
        self.status.clone()
    }

    /// Starts watching the plugins folder and the config file, then applies
    /// each change until `shutdown`. The watch is in place when this
    /// returns (before the gateway says it is listening), so no change made
    /// after start-up is missed. A watcher that cannot start is logged and
    /// hot reload is off; the gateway serves on.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let source = self.config.source.clone();
        let watcher = match watch::watch(self.registry.dir(), source.as_deref(), tx) {
            Ok(watcher) => {
                tracing::info!(plugins = %self.registry.dir().display(), config = ?source, "watching for changes");
                Some(watcher)
            }
            Err(cause) => {
                self.lock_status().watch_error = Some(cause.clone());
                tracing::error!(%cause, "hot reload is off");
                None
            }
        };
        tokio::spawn(async move {
            if let Some(_watcher) = watcher {
                self.run(rx, shutdown).await;
            }
        })
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Change>, shutdown: CancellationToken) {
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        // Plugins being prepared, and those that changed again meanwhile
        // (prepared once more when the first round ends, never two at once).
        let mut preparing = HashSet::new();
        let mut again = HashSet::new();
        // A config change waits for the plugins being prepared, so that it
        // sees their new versions (a new file and a config that needs it,
        // dropped in together).
        let mut config_waiting = false;
        // A refused config is checked again once a plugin file changes: the
        // file it named may have arrived after it (a deploy that copies the
        // folder in name order writes `gateway.toml` before `plugins/`).
        let mut config_retry = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                change = rx.recv() => {
                    let Some(first) = change else { return };
                    // Everything already queued is handled in one go.
                    let mut changes = BTreeSet::from([first]);
                    while let Ok(change) = rx.try_recv() {
                        changes.insert(change);
                    }
                    for change in changes {
                        if matches!(change, Change::Plugin(_)) && self.lock_status().error.is_some() {
                            config_retry = true;
                        }
                        match change {
                            Change::Plugin(name) if preparing.contains(&name) => {
                                again.insert(name);
                            }
                            Change::Plugin(name) => {
                                preparing.insert(name.clone());
                                self.prepare_apart(name, ready_tx.clone());
                            }
                            Change::Config => config_waiting = true,
                        }
                    }
                }
                Some((name, prepared)) = ready.recv() => {
                    if let Some(prepared) = prepared {
                        self.swap(prepared);
                    }
                    if again.remove(&name) {
                        self.prepare_apart(name, ready_tx.clone());
                    } else {
                        preparing.remove(&name);
                    }
                }
            }
            if (config_waiting || config_retry) && preparing.is_empty() {
                let force = config_retry;
                (config_waiting, config_retry) = (false, false);
                self.config_changed(force).await;
            }
        }
    }

    /// Prepares a changed plugin file in a task of its own and sends the
    /// outcome to `ready`: a version to swap in, or `None`.
    fn prepare_apart(
        &self,
        name: String,
        ready: mpsc::UnboundedSender<(String, Option<Prepared>)>,
    ) {
        let routes = self.routes.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let prepared = prepare(&routes, &registry, &name).await;
            let _ = ready.send((name, prepared));
        });
    }

    /// Swaps a prepared version into every route that uses its plugin (as
    /// the table stands now, which a config reload may have changed).
    fn swap(&self, prepared: Prepared) {
        let Prepared {
            plugin,
            serving_hash,
            settled,
            started,
        } = prepared;
        // Built from the table in service now: this task is the only writer.
        let table = self.routes.load_full().with_plugin(&plugin);
        let routes = table.uses_of(&plugin.info().name).len();
        self.routes.store(Arc::new(table));
        // Only now does `/health` name the new version: whoever sees it
        // there (an operator, a deploy script) finds it serving requests.
        self.registry.commit(&plugin);
        tracing::info!(
            plugin = %plugin.info().name, hash = plugin.info().short_hash(), previous = ?serving_hash,
            routes, settle_ms = settled.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64, "plugin version replaced"
        );
    }

    /// The config file changed (or, with `again`, a refused one is worth
    /// another look): a valid file whose routes all resolve replaces the
    /// route table; anything else is logged with every problem and the old
    /// config keeps serving.
    async fn config_changed(&mut self, again: bool) {
        let Some(source) = self.config.source.clone() else {
            return;
        };
        settle(&source).await;
        let text = text_digest(&source);
        if !again && text.is_some() && text == self.config_text {
            return;
        }
        self.config_text = text;
        let new = match Config::load(&source) {
            Ok(new) => new,
            Err(err) => return self.refuse_config(err.to_string(), again),
        };
        let current = self.routes.load_full();
        let table =
            match RouteTable::build(&new, &self.registry, self.kv.clone(), Some(&current)).await {
                Ok(table) => table,
                Err(problems) => {
                    // Plugins loaded for the refused file only are dropped again.
                    self.registry.retain(&current.plugin_names());
                    let text = ConfigError::Invalid {
                        file: source.display().to_string(),
                        problems,
                    };
                    return self.refuse_config(text.to_string(), again);
                }
            };
        let restart_needed = restart_needed(&self.config, &new);
        let summary = diff_routes(&current, &table);
        let orphaned = orphaned(&current, &table, &self.store);
        let disabled = removed_while_disabled(&current, &table, &self.store);
        self.registry.retain(&table.plugin_names());
        self.routes.store(Arc::new(table));
        let server = self.config.server.clone();
        self.config = Config { server, ..new };
        {
            let mut status = self.lock_status();
            status.error = None;
            status.restart_needed = restart_needed.clone();
            status.since = now_ms();
        }
        tracing::info!(file = %source.display(), %summary, "config reloaded");
        if !restart_needed.is_empty() {
            tracing::warn!(keys = %restart_needed.join(", "), "config keys changed that take effect only after a restart");
        }
        if !disabled.is_empty() {
            tracing::warn!(
                destinations = %disabled.join(", "),
                "destinations disabled after a 410 left the config: the flag stays with the name, so \
                 one put back under the same name is still disabled until `hookgate admin enable`"
            );
        }
        if !orphaned.is_empty() {
            tracing::warn!(
                orphaned = %orphaned.join("; "),
                "the reload took away routes or destinations with pending messages: each of their \
                 deliveries is dead-lettered with the reason when it comes due (replay once the \
                 config has somewhere to send it)"
            );
        }
    }

    /// Logs and records why the config file is not in service. With
    /// `again` (a refused file checked once more after a plugin change), the
    /// same reasons are not logged twice nor dated anew: `/health` keeps
    /// saying since when the file has been refused.
    fn refuse_config(&self, error: String, again: bool) {
        let repeated = {
            let mut status = self.lock_status();
            let repeated = again && status.error.as_ref() == Some(&error);
            if !repeated {
                status.error = Some(error.clone());
                status.since = now_ms();
            }
            repeated
        };
        if repeated {
            tracing::debug!(problems = %error, "config still refused");
        } else {
            tracing::error!(problems = %error, "config reload refused; the running config keeps serving");
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ConfigStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A plugin version that passed its checks, waiting to be swapped in.
struct Prepared {
    plugin: Plugin,
    serving_hash: Option<String>,
    /// How long the file took to settle, and when the change was seen.
    settled: std::time::Duration,
    started: std::time::Instant,
}

/// A plugin file changed: if routes use the plugin and the file holds a new
/// version that passes [`vet`], that version, ready to replace the old one
/// in every route that uses it. A refused file is logged and kept for
/// `/health`; the old version keeps serving.
async fn prepare(routes: &SharedRoutes, registry: &PluginRegistry, name: &str) -> Option<Prepared> {
    // Settled even when no route uses it: a refused config waiting for this
    // file is checked again when this returns.
    let file = registry.file_of(name);
    let started = std::time::Instant::now();
    settle(&file).await;
    let settled = started.elapsed();
    let uses = routes.load().uses_of(name);
    if uses.is_empty() {
        tracing::debug!(
            plugin = name,
            "changed plugin file is not used by any route"
        );
        return None;
    }
    let serving = registry.current(name);
    let serving_hash = serving.as_ref().map(|p| p.info().short_hash().to_string());
    let plugin = match registry.candidate(name).await {
        Candidate::Unchanged | Candidate::AlreadyRefused => return None,
        Candidate::Missing => {
            let reason = format!(
                "{}: file deleted; its routes keep the last good version",
                file.display()
            );
            registry.refuse(name, None, &reason);
            tracing::error!(plugin = name, serving = ?serving_hash, %reason, "plugin file removed");
            return None;
        }
        Candidate::Failed { hash, error } => {
            let reason = error.to_string();
            registry.refuse(name, hash, &reason);
            tracing::error!(plugin = name, serving = ?serving_hash, %reason, "new plugin file refused; the old version keeps serving");
            return None;
        }
        Candidate::New(plugin) => plugin,
    };
    if let Err(refusal) = vet(&plugin, &uses).await {
        let reason = format!("{}: {}", file.display(), refusal.reason);
        // A deadline or host failure may be the machine's, not the
        // file's: the same bytes are tried again on their next event.
        let hash = refusal.lasting.then(|| plugin.info().hash.clone());
        registry.refuse(name, hash, &reason);
        tracing::error!(plugin = name, serving = ?serving_hash, %reason, "new plugin file refused; the old version keeps serving");
        return None;
    }
    Some(Prepared {
        plugin,
        serving_hash,
        settled,
        started,
    })
}

/// The keys of `new` that differ from the running `old` but are only read
/// at start: the `[server]` table (listeners, folders, timeouts) and the
/// retention the prune task was started with.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let (a, b): (&ServerConfig, &ServerConfig) = (&old.server, &new.server);
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check("server.listen", a.listen != b.listen);
    check("server.admin_listen", a.admin_listen != b.admin_listen);
    check(
        "server.admin_token_env",
        a.admin_token_env != b.admin_token_env,
    );
    check("server.data_dir", a.data_dir != b.data_dir);
    check("server.plugins_dir", a.plugins_dir != b.plugins_dir);
    check(
        "server.header_timeout",
        a.header_timeout != b.header_timeout,
    );
    check("server.body_timeout", a.body_timeout != b.body_timeout);
    check(
        "server.shutdown_grace",
        a.shutdown_grace != b.shutdown_grace,
    );
    check("server.journal_cache", a.journal_cache != b.journal_cache);
    check(
        "defaults.retention",
        old.defaults.retention != new.defaults.retention,
    );
    keys
}

/// The routes and destinations in `old` but not in `new` that may still
/// have deliveries to make, with the pending messages of their route:
/// "route shop/orders (12 pending)", "destination shop/refunds/crm (its
/// route has 3 pending)". The journal counts pending messages per route, not
/// per destination, so a removed destination of a route with a backlog is
/// named even if none of that backlog is its.
fn orphaned(old: &RouteTable, new: &RouteTable, store: &SledStore) -> Vec<String> {
    let mut orphaned = Vec::new();
    for route in old.iter() {
        let pending = store.backlog(&route.app, &route.name);
        if pending == 0 {
            continue;
        }
        let Some(kept) = new.by_name(&route.app, &route.name) else {
            orphaned.push(format!(
                "route {}/{} ({pending} pending)",
                route.app, route.name
            ));
            continue;
        };
        for name in route.destinations.keys() {
            if kept.destination(name).is_none() {
                orphaned.push(format!(
                    "destination {}/{}/{name} (its route has {pending} pending)",
                    route.app, route.name
                ));
            }
        }
    }
    orphaned.sort();
    orphaned
}

/// The destinations disabled after a 410 that `new` no longer names, as
/// "app/route/destination": their flag is kept by name (see
/// `store/journal/parking.rs`), so whoever puts one back should know.
fn removed_while_disabled(old: &RouteTable, new: &RouteTable, store: &SledStore) -> Vec<String> {
    let mut removed = Vec::new();
    for route in old.iter() {
        let kept = new.by_name(&route.app, &route.name);
        for name in route.destinations.keys() {
            let gone = kept.is_none_or(|kept| kept.destination(name).is_none());
            if gone && store.is_disabled(&place_of(&route.app, &route.name, name)) {
                removed.push(format!("{}/{}/{name}", route.app, route.name));
            }
        }
    }
    removed.sort();
    removed
}

/// "added: a/x; removed: b/y; kept: 3" for the reload log line.
fn diff_routes(old: &RouteTable, new: &RouteTable) -> String {
    let names = |t: &RouteTable| -> BTreeSet<String> {
        t.iter().map(|r| format!("{}/{}", r.app, r.name)).collect()
    };
    let (before, after) = (names(old), names(new));
    let added: Vec<_> = after.difference(&before).cloned().collect();
    let removed: Vec<_> = before.difference(&after).cloned().collect();
    format!(
        "added: [{}]; removed: [{}]; kept or changed: {}",
        added.join(", "),
        removed.join(", "),
        after.intersection(&before).count()
    )
}
