//! Meaning-level checks of a parsed [`Config`]: every problem at once, each
//! as `key.path: what is wrong (the value)`, so an operator fixes the file in
//! one pass (svix `validate_config_complete`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Config, DestinationConfig, LimitsConfig, Mode, PluginRef, RouteConfig};
use crate::plugin::MAX_PLUGIN_MEMORY;
use crate::verify::{BodySigner, Verifier, VerifyConfig};

/// Looks up an environment variable; a parameter so tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Collects problems with their key paths.
#[derive(Default)]
struct Problems(Vec<String>);

/// Below this the journal re-reads its index pages on every write.
const MIN_JOURNAL_CACHE: u64 = 8 << 20;

/// Below this the gateway could hold too few bodies at once to be of use.
const MIN_BODY_MEMORY: u64 = 64 << 10;

/// The largest request head accepted: hyper's own default is ~400 KB.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// hyper refuses a smaller read buffer (it panics below it).
const MIN_HEADER_BYTES: u64 = 8 << 10;

impl Problems {
    fn push(&mut self, path: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{path}: {problem}"));
    }
}

impl Config {
    /// Every problem in the file, empty when it is usable.
    pub fn validate(&self, env: EnvLookup<'_>) -> Vec<String> {
        let mut p = Problems::default();
        check_addr(&mut p, "server.listen", &self.server.listen);
        check_addr(&mut p, "server.admin_listen", &self.server.admin_listen);
        if self.defaults.max_body.0 == 0 {
            p.push("defaults.max_body", "must be at least 1 byte");
        }
        if self.defaults.backlog_limit == 0 {
            p.push(
                "defaults.backlog_limit",
                "must be at least 1 (0 would refuse every webhook)",
            );
        }
        let server = &self.server;
        let sizes = [
            (
                "server.journal_cache",
                server.journal_cache,
                MIN_JOURNAL_CACHE,
                "the smallest useful cache",
            ),
            (
                "server.body_memory",
                server.body_memory,
                MIN_BODY_MEMORY,
                "the least worth serving with",
            ),
            (
                "server.max_header_bytes",
                server.max_header_bytes,
                MIN_HEADER_BYTES,
                "hyper's smallest read buffer",
            ),
        ];
        for (key, size, min, what) in sizes {
            if size.0 < min {
                p.push(
                    key,
                    format!("{} bytes is below {what}, {}", size.0, binary_size(min)),
                );
            }
        }
        if server.max_header_bytes.0 > MAX_HEADER_BYTES {
            p.push(
                "server.max_header_bytes",
                format!(
                    "{} bytes is above {}: headers are journaled with every message",
                    server.max_header_bytes.0,
                    binary_size(MAX_HEADER_BYTES)
                ),
            );
        }
        if server.max_connections == 0 {
            p.push("server.max_connections", "must be at least 1");
        }
        for (key, timeout) in [
            ("server.header_timeout", server.header_timeout),
            ("server.body_timeout", server.body_timeout),
        ] {
            if timeout.is_zero() {
                p.push(key, "must be more than 0s (0 would cut off every request)");
            }
        }
        check_limits(
            &mut p,
            "defaults.plugin_limits",
            &self.defaults.plugin_limits,
        );
        for problem in self.defaults.retry.validate() {
            p.push("defaults.retry", problem);
        }
        for (key, problem) in self.health.validate() {
            p.push(&format!("health.{key}"), problem);
        }
        let mut paths: BTreeMap<&str, String> = BTreeMap::new();
        for (app, name, route) in self.routes() {
            check_name(&mut p, &format!("apps.{app}"), app);
            let key = format!("apps.{app}.routes.{name}");
            check_name(&mut p, &key, name);
            if let Some(first) = paths.insert(&route.path, key.clone()) {
                p.push(
                    &format!("{key}.path"),
                    format!("{:?} is already the path of {first}", route.path),
                );
            }
            check_route(&mut p, &key, route, env);
            if let Some(max_body) = route.max_body {
                self.check_body_fits(&mut p, &format!("{key}.max_body"), max_body.0);
            }
        }
        // Said once, of the key to change, if a route takes the default.
        if self.routes().any(|(_, _, route)| route.max_body.is_none()) {
            self.check_body_fits(&mut p, "defaults.max_body", self.defaults.max_body.0);
        }
        p.0
    }

    /// A body limit no bigger than the memory all bodies share.
    fn check_body_fits(&self, p: &mut Problems, key: &str, max_body: u64) {
        if max_body > self.server.body_memory.0 {
            p.push(
                key,
                format!(
                    "{max_body} bytes is more than server.body_memory ({} bytes): no body that large could ever be read",
                    self.server.body_memory.0
                ),
            );
        }
    }
}

/// `8 MiB`, `64 KiB`: a minimum as people write it.
fn binary_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// App and route names appear in URLs, metrics labels and key-value
/// namespaces: keep them to a safe alphabet.
fn check_name(p: &mut Problems, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        p.push(
            key,
            format!("name {name:?} must be 1-64 characters of a-z, 0-9, '-' or '_'"),
        );
    }
}

fn check_addr(p: &mut Problems, key: &str, addr: &str) {
    if addr.parse::<SocketAddr>().is_err() {
        p.push(
            key,
            format!("{addr:?} is not an IP address and port, e.g. \"127.0.0.1:8080\""),
        );
    }
}

fn check_route(p: &mut Problems, key: &str, route: &RouteConfig, env: EnvLookup<'_>) {
    if !route.path.starts_with('/') {
        p.push(
            &format!("{key}.path"),
            format!("{:?} must start with '/'", route.path),
        );
    }
    for method in &route.methods {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method.to_uppercase() != *method
        {
            p.push(
                &format!("{key}.methods"),
                format!("{method:?} is not an uppercase HTTP method"),
            );
        }
    }
    if !(200..=299).contains(&route.success_status) {
        p.push(
            &format!("{key}.success_status"),
            format!("{} is not a 2xx status", route.success_status),
        );
    }
    if route.mode == Mode::Sync && route.timeout.is_zero() {
        p.push(
            &format!("{key}.timeout"),
            "must be more than 0s on a sync route",
        );
    }
    if route.mode == Mode::Sync && route.idempotency.is_some() {
        p.push(
            &format!("{key}.idempotency"),
            "not supported on a sync route: each call waits for the upstream's own answer",
        );
    }
    if let Some(size) = route.max_body
        && size.0 == 0
    {
        p.push(&format!("{key}.max_body"), "must be at least 1 byte");
    }
    if route.backlog_limit == Some(0) {
        p.push(
            &format!("{key}.backlog_limit"),
            "must be at least 1 (0 would refuse every webhook)",
        );
    }
    if !(200..=599).contains(&route.fallback_response.status) {
        p.push(
            &format!("{key}.fallback_response.status"),
            format!(
                "{} is not a final HTTP status (200-599)",
                route.fallback_response.status
            ),
        );
    }
    if let Some(idem) = &route.idempotency
        && http::HeaderName::from_bytes(idem.header.as_bytes()).is_err()
    {
        p.push(
            &format!("{key}.idempotency.header"),
            format!("{:?} is not a valid header name", idem.header),
        );
    }
    if let Some(verify) = &route.verify {
        if let Err(err) = Verifier::from_config(verify, env) {
            p.push(&format!("{key}.verify"), err);
        }
        if let VerifyConfig::Stripe { tolerance, .. }
        | VerifyConfig::StandardWebhooks { tolerance, .. } = verify
            && tolerance.as_secs() == 0
        {
            p.push(
                &format!("{key}.verify.tolerance"),
                format!(
                    "{} is under 1s: the signed timestamps are whole seconds",
                    humantime::format_duration(*tolerance)
                ),
            );
        }
    }
    for (role, plugin) in [
        ("validate", &route.validate),
        ("transform", &route.transform),
        ("fallback", &route.fallback),
    ] {
        if let Some(plugin) = plugin {
            check_plugin_ref(p, &format!("{key}.{role}"), plugin);
        }
    }
    if let Some(retry) = &route.retry {
        for problem in retry.validate() {
            p.push(&format!("{key}.retry"), problem);
        }
    }
    if let Some(alert) = &route.dead_letter_alert
        && !route.destinations.contains_key(alert)
    {
        p.push(
            &format!("{key}.dead_letter_alert"),
            format!("{alert:?} is not one of the route's destinations"),
        );
    }
    if route.destinations.is_empty() {
        p.push(
            &format!("{key}.destinations"),
            "a route needs at least one destination",
        );
    }
    for (name, dest) in &route.destinations {
        let dkey = format!("{key}.destinations.{name}");
        check_name(p, &dkey, name);
        check_destination(p, &dkey, dest, env);
    }
}

fn check_plugin_ref(p: &mut Problems, key: &str, plugin: &PluginRef) {
    let name = &plugin.plugin;
    if name.is_empty()
        || name.contains(['/', '\\'])
        || name.starts_with('.')
        || name.ends_with(".wasm")
    {
        p.push(
            &format!("{key}.plugin"),
            format!("{name:?} must be a file stem in the plugins folder, e.g. \"json-validator\""),
        );
    }
    if let Some(limits) = &plugin.limits {
        check_limits(p, &format!("{key}.limits"), limits);
    }
    for name in plugin.headers.iter().flatten() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.push(
                &format!("{key}.headers"),
                format!("{name:?} is not a valid header name"),
            );
        }
    }
    if let Some(instances) = &plugin.instances {
        let key = format!("{key}.instances");
        if instances.max_calls == 0 {
            p.push(&format!("{key}.max_calls"), "must be at least 1");
        }
        if instances.idle.is_zero() {
            p.push(&format!("{key}.idle"), "must be more than 0s");
        }
        if !(1..=16).contains(&instances.pool_size) {
            p.push(
                &format!("{key}.pool_size"),
                format!("{} is outside 1..16", instances.pool_size),
            );
        }
    }
}

fn check_limits(p: &mut Problems, key: &str, limits: &LimitsConfig) {
    if limits.fuel == 0 {
        p.push(&format!("{key}.fuel"), "must be at least 1");
    }
    if limits.deadline.is_zero() {
        p.push(&format!("{key}.deadline"), "must be more than 0s");
    }
    if limits.concurrency == 0 {
        p.push(&format!("{key}.concurrency"), "must be at least 1");
    }
    if let Err(why) = plugin_memory(limits.memory.0) {
        p.push(&format!("{key}.memory"), why);
    }
}

/// Whether `bytes` is a memory cap a plugin can be given: 64 KiB up to
/// the pool's slot size.
pub fn plugin_memory(bytes: u64) -> Result<u64, String> {
    if (64 << 10..=MAX_PLUGIN_MEMORY).contains(&bytes) {
        return Ok(bytes);
    }
    Err(format!(
        "{bytes} bytes is outside 64KiB..={}MiB, the memory a plugin can be given",
        MAX_PLUGIN_MEMORY >> 20
    ))
}

fn check_destination(p: &mut Problems, key: &str, dest: &DestinationConfig, env: EnvLookup<'_>) {
    match url::Url::parse(&dest.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        _ => p.push(
            &format!("{key}.url"),
            format!("{:?} is not an absolute http(s) URL", dest.url),
        ),
    }
    if dest.concurrency == 0 {
        p.push(&format!("{key}.concurrency"), "must be at least 1");
    }
    if let Some(timeout) = dest.timeout
        && timeout.is_zero()
    {
        p.push(&format!("{key}.timeout"), "must be more than 0s");
    }
    if let Some(var) = &dest.secret_env
        && env(var).is_none()
    {
        p.push(
            &format!("{key}.secret_env"),
            format!("environment variable {var:?} is not set"),
        );
    }
    if let Some(signature) = &dest.signature
        && let Err(err) = BodySigner::from_config(signature, env)
    {
        p.push(&format!("{key}.signature.secret_env"), err);
    }
    for (header, value) in &dest.headers {
        check_header(p, &format!("{key}.headers"), header, Some(value));
    }
    for (header, var) in &dest.headers_env {
        check_header(p, &format!("{key}.headers_env"), header, None);
        if env(var).is_none() {
            p.push(
                &format!("{key}.headers_env.{header}"),
                format!("environment variable {var:?} is not set"),
            );
        }
    }
}

fn check_header(p: &mut Problems, key: &str, name: &str, value: Option<&str>) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        p.push(key, format!("{name:?} is not a valid header name"));
    }
    if let Some(value) = value
        && http::HeaderValue::from_str(value).is_err()
    {
        p.push(
            &format!("{key}.{name}"),
            "value is not a valid header value",
        );
    }
}

#[cfg(test)]
mod tests;
