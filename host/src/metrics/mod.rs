//! The gateway's measurements: Prometheus counters and histograms (served
//! as `/metrics`) and the recent-window figures `/health` judges by
//! (`recent.rs`).
//!
//! One [`Metrics`] per running gateway, shared by ingress and the
//! dispatcher; each event is one call here from where it happens, which
//! updates both. Gauges that mirror state (journal depth, breaker states)
//! are set from that state when `/metrics` is scraped, so they cannot drift.
//!
//! Names follow Prometheus conventions: `hookgate_` prefix, `_total`
//! counters, `_seconds` histograms; the text is OpenMetrics, written by
//! `prometheus-client`.

pub mod recent;

use std::future::Future;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::clock::now_ms;
use crate::plugin::{CallReport, PluginError, Role};
use crate::routes::BoundPlugin;
use crate::store::{AttemptRecord, AttemptResult, QueueStats, RoundObserver};
use recent::Recent;

/// The `outcome` label of an attempt of a journaled delivery.
pub fn outcome_label(result: &AttemptResult) -> &'static str {
    match result {
        AttemptResult::Delivered => "delivered",
        AttemptResult::RetryAt(_) => "retry",
        AttemptResult::Dead(_) => "dead",
        AttemptResult::Handled => "handled",
        AttemptResult::Reroute { .. } => "rerouted",
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    app: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcomeLabels {
    plugin: String,
    role: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    app: String,
    route: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    app: String,
    route: String,
    destination: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    app: String,
    route: String,
    destination: String,
    state: String,
}

/// One destination's state at scrape time.
pub struct DestinationState<'a> {
    pub app: &'a str,
    pub route: &'a str,
    pub destination: &'a str,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    pub disabled: bool,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 us to ~100 s: plugin calls sit at the low end, deliveries with
    // retries at the high end.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

fn flush_histogram() -> Histogram {
    // 50 us to ~0.8 s: a flush to an idle SSD to a disk in trouble.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

fn batch_histogram() -> Histogram {
    // 1 to 1024: a lone webhook to a busy round.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn fuel_histogram() -> Histogram {
    // 10k to ~10G units: a trivial Rust guest to a runaway interpreted one.
    Histogram::new(exponential_buckets(10_000.0, 10.0, 7))
}

/// Every measurement of one gateway.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    verification_failures: Family<RouteLabels, Counter>,
    plugin_calls: Family<PluginOutcomeLabels, Counter>,
    plugin_duration: HistogramFamily<PluginLabels>,
    plugin_fuel: HistogramFamily<PluginLabels>,
    plugin_instances: Family<PluginLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: HistogramFamily<DestinationLabels>,
    delivery_latency: HistogramFamily<RouteLabels>,
    dead_letters: Family<RouteLabels, Counter>,
    journal_flush_duration: Histogram,
    journal_flush_messages: Histogram,
    journal_write_batch: Histogram,
    journal_depth: Gauge,
    body_memory: Gauge,
    journal_due: Gauge,
    journal_delayed: Gauge,
    journal_parked: Gauge,
    dead_letter_queue: Gauge,
    breaker_state: Family<BreakerLabels, Gauge>,
    destination_disabled: Family<DestinationLabels, Gauge>,
    kv_bytes: Family<AppLabels, Gauge>,
    /// The recent-window figures behind `/health`.
    pub recent: Recent,
}

impl Metrics {
    /// A fresh set; `window` is `/health`'s look-back.
    pub fn new(window: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("hookgate");
        let m = Metrics {
            requests: Family::default(),
            verification_failures: Family::default(),
            plugin_calls: Family::default(),
            plugin_duration: Family::new_with_constructor(seconds_histogram),
            plugin_fuel: Family::new_with_constructor(fuel_histogram),
            plugin_instances: Family::default(),
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(seconds_histogram),
            delivery_latency: Family::new_with_constructor(seconds_histogram),
            dead_letters: Family::default(),
            journal_flush_duration: flush_histogram(),
            journal_flush_messages: batch_histogram(),
            journal_write_batch: batch_histogram(),
            journal_depth: Gauge::default(),
            body_memory: Gauge::default(),
            journal_due: Gauge::default(),
            journal_delayed: Gauge::default(),
            journal_parked: Gauge::default(),
            dead_letter_queue: Gauge::default(),
            breaker_state: Family::default(),
            destination_disabled: Family::default(),
            kv_bytes: Family::default(),
            recent: Recent::new(window),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Inbound webhooks answered, by app, route and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "verification_failures",
            "Inbound webhooks refused for their signature",
            m.verification_failures.clone(),
        );
        r.register(
            "plugin_calls",
            "Plugin calls by plugin, role and outcome (ok or the error kind)",
            m.plugin_calls.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Wall time of plugin calls",
            Unit::Seconds,
            m.plugin_duration.clone(),
        );
        r.register(
            "plugin_call_fuel",
            "Fuel burned by plugin calls (units)",
            m.plugin_fuel.clone(),
        );
        r.register(
            "plugin_instances_started",
            "Plugin instances started by calls that answered: every call of a \
             fresh plugin; for a warm pool, the calls that found no idle instance",
            m.plugin_instances.clone(),
        );
        r.register(
            "delivery_attempts",
            "Delivery attempts by destination and outcome",
            m.attempts.clone(),
        );
        r.register_with_unit(
            "delivery_attempt_duration",
            "Time from sending an attempt to its answer",
            Unit::Seconds,
            m.attempt_duration.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Time from receipt to successful delivery",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        r.register(
            "dead_letters",
            "Deliveries moved to the dead-letter queue",
            m.dead_letters.clone(),
        );
        r.register_with_unit(
            "journal_flush_duration",
            "Time each journal flush to disk took (acknowledgements wait for one)",
            Unit::Seconds,
            m.journal_flush_duration.clone(),
        );
        r.register(
            "journal_flush_messages",
            "New messages made durable by each journal flush (group commit)",
            m.journal_flush_messages.clone(),
        );
        r.register(
            "journal_write_batch",
            "Delivery-side journal writes (transform and attempt outcomes, parks) applied per journal round",
            m.journal_write_batch.clone(),
        );
        r.register(
            "request_body_memory_bytes",
            "Memory reserved by the request bodies being handled (server.body_memory is the most)",
            m.body_memory.clone(),
        );
        r.register(
            "journal_depth",
            "Tasks waiting in the journal (transforms and deliveries)",
            m.journal_depth.clone(),
        );
        r.register(
            "journal_due",
            "Waiting tasks due now",
            m.journal_due.clone(),
        );
        r.register(
            "journal_delayed",
            "Waiting tasks due later (backoff, deliver-at)",
            m.journal_delayed.clone(),
        );
        r.register(
            "journal_parked",
            "Waiting deliveries parked until their destination's breaker lets them go",
            m.journal_parked.clone(),
        );
        r.register(
            "dead_letter_queue_depth",
            "Deliveries in the dead-letter queue now",
            m.dead_letter_queue.clone(),
        );
        r.register(
            "breaker_state",
            "1 for the state each destination's breaker is in",
            m.breaker_state.clone(),
        );
        r.register(
            "destination_disabled",
            "1 while a destination is disabled after a 410",
            m.destination_disabled.clone(),
        );
        r.register(
            "kv_bytes",
            "Bytes each app's key-value entries hold against its kv_quota (key, value and 64 per entry)",
            m.kv_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// An inbound webhook answered with `status` (route `-` when no route matched).
    pub fn request(&self, app: &str, route: &str, status: u16) {
        let labels = RequestLabels {
            app: app.into(),
            route: route.into(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        if (200..300).contains(&status) {
            self.recent.received(app, route);
        }
    }

    pub fn verification_failed(&self, app: &str, route: &str) {
        let labels = RouteLabels {
            app: app.into(),
            route: route.into(),
        };
        self.verification_failures.get_or_create(&labels).inc();
    }

    /// Runs a plugin call and counts it: outcome, duration and fuel.
    /// A failure also becomes the route's last error for `/health`.
    pub async fn plugin_call<T>(
        &self,
        bound: &BoundPlugin,
        role: Role,
        call: impl Future<Output = Result<CallReport<T>, PluginError>>,
    ) -> Result<CallReport<T>, PluginError> {
        let started = Instant::now();
        let result = call.await;
        let plugin = &bound.plugin.info().name;
        if let Err(err) = &result {
            let (app, route) = (&bound.setup.app, &bound.setup.route);
            let message = format!("{role} plugin {plugin:?}: {err}");
            self.recent.error(app, route, now_ms(), message);
        }
        let labels = PluginLabels {
            plugin: plugin.clone(),
            role: role.as_str().into(),
        };
        let (outcome, fuel) = match &result {
            Ok(report) => ("ok", Some(report.fuel_used)),
            Err(err @ PluginError::OutOfFuel { budget }) => (err.outcome(), Some(*budget)),
            Err(err) => (err.outcome(), None),
        };
        let outcome_labels = PluginOutcomeLabels {
            plugin: labels.plugin.clone(),
            role: labels.role.clone(),
            outcome: outcome.into(),
        };
        self.plugin_calls.get_or_create(&outcome_labels).inc();
        self.plugin_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Some(fuel) = fuel {
            self.plugin_fuel.get_or_create(&labels).observe(fuel as f64);
        }
        if matches!(&result, Ok(report) if report.new_instance) {
            self.plugin_instances.get_or_create(&labels).inc();
        }
        result
    }

    /// A sync route's inline attempt: `failure` is its log when the
    /// upstream gave no usable answer (the fallback takes over then).
    pub fn inline_attempt(
        &self,
        where_to: (&str, &str, &str),
        took: Duration,
        failure: Option<&AttemptRecord>,
        received_at: u64,
    ) {
        let ok = AttemptRecord {
            attempt: 1,
            started_at: 0,
            duration_ms: took.as_millis() as u64,
            status: None,
            response: Vec::new(),
            error: None,
            plugin_hashes: Vec::new(),
        };
        match failure {
            None => self.attempt(where_to, &ok, "delivered", received_at),
            Some(log) => self.attempt(where_to, log, "failed_inline", received_at),
        }
    }

    /// One delivery attempt; `outcome` is what became of the delivery
    /// ([`outcome_label`]), `delivered` counting as the one success.
    pub fn attempt(
        &self,
        (app, route, destination): (&str, &str, &str),
        log: &AttemptRecord,
        outcome: &'static str,
        received_at: u64,
    ) {
        let labels = AttemptLabels {
            app: app.into(),
            route: route.into(),
            destination: destination.into(),
            outcome: outcome.into(),
        };
        let dest = DestinationLabels {
            app: app.into(),
            route: route.into(),
            destination: destination.into(),
        };
        self.attempt_duration
            .get_or_create(&dest)
            .observe(log.duration_ms as f64 / 1000.0);
        let now = now_ms();
        let route_labels = RouteLabels {
            app: app.into(),
            route: route.into(),
        };
        let error = match (outcome, log.status, &log.error) {
            ("delivered", _, _) => None,
            (_, Some(status), _) => Some(format!("{destination}: status {status}")),
            (_, None, Some(error)) => Some(format!("{destination}: {error}")),
            (_, None, None) => Some(format!("{destination}: failed")),
        };
        if error.is_none() {
            let latency = now.saturating_sub(received_at) as f64 / 1000.0;
            self.delivery_latency
                .get_or_create(&route_labels)
                .observe(latency);
        }
        self.recent.attempt(app, route, now, error);
        if outcome == "dead" {
            self.dead_lettered(app, route, 1);
        }
        // Last: a scraper that sees the attempt counted sees all the rest.
        self.attempts.get_or_create(&labels).inc();
    }

    /// Deliveries dead-lettered without an attempt (a failed transform).
    pub fn dead_lettered(&self, app: &str, route: &str, count: u64) {
        let labels = RouteLabels {
            app: app.into(),
            route: route.into(),
        };
        self.dead_letters.get_or_create(&labels).inc_by(count);
        for _ in 0..count {
            self.recent.dead_lettered(app, route);
        }
    }

    /// Notes how much body memory requests being handled hold now; read at
    /// each scrape.
    pub fn body_memory_in_use(&self, bytes: u64) {
        self.body_memory
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The text for `/metrics`, with state gauges set from `queue` and
    /// `destinations` first.
    pub fn render<'a>(
        &self,
        queue: &QueueStats,
        destinations: impl IntoIterator<Item = DestinationState<'a>>,
        kv_bytes: impl IntoIterator<Item = (String, u64)>,
    ) -> String {
        let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.journal_depth, queue.pending);
        gauge(&self.journal_due, queue.due);
        gauge(&self.journal_delayed, queue.delayed);
        gauge(&self.journal_parked, queue.parked);
        gauge(&self.dead_letter_queue, queue.dead_letters);
        for d in destinations {
            for state in ["closed", "open", "half_open"] {
                let labels = BreakerLabels {
                    app: d.app.into(),
                    route: d.route.into(),
                    destination: d.destination.into(),
                    state: state.into(),
                };
                self.breaker_state
                    .get_or_create(&labels)
                    .set(i64::from(state == d.breaker));
            }
            let labels = DestinationLabels {
                app: d.app.into(),
                route: d.route.into(),
                destination: d.destination.into(),
            };
            self.destination_disabled
                .get_or_create(&labels)
                .set(i64::from(d.disabled));
        }
        for (app, bytes) in kv_bytes {
            gauge(&self.kv_bytes.get_or_create(&AppLabels { app }), bytes);
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(cause = %err, "encoding metrics failed");
        }
        text
    }
}

impl RoundObserver for Metrics {
    fn flushed(&self, took: Duration, messages: usize) {
        self.journal_flush_duration.observe(took.as_secs_f64());
        self.journal_flush_messages.observe(messages as f64);
    }

    fn writes_applied(&self, writes: usize) {
        self.journal_write_batch.observe(writes as f64);
    }
}
