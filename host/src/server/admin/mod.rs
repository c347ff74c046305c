//! The admin listener: `/health` and `/metrics` for probes and scrapers, and
//! the admin API under `/admin/` for operators (`handlers.rs`).
//!
//! It has its own address (`server.admin_listen`, loopback by default) so
//! it is never exposed with the webhook port by accident, and it starts only
//! when the environment variable named by `server.admin_token_env` holds a
//! token: a gateway nobody can authenticate to has no business answering
//! admin calls. `/health` and `/metrics` need no token (probes and Prometheus
//! scrape them; they change nothing). Every `/admin/` call needs
//! `Authorization: Bearer <token>`, compared in constant time; anything else,
//! unknown paths included, is a 401.

mod handlers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::{self, BreakerView, HealthInputs, HealthReport, HealthStatus};
use super::ingress::{Answer, error};
use super::{Gateway, ServeError};
use crate::clock::now_ms;
use crate::config::{Config, HealthConfig};
use crate::delivery::dispatcher::Dispatcher;
use crate::delivery::parking::place_of;
use crate::metrics::recent::{LastError, RouteFigures};
use crate::metrics::{CONTENT_TYPE, DestinationState};
use crate::store::QueueStats;

/// What the admin listener serves from.
pub(super) struct Admin {
    gateway: Arc<Gateway>,
    dispatcher: Arc<Dispatcher>,
    health: HealthConfig,
    /// SHA-256 of the token: comparing digests keeps the comparison
    /// constant-time whatever the length of what a caller sends.
    token_digest: [u8; 32],
}

/// Starts the admin listener if a token is configured (see the module
/// docs); logs either way.
pub(super) async fn start(
    config: &Config,
    gateway: &Arc<Gateway>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let var = &config.server.admin_token_env;
    let token = match std::env::var(var) {
        Ok(token) if !token.trim().is_empty() => token,
        _ => {
            tracing::info!(env = %var, addr = %config.server.admin_listen, "admin listener off: set the token variable to serve /health, /metrics and the admin API");
            return Ok(());
        }
    };
    let addr = &config.server.admin_listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| ServeError::AdminListen {
            addr: addr.clone(),
            cause,
        })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    // Tests and scripts read the admin address from this line.
    tracing::info!(addr = %local, "admin listening");
    let admin = Admin {
        gateway: gateway.clone(),
        dispatcher: gateway.dispatcher.clone(),
        health: config.health.clone(),
        token_digest: Sha256::digest(token.trim().as_bytes()).into(),
    };
    tokio::spawn(serve(Arc::new(admin), listener, shutdown));
    Ok(())
}

/// How long admin requests in flight may take to finish at shutdown.
const ADMIN_GRACE: Duration = Duration::from_secs(5);

async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(cause = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(Admin::handle(admin, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(cause = %err, "admin connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(ADMIN_GRACE, graceful.shutdown()).await;
}

/// Query parameters by name (the last one wins).
pub(super) type Query = HashMap<String, String>;

impl Admin {
    /// Answers one request on a blocking thread: admin calls walk journal
    /// trees (a large backlog takes a while), and must not hold up the
    /// async workers that serve webhooks. No admin call reads a body.
    async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Answer {
        let (parts, _body) = req.into_parts();
        tokio::task::spawn_blocking(move || admin.respond(&parts))
            .await
            .unwrap_or_else(|err| {
                tracing::error!(cause = %err, "admin call failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, "the admin call failed")
            })
    }

    fn respond(&self, req: &http::request::Parts) -> Answer {
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query: Query = url::form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // HEAD is GET without the body (hyper leaves it out), for probes
        // that only look at the status.
        let read = method == Method::GET || method == Method::HEAD;
        match segments.as_slice() {
            ["health"] if read => self.health(),
            ["ready"] if read => self.ready(),
            ["live"] if read => json_answer(StatusCode::OK, &json!({ "live": true })),
            ["metrics"] if read => self.metrics(),
            ["health" | "ready" | "live" | "metrics"] => {
                let mut answer = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{path} answers GET and HEAD, not {method}"),
                );
                answer
                    .headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
                answer
            }
            ["admin", rest @ ..] => {
                if !self.authorized(&req.headers) {
                    return unauthorized();
                }
                handlers::api(self, &method, rest, &query)
            }
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no endpoint {method} {path}"),
            ),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest.ct_eq(&self.token_digest).into()
    }

    /// The queue figures; a journal that cannot be read is reported as a
    /// gateway error and zero figures, so `/health` still answers.
    fn queue(&self) -> Result<QueueStats, LastError> {
        self.gateway.store.queue_stats(now_ms()).map_err(|err| {
            tracing::error!(cause = %err, "reading queue figures failed");
            LastError {
                at: now_ms(),
                message: format!("journal unreadable: {err}"),
            }
        })
    }

    fn breakers(&self) -> Vec<BreakerView> {
        let now = tokio::time::Instant::now();
        let routes = self.dispatcher.routes.load();
        routes
            .destinations()
            .into_iter()
            .map(|(app, route, dest)| {
                let state = dest.breaker.state();
                let open_for_ms = match state {
                    crate::breaker::BreakerState::Open { until } => {
                        Some(until.saturating_duration_since(now).as_millis() as u64)
                    }
                    _ => None,
                };
                let counters = dest.breaker.counters();
                BreakerView {
                    app: app.to_string(),
                    route: route.to_string(),
                    destination: dest.name.clone(),
                    url: dest.config.url.clone(),
                    state: state.label(),
                    open_for_ms,
                    disabled: self
                        .gateway
                        .store
                        .is_disabled(&place_of(app, route, &dest.name)),
                    opened: counters.opened,
                    rejected: counters.rejected,
                }
            })
            .collect()
    }

    pub(super) fn health_report(&self) -> HealthReport {
        let now = now_ms();
        let metrics = &self.gateway.metrics;
        let mut routes = metrics.recent.figures(now);
        let table = self.gateway.routes.load();
        for route in table.iter() {
            if !routes
                .iter()
                .any(|r| r.app == route.app && r.route == route.name)
            {
                routes.push(RouteFigures {
                    app: route.app.clone(),
                    route: route.name.clone(),
                    ..RouteFigures::default()
                });
            }
        }
        routes.sort_by(|a, b| (&a.app, &a.route).cmp(&(&b.app, &b.route)));
        let store = &self.gateway.store;
        // A stalled journal may also hold the locks a walk of its trees
        // needs: report it without walking.
        let (queue, unreadable) = match store.stalled_for() {
            Some(stalled) => (
                QueueStats {
                    pending: store.pending(),
                    ..QueueStats::default()
                },
                Some(LastError {
                    at: now,
                    message: format!(
                        "stalled: a write has waited {} s, and nothing is acknowledged meanwhile",
                        stalled.as_secs()
                    ),
                }),
            ),
            None => match self.queue() {
                Ok(queue) => (queue, None),
                Err(err) => (QueueStats::default(), Some(err)),
            },
        };
        let full_backlogs = table
            .iter()
            .map(|r| (r, store.backlog(&r.app, &r.name)))
            .filter(|(r, backlog)| *backlog >= r.backlog_limit)
            .map(|(r, backlog)| (format!("{}/{}", r.app, r.name), backlog, r.backlog_limit))
            .collect();
        health::report(HealthInputs {
            config: &self.health,
            routes,
            gateway_error: unreadable.or_else(|| metrics.recent.recent_gateway_error(now)),
            queue,
            full_backlogs,
            breakers: self.breakers(),
            plugins: self.gateway.plugins.status(),
            config_status: self
                .gateway
                .config_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        })
    }

    fn health(&self) -> Answer {
        let report = self.health_report();
        let status = match report.status {
            HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        json_answer(status, &report)
    }

    /// `GET /ready`: whether this instance can take webhooks, for a load
    /// balancer or a Kubernetes readiness probe: 503 only while the journal
    /// is stalled or failing (then ingress answers 503 to every sender):
    /// failed for good, a write waiting past the stall limit, or a write
    /// that failed within the last [`READY_ERROR_WINDOW_MS`] (one failed
    /// write does not take the instance out for `/health`'s whole window).
    /// What one route's receivers do (a full backlog, failed deliveries)
    /// does not make the instance unready; `/health` reports that.
    fn ready(&self) -> Answer {
        let now = now_ms();
        let store = &self.gateway.store;
        let reason = if let Some(cause) = store.failure() {
            Some(format!("the journal failed: {cause}"))
        } else if let Some(stalled) = store.stalled_for() {
            Some(format!(
                "the journal is stalled: a write has waited {} s",
                stalled.as_secs()
            ))
        } else {
            self.gateway
                .metrics
                .recent
                .recent_gateway_error(now)
                .filter(|err| err.at >= now.saturating_sub(READY_ERROR_WINDOW_MS))
                .map(|err| format!("journal writes failing: {}", err.message))
        };
        match reason {
            None => json_answer(StatusCode::OK, &json!({ "ready": true })),
            Some(reason) => json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": reason }),
            ),
        }
    }

    fn metrics(&self) -> Answer {
        let queue = self.queue().unwrap_or_default();
        let routes = self.dispatcher.routes.load();
        let destinations = routes.destinations();
        let states = destinations
            .iter()
            .map(|(app, route, dest)| DestinationState {
                app,
                route,
                destination: &dest.name,
                breaker: dest.breaker.state().label(),
                disabled: self
                    .gateway
                    .store
                    .is_disabled(&place_of(app, route, &dest.name)),
            });
        let metrics = &self.gateway.metrics;
        metrics.body_memory_in_use(self.gateway.bodies.held());
        let text = metrics.render(&queue, states, self.gateway.store.kv_usage());
        let mut response = Answer::new(Full::new(Bytes::from(text)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

/// How recent a failed journal write keeps `/ready` at 503.
const READY_ERROR_WINDOW_MS: u64 = 10_000;

/// `value` as JSON with `status`.
pub(super) fn json_answer(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    match serde_json::to_value(value) {
        Ok(json) => super::ingress::answer(status, json),
        Err(err) => {
            tracing::error!(cause = %err, "encoding an admin answer failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode the answer",
            )
        }
    }
}

fn unauthorized() -> Answer {
    let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
