//! Working one due task: `prepare_delivery` (the transform step, which
//! also sends a lone delivery due now: `send_at_once`) or `attempt` (one
//! attempt of a due delivery: `try_send`, then `handle_outcome`).
//!
//! Every outcome is written to the journal in one transaction with the
//! task's next state (due again, delivered, or dead), so a crash at any point
//! leaves the task due and it is simply tried again: delivery is
//! at-least-once, and receivers deduplicate on `webhook-id`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::destination::Destination;
use super::parking::{Parking, place_of};
use super::retry::{AttemptOutcome, classify_status};
use crate::breaker::{BreakerState, Rejected};
use crate::clock::now_ms;
use crate::config::OnPluginError;
use crate::metrics::{Metrics, outcome_label};
use crate::plugin::{
    Failure, FailureKind, NextStep, Outgoing, PluginError, Role, UpstreamResponse, gateway_owned,
};
use crate::routes::{Route, SharedRoutes, webhook_of};
use crate::store::{
    AttemptRecord, AttemptResult, DeliveryRecord, DeliveryStatus, DueTask, InboundMessage,
    OutgoingRequest, SledStore, StoreError, TaskKind,
};
use crate::verify::sign_standard_webhooks;

/// Bytes of a destination's answer kept in the attempt log.
const RESPONSE_SLICE: usize = 4 << 10;

/// What a dispatcher needs; shared by all delivery tasks.
pub struct Dispatcher {
    pub store: SledStore,
    /// The routes in service; each task takes one snapshot of its route.
    pub routes: SharedRoutes,
    pub client: reqwest::Client,
    /// Wakes the scheduler when new work is journaled (ingest, sync routes'
    /// queued messages).
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Destinations with deliveries waiting out an open breaker.
    pub parking: Parking,
    /// Transforms that overran their deadline, being given another go.
    pub transform_deadlines: TransformDeadlines,
    /// Cancelled by the scheduler when it stops: a delivery not yet sent
    /// stays due for the next start instead of starting a request while
    /// the gateway shuts down (see `Dispatcher::try_send`).
    pub stopping: CancellationToken,
}

/// Whether an attempt waits for a free slot at its destination.
#[derive(Clone, Copy)]
enum Wait {
    /// A due delivery: it waits its turn (unless the gateway stops).
    ForSlot,
    /// A transform's delivery sent at once, or not at all (it then goes
    /// through the due index).
    No,
}

/// What became of trying to send a delivery.
enum Tried {
    Sent(Box<Sent>),
    /// Not sent: its destination is disabled (410), its breaker is open or
    /// has its probes out, or its queue for a slot is full. A due delivery
    /// is parked at this place (see `parking.rs`); one sent at once goes to
    /// the due index instead.
    Blocked(Vec<u8>),
    /// Not sent and nothing to journal: the gateway is stopping, or (not
    /// waiting) the destination has no slot free.
    NotNow,
}

/// An attempt made: its log, its consequence, and the dead-letter alert a
/// dying delivery adds to the message.
struct Sent {
    log: AttemptRecord,
    result: AttemptResult,
    alert: Option<DeliveryRecord>,
}

/// Times a transform may overrun its wall-clock deadline and run again
/// before the route's `on_plugin_error` policy applies, and the first wait
/// (doubling each time: 0.25, 0.5, 1 s). A deadline is wall time, which a
/// machine short of CPU can use up for any plugin; fuel, memory and traps
/// are the plugin's own doing and apply at once.
const TRANSFORM_DEADLINE_RETRIES: u32 = 3;
const TRANSFORM_DEADLINE_BACKOFF_MS: u64 = 250;

/// Deadline overruns per message, in memory: a restart starts the count
/// again, which only bounds the retries per run.
#[derive(Debug, Default)]
pub struct TransformDeadlines {
    tries: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl TransformDeadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u32>> {
        self.tries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn may_retry(&self, id: &str) -> bool {
        self.lock().get(id).copied().unwrap_or(0) < TRANSFORM_DEADLINE_RETRIES
    }

    /// Counts one more overrun; returns the count.
    fn bump(&self, id: &str) -> u32 {
        let mut tries = self.lock();
        let n = tries.entry(id.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Dispatcher {
    /// Works one task to its next journaled state.
    pub async fn work(&self, task: &DueTask) -> Result<(), StoreError> {
        let Some(message) = self.store.inbound(&task.message_id)? else {
            return Err(StoreError::NotFound(format!(
                "message {:?}",
                task.message_id
            )));
        };
        let span = tracing::Span::current();
        span.record("app", message.app.as_str());
        span.record("route", message.route.as_str());
        if task.kind == TaskKind::Transform {
            // The transform runs before the first attempt.
            span.record("attempt", 0);
        }
        let Some(route) = self.route_of(&message) else {
            // The route was removed from the config: nothing can deliver the
            // message. Dead-lettered, it shows (`/metrics`, `/admin`); an
            // operator restores the route and replays it, or purges it.
            let reason = format!(
                "route {}/{} is no longer in the config",
                message.app, message.route
            );
            let now = now_ms();
            match task.kind {
                TaskKind::Transform => {
                    let dead = dead_delivery("", reason, None);
                    self.store
                        .set_deliveries_shared(&message, task.due_at, &[dead], now)
                        .await?;
                }
                TaskKind::Deliver(index) => {
                    self.store
                        .dead_letter_unsent_shared(&message, index, &reason, None, now)
                        .await?;
                }
            }
            tracing::warn!(message_id = %message.id, app = %message.app, route = %message.route, "message dead-lettered: its route left the config");
            self.metrics.dead_lettered(&message.app, &message.route, 1);
            return Ok(());
        };
        match task.kind {
            TaskKind::Transform => self.prepare_delivery(task, &route, &message).await,
            TaskKind::Deliver(index) => self.attempt(task, &route, &message, index).await,
        }
    }

    fn route_of(&self, message: &InboundMessage) -> Option<Arc<Route>> {
        self.routes
            .load()
            .by_name(&message.app, &message.route)
            .cloned()
    }

    /// Runs the transform (or forwards unchanged) and journals the
    /// deliveries it produced.
    async fn prepare_delivery(
        &self,
        task: &DueTask,
        route: &Route,
        message: &InboundMessage,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let Some(deliveries) = self.plan(route, message, now, true).await else {
            // A transform that overran its wall-clock deadline, likely on an
            // overloaded machine rather than for the message: run it again
            // later, a few times, before its failure policy applies.
            let tries = self.transform_deadlines.bump(&message.id);
            let delay = TRANSFORM_DEADLINE_BACKOFF_MS << (tries - 1);
            tracing::info!(app = %route.app, route = %route.name, message_id = %message.id, retry_in_ms = delay, "transform deadline overrun: it runs again later");
            return self.store.reschedule(task, now + delay);
        };
        self.transform_deadlines.forget(&message.id);
        if let Some(sent) = self.send_at_once(route, message, &deliveries, now).await {
            return self
                .store
                .set_delivery_sent_shared(
                    message,
                    task.due_at,
                    &deliveries[0],
                    (&sent.log, &sent.result),
                    sent.alert.as_ref(),
                    now_ms(),
                )
                .await;
        }
        self.store
            .set_deliveries_shared(message, task.due_at, &deliveries, now)
            .await
    }

    /// The deliveries the transform (or its absence) makes of a message;
    /// empty when it was filtered. A transform that fails (under the
    /// `reject` policy) or answers something the route does not allow gives
    /// one dead delivery carrying the reason.
    pub(super) async fn plan_deliveries(
        &self,
        route: &Route,
        message: &InboundMessage,
        now: u64,
    ) -> Vec<DeliveryRecord> {
        self.plan(route, message, now, false)
            .await
            .unwrap_or_default()
    }

    /// [`Dispatcher::plan_deliveries`]; with `retry_deadline`, `None` when
    /// the transform overran its deadline and may run again later (see
    /// [`TransformDeadlines`]).
    async fn plan(
        &self,
        route: &Route,
        message: &InboundMessage,
        now: u64,
        retry_deadline: bool,
    ) -> Option<Vec<DeliveryRecord>> {
        let default_dest = route
            .config
            .destinations
            .keys()
            .next()
            .cloned()
            .unwrap_or_default();
        let unchanged = || vec![passthrough(message)];
        let (outgoing, hash) = match &route.transform {
            None => (unchanged(), None),
            Some(bound) => {
                let hash = Some(bound.plugin.info().hash.clone());
                let hook = webhook_of(message, 1);
                let call = bound.plugin.transform(&bound.setup, &hook);
                match self.metrics.plugin_call(bound, Role::Transform, call).await {
                    Ok(report) => (report.value, hash),
                    Err(PluginError::Deadline { .. })
                        if retry_deadline && self.transform_deadlines.may_retry(&message.id) =>
                    {
                        return None;
                    }
                    Err(err) => {
                        self.transform_deadlines.forget(&message.id);
                        tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, plugin = %bound.plugin.info().name, outcome = err.outcome(), cause = %err, "transform failed");
                        match route.config.on_plugin_error {
                            OnPluginError::PassThrough => (unchanged(), hash),
                            OnPluginError::Reject => {
                                self.metrics.dead_lettered(&route.app, &route.name, 1);
                                let reason = format!("transform failed: {err}");
                                return Some(vec![dead_delivery(&default_dest, reason, hash)]);
                            }
                        }
                    }
                }
            }
        };
        Some(
            match plan(route, message, outgoing, &default_dest, now, hash.clone()) {
                Ok(deliveries) => deliveries,
                Err(reason) => {
                    let plugin = route
                        .transform
                        .as_ref()
                        .map(|b| b.plugin.info().name.as_str());
                    tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, plugin, %reason, "transform answer refused");
                    self.metrics.dead_lettered(&route.app, &route.name, 1);
                    vec![dead_delivery(&default_dest, reason, hash)]
                }
            },
        )
    }

    /// One attempt of a due delivery, or its park while its destination is
    /// blocked.
    async fn attempt(
        &self,
        task: &DueTask,
        route: &Route,
        message: &InboundMessage,
        index: u16,
    ) -> Result<(), StoreError> {
        let Some(delivery) = self.store.delivery_of(message, index)? else {
            return Err(StoreError::NotFound(format!(
                "delivery {index} of {:?}",
                message.id
            )));
        };
        let Some(dest) = route.destination(&delivery.request.destination) else {
            // Renamed or removed by a config reload: nothing can deliver it
            // as it is. A dead letter is seen (`/metrics`, the route's
            // alert) and replayed through the current config.
            let reason = format!(
                "destination {:?} is no longer in the route's config",
                delivery.request.destination
            );
            let alert = dead_letter_alert(route, message, &delivery, &reason);
            self.store
                .dead_letter_unsent_shared(message, index, &reason, alert.as_ref(), now_ms())
                .await?;
            tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, destination = %delivery.request.destination, "delivery dead-lettered: its destination left the config");
            self.metrics.dead_lettered(&route.app, &route.name, 1);
            return Ok(());
        };
        match self
            .try_send(route, message, dest, &delivery, Wait::ForSlot)
            .await
        {
            Tried::Sent(sent) => {
                self.store
                    .record_attempt_shared(
                        message,
                        index,
                        &sent.log,
                        &sent.result,
                        sent.alert.as_ref(),
                        now_ms(),
                    )
                    .await
            }
            Tried::Blocked(place) => self.park(task, route, dest, place).await,
            Tried::NotNow => Ok(()),
        }
    }

    /// Sends a transform's lone delivery at once, in the transform's task,
    /// when it is due now and its destination takes it without waiting (a
    /// free slot, a closed breaker, not disabled): the transform's outcome
    /// and the attempt's are then one journal write, and the delivery
    /// skips a trip through the due index and the scheduler. Anything else
    /// (fan-out, a later `deliver-at`, a busy or blocked destination, a
    /// gateway stopping) returns `None`, and the delivery goes through the
    /// due index as any other. Either way the transform task stays due
    /// until its outcome is journaled: a crash in between runs the
    /// transform again and sends its answer under the same `webhook-id`
    /// (ARCHITECTURE.md, *Life of a webhook*, step 3).
    async fn send_at_once(
        &self,
        route: &Route,
        message: &InboundMessage,
        deliveries: &[DeliveryRecord],
        now: u64,
    ) -> Option<Sent> {
        let [delivery] = deliveries else {
            return None;
        };
        if !matches!(delivery.status, DeliveryStatus::Pending { due_at } if due_at <= now) {
            return None;
        }
        let dest = route.destination(&delivery.request.destination)?;
        match self
            .try_send(route, message, dest, delivery, Wait::No)
            .await
        {
            Tried::Sent(sent) => Some(*sent),
            Tried::Blocked(_) | Tried::NotNow => None,
        }
    }

    /// One attempt of `delivery`, under the destination's breaker and
    /// concurrency limit, and what follows from its outcome (the retry
    /// policy, else the fallback).
    async fn try_send(
        &self,
        route: &Route,
        message: &InboundMessage,
        dest: &Destination,
        delivery: &DeliveryRecord,
        wait: Wait,
    ) -> Tried {
        let place = place_of(&route.app, &route.name, &dest.name);
        if self.store.is_disabled(&place) {
            // Disabled after a 410: parked, burning nothing, until an
            // operator re-enables it (which releases them at once).
            return Tried::Blocked(place);
        }
        // The breaker is asked once a slot is free, not before: an attempt
        // that waited for its slot behind a failing destination's slow
        // answers finds the breaker those answers opened, and is not sent.
        // At shutdown, an attempt waiting for its destination's slot never
        // starts: the task stays due, as journaled, for the next start (only
        // requests already sent are finished within the grace period).
        let slot = match wait {
            Wait::ForSlot => {
                // As many waiting as the destination takes: parked until it
                // has room, out of the scheduler's tasks in flight.
                let Some(queued) = dest.join_queue() else {
                    return Tried::Blocked(place);
                };
                let slot = tokio::select! {
                    biased;
                    () = self.stopping.cancelled() => return Tried::NotNow,
                    slot = dest.slots.acquire() => slot,
                };
                drop(queued);
                slot
            }
            // Only to a closed breaker: an open or half-open one would count
            // this refusal, and then the due path's refusal again.
            Wait::No
                if self.stopping.is_cancelled() || dest.breaker.state() != BreakerState::Closed =>
            {
                return Tried::NotNow;
            }
            Wait::No => match dest.slots.try_acquire() {
                Ok(slot) => Ok(slot),
                Err(_) => return Tried::NotNow,
            },
        };
        // A 410 answered to an attempt ahead of this one in the slot queue
        // disabled the destination meanwhile: parked, not sent.
        if self.store.is_disabled(&place) {
            drop(slot);
            return Tried::Blocked(place);
        }
        let permit = match dest.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(Rejected::Open { .. } | Rejected::ProbesBusy) => {
                drop(slot);
                // Waits out the cool-down (or, half-open, the probes in
                // flight) off the due index: one write now, one at release,
                // none per cool-down; a successful probe releases the next,
                // a closed breaker as many as the destination has room for
                // (see `parking.rs`).
                return Tried::Blocked(place);
            }
        };
        let probe = permit.is_probe();
        let number = delivery.attempts + 1;
        tracing::Span::current().record("attempt", number);
        let started_at = now_ms();
        let clock = Instant::now();
        let sent = self.send_request(dest, message, delivery, number).await;
        let duration_ms = clock.elapsed().as_millis() as u64;
        // The limit is on requests at the destination: the next one need not
        // wait for this one's outcome to be journaled.
        drop(slot);
        let (outcome, status, response, error) = match sent {
            Ok((status, retry_after, body)) => (
                classify_status(status, retry_after.as_deref(), SystemTime::now()),
                Some(status),
                body,
                None,
            ),
            Err(err) => (AttemptOutcome::retryable(), None, Vec::new(), Some(err)),
        };
        let failed = matches!(outcome, AttemptOutcome::Retryable { .. });
        dest.report(permit, failed);
        if probe
            && !failed
            && dest.breaker.state() == BreakerState::HalfOpen
            && let Err(err) = self
                .parking
                .probe_succeeded(&self.store, &place, &dest.breaker)
        {
            // The scheduler's next round releases it instead (the breaker
            // is half-open with no probe out).
            tracing::warn!(destination = %dest.name, cause = %err, "could not release a parked delivery");
        }
        let mut log = AttemptRecord {
            attempt: number,
            started_at,
            duration_ms,
            status,
            response,
            error,
            plugin_hashes: plugin_hashes(message, delivery),
        };
        let result = match self.handle_outcome(route, dest, delivery, number, outcome, &log) {
            Ok(result) => result,
            Err((failure, reason)) => {
                self.ask_fallback(route, message, failure, reason, &mut log)
                    .await
            }
        };
        let where_to = (route.app.as_str(), route.name.as_str(), dest.name.as_str());
        let outcome = outcome_label(&result);
        self.metrics
            .attempt(where_to, &log, outcome, message.received_at);
        let (retry_in_ms, dead_because) = match &result {
            AttemptResult::RetryAt(at) => (Some(at.saturating_sub(now_ms())), None),
            AttemptResult::Dead(reason) => (None, Some(reason.as_str())),
            _ => (None, None),
        };
        tracing::info!(
            app = %route.app, route = %route.name, message_id = %message.id, attempt = number,
            destination = %dest.name, status, error = log.error.as_deref(), outcome, retry_in_ms,
            reason = dead_because, "delivery attempt"
        );
        let alert = match &result {
            AttemptResult::Dead(reason) => dead_letter_alert(route, message, delivery, reason),
            _ => None,
        };
        Tried::Sent(Box::new(Sent { log, result, alert }))
    }

    /// Sends the request; `Ok` is any HTTP answer (status, Retry-After, the
    /// first bytes of the body), `Err` a timeout or network failure.
    async fn send_request(
        &self,
        dest: &Destination,
        message: &InboundMessage,
        delivery: &DeliveryRecord,
        attempt: u32,
    ) -> Result<(u16, Option<String>, Vec<u8>), String> {
        let timeout = dest.attempt_timeout(attempt);
        let response = self
            .build_request(dest, message, &delivery.request, timeout)?
            .send()
            .await
            .map_err(|err| describe(&err))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut response = response;
        while body.len() < RESPONSE_SLICE {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(RESPONSE_SLICE);
        Ok((status, retry_after, body))
    }

    /// The HTTP request for one attempt: the destination's URL with the
    /// delivery's path and query, the outbound headers, the body, and the
    /// attempt's timeout.
    pub(super) fn build_request(
        &self,
        dest: &Destination,
        message: &InboundMessage,
        request: &OutgoingRequest,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, String> {
        let mut url = dest.config.url.clone();
        if let Some(path) = request.path.as_deref().filter(|_| dest.config.allow_path) {
            url = format!(
                "{}/{}",
                url.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
        }
        if let Some(query) = request.query.as_deref().filter(|q| !q.is_empty()) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(query);
        }
        let headers = outbound_headers(dest, message, request, timeout.as_millis() as u64);
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("invalid method {:?}", request.method))?;
        Ok(self
            .client
            .request(method, &url)
            .headers(headers)
            .timeout(timeout)
            .body(request.body.clone()))
    }

    /// Moves a due delivery out of the due index until `place` (its
    /// destination) lets deliveries through again: a closed breaker, an
    /// operator's enable (see `parking.rs`).
    async fn park(
        &self,
        task: &DueTask,
        route: &Route,
        dest: &Destination,
        place: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.store.park_shared(task, &place).await?;
        self.parking
            .note(place, &route.app, &route.name, &dest.name);
        Ok(())
    }

    /// A 410 from `dest`: nothing more is sent to it until an operator
    /// re-enables it, across restarts too (the journal keeps the flag).
    pub(super) fn disable(&self, route: &Route, dest: &Destination) {
        let place = place_of(&route.app, &route.name, &dest.name);
        if let Err(err) = self.store.set_disabled(&place, true) {
            tracing::error!(destination = %dest.name, cause = %err, "could not record the destination as disabled: a restart enables it again");
        }
        tracing::warn!(app = %route.app, route = %route.name, destination = %dest.name, "destination answered 410 Gone: disabled until re-enabled");
    }

    /// Decides the delivery's next state from an attempt's outcome: `Ok`
    /// when the retry policy settles it, `Err` with the failure when the
    /// message is out of road (permanent failure, 410, attempts exhausted)
    /// and the route's fallback, if any, decides.
    fn handle_outcome(
        &self,
        route: &Route,
        dest: &Destination,
        delivery: &DeliveryRecord,
        attempt: u32,
        outcome: AttemptOutcome,
        log: &AttemptRecord,
    ) -> Result<AttemptResult, (Failure, String)> {
        let max = delivery.max_attempts.unwrap_or(dest.retry.max_attempts);
        let used = attempt.saturating_sub(delivery.budget_start);
        let cause = match (log.status, &log.error) {
            (Some(status), _) => format!("status {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "unknown error".into(),
        };
        let out_of_road = |reason: String| {
            let failure = Failure {
                destination: dest.name.clone(),
                kind: failure_kind(log),
                attempts: used,
                exhausted: true,
                caller_waiting: false,
            };
            Err((failure, reason))
        };
        match outcome {
            AttemptOutcome::Success => Ok(AttemptResult::Delivered),
            AttemptOutcome::Gone => {
                self.disable(route, dest);
                out_of_road("destination answered 410 Gone".into())
            }
            AttemptOutcome::Permanent => {
                out_of_road(format!("permanent failure on attempt {attempt}: {cause}"))
            }
            AttemptOutcome::Retryable { retry_after } if used < max => {
                let delay = dest
                    .retry
                    .next_delay(attempt, retry_after, &mut rand::rng());
                Ok(AttemptResult::RetryAt(
                    now_ms().saturating_add(delay.as_millis() as u64),
                ))
            }
            AttemptOutcome::Retryable { .. } => {
                out_of_road(format!("attempts exhausted ({used} of {max}): {cause}"))
            }
        }
    }

    /// Lets the route's fallback plugin decide what becomes of a message out
    /// of road; without one, or when it fails, the message is dead-lettered.
    async fn ask_fallback(
        &self,
        route: &Route,
        message: &InboundMessage,
        failure: Failure,
        reason: String,
        log: &mut AttemptRecord,
    ) -> AttemptResult {
        let Some(bound) = &route.fallback else {
            return AttemptResult::Dead(reason);
        };
        log.plugin_hashes.push(bound.plugin.info().hash.clone());
        let hook = webhook_of(message, log.attempt);
        let call = bound.plugin.fallback(&bound.setup, &hook, &failure);
        let decision = match self.metrics.plugin_call(bound, Role::Fallback, call).await {
            Ok(report) => report.value,
            Err(err) => {
                tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, plugin = %bound.plugin.info().name, outcome = err.outcome(), cause = %err, "fallback failed");
                return AttemptResult::Dead(format!("{reason}; fallback failed: {err}"));
            }
        };
        match decision.next {
            NextStep::Done => AttemptResult::Handled,
            NextStep::DeadLetter(why) => AttemptResult::Dead(why),
            // A fallback may keep a message going, but not forever: past
            // FALLBACK_RETRY_LIMIT attempts it is dead whatever it says.
            _ if log.attempt >= FALLBACK_RETRY_LIMIT => AttemptResult::Dead(format!(
                "{reason}; fallback retry limit of {FALLBACK_RETRY_LIMIT} attempts reached"
            )),
            NextStep::RetryAfter(ms) => AttemptResult::RetryAt(now_ms().saturating_add(ms)),
            NextStep::Reroute(destination)
                if route.config.destinations.contains_key(&destination) =>
            {
                tracing::info!(message_id = %message.id, from = %failure.destination, to = %destination, "fallback rerouted a delivery");
                AttemptResult::Reroute {
                    destination,
                    at: now_ms(),
                }
            }
            NextStep::Reroute(destination) => AttemptResult::Dead(format!(
                "{reason}; fallback rerouted to unknown destination {destination:?}"
            )),
        }
    }
}

/// The plugin versions behind an attempt, by sha256: the validate that let
/// the message in, then the transform that made the request (a fallback
/// that decides is added after them).
pub(super) fn plugin_hashes(message: &InboundMessage, delivery: &DeliveryRecord) -> Vec<String> {
    message
        .validate_hash
        .iter()
        .chain(&delivery.transform_hash)
        .cloned()
        .collect()
}

/// Most attempts a message may take in all, whatever fallbacks decide.
const FALLBACK_RETRY_LIMIT: u32 = 100;

/// The WIT failure kind of an attempt, from its log entry.
pub(super) fn failure_kind(log: &AttemptRecord) -> FailureKind {
    match (log.status, log.error.as_deref()) {
        (Some(status), _) => FailureKind::Status(UpstreamResponse {
            status,
            headers: Vec::new(),
            body: log.response.clone(),
        }),
        (None, Some("timeout")) => FailureKind::Timeout,
        (None, error) => FailureKind::Network(error.unwrap_or("unknown error").to_string()),
    }
}

/// The one delivery a route without a transform makes: the inbound request,
/// unchanged, to the route's first destination.
fn passthrough(message: &InboundMessage) -> Outgoing {
    let content_type = message
        .headers
        .iter()
        .filter(|(k, _)| k == "content-type")
        .cloned()
        .collect();
    Outgoing {
        destination: None,
        method: None,
        path: None,
        query: None,
        headers: Some(content_type),
        body: None,
        deliver_at: None,
        max_attempts: None,
    }
}

fn dead_delivery(destination: &str, reason: String, hash: Option<String>) -> DeliveryRecord {
    DeliveryRecord {
        request: OutgoingRequest {
            destination: destination.to_string(),
            method: "POST".into(),
            path: None,
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
        },
        status: DeliveryStatus::Dead { reason },
        attempts: 0,
        budget_start: 0,
        max_attempts: None,
        transform_hash: hash,
    }
}

/// Longest dead-letter reason carried in an alert's header.
const ALERT_REASON_MAX: usize = 256;

/// The copy of a message the route's `dead_letter_alert` destination gets
/// when one of its deliveries dies; none for the alert's own deliveries.
fn dead_letter_alert(
    route: &Route,
    message: &InboundMessage,
    delivery: &DeliveryRecord,
    reason: &str,
) -> Option<DeliveryRecord> {
    let alert = route.config.dead_letter_alert.as_ref()?;
    if delivery.request.destination == *alert {
        return None;
    }
    // Header-safe: printable ASCII only, bounded.
    let reason: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(ALERT_REASON_MAX)
        .collect();
    let mut headers: Vec<(String, Vec<u8>)> = message
        .headers
        .iter()
        .filter(|(k, _)| k == "content-type")
        .cloned()
        .collect();
    headers.push(("x-hookgate-dead-reason".into(), reason.into_bytes()));
    headers.push((
        "x-hookgate-dead-destination".into(),
        delivery.request.destination.clone().into_bytes(),
    ));
    Some(DeliveryRecord {
        request: OutgoingRequest {
            destination: alert.clone(),
            method: "POST".into(),
            path: None,
            query: None,
            headers,
            body: message.body.clone(),
        },
        status: DeliveryStatus::Pending { due_at: now_ms() },
        attempts: 0,
        budget_start: 0,
        max_attempts: None,
        transform_hash: None,
    })
}

/// Checks a transform's answer against the route and turns it into
/// deliveries; an unknown destination or a path the destination does not
/// allow refuses the whole answer. (What no route could send, the plugin
/// layer has refused already: `plugin::answer`.)
fn plan(
    route: &Route,
    message: &InboundMessage,
    outgoing: Vec<Outgoing>,
    default_dest: &str,
    now: u64,
    hash: Option<String>,
) -> Result<Vec<DeliveryRecord>, String> {
    outgoing
        .into_iter()
        .map(|out| {
            let destination = out.destination.unwrap_or_else(|| default_dest.to_string());
            let Some(dest) = route.config.destinations.get(&destination) else {
                return Err(format!(
                    "transform named unknown destination {destination:?}"
                ));
            };
            if out.path.is_some() && !dest.allow_path {
                return Err(format!("destination {destination:?} does not allow a path"));
            }
            let headers = out.headers.unwrap_or_else(|| {
                message
                    .headers
                    .iter()
                    .filter(|(k, _)| k == "content-type")
                    .cloned()
                    .collect()
            });
            Ok(DeliveryRecord {
                request: OutgoingRequest {
                    destination,
                    method: out.method.unwrap_or_else(|| message.method.clone()),
                    path: out.path,
                    query: out.query,
                    headers,
                    body: out.body.unwrap_or_else(|| message.body.clone()),
                },
                status: DeliveryStatus::Pending {
                    due_at: out.deliver_at.unwrap_or(now).max(now),
                },
                attempts: 0,
                budget_start: 0,
                max_attempts: out.max_attempts,
                transform_hash: hash.clone(),
            })
        })
        .collect()
}

/// The headers of an outbound request: the transform's, the destination's,
/// then the ones the gateway always sets (stable id for receiver dedup, the
/// attempt's time budget, and the Standard Webhooks signature).
fn outbound_headers(
    dest: &Destination,
    message: &InboundMessage,
    request: &OutgoingRequest,
    timeout_ms: u64,
) -> HeaderMap {
    let parse = |name: &str, value: &[u8]| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        ))
    };
    let mut headers = HeaderMap::new();
    // A repeated header of the transform's is sent repeated. Its names and
    // values were checked when it answered (`plugin::answer`); a record
    // journaled before that check may still hold one that does not parse,
    // which is left out.
    for (name, value) in &request.headers {
        // The request's framing and host are the gateway's
        // (`plugin::answer::gateway_owned`).
        if gateway_owned(name) {
            continue;
        }
        if let Some((name, value)) = parse(name, value) {
            headers.append(name, value);
        }
    }
    let mut put = |name: &str, value: &[u8]| {
        if let Some((name, value)) = parse(name, value) {
            headers.insert(name, value);
        }
    };
    for (name, value) in &dest.headers {
        put(name, value.as_bytes());
    }
    put("webhook-id", message.id.as_bytes());
    put("x-request-id", message.id.as_bytes());
    put("x-timeout-ms", timeout_ms.to_string().as_bytes());
    if let Some(signer) = &dest.body_signer {
        let (name, value) = signer.sign(&request.body);
        put(name.as_str(), value.as_bytes());
    }
    if let Some(secret) = &dest.secret {
        let timestamp = (now_ms() / 1000) as i64;
        let signature = sign_standard_webhooks(secret, &message.id, timestamp, &request.body);
        put("webhook-timestamp", timestamp.to_string().as_bytes());
        put("webhook-signature", signature.as_bytes());
    }
    headers
}

/// A short, stable description of a failed request for the attempt log.
pub(super) fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".into()
    } else if err.is_connect() {
        // The innermost cause says which: refused, unreachable, DNS, TLS.
        let mut cause: &dyn std::error::Error = err;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        format!("connection failed: {cause}")
    } else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        format!("network error: {text}")
    }
}
