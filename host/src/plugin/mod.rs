//! The plugin runtime: loads WebAssembly components written against `wit/`
//! and calls them under limits.
//!
//! This module narrows wasmtime for the rest of the gateway: callers see
//! [`PluginEngine`], [`Plugin`] (one compiled version of one file), the
//! [`PluginSetup`] a route gives a plugin, and typed results. Nothing outside
//! `plugin/` names a wasmtime type.
//!
//! - `engine.rs`: the shared `Engine` + `Linker`, pooling, epoch ticker.
//! - `component.rs`: reading a file, checking it, the compile cache, roles.
//! - `call.rs`: one call = fresh `Store` + instantiate + call + classify.
//! - `host.rs`: what a guest can reach (the WIT `host` imports, empty WASI).
//! - `registry.rs`: the versions serving, by name; vetting a new version.
//! - `bindings.rs`: the generated WIT bindings.

mod answer;
mod bindings;
mod call;
mod component;
mod engine;
mod host;
mod pool;
mod registry;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use answer::ANSWER_CAP_FACTOR;
pub(crate) use answer::{gateway_owned, hop_by_hop};
pub use bindings::types::{
    Decision, Failure, FailureKind, NextStep, Outgoing, Rejection, Response, UpstreamResponse,
    Verdict, Webhook,
};
pub use bindings::{WIT_PACKAGE, WIT_VERSION};
pub use call::CallReport;
pub use component::{MAX_PLUGIN_FILE, Plugin, PluginVersionInfo, content_hash};
pub use engine::{EPOCH_TICK, MAX_PLUGIN_MEMORY, PluginEngine};
pub use pool::{AUTO_WARM_MIN_SIZE, InstancePolicy, Instances, WarmPolicy};
pub use registry::{Candidate, PluginRegistry, PluginStatus, Refusal, vet};

use crate::store::KeyValue;

/// A role a plugin can play; a route names one plugin per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Validate,
    Transform,
    Fallback,
    /// The fallback's companion on sync routes: sees each good upstream
    /// answer (to cache it). Not named by routes: a route's fallback plugin
    /// plays it when it exports it.
    Success,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Validate,
        Role::Transform,
        Role::Fallback,
        Role::Success,
    ];

    /// The role's name in WIT, TOML and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Validate => "validate",
            Role::Transform => "transform",
            Role::Fallback => "fallback",
            Role::Success => "success",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (expected validate, transform, fallback or success)")
            })
    }
}

/// The limits every call of a plugin runs under. Set per route in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel units (roughly wasm instructions) one call may burn.
    pub fuel: u64,
    /// Wall-clock time one call may take, host imports included.
    pub deadline: Duration,
    /// Largest size any one linear memory of the instance may grow to, bytes.
    pub memory: u64,
}

/// Defaults sized for compiled guests (Rust, C): a 1 KB JSON validation burns
/// well under a million fuel and a few hundred KiB of memory. Interpreted
/// guests (JS, Python) need more; see the language templates' READMEs.
impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            deadline: Duration::from_millis(100),
            memory: 64 << 20,
        }
    }
}

/// What a route hands a plugin for its calls: who is calling (for logs and
/// the key-value namespace), the plugin's own config values, and its limits.
/// Built once per route when the config loads, shared by all its calls.
pub struct PluginSetup {
    /// App the route belongs to: the key-value namespace and log field.
    pub app: String,
    /// Route name, for logs.
    pub route: String,
    /// The `config` table the route gives this plugin.
    pub config: BTreeMap<String, String>,
    pub limits: PluginLimits,
    /// The per-app key-value store plugins reach through `host.kv-*`.
    pub kv: Arc<dyn KeyValue>,
    /// Bytes the app's entries may hold in it (`kv_quota`).
    pub kv_quota: u64,
    /// Most bytes of bodies and headers one answer may carry: a
    /// transform's outgoing messages together, a fallback's response
    /// ([`ANSWER_CAP_FACTOR`] x the route's `max_body`).
    pub answer_cap: u64,
    /// Fresh instance per call, or a warm pool (`pool.rs`); the pool lives
    /// here, so it is never shared with another route or app.
    pub instances: Instances,
    /// The inbound headers the plugin is shown (lowercase names); `None`:
    /// all of them.
    pub headers: Option<Arc<[String]>>,
    /// Turns for this plugin's calls on this route (`limits.concurrency`);
    /// a call holds one while it runs. Kept across plugin versions.
    pub turns: Arc<Semaphore>,
}

impl PluginSetup {
    /// `n` turns, for [`PluginSetup::turns`]: one call where only one
    /// runs (`plugin run`, smoke tests).
    pub fn turns(n: u32) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n as usize))
    }

    /// `hook` as this plugin may see it: only the headers it was given, in
    /// their order (a copy only when some are left out).
    pub fn visible<'a>(&self, hook: &'a Webhook) -> Cow<'a, Webhook> {
        let Some(names) = &self.headers else {
            return Cow::Borrowed(hook);
        };
        let shown = |name: &String| names.contains(name);
        if hook.headers.iter().all(|(name, _)| shown(name)) {
            return Cow::Borrowed(hook);
        }
        let mut visible = hook.clone();
        visible.headers.retain(|(name, _)| shown(name));
        Cow::Owned(visible)
    }
}

/// Why a plugin could not be loaded or a call did not produce an answer.
///
/// Traps and limit hits (the guest misbehaved) stay apart from `Guest` (the
/// guest answered `err(..)` on purpose) and from `Malformed` (it answered
/// something the host cannot use), because routes and metrics treat them
/// differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The file cannot become a runnable plugin; `file` is the path as given.
    #[error("{file}: {reason}")]
    Load { file: String, reason: String },
    /// The component exists but does not export the role asked for.
    #[error("plugin {plugin:?} does not play the {role} role (it exports: {exports})")]
    MissingRole {
        plugin: String,
        role: Role,
        exports: String,
    },
    #[error("plugin ran out of fuel (budget {budget})")]
    OutOfFuel { budget: u64 },
    #[error("plugin exceeded its deadline of {}", humantime::format_duration(*.deadline))]
    Deadline { deadline: Duration },
    #[error("plugin exceeded its memory cap of {cap} bytes")]
    MemoryCap { cap: u64 },
    #[error("plugin overflowed its stack")]
    StackOverflow,
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The guest returned `err(reason)`.
    #[error("plugin returned an error: {0}")]
    Guest(String),
    #[error("plugin gave a malformed answer: {0}")]
    Malformed(String),
    /// The host could not set the call up (instance pool, linking). Not the
    /// guest's fault; logged with its cause.
    #[error("plugin call could not start: {0}")]
    Host(String),
}

impl PluginError {
    /// Short stable label for metrics and `/health` (`outcome="out_of_fuel"`).
    pub fn outcome(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "load_error",
            PluginError::MissingRole { .. } => "missing_role",
            PluginError::OutOfFuel { .. } => "out_of_fuel",
            PluginError::Deadline { .. } => "deadline",
            PluginError::MemoryCap { .. } => "memory_cap",
            PluginError::StackOverflow => "stack_overflow",
            PluginError::Trap(_) => "trap",
            PluginError::Guest(_) => "guest_error",
            PluginError::Malformed(_) => "malformed",
            PluginError::Host(_) => "host_error",
        }
    }

    /// True when the guest itself went wrong (trap or limit), as opposed to
    /// answering with an error. An instance is never reused after one.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            PluginError::OutOfFuel { .. }
                | PluginError::Deadline { .. }
                | PluginError::MemoryCap { .. }
                | PluginError::StackOverflow
                | PluginError::Trap(_)
        )
    }
}
