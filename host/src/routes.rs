//! The running form of the config's routes: every check and plugin a
//! request needs, resolved once at start (and, later, on reload) so the
//! request path only looks things up.
//!
//! Building a [`RouteTable`] takes each plugin a route names from the
//! plugin registry (which loads it from the plugins folder through the
//! compile cache the first time) and checks it plays the role the route asks
//! of it, resolves secrets, builds each plugin's `PluginSetup` (app, config,
//! limits, key-value namespace) and each route's destinations. Any problem
//! is reported with its key path, all at once, like config validation.
//!
//! The table in service sits behind an [`ArcSwap`] ([`SharedRoutes`]): hot
//! reload builds a new one beside it and swaps it in whole.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use indexmap::IndexMap;

use crate::config::{Config, PluginRef, RouteConfig};
use crate::delivery::destination::{Destination, build_destinations};
use crate::plugin::{
    ANSWER_CAP_FACTOR, Instances, Plugin, PluginLimits, PluginRegistry, PluginSetup, Role, Webhook,
};
use crate::store::{InboundMessage, KeyValue};
use crate::verify::Verifier;

/// The route table in service, swapped whole on a reload. A request or a
/// delivery task takes one snapshot ([`ArcSwap::load_full`] of the table,
/// then its `Arc<Route>`) when it starts and uses only that: it finishes on
/// the plugin versions and destinations it started with, never a mix.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// One plugin as one route uses it.
#[derive(Clone)]
pub struct BoundPlugin {
    pub plugin: Plugin,
    pub setup: Arc<PluginSetup>,
}

/// Everything the request path needs for one route.
#[derive(Clone)]
pub struct Route {
    pub app: String,
    pub name: String,
    pub config: RouteConfig,
    pub verifier: Option<Verifier>,
    pub max_body: u64,
    pub backlog_limit: u64,
    pub validate: Option<BoundPlugin>,
    pub transform: Option<BoundPlugin>,
    pub fallback: Option<BoundPlugin>,
    /// The route's destinations by name, in config order.
    pub destinations: IndexMap<String, Arc<Destination>>,
}

impl Route {
    /// The route's plugins with the role each plays for it.
    pub fn plugins(&self) -> impl Iterator<Item = (Role, &BoundPlugin)> {
        [
            (Role::Validate, &self.validate),
            (Role::Transform, &self.transform),
            (Role::Fallback, &self.fallback),
        ]
        .into_iter()
        .filter_map(|(role, bound)| Some((role, bound.as_ref()?)))
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.get(name)
    }
}

/// Routes by inbound path (exact match) and by app and name.
#[derive(Default)]
pub struct RouteTable {
    by_path: HashMap<String, Arc<Route>>,
    by_name: HashMap<(String, String), Arc<Route>>,
}

impl RouteTable {
    /// Resolves every route of `config`, taking plugins from `plugins`
    /// (which loads files it has not seen); on failure, every problem
    /// found. `previous`, the table in service on a reload, lends its
    /// destinations' running state where their settings did not change.
    pub async fn build(
        config: &Config,
        plugins: &PluginRegistry,
        kv: Arc<dyn KeyValue>,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, Vec<String>> {
        let mut problems = Vec::new();
        let mut table = RouteTable::default();
        for (app, name, route) in config.routes() {
            let key = format!("apps.{app}.routes.{name}");
            let verifier = match &route.verify {
                Some(v) => match Verifier::from_config(v, |var| std::env::var(var).ok()) {
                    Ok(verifier) => Some(verifier),
                    Err(err) => {
                        problems.push(format!("{key}.verify: {err}"));
                        None
                    }
                },
                None => None,
            };
            let max_body = route.max_body.unwrap_or(config.defaults.max_body).0;
            let mut bind = async |role: Role, pref: &Option<PluginRef>| -> Option<BoundPlugin> {
                let pref = pref.as_ref()?;
                match plugins.get_or_load(&pref.plugin).await {
                    Err(err) => {
                        problems.push(format!("{key}.{role}.plugin: {err}"));
                        None
                    }
                    Ok(plugin) if !plugin.plays(role) => {
                        problems.push(format!(
                            "{key}.{role}.plugin: {}",
                            plugin.missing_role(role)
                        ));
                        None
                    }
                    Ok(plugin) => Some(BoundPlugin {
                        setup: plugin_setup(config, (app, name, max_body), pref, &plugin, &kv),
                        plugin,
                    }),
                }
            };
            let validate = bind(Role::Validate, &route.validate).await;
            let transform = bind(Role::Transform, &route.transform).await;
            let fallback = bind(Role::Fallback, &route.fallback).await;
            let before = previous.and_then(|p| p.by_name(app, name));
            let destinations = build_destinations(
                &key,
                route,
                &config.defaults,
                before.map(|r| &r.destinations),
                &mut problems,
            );
            table.insert(Route {
                app: app.to_string(),
                name: name.to_string(),
                verifier,
                max_body,
                backlog_limit: route.backlog_limit.unwrap_or(config.defaults.backlog_limit),
                validate,
                transform,
                fallback,
                destinations,
                config: route.clone(),
            });
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    fn insert(&mut self, route: Route) {
        let route = Arc::new(route);
        self.by_name
            .insert((route.app.clone(), route.name.clone()), route.clone());
        self.by_path.insert(route.config.path.clone(), route);
    }

    /// This table with `plugin` in place of the earlier version of its name,
    /// wherever a route uses it. Routes that do not use it are shared, not
    /// copied.
    pub fn with_plugin(&self, plugin: &Plugin) -> RouteTable {
        let name = &plugin.info().name;
        let mut table = RouteTable::default();
        for route in self.by_name.values() {
            if !route.plugins().any(|(_, b)| b.plugin.info().name == *name) {
                table
                    .by_name
                    .insert((route.app.clone(), route.name.clone()), route.clone());
                table
                    .by_path
                    .insert(route.config.path.clone(), route.clone());
                continue;
            }
            let mut route = Route::clone(route);
            let config = route.config.clone();
            for (bound, pref) in [
                (&mut route.validate, &config.validate),
                (&mut route.transform, &config.transform),
                (&mut route.fallback, &config.fallback),
            ] {
                let (Some(bound), Some(pref)) = (bound, pref) else {
                    continue;
                };
                if bound.plugin.info().name != *name {
                    continue;
                }
                // Same config and limits; a pool of its own for the new
                // version, so no instance of the old one is ever reused.
                let old = &bound.setup;
                bound.setup = Arc::new(PluginSetup {
                    app: old.app.clone(),
                    route: old.route.clone(),
                    config: old.config.clone(),
                    limits: old.limits,
                    kv: old.kv.clone(),
                    kv_quota: old.kv_quota,
                    answer_cap: old.answer_cap,
                    instances: instances_for(pref, plugin),
                    headers: old.headers.clone(),
                    turns: old.turns.clone(),
                });
                bound.plugin = plugin.clone();
            }
            table.insert(route);
        }
        table
    }

    /// How the routes use the plugin `name`: each role with the setup of
    /// the route that asks it, in a stable order.
    pub fn uses_of(&self, name: &str) -> Vec<(Role, Arc<PluginSetup>)> {
        let mut uses: Vec<_> = self
            .by_name
            .values()
            .flat_map(|route| route.plugins())
            .filter(|(_, b)| b.plugin.info().name == name)
            .map(|(role, b)| (role, b.setup.clone()))
            .collect();
        uses.sort_by(|a, b| (a.0, &a.1.app, &a.1.route).cmp(&(b.0, &b.1.app, &b.1.route)));
        uses
    }

    /// Every plugin name some route uses.
    pub fn plugin_names(&self) -> BTreeSet<String> {
        self.by_name
            .values()
            .flat_map(|route| route.plugins())
            .map(|(_, b)| b.plugin.info().name.clone())
            .collect()
    }

    /// The route serving `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }

    /// The route a journaled message belongs to.
    pub fn by_name(&self, app: &str, route: &str) -> Option<&Arc<Route>> {
        self.by_name.get(&(app.to_string(), route.to_string()))
    }

    /// Every destination with its app and route, sorted, for the admin API,
    /// `/health` and metrics.
    pub fn destinations(&self) -> Vec<(&str, &str, &Arc<Destination>)> {
        let mut all: Vec<_> = self
            .by_name
            .values()
            .flat_map(|r| {
                r.destinations
                    .values()
                    .map(|d| (r.app.as_str(), r.name.as_str(), d))
            })
            .collect();
        all.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
        all
    }

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// What a route gives one of its plugins: who calls, its config, limits.
fn plugin_setup(
    config: &Config,
    (app, route, max_body): (&str, &str, u64),
    pref: &PluginRef,
    plugin: &Plugin,
    kv: &Arc<dyn KeyValue>,
) -> Arc<PluginSetup> {
    let limits = pref.limits.unwrap_or(config.defaults.plugin_limits);
    Arc::new(PluginSetup {
        app: app.to_string(),
        route: route.to_string(),
        config: pref
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_text()))
            .collect(),
        limits: PluginLimits::from(limits),
        kv: kv.clone(),
        kv_quota: config
            .apps
            .get(app)
            .and_then(|a| a.kv_quota)
            .unwrap_or(config.defaults.kv_quota)
            .0,
        answer_cap: max_body.saturating_mul(ANSWER_CAP_FACTOR),
        instances: instances_for(pref, plugin),
        headers: pref
            .headers
            .as_ref()
            .map(|names| names.iter().map(|name| name.to_ascii_lowercase()).collect()),
        turns: PluginSetup::turns(limits.concurrency),
    })
}

/// The instance policy (and an empty pool) of one route's use of one
/// plugin version: `auto` decides by the version's size.
fn instances_for(pref: &PluginRef, plugin: &Plugin) -> Instances {
    Instances::new(
        pref.instances
            .unwrap_or_default()
            .policy(plugin.info().size),
    )
}

/// The webhook a plugin sees for a message: the same bytes the sender sent,
/// whether at ingest (attempt 0), at delivery time or on replay.
pub fn webhook_of(message: &InboundMessage, attempt: u32) -> Webhook {
    Webhook {
        id: message.id.clone(),
        app: message.app.clone(),
        route: message.route.clone(),
        method: message.method.clone(),
        path: message.path.clone(),
        query: message.query.clone(),
        headers: message.headers.clone(),
        body: message.body.clone(),
        received_at: message.received_at,
        attempt,
    }
}
