//! hookgate's integration tests: one binary, one module per topic
//! (wasmtime's `tests/all` layout), so the suite links once.
//!
//! Guest plugins are real components built from `plugins/` by the
//! `hookgate-tests` build script; `hookgate_tests::guest("name")` finds them.

mod support;

mod admin;
mod chat_inbox;
mod crash;
mod delivery;
mod examples;
mod health;
mod ingress;
mod languages;
mod lead_router;
mod logs;
mod metrics;
mod order_burst;
mod plugin_cli;
mod plugin_examples;
mod plugin_limits;
mod plugin_loading;
mod pools;
mod ported_plugins;
mod postback;
mod quiz_platform;
mod reload;
mod sync;
