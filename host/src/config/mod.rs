//! The gateway's configuration: one TOML file describing the listener, the
//! data and plugin folders, defaults, and apps with their routes.
//!
//! Parsing is strict (`deny_unknown_fields`: a typo is an error, not a
//! silently ignored key). [`Config::validate`] then checks meaning and reports
//! every problem at once, each with its key path and the value at fault
//! (`validate.rs`). Secrets never live in this file: keys ending in `_env`
//! name environment variables that hold them.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! data_dir = "data"
//! plugins_dir = "plugins"
//!
//! [apps.shop.routes.orders]
//! path = "/hooks/shop/orders"
//! verify = { scheme = "github", secret_env = "SHOP_GITHUB_SECRET" }
//! validate = { plugin = "json-validator", config = { required = "id,kind" } }
//!
//! [apps.shop.routes.orders.destinations.warehouse]
//! url = "http://127.0.0.1:9000/orders"
//! ```

mod health;
mod parse;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

pub use health::HealthConfig;
pub use units::{ByteSize, MAX_DURATION, duration, optional_duration, parse_bytes, parse_duration};
pub use validate::plugin_memory;

use crate::breaker::BreakerConfig;
use crate::delivery::retry::RetryPolicy;
use crate::plugin::{AUTO_WARM_MIN_SIZE, InstancePolicy, PluginLimits, WarmPolicy};
use crate::verify::{BodySignatureConfig, VerifyConfig};

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    /// TOML syntax or shape, one line per problem, each with its key path.
    /// Meaning is checked only once the file reads, which the message says.
    #[error(
        "{file}: {}\n(the values' meaning and the plugins are checked once these are fixed)",
        problem_list(problems)
    )]
    Parse { file: String, problems: Vec<String> },
    /// Every meaning-level problem found, one per line, each with its key path.
    #[error("{file}: {}", problem_list(problems))]
    Invalid { file: String, problems: Vec<String> },
}

/// `N problem(s):` and one indented line each.
fn problem_list(problems: &[String]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    format!("{} problem(s):\n{}", problems.len(), lines.join("\n"))
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, folders and timeouts of the process.
    pub server: ServerConfig,
    /// Values every route inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// When `/health` reports degraded or unhealthy.
    #[serde(default)]
    pub health: HealthConfig,
    /// Apps (tenants) by name. Each app has its own plugins' key-value
    /// namespace, breakers and routes.
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// The file this config was loaded from (not a key of the file): the
    /// gateway watches it and reloads it when it changes.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Process-level settings. Changing any of these needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the webhook listener binds, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// Address of the admin API; loopback by default so it is not exposed
    /// by accident.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Environment variable holding the admin API's bearer token.
    #[serde(default = "default_admin_token_env")]
    pub admin_token_env: String,
    /// Where the journal, key-value store and compile cache live. Relative
    /// paths are relative to the config file's folder.
    pub data_dir: PathBuf,
    /// Folder holding the `.wasm` plugins routes name. Relative paths are
    /// relative to the config file's folder.
    pub plugins_dir: PathBuf,
    /// How long a client may take to send the request headers.
    #[serde(
        default = "default_header_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub header_timeout: Duration,
    /// How long a client may take to send the whole body.
    #[serde(
        default = "default_body_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub body_timeout: Duration,
    /// How long shutdown waits for in-flight requests before leaving the
    /// rest to the journal.
    #[serde(
        default = "default_shutdown_grace",
        deserialize_with = "crate::config::duration"
    )]
    pub shutdown_grace: Duration,
    /// Memory the journal (sled) may use to cache its pages, e.g. "256MiB".
    /// The gateway's resident memory grows toward it under a large backlog;
    /// reads past it go to the OS page cache and the disk.
    #[serde(default = "default_journal_cache")]
    pub journal_cache: ByteSize,
    /// Inbound connections served at once. Past it, new connections wait
    /// in the kernel's accept queue: every connection holds a file
    /// descriptor and up to a body of memory, and running out of file
    /// descriptors would fail the journal's own file operations. Lowered at
    /// start to what the process's open-file limit allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers) read, e.g. "64KiB".
    /// The headers are journaled with the body, so this and a route's
    /// `max_body` bound what one message stores. From 8 KiB to 1 MiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Memory the request bodies being handled may take at once, e.g.
    /// "256MiB" (each counts its Content-Length, or its route's `max_body`
    /// when it has none). Past it a request is answered 503 with
    /// Retry-After before its body is read: connections that each send a
    /// large body slowly cannot exhaust memory.
    #[serde(default = "default_body_memory")]
    pub body_memory: ByteSize,
}

/// Defaults for every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Largest inbound body accepted (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Retry policy for deliveries.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Circuit breaker per destination.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Limits for every plugin call.
    #[serde(default)]
    pub plugin_limits: LimitsConfig,
    /// Messages accepted but not yet delivered, per route, before new ones get
    /// 503 with Retry-After instead of being taken on.
    #[serde(default = "default_backlog_limit")]
    pub backlog_limit: u64,
    /// How long delivered messages and their attempt logs are kept.
    #[serde(
        default = "default_retention",
        deserialize_with = "crate::config::duration"
    )]
    pub retention: Duration,
    /// Bytes each app's plugins may keep in the key-value store (keys,
    /// values and 64 bytes per entry); `kv-set` past it is refused. The
    /// store shares the journal's disk: one app's plugin must not fill it.
    #[serde(default = "default_kv_quota")]
    pub kv_quota: ByteSize,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            max_body: default_max_body(),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            plugin_limits: LimitsConfig::default(),
            backlog_limit: default_backlog_limit(),
            retention: default_retention(),
            kv_quota: default_kv_quota(),
        }
    }
}

/// One app (tenant).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Routes by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// This app's key-value quota, instead of `defaults.kv_quota`.
    #[serde(default)]
    pub kv_quota: Option<ByteSize>,
}

/// How a route answers its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Journal, acknowledge, deliver later.
    #[default]
    Async,
    /// Forward inline under `timeout` and return the upstream's answer.
    Sync,
}

/// What a plugin failure (trap, limit, guest error) means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnPluginError {
    /// validate: answer 500 to the sender; transform: dead-letter the message.
    #[default]
    Reject,
    /// validate: accept unvalidated; transform: forward the message unchanged.
    PassThrough,
}

/// One route: where webhooks arrive, how they are checked and where they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Inbound path, exact match, e.g. `/hooks/shop/orders`.
    pub path: String,
    /// Accepted inbound methods; others get 405.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Sync routes: how long the caller may wait for the upstream's answer
    /// before the fallback decides.
    #[serde(
        default = "default_sync_timeout",
        deserialize_with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// Status of the acknowledgement on async routes (some senders disable a
    /// webhook on anything but 200).
    #[serde(default = "default_success_status")]
    pub success_status: u16,
    /// Answer 415 unless the body is declared as JSON.
    #[serde(default)]
    pub require_json: bool,
    /// Overrides `defaults.max_body`.
    pub max_body: Option<ByteSize>,
    /// Overrides `defaults.backlog_limit`.
    pub backlog_limit: Option<u64>,
    /// Inbound signature check; none means unsigned webhooks are accepted.
    pub verify: Option<VerifyConfig>,
    /// Inbound deduplication: a repeat of the key within the window gets the
    /// first message's id and no second message.
    pub idempotency: Option<IdempotencyConfig>,
    pub validate: Option<PluginRef>,
    pub transform: Option<PluginRef>,
    pub fallback: Option<PluginRef>,
    #[serde(default)]
    pub on_plugin_error: OnPluginError,
    /// Sync routes: the answer when the fallback itself fails (or there is
    /// none) and nothing was journaled.
    #[serde(default)]
    pub fallback_response: FallbackResponse,
    /// Overrides `defaults.retry` (the whole table).
    pub retry: Option<RetryPolicy>,
    /// Overrides `defaults.breaker` for this route's destinations.
    pub breaker: Option<BreakerConfig>,
    /// One of `destinations` that gets a copy of the message each time one
    /// of its deliveries is dead-lettered after failing (the inbound body,
    /// with `x-hookgate-dead-reason` and `x-hookgate-dead-destination`
    /// headers): an on-call inbox, a chat channel's webhook. The copy is
    /// journaled and retried like any delivery; its own death alerts no one.
    pub dead_letter_alert: Option<String>,
    /// Where messages go, by name, in order: the first is the default a
    /// transform gets when it names none.
    #[serde(default)]
    pub destinations: IndexMap<String, DestinationConfig>,
}

/// Inbound idempotency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Header carrying the sender's key, e.g. `x-github-delivery` or
    /// `webhook-id`.
    pub header: String,
    /// How long a key is remembered.
    #[serde(
        default = "default_idempotency_window",
        deserialize_with = "crate::config::duration"
    )]
    pub window: Duration,
}

/// The safe default answer of a sync route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackResponse {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default = "default_fallback_body")]
    pub body: String,
    #[serde(default = "default_fallback_content_type")]
    pub content_type: String,
}

impl Default for FallbackResponse {
    fn default() -> Self {
        Self {
            status: default_fallback_status(),
            body: default_fallback_body(),
            content_type: default_fallback_content_type(),
        }
    }
}

/// A route's use of one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// File stem in the plugins folder: `json-validator` for
    /// `json-validator.wasm`.
    pub plugin: String,
    /// Values the plugin reads with `host.config`. Numbers and booleans are
    /// passed as their text.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Overrides `defaults.plugin_limits` for this plugin on this route.
    pub limits: Option<LimitsConfig>,
    /// Fresh instance per call or a warm pool; default `auto`.
    pub instances: Option<InstancesConfig>,
    /// The inbound headers this plugin sees, by name (any case); unset:
    /// all of them. A plugin that reads one or two headers need not see the
    /// sender's signature or credentials, and in an interpreted language
    /// every header it is given costs time on every call.
    pub headers: Option<Vec<String>>,
}

/// Whether a plugin's calls reuse instances (see `plugin/pool.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// Warm for components of `AUTO_WARM_MIN_SIZE` and more (the JS and
    /// Python engines), fresh for the small compiled ones.
    #[default]
    Auto,
    /// A new instance for every call.
    Fresh,
    /// Reuse instances within the bounds below.
    Warm,
}

/// A plugin's instance policy as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    #[serde(default)]
    pub mode: InstanceMode,
    /// Calls one warm instance serves before it is replaced.
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// A warm instance unused this long is dropped, e.g. `"60s"`.
    #[serde(default = "default_idle", deserialize_with = "crate::config::duration")]
    pub idle: Duration,
    /// Idle warm instances kept at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            mode: InstanceMode::Auto,
            max_calls: default_max_calls(),
            idle: default_idle(),
            pool_size: default_pool_size(),
        }
    }
}

impl InstancesConfig {
    /// The policy for a component of `size` bytes.
    pub fn policy(&self, size: u64) -> InstancePolicy {
        let warm = match self.mode {
            InstanceMode::Auto => size >= AUTO_WARM_MIN_SIZE,
            InstanceMode::Fresh => false,
            InstanceMode::Warm => true,
        };
        if warm {
            InstancePolicy::Warm(WarmPolicy {
                max_calls: self.max_calls,
                idle: self.idle,
                size: self.pool_size as usize,
            })
        } else {
            InstancePolicy::Fresh
        }
    }
}

/// A plugin config value as written in TOML; plugins always see text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ConfigValue {
    pub fn to_text(&self) -> String {
        match self {
            ConfigValue::Text(s) => s.clone(),
            ConfigValue::Integer(n) => n.to_string(),
            ConfigValue::Float(f) => f.to_string(),
            ConfigValue::Bool(b) => b.to_string(),
        }
    }
}

/// Plugin call limits as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Fuel units per call.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock deadline per call, e.g. `"50ms"`.
    #[serde(
        default = "default_deadline",
        deserialize_with = "crate::config::duration"
    )]
    pub deadline: Duration,
    /// Memory cap per linear memory, e.g. `"64MiB"`.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Calls of this plugin on this route running at once; more wait for a
    /// turn (their deadline starts when they run). A route whose plugin
    /// loops or hogs memory then holds at most this many of the engine's
    /// call slots and this much of the CPU, not every route's.
    #[serde(default = "default_plugin_concurrency")]
    pub concurrency: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            fuel: default_fuel(),
            deadline: default_deadline(),
            memory: default_memory(),
            concurrency: default_plugin_concurrency(),
        }
    }
}

/// Two cores run two calls at a time; 16 leaves room for calls parked at
/// an epoch yield and for I/O-bound host calls, and leaves 176 of the
/// engine's 192 fresh slots to the other routes.
fn default_plugin_concurrency() -> u32 {
    16
}

impl From<LimitsConfig> for PluginLimits {
    fn from(l: LimitsConfig) -> Self {
        PluginLimits {
            fuel: l.fuel,
            deadline: l.deadline,
            memory: l.memory.0,
        }
    }
}

/// One upstream a route delivers to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Absolute http(s) URL.
    pub url: String,
    /// Per-attempt timeout; overrides the retry policy's `attempt_timeout`.
    #[serde(default, deserialize_with = "crate::config::optional_duration")]
    pub timeout: Option<Duration>,
    /// Environment variable holding a Standard Webhooks secret (`whsec_...`);
    /// when set, every request is signed.
    pub secret_env: Option<String>,
    /// An HMAC-SHA256 of the body in a header of the receiver's choosing
    /// (e.g. `X-Platform-Signature: sha256=<hex>`), in addition to or
    /// instead of Standard Webhooks signing.
    pub signature: Option<BodySignatureConfig>,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra headers whose values come from environment variables (for
    /// credentials): header name -> variable name.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Requests in flight to this destination at most. As many attempts
    /// again (at least 64, at most 128) may wait for a slot; past that they
    /// wait parked in the journal until it has room.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Whether a transform may append a path to `url`.
    #[serde(default)]
    pub allow_path: bool,
}

impl Config {
    /// Reads, parses and validates `path`; relative folders are resolved
    /// against the file's own folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            file: file.clone(),
            cause,
        })?;
        let mut config = Config::parse(&text).map_err(|problems| ConfigError::Parse {
            file: file.clone(),
            problems,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.server.data_dir = base.join(&config.server.data_dir);
        config.server.plugins_dir = base.join(&config.server.plugins_dir);
        config.source = Some(path.to_path_buf());
        let problems = config.validate(&|name| std::env::var(name).ok());
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { file, problems });
        }
        Ok(config)
    }

    /// Parses TOML text without validating meaning: every problem of
    /// shape (syntax, unknown keys, values of the wrong type), one line
    /// each, with its key path (see `parse.rs`).
    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse::parse(text)
    }

    /// The file this config was loaded from, for messages that name it.
    pub fn file_name(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "the config".into(), |p| p.display().to_string())
    }

    /// Every route, with its app's name, in a stable order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str, &RouteConfig)> {
        self.apps.iter().flat_map(|(app, cfg)| {
            cfg.routes
                .iter()
                .map(move |(name, route)| (app.as_str(), name.as_str(), route))
        })
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:8081".into()
}
fn default_admin_token_env() -> String {
    "HOOKGATE_ADMIN_TOKEN".into()
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
/// sled's own default is 1 GiB, more than a gateway in a small container
/// should take for a cache; a backlog of 100k 1 KB messages fits in this.
fn default_journal_cache() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_body_memory() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_kv_quota() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_backlog_limit() -> u64 {
    100_000
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn default_sync_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_success_status() -> u16 {
    202
}
fn default_idempotency_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_fallback_status() -> u16 {
    503
}
fn default_fallback_body() -> String {
    r#"{"error":"upstream unavailable"}"#.into()
}
fn default_fallback_content_type() -> String {
    "application/json".into()
}
fn default_fuel() -> u64 {
    PluginLimits::default().fuel
}
fn default_deadline() -> Duration {
    PluginLimits::default().deadline
}
fn default_memory() -> ByteSize {
    ByteSize(PluginLimits::default().memory)
}
fn default_max_calls() -> u32 {
    WarmPolicy::default().max_calls
}
fn default_idle() -> Duration {
    WarmPolicy::default().idle
}
fn default_pool_size() -> u32 {
    WarmPolicy::default().size as u32
}
fn default_concurrency() -> usize {
    16
}
