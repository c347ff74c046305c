//! The running form of the config's routes: every check and plugin a
//! request needs, resolved once at start (and, later, on reload) so the
//! request path only looks things up.
//!
//! Building a [`RouteTable`] loads each plugin a route names from the plugins
//! folder (through the compile cache) and checks it plays the role the route
//! asks of it, resolves secrets, and builds each plugin's `PluginSetup` (app,
//! config, limits, key-value namespace). Any problem is reported with its key
//! path, all at once, like config validation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, PluginRef, RouteConfig};
use crate::plugin::{Instances, Plugin, PluginEngine, PluginLimits, PluginSetup, Role, Webhook};
use crate::store::{InboundMessage, KeyValue};
use crate::verify::Verifier;

/// One plugin as one route uses it.
#[derive(Clone)]
pub struct BoundPlugin {
    pub plugin: Plugin,
    pub setup: Arc<PluginSetup>,
}

/// Everything the request path needs for one route.
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
}

/// Routes by inbound path (exact match) and by app and name.
#[derive(Default)]
pub struct RouteTable {
    by_path: HashMap<String, Arc<Route>>,
    by_name: HashMap<(String, String), Arc<Route>>,
}

impl RouteTable {
    /// Resolves every route of `config`; on failure, every problem found.
    pub async fn build(
        config: &Config,
        engine: &PluginEngine,
        kv: Arc<dyn KeyValue>,
        cache_dir: Option<&Path>,
    ) -> Result<RouteTable, Vec<String>> {
        let mut problems = Vec::new();
        let mut loaded: BTreeMap<String, Result<Plugin, String>> = BTreeMap::new();
        let mut by_path = HashMap::new();
        let mut by_name = HashMap::new();
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
            let mut bind = async |role: Role, pref: &Option<PluginRef>| -> Option<BoundPlugin> {
                let pref = pref.as_ref()?;
                let file = config
                    .server
                    .plugins_dir
                    .join(format!("{}.wasm", pref.plugin));
                let plugin = match loaded.get(&pref.plugin) {
                    Some(result) => result.clone(),
                    None => {
                        let result = Plugin::load(engine, &file, cache_dir)
                            .await
                            .map_err(|e| e.to_string());
                        loaded.insert(pref.plugin.clone(), result.clone());
                        result
                    }
                };
                match plugin {
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
                    Ok(plugin) => {
                        let limits = pref.limits.unwrap_or(config.defaults.plugin_limits);
                        let setup = Arc::new(PluginSetup {
                            app: app.to_string(),
                            route: name.to_string(),
                            config: pref
                                .config
                                .iter()
                                .map(|(k, v)| (k.clone(), v.to_text()))
                                .collect(),
                            limits: PluginLimits::from(limits),
                            kv: kv.clone(),
                            instances: Instances::new(
                                pref.instances
                                    .unwrap_or_default()
                                    .policy(plugin.info().size),
                            ),
                        });
                        Some(BoundPlugin { plugin, setup })
                    }
                }
            };
            let validate = bind(Role::Validate, &route.validate).await;
            let transform = bind(Role::Transform, &route.transform).await;
            let fallback = bind(Role::Fallback, &route.fallback).await;
            let route = Route {
                app: app.to_string(),
                name: name.to_string(),
                verifier,
                max_body: route.max_body.unwrap_or(config.defaults.max_body).0,
                backlog_limit: route.backlog_limit.unwrap_or(config.defaults.backlog_limit),
                validate,
                transform,
                fallback,
                config: route.clone(),
            };
            let route = Arc::new(route);
            by_name.insert((route.app.clone(), route.name.clone()), route.clone());
            by_path.insert(route.config.path.clone(), route);
        }
        if problems.is_empty() {
            Ok(RouteTable { by_path, by_name })
        } else {
            Err(problems)
        }
    }

    /// The route serving `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }

    /// The route a journaled message belongs to.
    pub fn by_name(&self, app: &str, route: &str) -> Option<&Arc<Route>> {
        self.by_name.get(&(app.to_string(), route.to_string()))
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
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
