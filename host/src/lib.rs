//! hookgate: a webhook gateway with WebAssembly plugins.
//!
//! Codemap (one line per module; ARCHITECTURE.md has the full picture):
//! - [`plugin`]: the sandboxed plugin runtime (wasmtime components, limits,
//!   compile cache, host imports). The only place that talks to wasmtime.
//! - [`store`]: durable state behind traits; sled is the embedded backend.
//! - [`authoring`]: what `hookgate plugin run|inspect` do for plugin authors.
//! - [`telemetry`]: tracing setup (human or JSON logs, `RUST_LOG`).
// `unsafe` is denied workspace-wide; the one exception (loading cached
// compiled code) is allowed on its function with a SAFETY comment.

pub mod authoring;
pub mod plugin;
pub mod store;
pub mod telemetry;
