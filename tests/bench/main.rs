//! `cargo bench -p hookgate --bench gateway`: the gateway benchmark.
//!
//! Builds in release (cargo's bench profile), starts each server under test
//! as its own process (the `hookgate` binary on a generated config, or raw
//! hyper for the baseline), drives it with an open-loop load generator,
//! counts every delivery at a sink, and prints one table (written as
//! markdown too) where each figure sits next to a baseline measured in the
//! same run. `cargo test -p hookgate --bench gateway` (no `--bench` flag)
//! runs the same scenarios for a few seconds against debug builds: CI's
//! smoke test of the harness, which fails on any lost or failed message.
//!
//! - `load`: open-loop fixed-rate generator, hdrhistogram, find-max search
//! - `sink`: the destination stand-in, counting deliveries by sequence number
//! - `webhook`: signed 1 KB / 64 KB JSON bodies carrying their send time
//! - `process`: the servers under test, CPU and peak RSS from `/proc`
//! - `config`: generated gateway configs
//! - `scenarios`: settings, one measured run, report rows; the scenarios
//!   themselves in `capacity`, `latency` and `outage`
//! - `report`: the table and the goals

mod capacity;
mod config;
mod journal;
mod latency;
mod load;
mod outage;
mod process;
mod report;
mod scenarios;
mod sink;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::config::Plugins;
use crate::report::Goal;
use crate::scenarios::{Bench, Settings};
use crate::webhook::Size;

/// Scenario groups, in the order they run.
const SCENARIOS: [&str; 8] = [
    "journal",
    "capacity",
    "latency",
    "big",
    "sync",
    "isolation",
    "drain",
    "languages",
];

#[derive(Parser)]
#[command(about = "hookgate's gateway benchmark (cargo bench -p hookgate --bench gateway)")]
struct Cli {
    /// Set by `cargo bench`: the full run. Without it (`cargo test`), the smoke run.
    #[arg(long, hide = true)]
    bench: bool,
    /// The short run even under `cargo bench`.
    #[arg(long)]
    smoke: bool,
    /// Run only these scenario groups (journal, capacity, latency, big,
    /// sync, isolation, drain, languages); repeatable.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Vec<String>,
    /// Fixed rate (messages/s) of the 1 KB latency, isolation and drain
    /// runs; default: half the highest rate the validate + transform route
    /// sustains (the lower of its ingest and end-to-end maxima).
    #[arg(long)]
    rate: Option<f64>,
    /// Length of each fixed-rate run, in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Load-generator connections, i.e. requests in flight at most.
    #[arg(long)]
    connections: Option<usize>,
    /// Where to write the markdown table; default `<target>/bench/gateway.md`.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(process::RAW_SERVER) {
        process::raw_server_main();
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let mut settings = if cli.bench && !cli.smoke {
        Settings::full()
    } else {
        Settings::smoke()
    };
    settings.rate = cli.rate.or(settings.rate);
    settings.connections = cli.connections.unwrap_or(settings.connections);
    if let Some(secs) = cli.duration {
        settings.run = Duration::from_secs_f64(secs);
    }
    let wanted = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    // The load generator, the sinks and the pacer share this runtime; the
    // servers under test are other processes.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let load_before = load_average();
    let bench = runtime.block_on(async {
        webhook::epoch();
        let clock = Instant::now();
        let mut bench = Bench::new(settings);
        if wanted("journal") {
            bench.journal_ceiling(clock).await;
        }
        if wanted("capacity") {
            bench.raw_capacity(clock).await;
            bench.gateway_capacity(clock, Plugins::None).await;
            bench
                .gateway_capacity(clock, Plugins::ValidateTransform)
                .await;
        }
        if wanted("latency") {
            bench.fixed_rate(clock, Size::OneK).await;
        }
        if wanted("big") {
            bench.fixed_rate(clock, Size::SixtyFourK).await;
        }
        if wanted("sync") {
            bench.sync_versus_direct(clock).await;
        }
        if wanted("isolation") {
            bench.isolation(clock).await;
        }
        if wanted("drain") {
            bench.drain(clock).await;
        }
        if wanted("languages") {
            bench.language_capacity(clock).await;
        }
        bench.say("done", clock);
        bench
    });
    let load = format!(
        "load average {load_before} before, {} after",
        load_average()
    );
    finish(bench, cli.out, &load)
}

/// The 1-minute load average: on a shared machine, how much else ran.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Adds the goals, prints the table, writes the markdown; fails on problems.
fn finish(mut bench: Bench, out: Option<PathBuf>, load: &str) -> ExitCode {
    bench.report.goals = goals(&bench);
    let smoke = bench.settings.smoke;
    let mode = if smoke {
        "smoke run (debug build, a few seconds)"
    } else {
        "full run (release)"
    };
    let header = format!(
        "hookgate gateway benchmark, {mode}, {}\n{}, {load}\n",
        now_utc(),
        machine()
    );
    println!("\n{header}\n{}", bench.report.text());
    let path = out.unwrap_or_else(default_out);
    let markdown = format!("<!-- {header} -->\n\n{}", bench.report.markdown());
    match path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, markdown))
    {
        Ok(()) => println!("markdown written to {}", path.display()),
        Err(err) => eprintln!("cannot write {}: {err}", path.display()),
    }
    if bench.problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("\nproblems:");
    for problem in &bench.problems {
        eprintln!("  - {problem}");
    }
    ExitCode::FAILURE
}

fn goals(bench: &Bench) -> Vec<Goal> {
    let ratio = match (bench.ingest_max, bench.raw_max) {
        (Some(ingest), Some(raw)) if raw > 0.0 => Some(ingest / raw),
        _ => None,
    };
    // A smoke run's rates are far below the goals' and its builds are
    // debug: its figures are shown, never judged.
    let smoke = bench.settings.smoke;
    let goal = |goal: &str, measured: Option<String>, met: Option<bool>| Goal {
        goal: goal.into(),
        measured: measured.unwrap_or_else(|| "—".into()),
        met: met.filter(|_| !smoke),
    };
    vec![
        goal(
            "async durable ingest, validate + transform, >= 40% of raw hyper msg/s",
            ratio.map(|r| format!("{:.0}%", r * 100.0)),
            ratio.map(|r| r >= 0.40),
        ),
        goal(
            "p99 ack <= 5 ms at half the sustained maximum (validate + transform)",
            bench
                .ack_p99_at_half
                .map(|p| format!("{p:.2} ms at {:.0}/s", bench.latency_rate())),
            bench.ack_p99_at_half.map(|p| p <= 5.0),
        ),
        goal(
            "end to end >= 10k msg/s (validate + transform)",
            bench.e2e_max.map(|t| format!("{t:.0} msg/s")),
            bench.e2e_max.map(|t| t >= 10_000.0),
        ),
        goal(
            "sync route adds <= 1 ms p50 over calling the upstream directly",
            bench.sync_added_p50.map(|d| format!("{d:+.2} ms")),
            bench.sync_added_p50.map(|d| d <= 1.0),
        ),
        goal(
            "a dead destination raises a healthy one's p99 by <= 10%",
            bench.isolation_ratio.map(|r| format!("{r:.2}×")),
            bench.isolation_ratio.map(|r| r <= 1.10),
        ),
        goal(
            "ingest with a JavaScript validator (warm) >= 50% of the Rust validator's",
            bench.js_versus_rust.map(|r| format!("{:.0}%", r * 100.0)),
            bench.js_versus_rust.map(|r| r >= 0.50),
        ),
    ]
}

/// `<target>/bench/gateway.md`, `<target>` found from this binary's path
/// (`<target>/<profile>/deps/gateway-<hash>`).
fn default_out() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_default();
    target.join("bench").join("gateway.md")
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// CPU model and core count, from `/proc/cpuinfo`.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}
