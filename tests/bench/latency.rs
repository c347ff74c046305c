//! Latency at a fixed rate: raw hyper, the gateway without plugins and
//! with validate + transform (acknowledgement and delivery latency), the
//! same with 64 KB bodies, and a sync route against calling its upstream
//! directly.

use std::time::Instant;

use crate::config::{Plugins, RouteSpec};
use crate::process::Server;
use crate::report::Row;
use crate::scenarios::{Bench, run_at};
use crate::sink::Sink;
use crate::webhook::Size;

impl Bench {
    /// The rate of the fixed-rate 1 KB runs: as set, else half the
    /// highest rate the validate + transform route sustains, which is the
    /// lower of its ingest and end-to-end maxima. Above the end-to-end
    /// maximum the backlog grows without end (until the route answers 503),
    /// so half the ingest maximum alone would measure an overloaded gateway
    /// whenever acknowledging is cheaper than delivering.
    pub fn latency_rate(&self) -> f64 {
        let sustained = match (self.ingest_max, self.e2e_max) {
            (Some(ingest), Some(e2e)) => Some(ingest.min(e2e)),
            (ingest, e2e) => ingest.or(e2e),
        };
        self.settings
            .rate
            .or(sustained.map(|max| (max / 2.0).round()))
            .unwrap_or(1000.0)
    }

    /// Raw hyper and both async routes at one fixed rate and size.
    pub async fn fixed_rate(&mut self, clock: Instant, size: Size) {
        let rate = match size {
            Size::OneK => self.latency_rate(),
            Size::SixtyFourK => self.settings.big_rate,
        };
        let duration = self.settings.run;
        let load = self.fixed_label(rate, duration);
        let shot = self.settings.shot_at(rate);
        self.say(&format!("raw hyper, {}: {load}", size.label()), clock);
        let raw = Server::raw();
        let target = self.target(raw.addr, "/raw", size);
        let baseline = run_at(Some(&raw), &target, None, shot, self.settings.patience).await;
        drop(raw);
        self.check("raw hyper", &baseline, None);
        let base_p99 = baseline.outcome.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let mut row = self.answer_row(
            &format!("raw hyper, {}", size.label()),
            load.clone(),
            &baseline,
        );
        row.versus = "1.00× (baseline)".into();
        self.report.rows.push(row);

        let mut routes = vec![(Plugins::ValidateTransform, "vt", "validate + transform")];
        if size == Size::OneK {
            routes.insert(0, (Plugins::None, "passthrough", "no plugins"));
        }
        for (plugins, name, label) in routes {
            let label = format!("gateway async, {label}, {}", size.label());
            self.say(&format!("{label}: {load}"), clock);
            let sink = Sink::start().await;
            let spec = RouteSpec {
                name,
                plugins,
                mode: "async",
                upstream: sink.url("/deliver"),
            };
            let Some(mut server) = self.start_gateway(&label, &[spec]) else {
                continue;
            };
            let target = self.target(server.addr, &format!("/hooks/{name}"), size);
            let run = run_at(
                Some(&server),
                &target,
                Some(&sink),
                shot,
                self.settings.patience,
            )
            .await;
            self.check(&label, &run, Some(&mut server));
            let mut ack = self.answer_row(&format!("{label}: ack"), load.clone(), &run);
            let p99 = ack.p(2).unwrap_or(f64::NAN);
            ack.versus = format!("{:.2}× raw hyper p99", p99 / base_p99);
            if plugins == Plugins::ValidateTransform && size == Size::OneK {
                self.ack_p99_at_half = Some(p99);
            }
            self.report.rows.push(ack);
            let mut delivery =
                self.delivery_row(&format!("{label}: end to end"), load.clone(), &run);
            delivery.versus = "—".into();
            self.report.rows.push(delivery);
        }
    }

    /// A sync route in front of the sink, against the sink called directly.
    pub async fn sync_versus_direct(&mut self, clock: Instant) {
        let rate = self.settings.sync_rate;
        let load = self.fixed_label(rate, self.settings.run);
        let shot = self.settings.shot_at(rate);
        let sink = Sink::start().await;
        self.say(&format!("direct to the upstream: {load}"), clock);
        let target = self.target(sink.addr, "/direct", Size::OneK);
        let direct = run_at(None, &target, None, shot, self.settings.patience).await;
        self.check("direct", &direct, None);
        let mut row = self.answer_row("upstream called directly (baseline)", load.clone(), &direct);
        row.versus = "baseline".into();
        let direct_p50 = row.p(0);
        self.report.rows.push(row);

        self.say(&format!("gateway sync route: {load}"), clock);
        let spec = RouteSpec {
            name: "sync",
            plugins: Plugins::ValidateTransform,
            mode: "sync",
            upstream: sink.url("/sync"),
        };
        let mut server = match self.gateway(&[spec]) {
            Ok(server) => server,
            Err(log) => {
                let reason = log
                    .lines()
                    .find(|l| l.contains("sync"))
                    .unwrap_or("the gateway refused the config")
                    .trim()
                    .to_string();
                let mut row = Row::new("gateway sync, validate + transform", load);
                row.notes = format!("not available: {reason}");
                self.report.rows.push(row);
                return;
            }
        };
        let target = self.target(server.addr, "/hooks/sync", Size::OneK);
        let run = run_at(Some(&server), &target, None, shot, self.settings.patience).await;
        self.check("gateway sync", &run, Some(&mut server));
        let mut row = self.answer_row("gateway sync, validate + transform", load, &run);
        if let (Some(gateway), Some(direct)) = (row.p(0), direct_p50) {
            row.versus = format!("{:+.2} ms p50 over direct", gateway - direct);
            self.sync_added_p50 = Some(gateway - direct);
        }
        self.report.rows.push(row);
    }
}
