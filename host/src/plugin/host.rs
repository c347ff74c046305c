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
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, Level};
use super::{PluginSetup, PluginVersionInfo};
use crate::clock::now_ms;
use crate::store::{KV_MAX_KEY, KV_MAX_VALUE, StoreError};

/// Bytes of guest stdout/stderr kept per call; the rest is dropped (the
/// guest's writes still succeed). A plugin that prints in a loop cannot grow
/// the host's memory.
const STDIO_CAPTURE: usize = 16 << 10;

/// Longest log message a plugin can emit; longer ones are cut.
const LOG_MESSAGE_MAX: usize = 4 << 10;

/// Fields of one log line kept; the rest are dropped.
const LOG_FIELDS_MAX: usize = 32;

/// Bytes (messages and fields, as cut) a plugin may log per call; lines
/// past it are dropped and counted, and the call's last word is one line
/// saying how many. Like stdout, a plugin that logs in a loop cannot flood
/// the gateway's log (and its disk): 10,000 lines of 4 KiB in a call were
/// 15 MB of log per request before.
const LOG_BYTES_PER_CALL: usize = 16 << 10;

/// The data of one store: everything host functions may touch.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryCap,
    setup: Arc<PluginSetup>,
    version: Arc<PluginVersionInfo>,
    message_id: String,
    stdout: CapturePipe,
    stderr: CapturePipe,
    /// Bytes logged through `host.log` in this call, and lines dropped
    /// past [`LOG_BYTES_PER_CALL`].
    logged: usize,
    log_dropped: usize,
}

impl CallState {
    pub(super) fn new(
        setup: Arc<PluginSetup>,
        version: Arc<PluginVersionInfo>,
        message_id: String,
    ) -> Self {
        let stdout = CapturePipe::default();
        let stderr = CapturePipe::default();
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
            logged: 0,
            log_dropped: 0,
        }
    }

    /// A warm instance starts another call: log lines name its message.
    pub(super) fn begin_call(&mut self, message_id: &str) {
        message_id.clone_into(&mut self.message_id);
        self.logged = 0;
        self.log_dropped = 0;
    }

    /// Copies what the guest printed since the last flush to the log, one
    /// event per stream, and empties the captures: each call of a warm
    /// instance has its own [`STDIO_CAPTURE`] bytes.
    pub(super) fn flush_stdio(&mut self) {
        if self.log_dropped > 0 {
            tracing::warn!(
                app = %self.setup.app, route = %self.setup.route,
                plugin = %self.version.name, version = %self.version.short_hash(),
                message_id = %self.message_id, dropped_lines = self.log_dropped,
                limit_bytes = LOG_BYTES_PER_CALL,
                "the plugin logged more than a call may; its later lines were dropped"
            );
            self.log_dropped = 0;
        }
        let pipes = [("stdout", &self.stdout), ("stderr", &self.stderr)];
        for (stream, pipe) in pipes {
            let (bytes, dropped) = pipe.take();
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            tracing::info!(
                app = %self.setup.app, route = %self.setup.route,
                plugin = %self.version.name, version = %self.version.short_hash(),
                message_id = %self.message_id, stream,
                dropped_bytes = (dropped > 0).then_some(dropped),
                "{}", text.trim_end()
            );
        }
    }
}

/// A guest's stdout or stderr: what it writes, up to [`STDIO_CAPTURE`]
/// bytes until the host takes it, and a count of what was dropped past
/// that. Writes never fail, so a plugin that prints a lot loses lines, never
/// its call (a pipe that refused writes once full made Python raise
/// `BrokenPipeError` and Rust's `println!` panic).
#[derive(Clone, Default)]
struct CapturePipe {
    captured: Arc<std::sync::Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl CapturePipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what fits of `bytes`, counts the rest as dropped.
    fn keep(&self, bytes: &[u8]) {
        let mut captured = self.lock();
        let room = STDIO_CAPTURE.saturating_sub(captured.bytes.len());
        let kept = bytes.len().min(room);
        captured.bytes.extend_from_slice(&bytes[..kept]);
        captured.dropped += bytes.len() - kept;
    }

    /// What was captured since the last take, and how many bytes were
    /// dropped; empties the capture.
    fn take(&self) -> (Vec<u8>, usize) {
        let taken = std::mem::take(&mut *self.lock());
        (taken.bytes, taken.dropped)
    }
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Whatever is written is taken (kept or dropped) at once.
        Ok(STDIO_CAPTURE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The same capture for WASI preview 1 guests and anything else that
/// writes through tokio.
impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.keep(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
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
            .take(LOG_FIELDS_MAX)
            .map(|(k, v)| (truncate(k, 64), truncate(v, 256)))
            .collect();
        let bytes = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.logged + bytes > LOG_BYTES_PER_CALL {
            self.log_dropped += 1;
            return;
        }
        self.logged += bytes;
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
            .set(
                &self.setup.app,
                &key,
                &value,
                expires_at,
                self.setup.kv_quota,
            )
            .map_err(|err| match err {
                // The plugin's to handle (delete keys, set TTLs); the
                // operator sees it in the plugin's own logs if it says so.
                StoreError::Full(why) => why,
                err => {
                    tracing::warn!(app = %self.setup.app, plugin = %self.version.name, cause = %err, "plugin kv-set failed");
                    "the key-value store is unavailable".to_string()
                }
            })
    }

    fn kv_delete(&mut self, key: String) {
        if let Err(err) = self.setup.kv.delete(&self.setup.app, &key) {
            tracing::warn!(app = %self.setup.app, plugin = %self.version.name, cause = %err, "plugin kv-delete failed");
        }
    }
}

impl super::bindings::types::Host for CallState {}
