//! The admin API's calls, behind the token check in `mod.rs`. Paths are
//! relative to `/admin/`:
//!
//! | call | what it does |
//! |---|---|
//! | `GET messages?app&route&status&after&limit` | a page of messages, oldest first |
//! | `GET messages/{id}` | one message, its deliveries and every attempt |
//! | `GET dead-letters?app&route&destination&after&limit` | a page of dead letters |
//! | `POST dead-letters/{id}/replay` | replay one dead message |
//! | `POST dead-letters/replay?app&route&destination` | replay every match (`all=true` for no filter) |
//! | `DELETE dead-letters/{id}` | purge one dead message |
//! | `DELETE dead-letters?app&route&destination` | purge every match (`all=true` for no filter) |
//! | `GET breakers` | every destination's breaker and 410 flag |
//! | `POST breakers/{app}/{route}/{destination}/reset` | close a breaker now |
//! | `POST destinations/{app}/{route}/{destination}/enable` | re-enable after a 410 |
//! | `GET plugins` | plugin versions serving, load errors |
//! | `GET queue` | depth, due, delayed, peak, dead letters |
//!
//! Pages carry `next`: pass it as `after` for the following page.

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::{Admin, Query, json_answer};
use crate::clock::now_ms;
use crate::delivery::parking::place_of;
use crate::server::ingress::{Answer, error};
use crate::store::{
    DeadLetterEntry, DeliveryRecord, DeliveryStatus, MessageFilter, MessageRecord, StoreError,
};

/// Page size when the caller gives none, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1_000;

pub(super) fn api(admin: &Admin, method: &Method, path: &[&str], query: &Query) -> Answer {
    let result = match (method, path) {
        (&Method::GET, ["messages"]) => list_messages(admin, query),
        (&Method::GET, ["messages", id]) => message(admin, id),
        (&Method::GET, ["dead-letters"]) => dead_letters(admin, query),
        (&Method::POST, ["dead-letters", "replay"]) => bulk(admin, query, Bulk::Replay),
        (&Method::POST, ["dead-letters", id, "replay"]) => replay(admin, &[id.to_string()]),
        (&Method::DELETE, ["dead-letters"]) => bulk(admin, query, Bulk::Purge),
        (&Method::DELETE, ["dead-letters", id]) => purge(admin, &[id.to_string()]),
        (&Method::GET, ["breakers"]) => Ok(json_answer(
            StatusCode::OK,
            &json!({ "breakers": admin.breakers() }),
        )),
        (&Method::POST, ["breakers", app, route, dest, "reset"]) => {
            destination(admin, (app, route, dest), Action::Reset)
        }
        (&Method::POST, ["destinations", app, route, dest, "enable"]) => {
            destination(admin, (app, route, dest), Action::Enable)
        }
        (&Method::GET, ["plugins"]) => Ok(json_answer(
            StatusCode::OK,
            &json!({ "plugins": admin.gateway.plugins.status() }),
        )),
        (&Method::GET, ["queue"]) => admin
            .gateway
            .store
            .queue_stats(now_ms())
            .map(|q| json_answer(StatusCode::OK, &q)),
        _ => return no_such_call(method, path),
    };
    result.unwrap_or_else(|err| store_error(&err))
}

/// 405 with `Allow` for a known path asked with the wrong method, 404
/// otherwise.
fn no_such_call(method: &Method, path: &[&str]) -> Answer {
    let allowed = match path {
        ["messages" | "breakers" | "plugins" | "queue"] | ["messages", _] => "GET",
        ["dead-letters"] => "GET, DELETE",
        ["dead-letters", "replay"] | ["dead-letters", _, "replay"] => "POST",
        ["dead-letters", _] => "DELETE",
        ["breakers", _, _, _, "reset"] | ["destinations", _, _, _, "enable"] => "POST",
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no admin call {method} /admin/{}", path.join("/")),
            );
        }
    };
    let mut answer = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("/admin/{} answers {allowed}, not {method}", path.join("/")),
    );
    answer
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allowed));
    answer
}

/// A bad request parameter, as an answer.
fn bad(reason: String) -> Result<Answer, StoreError> {
    Ok(error(StatusCode::BAD_REQUEST, reason))
}

fn store_error(err: &StoreError) -> Answer {
    match err {
        StoreError::NotFound(what) => error(StatusCode::NOT_FOUND, format!("not found: {what}")),
        StoreError::Invalid(why) | StoreError::Full(why) => {
            error(StatusCode::CONFLICT, why.clone())
        }
        StoreError::Backend(_) | StoreError::Corrupt(_) => {
            tracing::error!(cause = %err, "admin call failed in the journal");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the journal could not be read or written",
            )
        }
    }
}

/// The filter and paging parameters of a list call.
fn filter_of(query: &Query) -> Result<(MessageFilter, usize), String> {
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(s.parse()?),
    };
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit {l:?} is not a number from 1 to {MAX_LIMIT}")),
        },
    };
    // A cursor is a message id from an earlier page; anything else would
    // read as "from the start" or "the end", silently.
    if let Some(after) = query.get("after")
        && !is_message_id(after)
    {
        return Err(format!(
            "after {after:?} is not a cursor: pass the `next` of the previous page"
        ));
    }
    // `route=crm/leads` is the form `admin message` prints: accept it.
    let (app, route) = match query.get("route").and_then(|r| r.split_once('/')) {
        Some((in_app, name)) => {
            if let Some(app) = query.get("app").filter(|a| *a != in_app) {
                return Err(format!("route \"{in_app}/{name}\" is not in app {app:?}"));
            }
            (Some(in_app.to_string()), Some(name.to_string()))
        }
        None => (query.get("app").cloned(), query.get("route").cloned()),
    };
    let filter = MessageFilter {
        app,
        route,
        status,
        destination: query.get("destination").cloned(),
    };
    Ok((filter, limit))
}

/// Whether `id` has the shape of the ids ingress gives (`msg_` and 32 hex
/// digits of a UUIDv7).
fn is_message_id(id: &str) -> bool {
    id.strip_prefix("msg_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A 404 when a filter `matched_nothing` because it names something that
/// is not configured.
fn typo(admin: &Admin, filter: &MessageFilter, matched_nothing: bool) -> Option<Answer> {
    if !matched_nothing {
        return None;
    }
    let reason = unconfigured(admin, filter)?;
    Some(error(StatusCode::NOT_FOUND, reason))
}

/// Why a filter that matched nothing may be a typo: the app, route or
/// destination it names is not in the config. Only asked when nothing
/// matched, since a route removed from the config may still have messages
/// (which then match and are served as usual).
fn unconfigured(admin: &Admin, filter: &MessageFilter) -> Option<String> {
    let routes = admin.dispatcher.routes.load();
    let matching = |app: &str, route: &str| {
        filter.app.as_deref().is_none_or(|a| a == app)
            && filter.route.as_deref().is_none_or(|r| r == route)
    };
    let routes_matched: Vec<_> = routes
        .iter()
        .filter(|r| matching(&r.app, &r.name))
        .collect();
    if routes_matched.is_empty() {
        let named = match (&filter.app, &filter.route) {
            (Some(app), Some(route)) => format!("route {app}/{route}"),
            (Some(app), None) => format!("app {app:?}"),
            (None, Some(route)) => format!("route {route:?}"),
            (None, None) => return None,
        };
        let known: Vec<_> = routes
            .iter()
            .map(|r| format!("{}/{}", r.app, r.name))
            .collect();
        return Some(format!(
            "no {named} in the config (routes: {})",
            known.join(", ")
        ));
    }
    let destination = filter.destination.as_deref()?;
    if routes_matched
        .iter()
        .any(|r| r.destination(destination).is_some())
    {
        return None;
    }
    Some(format!(
        "no destination {destination:?} on the routes the filter names"
    ))
}

/// A message as lists show it.
#[derive(Serialize)]
struct MessageSummary<'a> {
    id: &'a str,
    app: &'a str,
    route: &'a str,
    status: &'static str,
    received_at: u64,
    updated_at: u64,
    deliveries: u16,
}

fn summary(record: &MessageRecord) -> MessageSummary<'_> {
    let m = &record.message;
    MessageSummary {
        id: &m.id,
        app: &m.app,
        route: &m.route,
        status: record.status.as_str(),
        received_at: m.received_at,
        updated_at: record.updated_at,
        deliveries: record.deliveries.unwrap_or(0),
    }
}

fn list_messages(admin: &Admin, query: &Query) -> Result<Answer, StoreError> {
    let (filter, limit) = match filter_of(query) {
        Ok(parsed) => parsed,
        Err(reason) => return bad(reason),
    };
    let after = query.get("after").map(String::as_str);
    let page = admin.gateway.store.list_messages(&filter, after, limit)?;
    if let Some(answer) = typo(admin, &filter, page.items.is_empty() && after.is_none()) {
        return Ok(answer);
    }
    let messages: Vec<_> = page.items.iter().map(summary).collect();
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "messages": messages, "next": page.next }),
    ))
}

/// `(status, reason, due_at)` of a delivery, as labels.
fn delivery_state(delivery: &DeliveryRecord) -> (&'static str, Option<&str>, Option<u64>) {
    match &delivery.status {
        DeliveryStatus::Pending { due_at } => ("pending", None, Some(*due_at)),
        DeliveryStatus::Delivered => ("delivered", None, None),
        DeliveryStatus::Dead { reason } => ("dead", Some(reason.as_str()), None),
        DeliveryStatus::Handled => ("handled", None, None),
        DeliveryStatus::Replayed => ("replayed", None, None),
    }
}

fn message(admin: &Admin, id: &str) -> Result<Answer, StoreError> {
    let store = &admin.gateway.store;
    let Some(record) = store.message(id)? else {
        return Err(StoreError::NotFound(format!("message {id:?}")));
    };
    let mut deliveries = Vec::new();
    for index in 0..record.deliveries.unwrap_or(0) {
        let Some(delivery) = store.delivery(id, index)? else {
            continue;
        };
        let attempts: Vec<_> = store
            .attempts(id, index)?
            .into_iter()
            .map(|a| {
                json!({
                    "attempt": a.attempt,
                    "started_at": a.started_at,
                    "duration_ms": a.duration_ms,
                    "status": a.status,
                    "response": String::from_utf8_lossy(&a.response),
                    "error": a.error,
                    "plugin_hashes": a.plugin_hashes,
                })
            })
            .collect();
        let (status, reason, due_at) = delivery_state(&delivery);
        deliveries.push(json!({
            "index": index,
            "destination": delivery.request.destination,
            "status": status,
            "reason": reason,
            "due_at": due_at,
            "attempts_made": delivery.attempts,
            "max_attempts": delivery.max_attempts,
            "transform_hash": delivery.transform_hash,
            "attempts": attempts,
        }));
    }
    let m = &record.message;
    let body = json!({
        "message": summary(&record),
        "method": m.method,
        "path": m.path,
        "query": m.query,
        "body_bytes": m.body.len(),
        "deliveries": deliveries,
    });
    Ok(json_answer(StatusCode::OK, &body))
}

fn letter_view(entry: &DeadLetterEntry) -> serde_json::Value {
    let (_, reason, _) = delivery_state(&entry.letter.delivery);
    let m = &entry.message.message;
    json!({
        "message_id": entry.letter.message_id,
        "index": entry.letter.index,
        "app": m.app,
        "route": m.route,
        "destination": entry.letter.delivery.request.destination,
        "reason": reason,
        "attempts": entry.letter.delivery.attempts,
        "received_at": m.received_at,
    })
}

fn dead_letters(admin: &Admin, query: &Query) -> Result<Answer, StoreError> {
    let (filter, limit) = match filter_of(query) {
        Ok(parsed) => parsed,
        Err(reason) => return bad(reason),
    };
    let after = query.get("after").map(String::as_str);
    let page = admin
        .gateway
        .store
        .list_dead_letters(&filter, after, limit)?;
    if let Some(answer) = typo(admin, &filter, page.items.is_empty() && after.is_none()) {
        return Ok(answer);
    }
    let letters: Vec<_> = page.items.iter().map(letter_view).collect();
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "dead_letters": letters, "next": page.next }),
    ))
}

#[derive(Clone, Copy)]
enum Bulk {
    Replay,
    Purge,
}

/// Replays or purges every dead message matching the filter. Without a
/// filter the caller must say `all=true`: emptying the whole queue by a
/// forgotten parameter is not something to make easy.
fn bulk(admin: &Admin, query: &Query, what: Bulk) -> Result<Answer, StoreError> {
    let (filter, _) = match filter_of(query) {
        Ok(parsed) => parsed,
        Err(reason) => return bad(reason),
    };
    if filter.is_empty() && query.get("all").map(String::as_str) != Some("true") {
        return bad("give app, route or destination, or all=true".into());
    }
    let mut ids: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = admin
            .gateway
            .store
            .list_dead_letters(&filter, after.as_deref(), MAX_LIMIT)?;
        for entry in page.items {
            if ids.last() != Some(&entry.letter.message_id) {
                ids.push(entry.letter.message_id);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if let Some(answer) = typo(admin, &filter, ids.is_empty()) {
        return Ok(answer);
    }
    match what {
        Bulk::Replay => replay(admin, &ids),
        Bulk::Purge => purge(admin, &ids),
    }
}

/// Replays `ids`. The answer also names the breakers that will hold the
/// replayed deliveries back (open, or a destination disabled after a 410)
/// on the routes replayed: a replay right after the receiver recovered
/// otherwise seems to do nothing until the breaker's cool-down ends.
fn replay(admin: &Admin, ids: &[String]) -> Result<Answer, StoreError> {
    let store = &admin.gateway.store;
    let now = now_ms();
    let mut routes = std::collections::BTreeSet::new();
    for id in ids {
        // One message asked for by id: its own error is the answer.
        routes.insert(store.replay(id, now)?);
    }
    admin.gateway.wake.notify_one();
    tracing::info!(messages = ids.len(), "dead letters replayed by an operator");
    let held_back: Vec<_> = admin
        .breakers()
        .into_iter()
        .filter(|b| {
            (b.state != "closed" || b.disabled)
                && routes.contains(&(b.app.clone(), b.route.clone()))
        })
        .collect();
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "replayed": ids, "held_back_by": held_back }),
    ))
}

fn purge(admin: &Admin, ids: &[String]) -> Result<Answer, StoreError> {
    for id in ids {
        admin.gateway.store.purge(id)?;
    }
    tracing::info!(messages = ids.len(), "dead letters purged by an operator");
    Ok(json_answer(StatusCode::OK, &json!({ "purged": ids })))
}

#[derive(Clone, Copy)]
enum Action {
    Reset,
    Enable,
}

fn destination(
    admin: &Admin,
    (app, route, name): (&str, &str, &str),
    action: Action,
) -> Result<Answer, StoreError> {
    let routes = admin.dispatcher.routes.load();
    let Some(dest) = routes.by_name(app, route).and_then(|r| r.destination(name)) else {
        return Err(StoreError::NotFound(format!(
            "destination {app}/{route}/{name}"
        )));
    };
    match action {
        Action::Reset => {
            dest.breaker.reset();
            tracing::info!(
                app,
                route,
                destination = name,
                "breaker reset by an operator"
            );
        }
        Action::Enable => {
            admin
                .dispatcher
                .store
                .set_disabled(&place_of(app, route, &dest.name), false)?;
            tracing::info!(
                app,
                route,
                destination = name,
                "destination re-enabled by an operator"
            );
        }
    }
    admin.gateway.wake.notify_one();
    let view = admin
        .breakers()
        .into_iter()
        .find(|b| b.app == app && b.route == route && b.destination == name);
    Ok(json_answer(StatusCode::OK, &view))
}
