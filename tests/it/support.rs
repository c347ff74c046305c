//! Shared helpers for the runtime tests: one engine per test, a setup with
//! chosen config and limits, and webhooks built from JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hookgate::plugin::{Plugin, PluginEngine, PluginLimits, PluginSetup, Webhook};
use hookgate::store::SledStore;

/// One engine for the whole test binary, as in the gateway: it owns the
/// instance pool, so tests share it the way routes do.
pub fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().expect("the plugin engine starts"))
}

/// Loads a guest built from `plugins/`.
pub async fn load(name: &str) -> Plugin {
    Plugin::load(engine(), &hookgate_tests::guest(name), None)
        .await
        .unwrap_or_else(|err| panic!("{name} loads: {err}"))
}

/// A route's setup for a plugin with the given config, limits and store.
pub fn setup_with(
    app: &str,
    config: &[(&str, &str)],
    limits: PluginLimits,
    kv: SledStore,
) -> Arc<PluginSetup> {
    Arc::new(PluginSetup {
        app: app.into(),
        route: "test".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        limits,
        kv: Arc::new(kv),
    })
}

/// A setup with default limits and a throwaway store.
pub fn setup(config: &[(&str, &str)]) -> Arc<PluginSetup> {
    setup_with(
        "test-app",
        config,
        PluginLimits::default(),
        SledStore::temporary().expect("temporary store"),
    )
}

/// An inbound webhook as the gateway would hand it to a plugin.
pub fn webhook(body: &str) -> Webhook {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Webhook {
        id: "msg_test".into(),
        app: "test-app".into(),
        route: "test".into(),
        method: "POST".into(),
        path: "/hooks/test".into(),
        query: String::new(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: body.as_bytes().to_vec(),
        received_at: now,
        attempt: 0,
    }
}
