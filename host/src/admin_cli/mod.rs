//! `hookgate admin ...`: the admin API from a terminal. Each subcommand is
//! one HTTP call to the admin listener; the answer is printed as a table
//! (default) or as the API's JSON, unchanged (`--json`), so scripts and
//! people read the same data.

mod tables;

use std::time::{Duration, UNIX_EPOCH};

use clap::{ArgGroup, Args, Subcommand};
use comfy_table::{Table, presets};
use reqwest::Method;
use serde_json::Value;

/// Where the admin API is and how to authenticate.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Base URL of the admin listener.
    #[arg(
        long,
        global = true,
        env = "HOOKGATE_ADMIN_ADDR",
        default_value = "http://127.0.0.1:8081"
    )]
    pub addr: String,
    /// Bearer token (the value of the gateway's `admin_token_env` variable).
    #[arg(
        long,
        global = true,
        env = "HOOKGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub call: AdminCall,
}

/// Filters of list and bulk calls.
#[derive(Args, Debug, Default, Clone)]
pub struct Filter {
    /// App name, as in `[apps.<app>]`.
    #[arg(long)]
    pub app: Option<String>,
    /// Route name (`leads`), or app and route as `admin message` prints
    /// them (`crm/leads`).
    #[arg(long)]
    pub route: Option<String>,
    /// Destination name (dead letters only).
    #[arg(long)]
    pub destination: Option<String>,
}

/// The admin calls.
#[derive(Subcommand, Debug)]
pub enum AdminCall {
    /// Gateway health: verdict, reasons, rates, queue, breakers, plugins.
    Health,
    /// Queue depth, due and delayed tasks, peak, dead letters.
    Queue,
    /// List messages, oldest first.
    Messages {
        #[command(flatten)]
        filter: Filter,
        /// pending, delivered, filtered, dead or handled.
        #[arg(long)]
        status: Option<String>,
        /// Cursor: the `next` of the previous page.
        #[arg(long)]
        after: Option<String>,
        /// Page size (default 50, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One message with its deliveries and every attempt.
    Message { id: String },
    /// The dead-letter queue.
    #[command(subcommand)]
    Dead(DeadCall),
    /// Circuit breakers of every destination.
    Breakers,
    /// Close a destination's breaker now.
    ResetBreaker {
        app: String,
        route: String,
        destination: String,
    },
    /// Re-enable a destination disabled after a 410.
    Enable {
        app: String,
        route: String,
        destination: String,
    },
    /// Plugin versions serving and load errors.
    Plugins,
}

/// Dead-letter calls.
#[derive(Subcommand, Debug)]
pub enum DeadCall {
    /// List dead letters.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Cursor: the `next` of the previous page.
        #[arg(long)]
        after: Option<String>,
        /// Page size (default 50, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Replay one message by id, or every match of the filter.
    #[command(group = whole_queue_or_some())]
    Replay {
        /// The dead message's id.
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
        /// With no id and no filter: replay the whole queue.
        #[arg(long)]
        all: bool,
    },
    /// Purge one message by id, or every match of the filter.
    #[command(group = whole_queue_or_some())]
    Purge {
        /// The dead message's id.
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
        /// With no id and no filter: purge the whole queue.
        #[arg(long)]
        all: bool,
    },
}

/// Bulk calls name what they act on: an id, a filter, or `--all`. Emptying
/// the whole queue by a forgotten argument is not something to make easy.
fn whole_queue_or_some() -> ArgGroup {
    ArgGroup::new("which")
        .args(["id", "app", "route", "destination", "all"])
        .multiple(true)
        .required(true)
}

/// Why an admin call printed nothing useful.
#[derive(Debug, thiserror::Error)]
pub enum AdminCliError {
    /// Exit 2: the command line is incomplete.
    #[error("no admin token: pass --token or set HOOKGATE_ADMIN_TOKEN")]
    NoToken,
    #[error("cannot reach the admin API at {addr}: {cause}")]
    Unreachable { addr: String, cause: String },
    /// The API refused the call; `reason` is its `error` field.
    #[error("{status}: {reason}")]
    Refused { status: u16, reason: String },
}

type Request = (Method, String, Vec<(&'static str, String)>);

fn filter_query(filter: &Filter) -> Vec<(&'static str, String)> {
    [
        ("app", &filter.app),
        ("route", &filter.route),
        ("destination", &filter.destination),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

fn page_query(
    filter: &Filter,
    after: &Option<String>,
    limit: Option<usize>,
) -> Vec<(&'static str, String)> {
    let mut q = filter_query(filter);
    q.extend(after.clone().map(|a| ("after", a)));
    q.extend(limit.map(|l| ("limit", l.to_string())));
    q
}

fn bulk(verb: &str, method: Method, id: &Option<String>, filter: &Filter, all: bool) -> Request {
    match id {
        Some(id) if verb == "replay" => (method, format!("dead-letters/{id}/replay"), vec![]),
        Some(id) => (method, format!("dead-letters/{id}"), vec![]),
        None => {
            let mut q = filter_query(filter);
            if all {
                q.push(("all", "true".into()));
            }
            let path = if verb == "replay" {
                "dead-letters/replay"
            } else {
                "dead-letters"
            };
            (method, path.into(), q)
        }
    }
}

impl AdminCall {
    /// The HTTP call: method, path under the listener, query.
    fn request(&self) -> Request {
        use AdminCall::*;
        match self {
            Health => (Method::GET, "/health".into(), vec![]),
            Queue => (Method::GET, "/admin/queue".into(), vec![]),
            Messages {
                filter,
                status,
                after,
                limit,
            } => {
                let mut q = page_query(filter, after, *limit);
                q.extend(status.clone().map(|s| ("status", s)));
                (Method::GET, "/admin/messages".into(), q)
            }
            Message { id } => (Method::GET, format!("/admin/messages/{id}"), vec![]),
            Dead(DeadCall::List {
                filter,
                after,
                limit,
            }) => (
                Method::GET,
                "/admin/dead-letters".into(),
                page_query(filter, after, *limit),
            ),
            Dead(DeadCall::Replay { id, filter, all }) => {
                admin_path(bulk("replay", Method::POST, id, filter, *all))
            }
            Dead(DeadCall::Purge { id, filter, all }) => {
                admin_path(bulk("purge", Method::DELETE, id, filter, *all))
            }
            Breakers => (Method::GET, "/admin/breakers".into(), vec![]),
            ResetBreaker {
                app,
                route,
                destination,
            } => (
                Method::POST,
                format!("/admin/breakers/{app}/{route}/{destination}/reset"),
                vec![],
            ),
            Enable {
                app,
                route,
                destination,
            } => (
                Method::POST,
                format!("/admin/destinations/{app}/{route}/{destination}/enable"),
                vec![],
            ),
            Plugins => (Method::GET, "/admin/plugins".into(), vec![]),
        }
    }
}

fn admin_path((method, path, query): Request) -> Request {
    (method, format!("/admin/{path}"), query)
}

/// Makes the call and returns what to print.
pub async fn run(args: &AdminArgs) -> Result<String, AdminCliError> {
    let is_health = matches!(args.call, AdminCall::Health);
    let token = args.token.as_deref().filter(|t| !t.is_empty());
    // `/health` needs no token; every other call does.
    if token.is_none() && !is_health {
        return Err(AdminCliError::NoToken);
    }
    let (method, path, query) = args.call.request();
    let base = args.addr.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let unreachable = |cause: String| AdminCliError::Unreachable {
        addr: base.clone(),
        cause,
    };
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .query(&query)
        .timeout(Duration::from_secs(30));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| unreachable(format!("answer is not JSON: {e}")))?;
    // `/health` answers 503 with its report when unhealthy: still a report.
    let answered = (200..300).contains(&status) || (is_health && status == 503);
    if !answered {
        let reason = body["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        return Err(AdminCliError::Refused { status, reason });
    }
    if args.json {
        return Ok(serde_json::to_string_pretty(&body).unwrap_or_default());
    }
    Ok(tables::render(&args.call, &body))
}

/// Milliseconds since the epoch as RFC 3339, `-` when absent.
pub(crate) fn time(ms: &Value) -> String {
    ms.as_u64().map_or_else(
        || "-".into(),
        |ms| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    )
}

/// A table without borders, in the style of `kubectl get`.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec());
    table
}
