//! Which plugin versions the gateway is serving, and which files failed to
//! load: what `/health` and the admin API's plugin list show.
//!
//! The start-up route build fills the board with the versions it loaded.
//! Whatever loads plugins later (hot reload) reports here too: a new version
//! with [`PluginBoard::loaded`], a file that failed with
//! [`PluginBoard::failed`], which keeps the version still serving next to
//! the error, since a bad file never replaces a good one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clock::now_ms;
use crate::plugin::{PluginVersionInfo, Role};
use crate::routes::RouteTable;

/// One plugin name's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// How routes name it (the file stem).
    pub name: String,
    pub file: String,
    /// SHA-256 of the version serving; `None` if no version ever loaded.
    pub hash: Option<String>,
    pub roles: Vec<Role>,
    /// The last load failure of this file, if the latest attempt failed.
    pub error: Option<String>,
    /// When the version was loaded or the error seen, ms since the epoch.
    pub since: u64,
}

/// The plugins of a running gateway. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct PluginBoard {
    plugins: Arc<Mutex<BTreeMap<String, PluginStatus>>>,
}

impl PluginBoard {
    /// A board listing every plugin the routes use.
    pub fn from_routes(routes: &RouteTable) -> PluginBoard {
        let board = PluginBoard::default();
        for route in routes.iter() {
            for bound in [&route.validate, &route.transform, &route.fallback]
                .into_iter()
                .flatten()
            {
                board.loaded(bound.plugin.info());
            }
        }
        board
    }

    /// A version now serves (clears any earlier error for the name).
    pub fn loaded(&self, info: &PluginVersionInfo) {
        let status = PluginStatus {
            name: info.name.clone(),
            file: info.path.display().to_string(),
            hash: Some(info.hash.clone()),
            roles: info.roles.clone(),
            error: None,
            since: now_ms(),
        };
        self.lock().insert(info.name.clone(), status);
    }

    /// `file` (plugin `name`) failed to load; the version serving, if any,
    /// stays listed with the error next to it.
    pub fn failed(&self, name: &str, file: &Path, error: &str) {
        let mut plugins = self.lock();
        let entry = plugins
            .entry(name.to_string())
            .or_insert_with(|| PluginStatus {
                name: name.to_string(),
                file: file.display().to_string(),
                hash: None,
                roles: Vec::new(),
                error: None,
                since: 0,
            });
        entry.error = Some(error.to_string());
        entry.since = now_ms();
    }

    /// Every plugin, by name.
    pub fn list(&self) -> Vec<PluginStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PluginStatus>> {
        self.plugins.lock().unwrap_or_else(|p| p.into_inner())
    }
}
