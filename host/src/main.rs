//! The `hookgate` command: parses the command line, starts tracing, calls
//! the library, and picks the global allocator. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hookgate::admin_cli::{self, AdminArgs, AdminCliError};
use hookgate::authoring::{self, FailureSpec, RunRequest};
use hookgate::config::{Config, parse_bytes, parse_duration, plugin_memory};
use hookgate::plugin::{PluginLimits, Role};
use hookgate::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// The gateway allocates and frees small buffers per request and per
/// delivery from several threads; glibc's allocator spent 13-17% of the
/// gateway's CPU in malloc/free under load. jemalloc raised the ingest
/// maxima by 18-46% and kept glibc's ack tail; mimalloc raised them as much
/// but its ack p99 at a fixed rate was half as high again (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hookgate",
    version,
    about = "A webhook gateway with WebAssembly plugins"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The gateway's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and every plugin it names, without serving.
    Check {
        /// The gateway's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Call a running gateway's admin API.
    Admin(AdminArgs),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make one plugin call as the gateway would and print the decision as JSON.
    Run(RunArgs),
    /// Print a component's roles, WIT version, size and content hash.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// Which role to call.
    #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Role>()))]
    role: Role,
    /// File holding the inbound request body; `-` reads it from stdin.
    #[arg(long)]
    input: PathBuf,
    /// A plugin config value, KEY=VALUE (repeatable).
    #[arg(long = "config", value_parser = key_value)]
    config: Vec<(String, String)>,
    /// An inbound header, NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Seed the app's key-value store, KEY=VALUE (repeatable).
    #[arg(long = "kv", value_parser = key_value)]
    kv: Vec<(String, String)>,
    /// Fuel budget for the call.
    #[arg(long, default_value_t = PluginLimits::default().fuel)]
    fuel: u64,
    /// Wall-clock deadline, e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    deadline: std::time::Duration,
    /// Memory cap per linear memory, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = |text: &str| parse_bytes(text).and_then(plugin_memory))]
    memory: u64,
    /// For --role fallback: timeout, breaker-open, disabled, status:CODE, network:TEXT.
    #[arg(long, default_value = "timeout")]
    failure: String,
    /// For --role fallback: attempts made so far.
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// For --role fallback: the retry policy has no attempt left.
    #[arg(long)]
    exhausted: bool,
    /// For --role fallback: a caller is waiting (sync route).
    #[arg(long)]
    sync: bool,
    /// For --role success: file holding the upstream's 200 answer body
    /// (default: empty).
    #[arg(long)]
    response: Option<PathBuf>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Exit codes: 0 success, 1 the plugin failed (trap, limit, guest error),
/// 2 bad input (arguments, files, a plugin that does not load).
const EXIT_PLUGIN_FAILED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

/// How long the process waits, once its command is done, for blocking
/// work still running (a journal write a full disk holds up) before it
/// exits anyway. What was acknowledged is on disk already.
const EXIT_WAIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Serve { .. } => "info",
        // A plugin author wants every line the plugin logs or prints.
        Command::Plugin(PluginCommand::Run(_)) => "warn,hookgate::plugin::host=trace",
        _ => "warn",
    };
    telemetry::init(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Check { config } => check(config).await,
            Command::Plugin(PluginCommand::Run(args)) => plugin_run(args).await,
            Command::Plugin(PluginCommand::Inspect { file, json }) => {
                plugin_inspect(file, json).await
            }
            Command::Admin(args) => admin(args).await,
        }
    });
    // Dropping the runtime would wait for every blocking task, forever if
    // one is stuck in the journal.
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}

/// Exit codes of `hookgate admin`: 0 done, 1 the call failed or was
/// refused, 2 bad input (no token).
async fn admin(args: AdminArgs) -> ExitCode {
    match admin_cli::run(&args).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(err @ AdminCliError::NoToken) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_PLUGIN_FAILED)
        }
    }
}

async fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", config.server.listen);
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    ignore_file_size_signal();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match hookgate::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            err @ (hookgate::server::ServeError::JournalStalled(_)
            | hookgate::server::ServeError::JournalFailed(_)),
        ) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

async fn check(path: PathBuf) -> ExitCode {
    let checked = match Config::load(&path) {
        Ok(config) => hookgate::server::check(&config)
            .await
            .map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match checked {
        Ok(routes) => {
            println!("{}: ok ({routes} routes)", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// A file-size limit (`ulimit -f`) reached by the journal is a write error
/// the gateway reports and stops on, as a full disk is, rather than a
/// SIGXFSZ that kills it with requests in flight: the signal's default
/// action is replaced by a handler that does nothing (tokio keeps it for
/// the life of the process).
fn ignore_file_size_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    if let Err(err) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
        tracing::warn!(cause = %err, "cannot catch SIGXFSZ: a file-size limit will kill the gateway");
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    token.cancel();
}

async fn plugin_run(args: RunArgs) -> ExitCode {
    let req = RunRequest {
        file: args.file,
        role: args.role,
        input: args.input,
        config: args.config,
        headers: args.headers,
        kv: args.kv,
        limits: PluginLimits {
            fuel: args.fuel,
            deadline: args.deadline,
            memory: args.memory,
        },
        failure: FailureSpec {
            kind: args.failure,
            attempts: args.attempts,
            exhausted: args.exhausted,
            caller_waiting: args.sync,
        },
        response: args.response,
    };
    match authoring::run(&req).await {
        Ok(out) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&out.json).unwrap_or_default()
            );
            match out.error {
                None => ExitCode::SUCCESS,
                Some(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(EXIT_PLUGIN_FAILED)
                }
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

async fn plugin_inspect(file: PathBuf, json: bool) -> ExitCode {
    match authoring::inspect(&file).await {
        Ok(info) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&*info).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(info) => {
            let roles: Vec<_> = info.roles.iter().map(|r| r.as_str()).collect();
            println!("file:        {}", info.path.display());
            println!("roles:       {}", roles.join(", "));
            println!("wit:         hookgate:plugin@{}", info.wit_version);
            println!("size:        {} bytes", info.size);
            println!("sha256:      {}", info.hash);
            println!("compiled in: {:.1?}", info.load_time);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
