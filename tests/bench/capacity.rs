//! Capacity: the highest rate each server sustains (find-max), 1 KB
//! webhooks. Raw hyper first (the baseline every throughput is compared
//! with), then the gateway's async route without plugins and with
//! validate + transform, each for its acknowledgements (ingest) and for its
//! deliveries (end to end); and the ingest maximum with a validator in each
//! template language.

use std::time::Instant;

use crate::config::{Plugins, RouteSpec};
use crate::process::Server;
use crate::report::Row;
use crate::scenarios::Bench;
use crate::sink::Sink;
use crate::webhook::Size;

impl Bench {
    pub async fn raw_capacity(&mut self, clock: Instant) {
        self.say("raw hyper: find-max", clock);
        let server = Server::raw();
        let target = self.target(server.addr, "/raw", Size::OneK);
        let (best, load) = self.search(&server, &target, None, false).await;
        let mut row = match &best {
            Some((_, run)) => self.answer_row("raw hyper answering 200 (baseline)", load, run),
            None => Row::new("raw hyper answering 200 (baseline)", load),
        };
        row.versus = "1.00× (baseline)".into();
        self.raw_max = best.map(|(_, run)| run.outcome.throughput());
        self.report.rows.push(row);
    }

    /// Ingest and end-to-end maxima of one async route; returns the ingest
    /// maximum.
    pub async fn gateway_capacity(&mut self, clock: Instant, plugins: Plugins) -> Option<f64> {
        let (name, label) = match plugins {
            Plugins::None => ("passthrough", "gateway async, no plugins"),
            _ => ("vt", "gateway async, validate + transform"),
        };
        let mut ingest = None;
        for delivered in [false, true] {
            let Some(mut row) = self.route_max(clock, name, label, plugins, delivered).await else {
                continue;
            };
            row.versus = self.versus_raw(row.throughput);
            if delivered {
                if plugins == Plugins::ValidateTransform {
                    self.e2e_max = Some(row.throughput);
                }
            } else {
                ingest = Some(row.throughput);
            }
            self.report.rows.push(row);
        }
        if plugins == Plugins::ValidateTransform {
            self.ingest_max = ingest;
        }
        ingest
    }

    /// Ingest maxima of a route validating with each language's template
    /// on warm instances, compared with the Rust template's; last, the
    /// JavaScript one again, shown only the header it reads (a route's
    /// `headers` list: each header lifted costs an interpreted plugin).
    pub async fn language_capacity(&mut self, clock: Instant) {
        let mut rust = None;
        let runs = [
            ("rust", false),
            ("javascript", false),
            ("python", false),
            ("javascript", true),
        ];
        for (lang, narrow) in runs {
            let shown = if narrow {
                ", headers = [\"content-type\"]"
            } else {
                ""
            };
            let label = format!("gateway async, validate in {lang} (template, warm{shown})");
            let plugins = Plugins::TemplateValidate { lang, narrow };
            let Some(mut row) = self.route_max(clock, "lang", &label, plugins, false).await else {
                continue;
            };
            match rust {
                None => {
                    rust = Some(row.throughput);
                    row.versus = "1.00× (baseline)".into();
                }
                Some(base) if base > 0.0 => {
                    let ratio = row.throughput / base;
                    row.versus = format!("{ratio:.2}× the Rust validator's msg/s");
                    // Issue 11's goal: the plugin as configured by default.
                    if lang == "javascript" && !narrow {
                        self.js_versus_rust = Some(ratio);
                    }
                }
                Some(_) => {}
            }
            self.report.rows.push(row);
        }
    }

    /// The find-max row of one async route, for its acknowledgements or
    /// (`delivered`) its deliveries; `None` (with a row saying so pushed)
    /// when nothing held.
    async fn route_max(
        &mut self,
        clock: Instant,
        name: &'static str,
        label: &str,
        plugins: Plugins,
        delivered: bool,
    ) -> Option<Row> {
        let what = if delivered {
            "end to end"
        } else {
            "ack (ingest)"
        };
        self.say(&format!("{label}, {what}: find-max"), clock);
        let sink = Sink::start().await;
        let route = RouteSpec {
            name,
            plugins,
            mode: "async",
            upstream: sink.url("/deliver"),
        };
        let server = self.start_gateway(label, &[route])?;
        let target = self.target(server.addr, &format!("/hooks/{name}"), Size::OneK);
        let (best, load) = self.search(&server, &target, Some(&sink), delivered).await;
        let scenario = format!("{label}: {what}");
        let Some((_, run)) = best else {
            self.report.rows.push(Row::new(&scenario, load));
            return None;
        };
        Some(if delivered {
            self.delivery_row(&scenario, load, &run)
        } else {
            self.answer_row(&scenario, load, &run)
        })
    }

    fn versus_raw(&self, throughput: f64) -> String {
        match self.raw_max {
            Some(raw) if raw > 0.0 => format!("{:.2}× raw hyper msg/s", throughput / raw),
            _ => "—".into(),
        }
    }
}
