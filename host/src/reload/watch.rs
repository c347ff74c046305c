//! Watching the plugins folder and the config file with `notify`, and
//! turning its events into [`Change`]s the reloader acts on.
//!
//! Events are debounced (`notify-debouncer-full`, which also merges the two
//! halves of a rename into one event naming both paths). Only two kinds of
//! path count: `<name>.wasm` directly in the plugins folder, where `<name>`
//! does not start with a dot, and the config file itself. Everything else
//! an editor or a copy tool leaves around (`.x.wasm.swp`, `x.wasm~`,
//! `x.wasm.part`, `4913`, dotfiles) is ignored. A file still being written
//! is waited for ([`settle`]) before it is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc::UnboundedSender;

/// How long events for one path are gathered before they are handed on: a
/// save or a rename makes several events within a few milliseconds; this
/// makes them one without delaying a reload noticeably (a slower writer is
/// waited for by [`settle`]).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How often a changed file's size and modification time are compared
/// while it is being written, and how long a copy may keep changing before
/// it is read anyway (its content then decides: a half-written component
/// does not compile and the old version keeps serving).
const SETTLE_PROBE: Duration = Duration::from_millis(50);
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// Something the reloader should look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// `<name>.wasm` in the plugins folder was written, replaced or removed.
    Plugin(String),
    /// The config file was written or replaced.
    Config,
}

/// The watcher; events stop when it is dropped.
pub struct Watcher {
    _debouncer: Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>,
}

/// What counts: the plugins folder and the config file, as absolute paths.
#[derive(Clone)]
struct Targets {
    plugins_dir: PathBuf,
    config: Option<PathBuf>,
}

impl Targets {
    /// The changes `path` stands for, if any.
    fn classify(&self, path: &Path) -> Option<Change> {
        let config = self.config.as_deref();
        if config == Some(path) {
            return Some(Change::Config);
        }
        if path.parent() == Some(self.plugins_dir.as_path())
            && let Some(name) = plugin_name(path)
        {
            return Some(Change::Plugin(name));
        }
        // A config file that is a symlink changes without an event naming
        // it: its target is edited where it lives, or (a Kubernetes
        // ConfigMap) a symlink it goes through is swapped in its folder.
        // Any event beside it or beside its target may be such a change;
        // the reloader reads the file and acts only if its text changed.
        let config = config?;
        let linked = std::fs::symlink_metadata(config).is_ok_and(|m| m.file_type().is_symlink());
        let beside = |file: &Path| file.parent().is_some_and(|dir| path.parent() == Some(dir));
        let beside_target = || std::fs::canonicalize(config).is_ok_and(|t| beside(&t));
        (linked && (beside(config) || beside_target())).then_some(Change::Config)
    }
}

/// The plugin a file in the plugins folder holds: `x` for `x.wasm`; `None`
/// for dotfiles and anything not ending in exactly `.wasm` (editor and
/// download temp files).
pub fn plugin_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(".wasm")?;
    (!stem.is_empty() && !stem.starts_with('.')).then(|| stem.to_string())
}

/// Starts watching `plugins_dir` and, when given, the config file `config`
/// (through its folder, since editors replace a file by renaming a new one
/// over it). Each relevant change is sent to `tx`.
pub fn watch(
    plugins_dir: &Path,
    config: Option<&Path>,
    tx: UnboundedSender<Change>,
) -> Result<Watcher, String> {
    let absolute = |path: &Path| {
        std::fs::canonicalize(path).map_err(|e| format!("cannot watch {}: {e}", path.display()))
    };
    let plugins_dir = absolute(plugins_dir)?;
    let config = match config {
        Some(file) => {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            let name = file
                .file_name()
                .ok_or_else(|| format!("cannot watch {}: not a file", file.display()))?;
            Some(absolute(dir.unwrap_or(Path::new(".")))?.join(name))
        }
        None => None,
    };
    let targets = Targets {
        plugins_dir: plugins_dir.clone(),
        config: config.clone(),
    };
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            let mut changes = BTreeSet::new();
            for event in events {
                if matches!(event.kind, EventKind::Access(_)) {
                    continue;
                }
                changes.extend(event.paths.iter().filter_map(|p| targets.classify(p)));
            }
            for change in changes {
                // The receiver is gone only when the gateway is stopping.
                let _ = tx.send(change);
            }
        }
        Err(errors) => {
            for error in errors {
                tracing::warn!(cause = %error, "file watcher error");
            }
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler)
        .map_err(|e| format!("cannot start the file watcher: {e}"))?;
    let watch = |debouncer: &mut Debouncer<_, _>, dir: &Path| {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))
    };
    watch(&mut debouncer, &plugins_dir)?;
    if let Some(dir) = config.as_deref().and_then(Path::parent)
        && dir != plugins_dir
    {
        watch(&mut debouncer, dir)?;
    }
    // A symlinked config is also watched where it points to (where an
    // operator edits it). Best effort: the folder may go (a ConfigMap swap
    // replaces it), and the config's own folder still tells of that.
    if let Some(target_dir) = config
        .as_deref()
        .and_then(|c| std::fs::canonicalize(c).ok())
        .and_then(|t| t.parent().map(Path::to_path_buf))
        && Some(target_dir.as_path()) != config.as_deref().and_then(Path::parent)
        && target_dir != plugins_dir
        && let Err(err) = watch(&mut debouncer, &target_dir)
    {
        tracing::warn!(cause = %err, "cannot watch the folder the config file links to");
    }
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

/// Waits until `path` stops changing (same size and modification time over
/// one `SETTLE_PROBE`), or it is gone, or `SETTLE_MAX` has passed: a
/// file copied in slowly is then read whole, not half-written.
pub async fn settle(path: &Path) {
    let stat = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let deadline = tokio::time::Instant::now() + SETTLE_MAX;
    let mut last = stat(path);
    while last.is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE_PROBE).await;
        let now = stat(path);
        if now == last {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_wasm_files_name_plugins() {
        let name = |p: &str| plugin_name(Path::new(p));
        assert_eq!(
            name("/p/json-validator.wasm").as_deref(),
            Some("json-validator")
        );
        for ignored in [
            "/p/.json-validator.wasm",
            "/p/.json-validator.wasm.swp",
            "/p/json-validator.wasm~",
            "/p/json-validator.wasm.part",
            "/p/json-validator.wasm.123.tmp",
            "/p/4913",
            "/p/.wasm",
            "/p/notes.txt",
        ] {
            assert_eq!(name(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn a_missing_plugins_folder_is_a_clear_error() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let err = watch(Path::new("/nonexistent/hookgate-plugins"), None, tx)
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("cannot watch /nonexistent/hookgate-plugins:"),
            "{err}"
        );
    }

    #[test]
    fn classifies_by_folder_and_config_file() {
        let targets = Targets {
            plugins_dir: PathBuf::from("/srv/plugins"),
            config: Some(PathBuf::from("/srv/gateway.toml")),
        };
        let classify = |p: &str| targets.classify(Path::new(p));
        assert_eq!(classify("/srv/gateway.toml"), Some(Change::Config));
        assert_eq!(
            classify("/srv/plugins/reshape.wasm"),
            Some(Change::Plugin("reshape".into()))
        );
        assert_eq!(classify("/srv/plugins/sub/reshape.wasm"), None);
        assert_eq!(classify("/srv/reshape.wasm"), None);
        assert_eq!(classify("/srv/.gateway.toml.swp"), None);
    }
}
