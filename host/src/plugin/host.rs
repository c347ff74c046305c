//! What a guest can reach: the per-call store state and the `host` imports.
//!
//! A `CallState` lives exactly as long as one plugin call (or one warm
//! instance). It holds an empty WASI context (no preopens, no environment, no
//! sockets, no stdin; stdout and stderr go to bounded in-memory pipes that are
//! copied to the log after the call), the memory limiter, and the binding the
//! route gave this plugin: app, config, key-value namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, Level};
use super::{PluginSetup, PluginVersionInfo};
use crate::clock::now_ms;
use crate::store::{KV_MAX_KEY, KV_MAX_VALUE};

/// Bytes of guest stdout/stderr kept per call; the rest is dropped. A plugin
/// that prints in a loop cannot grow the host's memory.
const STDIO_CAPTURE: usize = 16 << 10;

/// Longest log message a plugin can emit; longer ones are cut.
const LOG_MESSAGE_MAX: usize = 4 << 10;

/// The data of one store: everything host functions may touch.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryCap,
    setup: Arc<PluginSetup>,
    version: Arc<PluginVersionInfo>,
    message_id: String,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already copied to the log: a warm instance's
    /// pipes carry over from call to call.
    flushed: [usize; 2],
}

impl CallState {
    pub(super) fn new(
        setup: Arc<PluginSetup>,
        version: Arc<PluginVersionInfo>,
        message_id: String,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(STDIO_CAPTURE);
        let stderr = MemoryOutputPipe::new(STDIO_CAPTURE);
        // The builder starts from nothing: no args, env, preopens or network.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(setup.limits.memory),
            setup,
            version,
            message_id,
            stdout,
            stderr,
            flushed: [0; 2],
        }
    }

    /// A warm instance starts another call: log lines name its message.
    pub(super) fn begin_call(&mut self, message_id: &str) {
        message_id.clone_into(&mut self.message_id);
    }

    /// Copies what the guest printed since the last flush to the log, one
    /// event per stream. A warm instance's capture is shared by its calls:
    /// once it is full, later output is dropped (`host.log` has no limit
    /// across calls).
    pub(super) fn flush_stdio(&mut self) {
        let pipes = [("stdout", &self.stdout), ("stderr", &self.stderr)];
        for ((stream, pipe), flushed) in pipes.into_iter().zip(&mut self.flushed) {
            let bytes = pipe.contents();
            let new = bytes.get(*flushed..).unwrap_or_default();
            *flushed = bytes.len();
            if !new.is_empty() {
                let text = String::from_utf8_lossy(new);
                tracing::info!(
                    app = %self.setup.app, route = %self.setup.route,
                    plugin = %self.version.name, version = %self.version.short_hash(),
                    message_id = %self.message_id, stream, "{}", text.trim_end()
                );
            }
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Returned through wasmtime when a guest tries to grow memory past its cap,
/// so the caller can tell a memory-cap hit from any other trap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {desired})")]
pub struct MemoryCapExceeded {
    pub cap: u64,
    pub desired: u64,
}

/// Caps each linear memory of a store and turns a refused `memory.grow` into a
/// trap, so every guest language fails the same way (some would otherwise
/// limp on after a failed allocation).
pub struct MemoryCap {
    cap: u64,
}

impl MemoryCap {
    fn new(cap: u64) -> Self {
        Self { cap }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.cap {
            return Err(MemoryCapExceeded {
                cap: self.cap,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// Installs the memory cap on a fresh store.
pub(super) fn install_limiter(store: &mut Store<CallState>) {
    store.limiter(|state| &mut state.limiter);
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(super) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl host::Host for CallState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let message = truncate(&message, LOG_MESSAGE_MAX);
        let fields: BTreeMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (truncate(k, 64), truncate(v, 256)))
            .collect();
        let (app, route) = (&self.setup.app, &self.setup.route);
        let (plugin, version) = (&self.version.name, self.version.short_hash());
        let id = &self.message_id;
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    app = %app, route = %route, plugin = %plugin, version = %version,
                    message_id = %id, fields = ?fields, "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.setup.config.get(&key).cloned()
    }

    fn config_entries(&mut self) -> Vec<(String, String)> {
        self.setup
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn now(&mut self) -> u64 {
        now_ms()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.setup.kv.get(&self.setup.app, &key, now_ms()) {
            Ok(value) => value,
            Err(err) => {
                tracing::warn!(app = %self.setup.app, plugin = %self.version.name, cause = %err, "plugin kv-get failed");
                None
            }
        }
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl: Option<u64>) -> Result<(), String> {
        if key.len() > KV_MAX_KEY {
            return Err(format!(
                "key is {} bytes, the limit is {KV_MAX_KEY}",
                key.len()
            ));
        }
        if value.len() > KV_MAX_VALUE {
            return Err(format!(
                "value is {} bytes, the limit is {KV_MAX_VALUE}",
                value.len()
            ));
        }
        let expires_at = ttl.map(|ttl| now_ms().saturating_add(ttl));
        self.setup
            .kv
            .set(&self.setup.app, &key, &value, expires_at)
            .map_err(|err| {
                tracing::warn!(app = %self.setup.app, plugin = %self.version.name, cause = %err, "plugin kv-set failed");
                "the key-value store is unavailable".to_string()
            })
    }

    fn kv_delete(&mut self, key: String) {
        if let Err(err) = self.setup.kv.delete(&self.setup.app, &key) {
            tracing::warn!(app = %self.setup.app, plugin = %self.version.name, cause = %err, "plugin kv-delete failed");
        }
    }
}

impl super::bindings::types::Host for CallState {}
