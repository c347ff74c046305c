//! A sync route's delivery, made while the caller waits: transform, one
//! attempt under the route's timeout, and, when the upstream fails (timeout,
//! connection error, 5xx, open breaker, disabled destination), the route's
//! fallback plugin deciding both the caller's answer and what becomes of the
//! message.
//!
//! Nothing is journaled on the good path: the caller has the upstream's
//! answer. The message is journaled (one transaction with the inline
//! attempt's log, then a group-commit flush) only when it must outlive the
//! request: the fallback queued it for later, rerouted it or dead-lettered
//! it, the fallback itself failed, or the transform failed under the
//! `reject` policy. From there it is an ordinary journaled message: retried,
//! dead-lettered and replayed like one from an async route.
//!
//! Time: everything up to the upstream's answer fits in the route's
//! `timeout`, counted from the request's arrival; the fallback then runs
//! under its own plugin deadline, and a journal write adds one flush. The
//! caller's worst case is `timeout + fallback deadline + one flush`.

use std::time::SystemTime;

use tokio::time::Instant;

use super::destination::Destination;
use super::dispatcher::{Dispatcher, describe, failure_kind, plugin_hashes};
use super::parking::place_of;
use super::retry::{AttemptOutcome, classify_status};
use crate::clock::now_ms;
use crate::plugin::{Failure, FailureKind, NextStep, Response, Role, UpstreamResponse};
use crate::routes::{Route, webhook_of};
use crate::store::{AttemptRecord, DeliveryRecord, DeliveryStatus, InboundMessage};

/// Bytes of a failed answer kept in the attempt log and shown to the
/// fallback, as on async routes.
const FAILURE_SLICE: usize = 4 << 10;

/// What a sync route's caller gets, before `server/` makes it HTTP.
#[derive(Debug)]
pub enum InlineAnswer {
    /// The upstream's own answer: a 2xx, or any status the fallback does not
    /// take over (3xx, 4xx: the upstream meant them).
    Upstream(UpstreamResponse),
    /// The fallback's synthetic answer.
    Respond(Response),
    /// The message was journaled (for later delivery or for an operator) and
    /// the fallback gave no answer of its own: `202` with the id.
    Journaled { id: String },
    /// The transform dropped the message: nothing was forwarded.
    Filtered { id: String },
    /// The route's configured safe answer: no fallback, or it failed.
    SafeDefault,
    /// The message had to be journaled and could not be (backlog full,
    /// storage failing): the caller should retry.
    RetryLater(&'static str),
}

/// Why the inline attempt gave no usable answer: the attempt's log and the
/// failure as the fallback sees it.
struct Failed {
    log: AttemptRecord,
    kind: FailureKind,
}

impl Dispatcher {
    /// Delivers a sync route's message while its caller waits; `deadline` is
    /// the request's arrival plus the route's timeout.
    pub async fn forward_inline(
        &self,
        route: &Route,
        message: InboundMessage,
        deadline: Instant,
    ) -> InlineAnswer {
        let now = now_ms();
        let mut deliveries = self.plan_deliveries(route, &message, now).await;
        if deliveries.len() > 1 {
            let reason = format!(
                "a sync route forwards one message; the transform returned {}",
                deliveries.len()
            );
            deliveries.truncate(1);
            deliveries[0].status = DeliveryStatus::Dead { reason };
        }
        let Some(mut delivery) = deliveries.pop() else {
            return InlineAnswer::Filtered { id: message.id };
        };
        match delivery.status {
            // The transform failed or was refused: dead-lettered, as on an
            // async route, and the caller gets the safe answer.
            DeliveryStatus::Dead { .. } => {
                return match self.journal(route, message, delivery, None).await {
                    Ok(_) => InlineAnswer::SafeDefault,
                    Err(answer) => answer,
                };
            }
            // A `deliver-at` in the future: queued for later by the transform.
            DeliveryStatus::Pending { due_at } if due_at > now => {
                return match self.journal(route, message, delivery, None).await {
                    Ok(id) => InlineAnswer::Journaled { id },
                    Err(answer) => answer,
                };
            }
            _ => {}
        }
        let clock = std::time::Instant::now();
        let attempted = self
            .attempt_inline(route, &message, &delivery, deadline)
            .await;
        let where_to = (route.app.as_str(), route.name.as_str());
        let failure = attempted.as_ref().err().map(|failed| &failed.log);
        let dest = &delivery.request.destination;
        self.metrics.inline_attempt(
            (where_to.0, where_to.1, dest),
            clock.elapsed(),
            failure,
            message.received_at,
        );
        match attempted {
            Ok(response) => {
                self.tell_success(route, &message, &response).await;
                InlineAnswer::Upstream(response)
            }
            Err(failed) => {
                delivery.attempts = 1;
                self.decide_inline(route, message, delivery, failed).await
            }
        }
    }

    /// The one inline attempt. `Ok` is an answer for the caller, `Err` a
    /// failure the fallback takes over.
    async fn attempt_inline(
        &self,
        route: &Route,
        message: &InboundMessage,
        delivery: &DeliveryRecord,
        deadline: Instant,
    ) -> Result<UpstreamResponse, Box<Failed>> {
        let started_at = now_ms();
        let clock = Instant::now();
        let mut log = AttemptRecord {
            attempt: 1,
            started_at,
            duration_ms: 0,
            status: None,
            response: Vec::new(),
            error: None,
            plugin_hashes: plugin_hashes(message, delivery),
        };
        let fail = |mut log: AttemptRecord, kind: FailureKind, error: &str| {
            log.duration_ms = clock.elapsed().as_millis() as u64;
            log.error = Some(error.to_string());
            Err(Box::new(Failed { log, kind }))
        };
        let name = &delivery.request.destination;
        let Some(dest) = route.destination(name) else {
            let error = format!("destination {name:?} is not configured");
            return fail(log, FailureKind::Network(error.clone()), &error);
        };
        if self
            .store
            .is_disabled(&place_of(&route.app, &route.name, &dest.name))
        {
            return fail(log, FailureKind::Disabled, "destination disabled");
        }
        let Ok(permit) = dest.breaker.try_acquire() else {
            return fail(log, FailureKind::BreakerOpen, "circuit breaker open");
        };
        // Waiting for a concurrency slot spends the caller's time too.
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, dest.slots.acquire()).await else {
            return fail(log, FailureKind::Timeout, "timeout");
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = dest.attempt_timeout(1).min(remaining);
        let sent = self
            .send_inline(dest, message, delivery, timeout, route.max_body)
            .await;
        log.duration_ms = clock.elapsed().as_millis() as u64;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                dest.report(permit, true);
                let kind = failure_kind(&AttemptRecord {
                    error: Some(error.clone()),
                    ..log.clone()
                });
                return fail(log, kind, &error);
            }
        };
        let retry_after = header_text(&response, "retry-after");
        let outcome = classify_status(response.status, retry_after.as_deref(), SystemTime::now());
        dest.report(permit, matches!(outcome, AttemptOutcome::Retryable { .. }));
        if matches!(outcome, AttemptOutcome::Gone) {
            self.disable(route, dest);
        }
        if response.status >= 500 {
            log.status = Some(response.status);
            log.response = response.body[..response.body.len().min(FAILURE_SLICE)].to_vec();
            let kind = failure_kind(&log);
            return Err(Box::new(Failed { log, kind }));
        }
        Ok(response)
    }

    /// Sends the request and reads the whole answer, bounded by `limit`
    /// bytes and by `timeout` (which covers the body too).
    async fn send_inline(
        &self,
        dest: &Destination,
        message: &InboundMessage,
        delivery: &DeliveryRecord,
        timeout: std::time::Duration,
        limit: u64,
    ) -> Result<UpstreamResponse, String> {
        let mut response = self
            .build_request(dest, message, &delivery.request, timeout)?
            .send()
            .await
            .map_err(|err| describe(&err))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| describe(&err))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(format!("network error: answer larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    /// Shows a good answer to the fallback's `success` companion, if it has
    /// one (to cache it). Its failure is logged; the caller is not affected.
    async fn tell_success(
        &self,
        route: &Route,
        message: &InboundMessage,
        response: &UpstreamResponse,
    ) {
        let Some(bound) = route
            .fallback
            .as_ref()
            .filter(|b| b.plugin.plays(Role::Success))
        else {
            return;
        };
        if !(200..300).contains(&response.status) {
            return;
        }
        let hook = webhook_of(message, 1);
        let call = bound.plugin.success(&bound.setup, &hook, response);
        if let Err(err) = self.metrics.plugin_call(bound, Role::Success, call).await {
            tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, plugin = %bound.plugin.info().name, outcome = err.outcome(), cause = %err, "success hook failed");
        }
    }

    /// Asks the fallback what the caller gets and what becomes of the
    /// message, and journals the message if it must outlive the request.
    async fn decide_inline(
        &self,
        route: &Route,
        message: InboundMessage,
        mut delivery: DeliveryRecord,
        failed: Box<Failed>,
    ) -> InlineAnswer {
        let Failed { mut log, kind } = *failed;
        let cause = log
            .error
            .clone()
            .unwrap_or_else(|| format!("status {}", log.status.unwrap_or(0)));
        let Some(bound) = &route.fallback else {
            tracing::info!(app = %route.app, route = %route.name, message_id = %message.id, %cause, "sync forward failed; no fallback, safe answer");
            return InlineAnswer::SafeDefault;
        };
        log.plugin_hashes.push(bound.plugin.info().hash.clone());
        let failure = Failure {
            destination: delivery.request.destination.clone(),
            kind,
            attempts: 1,
            exhausted: false,
            caller_waiting: true,
        };
        let hook = webhook_of(&message, 1);
        let call = bound.plugin.fallback(&bound.setup, &hook, &failure);
        let decision = match self.metrics.plugin_call(bound, Role::Fallback, call).await {
            Ok(report) => report.value,
            Err(err) => {
                tracing::warn!(app = %route.app, route = %route.name, message_id = %message.id, plugin = %bound.plugin.info().name, outcome = err.outcome(), cause = %err, "fallback failed; safe answer, message dead-lettered");
                delivery.status = DeliveryStatus::Dead {
                    reason: format!("{cause}; fallback failed: {err}"),
                };
                // Journaled so an operator sees it; the caller gets the safe
                // answer whether or not that worked (a failure is logged).
                let _ = self.journal(route, message, delivery, Some(&log)).await;
                return InlineAnswer::SafeDefault;
            }
        };
        let now = now_ms();
        delivery.status = match decision.next {
            NextStep::Done => {
                tracing::info!(app = %route.app, route = %route.name, message_id = %message.id, %cause, "sync forward failed; fallback answered");
                return decision
                    .respond
                    .map_or(InlineAnswer::SafeDefault, InlineAnswer::Respond);
            }
            NextStep::RetryAfter(ms) => DeliveryStatus::Pending {
                due_at: now.saturating_add(ms),
            },
            NextStep::Reroute(to) if route.config.destinations.contains_key(&to) => {
                delivery.request.destination = to;
                delivery.budget_start = delivery.attempts;
                DeliveryStatus::Pending { due_at: now }
            }
            NextStep::Reroute(to) => DeliveryStatus::Dead {
                reason: format!("{cause}; fallback rerouted to unknown destination {to:?}"),
            },
            NextStep::DeadLetter(reason) => DeliveryStatus::Dead { reason },
        };
        tracing::info!(app = %route.app, route = %route.name, message_id = %message.id, %cause, status = ?delivery.status, "sync forward failed; fallback journaled the message");
        match self.journal(route, message, delivery, Some(&log)).await {
            Ok(id) => decision
                .respond
                .map_or(InlineAnswer::Journaled { id }, InlineAnswer::Respond),
            Err(answer) => answer,
        }
    }

    /// Journals a sync route's message with its one delivery (and the
    /// inline attempt's log) and waits until it is on disk. `Err` is the
    /// answer for the caller when that cannot be done.
    async fn journal(
        &self,
        route: &Route,
        message: InboundMessage,
        delivery: DeliveryRecord,
        attempt: Option<&AttemptRecord>,
    ) -> Result<String, InlineAnswer> {
        let pending = matches!(delivery.status, DeliveryStatus::Pending { .. });
        if pending && self.store.backlog(&route.app, &route.name) >= route.backlog_limit {
            return Err(InlineAnswer::RetryLater("backlog is full, retry later"));
        }
        let id = message.id.clone();
        let written = match self
            .store
            .accept_planned(message, &[delivery], attempt, now_ms())
        {
            Ok(()) => self.store.durable().await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            tracing::error!(app = %route.app, route = %route.name, message_id = %id, cause = %err, "journal write failed");
            return Err(InlineAnswer::RetryLater(
                "could not store the message, retry later",
            ));
        }
        if pending {
            self.wake.notify_one();
        }
        Ok(id)
    }
}

fn header_text(response: &UpstreamResponse, name: &str) -> Option<String> {
    response
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
}
