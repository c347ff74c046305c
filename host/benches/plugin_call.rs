//! `cargo bench -p hookgate --bench plugin_call`: the cost of one plugin call
//! as the gateway makes it: fresh `Store` + instantiate from the pre-linked
//! component + `validate` on a 1 KB JSON body, on one thread; and the same
//! call on a warm instance reused from the route's pool (`warm_validate_1k`).
//!
//! Baseline in the same run: the `empty` plugin (accepts without reading the
//! body), so the ratio isolates what the validator's own work costs and
//! survives a noisy machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hookgate::plugin::{
    InstancePolicy, Instances, Plugin, PluginEngine, PluginLimits, PluginSetup, Verdict,
    WarmPolicy, Webhook,
};
use hookgate::store::SledStore;

fn setup(config: &[(&str, &str)], policy: InstancePolicy) -> Arc<PluginSetup> {
    Arc::new(PluginSetup {
        app: "bench".into(),
        route: "bench".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        limits: PluginLimits::default(),
        kv: Arc::new(SledStore::temporary().expect("temporary store")),
        instances: Instances::new(policy),
    })
}

fn webhook() -> Webhook {
    Webhook {
        id: "msg_bench".into(),
        app: "bench".into(),
        route: "bench".into(),
        method: "POST".into(),
        path: "/hooks/bench".into(),
        query: String::new(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: hookgate_tests::payload_1k().into_bytes(),
        received_at: 0,
        attempt: 0,
    }
}

fn plugin_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = PluginEngine::new().expect("engine");
    assert!(
        engine.is_pooled(),
        "benchmark expects the pooling allocator"
    );
    let load = |name: &str| {
        rt.block_on(Plugin::load(&engine, &hookgate_tests::guest(name), None))
            .expect("plugin loads")
    };
    let hook = webhook();
    let mut group = c.benchmark_group("plugin_call");
    for (name, config) in [
        ("empty", vec![]),
        ("json-validator", vec![("required", "id,kind,customer")]),
    ] {
        let plugin = load(name);
        let warm = InstancePolicy::Warm(WarmPolicy::default());
        for (mode, policy) in [("fresh_store", InstancePolicy::Fresh), ("warm", warm)] {
            let setup = setup(&config, policy);
            let check = rt.block_on(plugin.validate(&setup, &hook)).expect("call");
            assert_eq!(check.value, Verdict::Accept, "{name} accepts the payload");
            group.bench_function(format!("{mode}_validate_1k/{name}"), |b| {
                b.iter(|| rt.block_on(plugin.validate(&setup, &hook)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
