//! The scenarios, in the order they run. Each adds rows to the report and
//! keeps the figures later scenarios and the goals compare with. Every
//! gateway scenario starts a fresh gateway (empty journal) and fresh sinks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{RouteSpec, gateway_config};
use crate::load::{Outcome, Shot, Target, find_max, fire};
use crate::process::Server;
use crate::report::{Report, Row};
use crate::sink::{Sink, Window};
use crate::webhook::{Size, Webhooks};

/// Durations and rates of a run.
pub struct Settings {
    pub smoke: bool,
    /// Length of one find-max probe.
    pub probe: Duration,
    /// Bisection steps after the doubling phase of a find-max search.
    pub refine: usize,
    /// First rate a find-max search tries, and the highest it may try.
    pub start_rate: f64,
    pub ceiling: f64,
    /// Length of a fixed-rate run.
    pub run: Duration,
    /// Fixed rate for the latency runs; `None`: half the highest rate the
    /// validate + transform route sustains (the lower of its ingest and
    /// end-to-end maxima found earlier in the run).
    pub rate: Option<f64>,
    /// Rate of the 64 KB runs and of the sync-versus-direct runs.
    pub big_rate: f64,
    pub sync_rate: f64,
    /// Messages queued while the sink is down, for the drain scenario.
    pub backlog: u64,
    /// Load-generator connections (requests in flight at most).
    pub connections: usize,
    /// How long to wait for deliveries after the load stops.
    pub patience: Duration,
}

impl Settings {
    /// A few seconds against debug builds, for CI: every scenario runs, at
    /// rates any build sustains, and lost or failed messages fail the run.
    pub fn smoke() -> Settings {
        Settings {
            smoke: true,
            probe: Duration::from_millis(400),
            refine: 0,
            start_rate: 100.0,
            ceiling: 200.0,
            run: Duration::from_millis(800),
            rate: Some(100.0),
            big_rate: 20.0,
            sync_rate: 50.0,
            backlog: 100,
            connections: 16,
            patience: Duration::from_secs(20),
        }
    }

    /// The manual run in BENCHMARKS.md.
    pub fn full() -> Settings {
        Settings {
            smoke: false,
            probe: Duration::from_secs(3),
            refine: 4,
            start_rate: 1000.0,
            ceiling: 128_000.0,
            run: Duration::from_secs(10),
            rate: None,
            big_rate: 200.0,
            sync_rate: 1000.0,
            backlog: 20_000,
            connections: 256,
            patience: Duration::from_secs(60),
        }
    }

    /// A fixed-rate run of the usual length.
    pub fn shot_at(&self, rate: f64) -> Shot {
        self.shot(rate, self.run)
    }

    fn shot(&self, rate: f64, duration: Duration) -> Shot {
        Shot {
            rate,
            duration,
            connections: self.connections,
        }
    }
}

/// One fixed-rate run against one server, deliveries awaited.
pub struct Run {
    pub outcome: Outcome,
    /// What the sink saw (gateway runs only).
    pub window: Option<Window>,
    pub missing: usize,
    /// CPU while sending, and while sending and delivering.
    pub cpu: Option<f64>,
    pub cpu_through_delivery: Option<f64>,
    pub rss: Option<u64>,
    /// Disk bytes written per acknowledged message, sending and delivering.
    pub disk_per_message: Option<f64>,
}

impl Run {
    /// Deliveries per second, from the first intended send to the last
    /// delivery.
    pub fn delivery_rate(&self) -> f64 {
        let Some(last) = self.window.as_ref().and_then(|w| w.last) else {
            return 0.0;
        };
        let secs = last
            .saturating_duration_since(self.outcome.started)
            .as_secs_f64();
        let delivered = self.window.as_ref().map_or(0, |w| w.seen.len());
        if secs > 0.0 {
            delivered as f64 / secs
        } else {
            0.0
        }
    }

    fn notes(&self) -> String {
        let mut notes: Vec<String> = self
            .outcome
            .failures
            .iter()
            .map(|(cause, n)| format!("{n}× {cause}"))
            .collect();
        if let Some(window) = &self.window {
            notes.push(format!("{} missing", self.missing));
            let dup = window.duplicates();
            if dup > 0 {
                notes.push(format!("{dup} redelivered"));
            }
        }
        notes.join(", ")
    }
}

/// Runs `shot` against `target` on `server`; with a sink, waits until every
/// acknowledged message has arrived there (or `patience` runs out).
pub async fn run_at(
    server: Option<&Server>,
    target: &Target,
    sink: Option<&Sink>,
    shot: Shot,
    patience: Duration,
) -> Run {
    if let Some(sink) = sink {
        sink.take();
    }
    let meter = server.map(Server::meter);
    let outcome = fire(target, shot).await;
    let cpu = meter.as_ref().and_then(|m| m.cpu_percent());
    let mut window = None;
    let mut missing = 0;
    if let Some(sink) = sink {
        sink.wait_for(&outcome.acked, patience).await;
        let seen = sink.take();
        missing = seen.missing(&outcome.acked);
        window = Some(seen);
    }
    let acked = outcome.acked.len().max(1) as f64;
    Run {
        disk_per_message: meter
            .as_ref()
            .and_then(|m| m.written())
            .map(|bytes| bytes as f64 / acked),
        cpu_through_delivery: meter.as_ref().and_then(|m| m.cpu_percent()),
        rss: server.and_then(Server::peak_rss),
        outcome,
        window,
        missing,
        cpu,
    }
}

/// Worst p99 latency a sustained rate may show: above it, requests are
/// queueing for the length of the probe (or the load generator itself
/// cannot keep the pace).
const SUSTAINED_P99_MS: u64 = 100;

/// Whether a probe kept up: no failure, 2xx answers (`delivered`:
/// deliveries too) at 97% of the offered rate or better, with a p99 under
/// [`SUSTAINED_P99_MS`].
fn kept_up(rate: f64, run: &Run, delivered: bool) -> bool {
    let p99_ok = |hist: &hdrhistogram::Histogram<u64>| {
        hist.value_at_quantile(0.99) <= SUSTAINED_P99_MS * 1000
    };
    let acks = run.outcome.failed() == 0
        && run.outcome.throughput() >= 0.97 * rate
        && p99_ok(&run.outcome.latency);
    let deliveries = || {
        run.missing == 0
            && run.delivery_rate() >= 0.97 * rate
            && run.window.as_ref().is_some_and(|w| p99_ok(&w.latency))
    };
    acks && (!delivered || deliveries())
}

/// The bench: settings, the report so far, and the figures scenarios share.
pub struct Bench {
    pub settings: Settings,
    pub report: Report,
    /// Functional problems: failures or lost messages at a rate the run
    /// expected to be sustained. The smoke run fails on any.
    pub problems: Vec<String>,
    pub small: Arc<Webhooks>,
    pub big: Arc<Webhooks>,
    pub raw_max: Option<f64>,
    pub ingest_max: Option<f64>,
    pub e2e_max: Option<f64>,
    pub ack_p99_at_half: Option<f64>,
    pub sync_added_p50: Option<f64>,
    pub isolation_ratio: Option<f64>,
    /// Ingest maximum with the JavaScript template validator over the
    /// Rust template's.
    pub js_versus_rust: Option<f64>,
}

impl Bench {
    pub fn new(settings: Settings) -> Bench {
        Bench {
            settings,
            report: Report::default(),
            problems: Vec::new(),
            small: Arc::new(Webhooks::new(Size::OneK)),
            big: Arc::new(Webhooks::new(Size::SixtyFourK)),
            raw_max: None,
            ingest_max: None,
            e2e_max: None,
            ack_p99_at_half: None,
            sync_added_p50: None,
            isolation_ratio: None,
            js_versus_rust: None,
        }
    }

    /// Starts a gateway serving `routes`.
    pub fn gateway(&self, routes: &[RouteSpec]) -> Result<Server, String> {
        let mut plugins: Vec<_> = routes.iter().flat_map(|r| r.plugins.files()).collect();
        plugins.sort();
        plugins.dedup();
        Server::gateway(&gateway_config(routes), &plugins, self.small.secret())
    }

    /// Starts a gateway serving `routes`; when it does not start, notes the
    /// problem (with its log) under `what`.
    pub fn start_gateway(&mut self, what: &str, routes: &[RouteSpec]) -> Option<Server> {
        match self.gateway(routes) {
            Ok(server) => Some(server),
            Err(log) => {
                self.problems.push(format!("{what}: {log}"));
                None
            }
        }
    }

    pub fn target(&self, server_addr: std::net::SocketAddr, path: &str, size: Size) -> Target {
        Target {
            addr: server_addr,
            path: path.to_string(),
            webhooks: match size {
                Size::OneK => self.small.clone(),
                Size::SixtyFourK => self.big.clone(),
            },
        }
    }

    /// Notes a problem if a run that should have kept up did not; keeps
    /// the gateway's folder then, and says where it is.
    pub fn check(&mut self, what: &str, run: &Run, server: Option<&mut Server>) {
        if run.outcome.failed() > 0 || run.missing > 0 {
            let kept = server.and_then(Server::keep).map_or(String::new(), |dir| {
                format!(" (gateway folder kept: {})", dir.display())
            });
            self.problems.push(format!("{what}: {}{kept}", run.notes()));
        }
    }

    pub fn fixed_label(&self, rate: f64, duration: Duration) -> String {
        format!("{rate:.0}/s for {:.0?}", duration)
    }

    /// The row of the senders' view of a run: answers and their latency.
    pub fn answer_row(&self, scenario: &str, load: String, run: &Run) -> Row {
        let mut row = Row::new(scenario, load).with_latency(&run.outcome.latency);
        row.throughput = run.outcome.throughput();
        row.cpu = run.cpu;
        row.rss = run.rss;
        row.disk = run.disk_per_message;
        row.notes = run.notes();
        row
    }

    /// The row of the sink's view of a run: deliveries and their latency
    /// from intended send time to arrival.
    pub fn delivery_row(&self, scenario: &str, load: String, run: &Run) -> Row {
        let mut row = Row::new(scenario, load);
        if let Some(window) = &run.window {
            row = row.with_latency(&window.latency);
        }
        row.throughput = run.delivery_rate();
        row.cpu = run.cpu_through_delivery;
        row.rss = run.rss;
        row.disk = run.disk_per_message;
        row.notes = run.notes();
        row
    }

    /// Searches the highest rate `server` sustains on `target` (acks, or
    /// acks and deliveries); `None` when even the first rate failed.
    pub async fn search(
        &self,
        server: &Server,
        target: &Target,
        sink: Option<&Sink>,
        delivered: bool,
    ) -> (Option<(f64, Run)>, String) {
        let s = &self.settings;
        let (best, probes) = find_max(
            |rate| {
                run_at(
                    Some(server),
                    target,
                    sink,
                    s.shot(rate, s.probe),
                    s.patience,
                )
            },
            |rate, run| kept_up(rate, run, delivered),
            s.start_rate,
            s.ceiling,
            s.refine,
        )
        .await;
        let tried: Vec<String> = probes
            .iter()
            .map(|(rate, ok)| format!("{rate:.0}{}", if *ok { "✓" } else { "✗" }))
            .collect();
        (best, format!("find-max ({})", tried.join(" ")))
    }

    /// Time since `at`, for progress lines.
    pub fn say(&self, what: &str, at: Instant) {
        eprintln!("[{:>6.1}s] {what}", at.elapsed().as_secs_f64());
    }
}
