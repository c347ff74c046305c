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
    /// The language template `plugins/templates/<lang>` as the validator,
    /// on warm instances (the JavaScript and Python engines cost
    /// milliseconds to instantiate; issue 11's comparison), shown every
    /// inbound header, or (`narrow`) only the one it reads.
    TemplateValidate { lang: &'static str, narrow: bool },
}

impl Plugins {
    /// The plugin files a route needs: name in the plugins folder, and
    /// the built component.
    pub fn files(self) -> Vec<(String, std::path::PathBuf)> {
        let guest = |name: &str| (name.to_string(), hookgate_tests::guest(name));
        match self {
            Plugins::None => vec![],
            Plugins::ValidateTransform => vec![guest("json-validator"), guest("reshape")],
            Plugins::TemplateValidate { lang, .. } => {
                vec![(template_name(lang), hookgate_tests::template(lang))]
            }
        }
    }
}

fn template_name(lang: &str) -> String {
    format!("template-{lang}")
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
        match route.plugins {
            Plugins::None => {}
            Plugins::ValidateTransform => {
                let _ = write!(
                    text,
                    "validate = {{ plugin = \"json-validator\", config = {{ required = \"id,kind,customer\" }} }}\n\
                     transform = {{ plugin = \"reshape\", config = {{ \"rename.kind\" = \"type\", \"set.source\" = \"bench\" }} }}\n"
                );
            }
            Plugins::TemplateValidate { lang, narrow } => {
                // Every template checks a header and that the body is a JSON
                // object; the limits are the ones the templates' README
                // suggests for interpreted languages, the same for all.
                let headers = if narrow {
                    "headers = [\"content-type\"], "
                } else {
                    ""
                };
                let _ = writeln!(
                    text,
                    "validate = {{ plugin = \"{}\", config = {{ required_header = \"content-type\" }}, {headers}\
                     instances = {{ mode = \"warm\" }}, \
                     limits = {{ fuel = 500_000_000, deadline = \"250ms\", memory = \"128MiB\" }} }}",
                    template_name(lang)
                );
            }
        }
        let _ = write!(
            text,
            "\n[{key}.destinations.sink]\nurl = \"{}\"\n",
            route.upstream
        );
    }
    text
}
