//! Outages: a destination that fails slowly while another stays healthy
//! (isolation: the healthy one's delivery latency, against the same run
//! with both healthy), and a backlog built while the only destination is
//! down, drained when it comes back.

use std::time::{Duration, Instant};

use crate::config::{Plugins, RouteSpec};
use crate::load::{Shot, fire};
use crate::report::Row;
use crate::scenarios::{Bench, run_at};
use crate::sink::{Answer, Sink};
use crate::webhook::Size;

/// Pairs of isolation runs (neighbour healthy, then failing) the goal is
/// judged on. The healthy route's delivery p99 is a few milliseconds, and
/// one slow millisecond in one 10 s run moves a single pair's ratio by a
/// fifth (BENCHMARKS.md, *What session 14 changed*): the median pair is
/// steadier.
const ISOLATION_PAIRS: usize = 3;

/// Longest time the drain scenario spends building its backlog.
const MAX_FILL: Duration = Duration::from_secs(20);

impl Bench {
    /// Two validate + transform routes at the same rate, each to its own
    /// sink; the second sink healthy, then (fresh gateway) failing slowly
    /// so its breaker opens. [`ISOLATION_PAIRS`] such pairs, alternating;
    /// the pair with the median ratio is reported, the others' ratios in
    /// its notes.
    pub async fn isolation(&mut self, clock: Instant) {
        let pairs = if self.settings.smoke {
            1
        } else {
            ISOLATION_PAIRS
        };
        let mut measured = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let Some(healthy) = self.isolation_run(false, clock).await else {
                return;
            };
            let Some(failing) = self.isolation_run(true, clock).await else {
                self.report.rows.push(healthy);
                return;
            };
            match (healthy.p(2), failing.p(2)) {
                (Some(base), Some(p99)) if base > 0.0 => {
                    measured.push((p99 / base, healthy, failing))
                }
                // No latency to compare (nothing delivered): shown as it is.
                _ => {
                    self.report.rows.extend([healthy, failing]);
                    return;
                }
            }
        }
        measured.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ratios: Vec<String> = measured.iter().map(|(r, ..)| format!("{r:.2}×")).collect();
        let (ratio, mut healthy, mut failing) = measured.swap_remove(measured.len() / 2);
        healthy.versus = "baseline".into();
        failing.versus = format!("{ratio:.2}× healthy-neighbour p99");
        if ratios.len() > 1 {
            failing.notes = format!(
                "{}; median of {} pairs ({})",
                failing.notes,
                ratios.len(),
                ratios.join(", ")
            );
        }
        self.isolation_ratio = Some(ratio);
        self.report.rows.extend([healthy, failing]);
    }

    /// One run of the isolation scenario on a fresh gateway: the healthy
    /// route's delivery row, with what the neighbour route did in its notes.
    async fn isolation_run(&mut self, neighbour_dead: bool, clock: Instant) -> Option<Row> {
        let rate = (self.latency_rate() / 2.0).round().max(1.0);
        let load = format!(
            "{rate:.0}/s on each of 2 routes for {:.0?}",
            self.settings.run
        );
        let shot = self.settings.shot_at(rate);
        let state = if neighbour_dead {
            "neighbour failing slowly (breaker open)"
        } else {
            "neighbour healthy (baseline)"
        };
        let scenario = format!("isolation: healthy destination, {state}");
        self.say(&format!("{scenario}: {load}"), clock);
        let (fast, other) = (Sink::start().await, Sink::start().await);
        if neighbour_dead {
            other.answer_with(Answer::SlowFail);
        }
        let routes = [
            RouteSpec {
                name: "fast",
                plugins: Plugins::ValidateTransform,
                mode: "async",
                upstream: fast.url("/fast"),
            },
            RouteSpec {
                name: "other",
                plugins: Plugins::ValidateTransform,
                mode: "async",
                upstream: other.url("/other"),
            },
        ];
        let mut server = self.start_gateway(&scenario, &routes)?;
        let fast_target = self.target(server.addr, "/hooks/fast", Size::OneK);
        let other_target = self.target(server.addr, "/hooks/other", Size::OneK);
        let patience = self.settings.patience;
        let (run, neighbour) = tokio::join!(
            run_at(Some(&server), &fast_target, Some(&fast), shot, patience),
            fire(&other_target, shot),
        );
        self.check(&scenario, &run, Some(&mut server));
        let mut row = self.delivery_row(&scenario, load, &run);
        let refused = other.take().refused;
        row.notes = format!(
            "{}; neighbour: {} acked, {refused} attempts refused",
            row.notes,
            neighbour.acked.len()
        );
        Some(row)
    }

    /// Queues `backlog` messages while the sink answers 503 (the breaker
    /// opens), then lets it recover and measures how fast the backlog
    /// drains.
    pub async fn drain(&mut self, clock: Instant) {
        let backlog = self.settings.backlog;
        let scenario = "backlog drain after the destination recovers";
        self.say(&format!("{scenario}: {backlog} queued"), clock);
        let sink = Sink::start().await;
        sink.answer_with(Answer::Fail);
        let route = RouteSpec {
            name: "vt",
            plugins: Plugins::ValidateTransform,
            mode: "async",
            upstream: sink.url("/deliver"),
        };
        let Some(mut server) = self.start_gateway(scenario, &[route]) else {
            return;
        };
        let rate = self.latency_rate();
        // Filled at a rate the gateway sustains, for at most
        // MAX_FILL: a slow machine drains a smaller backlog.
        let backlog = backlog.min((rate * MAX_FILL.as_secs_f64()) as u64).max(1);
        let target = self.target(server.addr, "/hooks/vt", Size::OneK);
        let shot = Shot {
            rate,
            duration: Duration::from_secs_f64(backlog as f64 / rate),
            connections: self.settings.connections,
        };
        let outcome = fire(&target, shot).await;
        let refused = sink.take().refused;
        let meter = server.meter();
        let back = Instant::now();
        sink.answer_with(Answer::Ok);
        sink.wait_for(&outcome.acked, self.settings.patience).await;
        let window = sink.take();
        let missing = window.missing(&outcome.acked);
        let mut row = Row::new(
            scenario,
            format!("{} queued at {rate:.0}/s", outcome.acked.len()),
        );
        if let (Some(first), Some(last)) = (window.first, window.last) {
            let secs = last.saturating_duration_since(back).as_secs_f64();
            row.throughput = window.seen.len() as f64 / secs.max(1e-3);
            row.notes = format!(
                "first delivery {:.2} s after recovery, {refused} refused while down, {missing} missing",
                first.saturating_duration_since(back).as_secs_f64()
            );
        }
        row.cpu = meter.cpu_percent();
        row.disk = meter
            .written()
            .map(|bytes| bytes as f64 / window.seen.len().max(1) as f64);
        row.rss = server.peak_rss();
        row.versus = "—".into();
        if missing > 0 || outcome.failed() > 0 {
            let kept = server.keep().map(|dir| dir.display().to_string());
            self.problems.push(format!(
                "{scenario}: {missing} missing, {} failed sends (gateway folder kept: {})",
                outcome.failed(),
                kept.unwrap_or_default()
            ));
        }
        self.report.rows.push(row);
    }
}
