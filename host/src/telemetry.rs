//! Logging setup: `tracing` to stderr, human-readable on a terminal or JSON
//! lines for log shippers. `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `default_level` applies when `RUST_LOG`
/// is unset (e.g. `"info"` or `"hookgate=debug,info"`).
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests starting several gateways) is harmless: keep the first.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
