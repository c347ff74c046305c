//! Tools for plugin authors: run one plugin call from the command line and
//! inspect a component, without a gateway or a config file.
//!
//! `hookgate plugin run` builds the webhook a route would hand the plugin
//! from a payload file and flags, makes exactly the call the gateway would
//! make (same engine, same limits, same host imports; the key-value store is a
//! temporary one), and prints the decision as JSON with its cost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::plugin::{
    Decision, Failure, FailureKind, NextStep, Outgoing, Plugin, PluginEngine, PluginError,
    PluginLimits, PluginSetup, PluginVersionInfo, Role, UpstreamResponse, Verdict, Webhook,
};
use crate::store::{KeyValue, SledStore, StoreError};

/// The app name calls from the CLI run under (and the key-value namespace
/// that `--kv` seeds).
pub const CLI_APP: &str = "cli";

/// One `hookgate plugin run` invocation.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub file: PathBuf,
    pub role: Role,
    /// The inbound body.
    pub input: PathBuf,
    pub config: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// Key-value entries to seed the app's store with before the call.
    pub kv: Vec<(String, String)>,
    pub limits: PluginLimits,
    /// For `fallback`: what went wrong.
    pub failure: FailureSpec,
    /// For `success`: the file holding the upstream's 200 answer body.
    pub response: Option<PathBuf>,
}

/// Why `plugin run` could not produce a decision.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad input to the command itself (file, flag).
    #[error("{0}")]
    Usage(String),
    /// The plugin failed to load or the call failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("key-value store: {0}")]
    Store(#[from] StoreError),
}

/// What `plugin run` prints: the outcome as JSON, whatever it was.
pub struct RunOutput {
    pub json: Value,
    /// `Some` when the call failed (trap, limit, guest error).
    pub error: Option<PluginError>,
}

/// A delivery failure described on the command line, e.g. `timeout`,
/// `breaker-open`, `disabled`, `status:503`, `network:connection refused`.
#[derive(Debug, Clone)]
pub struct FailureSpec {
    pub kind: String,
    pub attempts: u32,
    pub exhausted: bool,
    pub caller_waiting: bool,
}

impl FailureSpec {
    fn to_failure(&self) -> Result<Failure, RunError> {
        let (name, arg) = self.kind.split_once(':').unwrap_or((&self.kind, ""));
        let kind = match name {
            "timeout" => FailureKind::Timeout,
            "breaker-open" => FailureKind::BreakerOpen,
            "disabled" => FailureKind::Disabled,
            "network" => FailureKind::Network(arg.to_string()),
            "status" => {
                let status = arg.parse::<u16>().map_err(|_| {
                    RunError::Usage(format!(
                        "--failure status:{arg}: expected an HTTP status code"
                    ))
                })?;
                FailureKind::Status(UpstreamResponse {
                    status,
                    headers: Vec::new(),
                    body: Vec::new(),
                })
            }
            other => {
                return Err(RunError::Usage(format!(
                    "--failure {other:?}: expected timeout, breaker-open, disabled, status:CODE or network:TEXT"
                )));
            }
        };
        Ok(Failure {
            destination: "default".into(),
            kind,
            attempts: self.attempts,
            exhausted: self.exhausted,
            caller_waiting: self.caller_waiting,
        })
    }
}

/// Loads the plugin and makes one call as the gateway would.
pub async fn run(req: &RunRequest) -> Result<RunOutput, RunError> {
    let engine =
        PluginEngine::new().map_err(|e| RunError::Usage(format!("cannot start wasmtime: {e}")))?;
    let plugin = Plugin::load(&engine, &req.file, None).await?;
    let body = read_input(&req.input, "input")?;
    let kv = SledStore::temporary()?;
    for (key, value) in &req.kv {
        kv.set(CLI_APP, key, value.as_bytes(), None, u64::MAX)?;
    }
    let setup = Arc::new(PluginSetup {
        app: CLI_APP.into(),
        route: "cli".into(),
        config: req.config.iter().cloned().collect(),
        limits: req.limits,
        kv: Arc::new(kv),
        kv_quota: u64::MAX,
        answer_cap: u64::MAX,
        instances: Default::default(),
        headers: None,
        turns: PluginSetup::turns(1),
    });
    let hook = cli_webhook(req, body);
    let started = Instant::now();
    let result = match req.role {
        Role::Validate => plugin
            .validate(&setup, &hook)
            .await
            .map(|r| (verdict_json(&r.value), r.fuel_used)),
        Role::Transform => plugin.transform(&setup, &hook).await.map(|r| {
            (
                Value::Array(r.value.iter().map(outgoing_json).collect()),
                r.fuel_used,
            )
        }),
        Role::Fallback => {
            let failure = req.failure.to_failure()?;
            plugin
                .fallback(&setup, &hook, &failure)
                .await
                .map(|r| (decision_json(&r.value), r.fuel_used))
        }
        Role::Success => {
            let response = UpstreamResponse {
                status: 200,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: match &req.response {
                    Some(path) => read_input(path, "response")?,
                    None => Vec::new(),
                },
            };
            plugin
                .success(&setup, &hook, &response)
                .await
                .map(|r| (Value::Null, r.fuel_used))
        }
    };
    let wall = started.elapsed();
    let mut out = json!({
        "plugin": plugin.info().name,
        "version": plugin.info().short_hash(),
        "role": req.role.as_str(),
        "wall_time_us": wall.as_micros() as u64,
    });
    let error = match result {
        Ok((decision, fuel)) => {
            out["outcome"] = json!("ok");
            out["decision"] = decision;
            out["fuel_used"] = json!(fuel);
            None
        }
        Err(err) => {
            out["outcome"] = json!(err.outcome());
            out["error"] = json!(err.to_string());
            Some(err)
        }
    };
    Ok(RunOutput { json: out, error })
}

/// The file at `path`, or stdin for `-`.
fn read_input(path: &Path, what: &str) -> Result<Vec<u8>, RunError> {
    let read = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| RunError::Usage(format!("{}: cannot read {what}: {e}", path.display())))
}

fn cli_webhook(req: &RunRequest, body: Vec<u8>) -> Webhook {
    let mut headers = vec![("content-type".to_string(), b"application/json".to_vec())];
    headers.extend(
        req.headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
    );
    Webhook {
        id: format!("msg_cli_{}", now_ms()),
        app: CLI_APP.into(),
        route: "cli".into(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers,
        body,
        received_at: now_ms(),
        attempt: if req.role == Role::Validate { 0 } else { 1 },
    }
}

/// Loads a component and reports what it is, for `hookgate plugin inspect`.
pub async fn inspect(file: &Path) -> Result<Arc<PluginVersionInfo>, PluginError> {
    let engine = PluginEngine::new().map_err(|e| PluginError::Host(e.to_string()))?;
    let plugin = Plugin::load(&engine, file, None).await?;
    Ok(plugin.info().clone())
}

/// Bytes as JSON: text when it is UTF-8, base64 otherwise.
fn bytes_json(key: &str, bytes: &[u8]) -> (String, Value) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (key.to_string(), json!(text)),
        Err(_) => (
            format!("{key}_base64"),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn headers_json(headers: &[(String, Vec<u8>)]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
            .collect(),
    )
}

pub fn verdict_json(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Accept => json!({"verdict": "accept"}),
        Verdict::Reject(r) => json!({"verdict": "reject", "status": r.status, "reason": r.reason}),
    }
}

pub fn outgoing_json(out: &Outgoing) -> Value {
    let mut v = json!({
        "destination": out.destination,
        "method": out.method,
        "path": out.path,
        "query": out.query,
        "headers": out.headers.as_deref().map(headers_json),
        "deliver_at": out.deliver_at,
        "max_attempts": out.max_attempts,
    });
    if let Some(body) = &out.body {
        let (k, b) = bytes_json("body", body);
        v[k] = b;
    }
    v
}

pub fn decision_json(decision: &Decision) -> Value {
    let next = match &decision.next {
        NextStep::Done => json!({"step": "done"}),
        NextStep::RetryAfter(ms) => json!({"step": "retry-after", "delay_ms": ms}),
        NextStep::Reroute(dest) => json!({"step": "reroute", "destination": dest}),
        NextStep::DeadLetter(reason) => json!({"step": "dead-letter", "reason": reason}),
    };
    let respond = decision.respond.as_ref().map(|r| {
        let mut v = json!({"status": r.status, "headers": headers_json(&r.headers)});
        let (k, b) = bytes_json("body", &r.body);
        v[k] = b;
        v
    });
    json!({"respond": respond, "next": next})
}
