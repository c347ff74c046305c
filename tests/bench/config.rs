//! Gateway configs for the scenarios: one app, routes named after what
//! they exercise, every route checking Standard Webhooks signatures (as a
//! real sender's webhooks would be), delivering to a sink.

use std::fmt::Write as _;

use crate::webhook::SECRET_ENV;

/// What a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugins {
    /// Signature check, journal, delivery: no plugin.
    None,
    /// `json-validator` at ingest and `reshape` at delivery, as in
    /// `examples/gateway.toml`.
    ValidateTransform,
}

impl Plugins {
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Plugins::None => &[],
            Plugins::ValidateTransform => &["json-validator", "reshape"],
        }
    }
}

/// One route of a generated config.
pub struct RouteSpec {
    /// Route name; the inbound path is `/hooks/<name>`.
    pub name: &'static str,
    pub plugins: Plugins,
    /// `async` or `sync`.
    pub mode: &'static str,
    /// The destination's URL.
    pub upstream: String,
}

impl RouteSpec {
    pub fn path(&self) -> String {
        format!("/hooks/{}", self.name)
    }
}

/// The config after `[server]`. Retries come back within a second and a
/// breaker cools down in one, so the outage scenarios see the breaker and
/// the backlog move within a short run; everything else is the default an
/// operator gets (destination concurrency 16, backlog limit 100k, info
/// logs).
pub fn gateway_config(routes: &[RouteSpec]) -> String {
    let mut text = String::from(
        "[defaults]\n\
         retry = { max_attempts = 1000, initial_delay = \"100ms\", max_delay = \"1s\" }\n\
         breaker = { cooldown = \"1s\" }\n",
    );
    for route in routes {
        let key = format!("apps.bench.routes.{}", route.name);
        let _ = write!(
            text,
            "\n[{key}]\npath = \"{}\"\nmode = \"{}\"\n\
             verify = {{ scheme = \"standard-webhooks\", secret_env = \"{SECRET_ENV}\" }}\n",
            route.path(),
            route.mode,
        );
        if route.plugins == Plugins::ValidateTransform {
            let _ = write!(
                text,
                "validate = {{ plugin = \"json-validator\", config = {{ required = \"id,kind,customer\" }} }}\n\
                 transform = {{ plugin = \"reshape\", config = {{ \"rename.kind\" = \"type\", \"set.source\" = \"bench\" }} }}\n"
            );
        }
        let _ = write!(
            text,
            "\n[{key}.destinations.sink]\nurl = \"{}\"\n",
            route.upstream
        );
    }
    text
}
