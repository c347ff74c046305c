//! The plugin versions a running gateway serves, one per name (file stem in
//! the plugins folder), and what became of each file's latest load.
//!
//! Routes take their [`Plugin`]s from here when their table is built (at
//! start and on a config reload), so one file is compiled once however many
//! routes name it. Hot reload (`crate::reload`) asks for a [`Candidate`]
//! when a file changes, vets it against the routes with [`vet`], and then
//! either [`commit`](PluginRegistry::commit)s it or
//! [`refuse`](PluginRegistry::refuse)s it; a refused file never replaces the
//! version serving, and its error stays in [`status`](PluginRegistry::status)
//! (shown on `/health`) until a good file replaces it.
//!
//! `serve` also keeps a copy of each version that serves in its data folder
//! ([`keeping_last_good`](PluginRegistry::keeping_last_good)), so that a
//! file that is broken or gone at the next start falls back to the last
//! good version, as it does while running, instead of stopping every route.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use super::component::{content_hash, read_plugin_file, read_plugin_file_async};
use super::{
    Failure, FailureKind, Instances, Plugin, PluginEngine, PluginError, PluginSetup, Role,
    UpstreamResponse, Webhook,
};
use crate::clock::now_ms;
use crate::store::{KeyValue, StoreError};

/// Longest a smoke-test call may take, whatever the route allows: it runs
/// on the reload path, which promises a new version within a second.
const SMOKE_DEADLINE: Duration = Duration::from_secs(1);

/// One plugin name as `/health` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// How routes name it (the file stem).
    pub name: String,
    pub file: String,
    /// SHA-256 of the version serving; `None` if no version ever loaded.
    pub hash: Option<String>,
    pub roles: Vec<Role>,
    /// Why the file's latest content is not serving, if it is not.
    pub error: Option<String>,
    /// When the version was loaded or the error seen, ms since the epoch.
    pub since: u64,
}

/// What a changed file holds, compared with what serves.
pub enum Candidate {
    /// The bytes of the version serving: nothing to do (an earlier error for
    /// the name is cleared, since the good file is back).
    Unchanged,
    /// The same bytes as the file last refused: refused again, not rebuilt.
    AlreadyRefused,
    /// The file is gone.
    Missing,
    /// A new version, compiled and type-checked, not yet serving.
    New(Plugin),
    /// The file cannot become a plugin; `hash` is its content's when read.
    Failed {
        hash: Option<String>,
        error: PluginError,
    },
}

#[derive(Default)]
struct Entry {
    /// The version serving.
    current: Option<Plugin>,
    /// Hash of the content last refused.
    refused: Option<String>,
    /// Why the latest content is not serving.
    error: Option<String>,
    since: u64,
}

/// Every plugin version the gateway serves. Shared by the route builder and
/// the reloader; all methods take `&self`.
pub struct PluginRegistry {
    engine: PluginEngine,
    dir: PathBuf,
    cache: Option<PathBuf>,
    /// Where a copy of each version that served is kept, if anywhere.
    keep: Option<PathBuf>,
    /// Whether a file that fails to load falls back to its kept copy: at
    /// start only (see [`PluginRegistry::started`]); a config reload that
    /// names a broken file is refused like any other.
    fall_back: AtomicBool,
    /// One copy into the keep folder at a time.
    keeping: Arc<Mutex<()>>,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl PluginRegistry {
    /// A registry for the `.wasm` files in `dir`, compiling through the
    /// compile cache in `cache` when given.
    pub fn new(engine: PluginEngine, dir: &Path, cache: Option<&Path>) -> PluginRegistry {
        PluginRegistry {
            engine,
            dir: dir.to_path_buf(),
            cache: cache.map(Path::to_path_buf),
            keep: None,
            fall_back: AtomicBool::new(false),
            keeping: Arc::default(),
            entries: Mutex::default(),
        }
    }

    /// Keeps a copy of each version that serves in `dir`; a name whose
    /// file does not load falls back to its copy there (see the module
    /// docs). `check` does without: it judges the files as they are.
    pub fn keeping_last_good(mut self, dir: &Path) -> PluginRegistry {
        self.keep = Some(dir.to_path_buf());
        self.fall_back = AtomicBool::new(true);
        self
    }

    /// The gateway has started: from now on a file that fails to load is
    /// refused (the version serving stays), never replaced by its kept copy.
    pub fn started(&self) {
        self.fall_back.store(false, Ordering::Relaxed);
    }

    /// The plugins folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the plugin `name` lives.
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    /// The version serving `name`, loading its file the first time the name
    /// is asked for. A failure is recorded for `/health` and returned.
    pub async fn get_or_load(&self, name: &str) -> Result<Plugin, PluginError> {
        if let Some(plugin) = self.current(name) {
            return Ok(plugin);
        }
        let file = self.file_of(name);
        match Plugin::load(&self.engine, &file, self.cache.as_deref()).await {
            Ok(plugin) => {
                self.commit(&plugin);
                Ok(plugin)
            }
            Err(error) => {
                if let Some(plugin) = self.last_good(name, &error).await {
                    return Ok(plugin);
                }
                self.refuse(name, None, &error.to_string());
                Err(error)
            }
        }
    }

    /// The kept copy of `name`'s last good version, serving in place of a
    /// file that failed with `error`, which stays on `/health`.
    async fn last_good(&self, name: &str, error: &PluginError) -> Option<Plugin> {
        if !self.fall_back.load(Ordering::Relaxed) {
            return None;
        }
        let kept = self.kept_file(name)?;
        if !kept.is_file() {
            return None;
        }
        let plugin = match Plugin::load(&self.engine, &kept, self.cache.as_deref()).await {
            Ok(plugin) => plugin,
            Err(err) => {
                tracing::warn!(plugin = name, cause = %err, "the kept copy of the plugin's last good version does not load either");
                return None;
            }
        };
        let reason = format!(
            "{error}; serving its last good version ({}), kept in {}",
            plugin.info().short_hash(),
            kept.display()
        );
        tracing::error!(plugin = name, %reason, "plugin file refused at start: its last good version serves");
        *self.lock().entry(name.to_string()).or_default() = Entry {
            current: Some(plugin.clone()),
            refused: None,
            error: Some(reason),
            since: now_ms(),
        };
        Some(plugin)
    }

    fn kept_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.keep.as_ref()?.join(format!("{name}.wasm")))
    }

    /// Copies the file of `plugin`, now serving, to the keep folder, on a
    /// blocking thread (a JavaScript component is 12 MB to read, hash and
    /// write). Skipped when that version is kept already, or when the file
    /// no longer holds its bytes (a newer version is on its way, and is kept
    /// when it serves; so a copy finishing late never overwrites a newer
    /// one). A failure only logs: the copy is a fallback, not something to
    /// stop serving for.
    fn keep_copy(&self, plugin: &Plugin) {
        let info = plugin.info().clone();
        let Some(kept) = self.kept_file(&info.name) else {
            return;
        };
        let lock = self.keeping.clone();
        let copy = move || {
            let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = keep(&info.path, &info.hash, &kept) {
                tracing::warn!(plugin = %info.name, file = %kept.display(), cause = %err, "could not keep a copy of the plugin's version");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(copy)),
            Err(_) => copy(),
        }
    }

    /// The version serving `name`, if one does.
    pub fn current(&self, name: &str) -> Option<Plugin> {
        self.lock().get(name).and_then(|e| e.current.clone())
    }

    /// Reads `name`'s file and, unless its content is the version serving
    /// or was refused already, compiles and type-checks it (on a blocking
    /// thread). Nothing changes in the registry.
    pub async fn candidate(&self, name: &str) -> Candidate {
        let file = self.file_of(name);
        let bytes = match read_plugin_file_async(&file).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Candidate::Missing,
            Err(err) => {
                let error = PluginError::Load {
                    file: file.display().to_string(),
                    reason: format!("cannot read: {err}"),
                };
                return Candidate::Failed { hash: None, error };
            }
        };
        let hash = content_hash(&bytes);
        {
            let mut entries = self.lock();
            let entry = entries.entry(name.to_string()).or_default();
            if entry
                .current
                .as_ref()
                .is_some_and(|p| p.info().hash == hash)
            {
                if entry.error.take().is_some() {
                    entry.refused = None;
                    entry.since = now_ms();
                }
                return Candidate::Unchanged;
            }
            if entry.refused.as_deref() == Some(hash.as_str()) {
                return Candidate::AlreadyRefused;
            }
        }
        tracing::info!(
            plugin = name,
            bytes = bytes.len(),
            "new plugin file: compiling and checking it"
        );
        match Plugin::from_bytes(&self.engine, &file, bytes, self.cache.as_deref()).await {
            Ok(plugin) => Candidate::New(plugin),
            Err(error) => Candidate::Failed {
                hash: Some(hash),
                error,
            },
        }
    }

    /// Makes `plugin` the version serving its name and clears any error.
    pub fn commit(&self, plugin: &Plugin) {
        let info = plugin.info();
        tracing::info!(
            plugin = %info.name,
            version = %info.short_hash(),
            size = info.size,
            from_cache = info.from_cache,
            load_ms = info.load_time.as_millis() as u64,
            "plugin loaded"
        );
        *self.lock().entry(plugin.info().name.clone()).or_default() = Entry {
            current: Some(plugin.clone()),
            refused: None,
            error: None,
            since: now_ms(),
        };
        self.keep_copy(plugin);
    }

    /// Records why `name`'s file (content `hash`, when known) is not
    /// serving; the version serving, if any, stays.
    pub fn refuse(&self, name: &str, hash: Option<String>, reason: &str) {
        let mut entries = self.lock();
        let entry = entries.entry(name.to_string()).or_default();
        entry.refused = hash;
        entry.error = Some(reason.to_string());
        entry.since = now_ms();
    }

    /// Forgets every name not in `names` (no route uses it any more), so its
    /// compiled code is freed once no request holds it.
    pub fn retain(&self, names: &BTreeSet<String>) {
        self.lock().retain(|name, _| names.contains(name));
    }

    /// Every name the registry knows, with its serving version and error.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.lock()
            .iter()
            .map(|(name, entry)| {
                let info = entry.current.as_ref().map(|p| p.info());
                PluginStatus {
                    name: name.clone(),
                    file: self.file_of(name).display().to_string(),
                    hash: info.map(|i| i.hash.clone()),
                    roles: info.map(|i| i.roles.clone()).unwrap_or_default(),
                    error: entry.error.clone(),
                    since: entry.since,
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Copies `file` to `kept` if it still holds the content `hash` and `kept`
/// is not that content already (its `.sha256` stamp says). The copy is
/// synced before it replaces the old one, and the stamp written after, so
/// a crash leaves the old copy or the new one whole.
fn keep(file: &Path, hash: &str, kept: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let stamp = kept.with_extension("sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|kept_hash| kept_hash == hash) {
        return Ok(());
    }
    let bytes = read_plugin_file(file)?;
    if content_hash(&bytes) != hash {
        return Ok(());
    }
    if let Some(dir) = kept.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = kept.with_extension("wasm.partial");
    let mut out = std::fs::File::create(&partial)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    std::fs::rename(&partial, kept)?;
    std::fs::write(&stamp, hash)
}

/// Why [`vet`] refused a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The file's content is at fault (a missing role, a trap), not the
    /// moment (a deadline on a busy machine, a host failure): the same
    /// bytes need not be tried again.
    pub lasting: bool,
}

/// Checks that `plugin` can take over from the version serving: it plays
/// every role its routes ask of it (`uses`: each role with the setup of a
/// route that uses it so), and one call of each such role, with that
/// route's config, a synthetic webhook and limits no looser than the
/// route's (the deadline capped at `SMOKE_DEADLINE`), does not trap or hit
/// a limit. An answer of any kind (accept, reject, `err`) passes: the
/// synthetic input may well deserve a rejection. The call sees an empty
/// key-value store that drops writes, so it leaves no trace.
pub async fn vet(plugin: &Plugin, uses: &[(Role, Arc<PluginSetup>)]) -> Result<(), Refusal> {
    let mut seen = BTreeSet::new();
    for (role, setup) in uses {
        if !seen.insert(*role) {
            continue;
        }
        if !plugin.plays(*role) {
            return Err(Refusal {
                reason: plugin.missing_role(*role).to_string(),
                lasting: true,
            });
        }
        let mut limits = setup.limits;
        limits.deadline = limits.deadline.min(SMOKE_DEADLINE);
        let setup = Arc::new(PluginSetup {
            app: setup.app.clone(),
            route: setup.route.clone(),
            config: setup.config.clone(),
            limits,
            kv: Arc::new(ScratchKeyValue),
            kv_quota: setup.kv_quota,
            answer_cap: setup.answer_cap,
            instances: Instances::default(),
            headers: None,
            turns: PluginSetup::turns(1),
        });
        let outcome = smoke_call(plugin, *role, &setup).await;
        if let Some(err) = outcome.filter(|e| e.is_fault() || matches!(e, PluginError::Host(_))) {
            return Err(Refusal {
                reason: format!("failed its {role} smoke test: {err}"),
                lasting: !matches!(err, PluginError::Deadline { .. } | PluginError::Host(_)),
            });
        }
    }
    Ok(())
}

/// One call of `role` on a synthetic webhook; only the error matters.
async fn smoke_call(plugin: &Plugin, role: Role, setup: &Arc<PluginSetup>) -> Option<PluginError> {
    let hook = Webhook {
        id: "msg_smoke_test".into(),
        app: setup.app.clone(),
        route: setup.route.clone(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: b"{}".to_vec(),
        received_at: now_ms(),
        attempt: 0,
    };
    let failure = Failure {
        destination: String::new(),
        kind: FailureKind::Timeout,
        attempts: 1,
        exhausted: true,
        caller_waiting: false,
    };
    let response = UpstreamResponse {
        status: 200,
        headers: Vec::new(),
        body: b"{}".to_vec(),
    };
    match role {
        Role::Validate => plugin.validate(setup, &hook).await.err(),
        Role::Transform => plugin.transform(setup, &hook).await.err(),
        Role::Fallback => plugin.fallback(setup, &hook, &failure).await.err(),
        Role::Success => plugin.success(setup, &hook, &response).await.err(),
    }
}

/// The key-value store a smoke test sees: empty, and writes vanish.
struct ScratchKeyValue;

impl KeyValue for ScratchKeyValue {
    fn get(&self, _: &str, _: &str, _: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn set(&self, _: &str, _: &str, _: &[u8], _: Option<u64>, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
