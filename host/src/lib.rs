//! hookgate: a webhook gateway with WebAssembly plugins.
//!
//! Codemap (one line per module; ARCHITECTURE.md has the full picture):
//! - [`config`]: the TOML file: types, defaults, validation with key paths.
//! - [`plugin`]: the sandboxed plugin runtime (wasmtime components, limits,
//!   compile cache, host imports). The only place that talks to wasmtime.
//! - [`routes`]: the config's routes resolved for serving (plugins loaded, secrets read).
//! - [`reload`]: hot reload: watches the plugins folder and the config file,
//!   swaps in new plugin versions and route tables that pass their checks.
//! - [`server`]: `run()`: the webhook listener and its inbound checks; the
//!   admin listener (`/health`, `/metrics`, the admin API).
//! - [`store`]: durable state behind traits; sled is the embedded backend.
//! - [`admin_cli`]: `hookgate admin ...`, the admin API as tables or JSON.
//! - [`authoring`]: what `hookgate plugin run|inspect` do for plugin authors.
//! - [`verify`]: inbound signature schemes and outbound signing.
//! - [`breaker`]: the per-destination circuit breaker.
//! - [`delivery`]: retry policy (and, next, the dispatcher).
//! - [`metrics`]: Prometheus counters and the recent window `/health` judges by.
//! - [`clock`]: wall-clock milliseconds, the one time base of records and plugins.
//! - [`telemetry`]: tracing setup (human or JSON logs, `RUST_LOG`).
// `unsafe` is denied workspace-wide; the one exception (loading cached
// compiled code) is allowed on its function with a SAFETY comment.

pub mod admin_cli;
pub mod authoring;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod metrics;
pub mod plugin;
pub mod reload;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod verify;

pub use server::run;
