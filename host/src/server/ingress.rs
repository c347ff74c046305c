//! One inbound webhook, from request to acknowledgement.
//!
//! `handle` runs the checks in order of cost, cheapest first, and answers as
//! soon as one fails: route (404), method (405), content type (415), declared
//! length (413), body within its limit and time (413, 408), signature (401),
//! validate plugin (its status), backlog (503 + Retry-After). Only then is the
//! message journaled, and the 2xx waits until the journal is on disk.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::Gateway;
use crate::clock::now_ms;
use crate::config::{Mode, OnPluginError};
use crate::delivery::inline::InlineAnswer;
use crate::plugin::{Response as PluginResponse, Role, UpstreamResponse, Verdict, hop_by_hop};
use crate::routes::{Route, webhook_of};
use crate::store::{Accepted, IdempotencyKey, InboundMessage, JOURNAL_STALL};

/// How long a sender refused for backlog is asked to wait.
const BACKLOG_RETRY_AFTER_SECS: u64 = 5;

pub(super) type Answer = Response<Full<Bytes>>;

pub(super) fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn error(status: StatusCode, reason: impl Into<String>) -> Answer {
    answer(status, json!({ "error": reason.into() }))
}

/// A fresh message id: time-ordered (UUIDv7), so ids sort by arrival.
fn new_message_id() -> String {
    format!("msg_{}", Uuid::now_v7().simple())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// The size of a request head as sent: the request line (`METHOD SP
/// target SP HTTP/1.1 CRLF`), each header line with its `: ` and CRLF, and
/// the blank line (whitespace hyper trimmed around values is not counted).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    // The target as sent: origin form (`/path?query`), or absolute form.
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + 12 + 2;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

pub(super) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Answer {
    // A sync route's timeout counts from here: reading the body and the
    // plugins spend the caller's time too.
    let arrived = tokio::time::Instant::now();
    let head = head_size(&req);
    if head > gw.max_head {
        gw.metrics.request(
            "-",
            "-",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16(),
        );
        let mut response = error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head is {head} bytes; the limit is {}", gw.max_head),
        );
        // As hyper does for a head past its buffer: the connection's slot
        // goes to someone else.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let path = req.uri().path().to_string();
    // One snapshot for the whole request: it finishes on the plugin
    // versions and destinations it started with, whatever a reload swaps in.
    let Some(route) = gw.routes.load().get(&path).cloned() else {
        gw.metrics.request("-", "-", StatusCode::NOT_FOUND.as_u16());
        return error(StatusCode::NOT_FOUND, format!("no route for {path}"));
    };
    // Every line logged for this request carries its app and route, and its
    // message id once it has one (attempt 0: before any delivery).
    // ERROR level: a span is only entered when its level is enabled, and
    // this context must reach every line, even under `RUST_LOG=warn`.
    let span = tracing::error_span!(
        "request",
        app = %route.app,
        route = %route.name,
        message_id = tracing::field::Empty,
        attempt = 0,
    );
    let answer = handle_route(gw, &route, arrived, req)
        .instrument(span)
        .await;
    gw.metrics
        .request(&route.app, &route.name, answer.status().as_u16());
    answer
}

/// The checks, plugins and journal (or inline delivery) for a request on
/// `route`.
async fn handle_route(
    gw: &Gateway,
    route: &Route,
    arrived: tokio::time::Instant,
    req: Request<Incoming>,
) -> Answer {
    if !route
        .config
        .methods
        .iter()
        .any(|m| m == req.method().as_str())
    {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", req.method()),
        );
        if let Ok(allow) = HeaderValue::from_str(&route.config.methods.join(", ")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    if route.config.require_json && !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected content-type application/json",
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_body) {
        return too_large(route.max_body);
    }
    // Held until the request is answered: the body lives that long.
    let Some(_body_memory) = gw.bodies.reserve(declared.unwrap_or(route.max_body)) else {
        return retry_later("too many request bodies in flight, retry later");
    };
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, route.max_body as usize);
    let body = match tokio::time::timeout(gw.body_timeout, limited.collect()).await {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request body took too long"),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return too_large(route.max_body);
        }
        Ok(Err(err)) => {
            tracing::debug!(cause = %err, "reading a request body failed");
            return error(StatusCode::BAD_REQUEST, "could not read the request body");
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    if let Some(verifier) = &route.verifier
        && let Err(err) = verifier.verify(&parts.headers, &body, SystemTime::now())
    {
        tracing::info!(app = %route.app, route = %route.name, reason = %err, "signature check failed");
        gw.metrics.verification_failed(&route.app, &route.name);
        return error(StatusCode::UNAUTHORIZED, err.to_string());
    }
    let message = inbound_message(route, &parts.method, &parts.uri, &parts.headers, body);
    tracing::Span::current().record("message_id", message.id.as_str());
    if let Some(refusal) = run_validate(gw, route, &message).await {
        return refusal;
    }
    match route.config.mode {
        Mode::Async => acknowledge(gw, route, message, &parts.headers).await,
        Mode::Sync => {
            let deadline = arrived + route.config.timeout;
            let answer = gw.dispatcher.forward_inline(route, message, deadline).await;
            sync_answer(route, answer)
        }
    }
}

fn too_large(limit: u64) -> Answer {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body is larger than the route's limit of {limit} bytes"),
    )
}

fn inbound_message(
    route: &Route,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> InboundMessage {
    InboundMessage {
        id: new_message_id(),
        app: route.app.clone(),
        route: route.name.clone(),
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
        received_at: now_ms(),
        // The route snapshot's validate version is the one that runs next.
        validate_hash: route
            .validate
            .as_ref()
            .map(|bound| bound.plugin.info().hash.clone()),
    }
}

/// Runs the route's validate plugin; `Some` is the answer that refuses the
/// message, `None` lets it through.
async fn run_validate(gw: &Gateway, route: &Route, message: &InboundMessage) -> Option<Answer> {
    let bound = route.validate.as_ref()?;
    let hook = webhook_of(message, 0);
    let call = bound.plugin.validate(&bound.setup, &hook);
    match gw.metrics.plugin_call(bound, Role::Validate, call).await {
        Ok(report) => match report.value {
            Verdict::Accept => None,
            // The plugin layer already holds rejections to a 4xx status and
            // a bounded reason.
            // Logged like a failed signature check: a sender whose webhooks
            // all bounce is what an operator looks for first.
            Verdict::Reject(rejection) => {
                tracing::info!(
                    app = %route.app, route = %route.name, message_id = %message.id,
                    plugin = %bound.plugin.info().name, status = rejection.status,
                    reason = %rejection.reason, "validate plugin rejected the webhook"
                );
                Some(error(
                    StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST),
                    rejection.reason,
                ))
            }
        },
        Err(err) => {
            tracing::warn!(
                app = %route.app, route = %route.name, message_id = %message.id,
                plugin = %bound.plugin.info().name, outcome = err.outcome(), cause = %err,
                "validate plugin failed"
            );
            match route.config.on_plugin_error {
                OnPluginError::Reject => Some(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the route's validation failed; try again later",
                )),
                OnPluginError::PassThrough => None,
            }
        }
    }
}

/// The longest idempotency key a sender may send: ids such as a UUID, a
/// GitHub delivery GUID or a Standard Webhooks `webhook-id` are well under
/// it, and a key is kept in the journal for its whole window.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Journals the message and answers once it is on disk.
async fn acknowledge(
    gw: &Gateway,
    route: &Route,
    message: InboundMessage,
    headers: &HeaderMap,
) -> Answer {
    let now = message.received_at;
    let mut idempotency = None;
    if let Some(idem) = &route.config.idempotency {
        // Bytes, not text: a key with bytes outside visible ASCII is still
        // a key (it used to be ignored, letting repeats through). An empty
        // value is no key: as one, it would make every later message
        // without a real key a "duplicate" of the first, answered and lost.
        let key = headers
            .get(&idem.header)
            .map_or(&b""[..], |value| value.as_bytes().trim_ascii());
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "idempotency key in {} is {} bytes, over {MAX_IDEMPOTENCY_KEY}",
                    idem.header,
                    key.len()
                ),
            );
        }
        if !key.is_empty() {
            idempotency = Some(IdempotencyKey {
                key: key.to_vec(),
                expires_at: now.saturating_add(idem.window.as_millis() as u64),
            });
        }
    }
    // After the key's check: a key the sender must fix is a 400, not a
    // 503 that it would retry unchanged.
    if gw.store.backlog(&route.app, &route.name) >= route.backlog_limit {
        return retry_later("backlog is full, retry later");
    }
    let id = message.id.clone();
    // A disk that stops taking writes must not hold every sender's
    // connection open forever: past the stall threshold the sender hears
    // 503 and retries (the message may yet be stored; its idempotency key,
    // or the receiver's dedup on the id, takes care of the copy).
    let written = gw.store.accept_durable(message, idempotency.as_ref(), now);
    let accepted = match tokio::time::timeout(JOURNAL_STALL, written).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => return storage_failed(gw, route, &id, &err),
        Err(_) => {
            tracing::error!(app = %route.app, route = %route.name, message_id = %id, waited = ?JOURNAL_STALL, "the journal did not confirm a write in time");
            return retry_later("the journal did not confirm the write in time, retry later");
        }
    };
    gw.wake.notify_one();
    let status = StatusCode::from_u16(route.config.success_status).unwrap_or(StatusCode::ACCEPTED);
    let duplicate = matches!(accepted, Accepted::Duplicate(_));
    tracing::debug!(app = %route.app, route = %route.name, message_id = %accepted.id(), duplicate, "accepted");
    answer(
        status,
        json!({ "id": accepted.id(), "duplicate": duplicate }),
    )
}

/// A sync route's answer as HTTP.
fn sync_answer(route: &Route, inline: InlineAnswer) -> Answer {
    match inline {
        InlineAnswer::Upstream(UpstreamResponse {
            status,
            headers,
            body,
        })
        | InlineAnswer::Respond(PluginResponse {
            status,
            headers,
            body,
        }) => relay(status, &headers, body).unwrap_or_else(|| safe_default(route)),
        InlineAnswer::Journaled { id } => {
            answer(StatusCode::ACCEPTED, json!({ "id": id, "queued": true }))
        }
        InlineAnswer::Filtered { id } => {
            answer(StatusCode::OK, json!({ "id": id, "filtered": true }))
        }
        InlineAnswer::SafeDefault => safe_default(route),
        InlineAnswer::RetryLater(reason) => retry_later(reason),
    }
}

/// An upstream's (or a fallback's) answer relayed to the caller; `None`
/// when its status is not one HTTP can carry as a final answer (1xx are
/// interim: hyper would answer 500, or switch protocols, in its place).
fn relay(status: u16, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> Option<Answer> {
    if status < 200 {
        return None;
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    for (name, value) in headers {
        if hop_by_hop(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Some(response)
}

/// The route's configured answer for when nothing better can be said.
fn safe_default(route: &Route) -> Answer {
    let fallback = &route.config.fallback_response;
    let content_type = [(
        "content-type".to_string(),
        fallback.content_type.clone().into_bytes(),
    )];
    relay(
        fallback.status,
        &content_type,
        fallback.body.clone().into_bytes(),
    )
    .unwrap_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable"))
}

fn storage_failed(gw: &Gateway, route: &Route, id: &str, err: &crate::store::StoreError) -> Answer {
    gw.metrics
        .recent
        .gateway_error(now_ms(), format!("journal write failed: {err}"));
    tracing::error!(app = %route.app, route = %route.name, message_id = %id, cause = %err, "journal write failed");
    retry_later("could not store the message, retry later")
}

/// 503 with Retry-After: the sender should try again; nothing was stored.
fn retry_later(reason: &str) -> Answer {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(BACKLOG_RETRY_AFTER_SECS),
    );
    response
}
