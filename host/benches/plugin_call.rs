//! `cargo bench -p hookgate --bench plugin_call`: the cost of one plugin call
//! as the gateway makes it: fresh `Store` + instantiate from the pre-linked
//! component + `validate` on a 1 KB JSON body, on one thread; and the same
//! call on a warm instance reused from the route's pool (`warm_validate_1k`).
//!
//! Baseline in the same run: the `empty` plugin (accepts without reading the
//! body), so the ratio isolates what the validator's own work costs and
//! survives a noisy machine.
//!
//! The language templates (`plugins/templates/<lang>`, one per language,
//! same behaviour) are measured the same way. Before timing them the bench
//! prints, per template, what the limits must allow: fuel one call burns,
//! the smallest memory cap under which it still succeeds, and the first
//! compile and cached load times of the component.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use hookgate::plugin::{
    InstancePolicy, Instances, MAX_PLUGIN_MEMORY, Plugin, PluginEngine, PluginLimits, PluginSetup,
    Verdict, WarmPolicy, Webhook,
};
use hookgate::store::SledStore;
use tokio::runtime::Runtime;

/// Limits for the templates: the defaults are sized for compiled guests; the
/// JavaScript and Python engines are given room here so that the bench
/// measures them, and the limits they really need are printed (see
/// `print_needs`).
const TEMPLATE_LIMITS: PluginLimits = PluginLimits {
    fuel: 1_000_000_000,
    deadline: std::time::Duration::from_secs(5),
    memory: 256 << 20,
};

/// The two ways a route can run a plugin: a fresh instance per call, or an
/// instance reused from the route's warm pool.
fn policies() -> [(&'static str, InstancePolicy); 2] {
    [
        ("fresh_store", InstancePolicy::Fresh),
        ("warm", InstancePolicy::Warm(WarmPolicy::default())),
    ]
}

fn setup_with(
    config: &[(&str, &str)],
    limits: PluginLimits,
    policy: InstancePolicy,
) -> Arc<PluginSetup> {
    Arc::new(PluginSetup {
        app: "bench".into(),
        route: "bench".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        limits,
        kv: Arc::new(SledStore::temporary().expect("temporary store")),
        kv_quota: 64 << 20,
        answer_cap: u64::MAX,
        instances: Instances::new(policy),
        headers: None,
        turns: PluginSetup::turns(16),
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
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            // The header the templates require.
            ("x-event-type".into(), b"order.created".to_vec()),
        ],
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
    let hook = webhook();
    let mut group = c.benchmark_group("plugin_call");
    for (name, config) in [
        ("empty", vec![]),
        ("json-validator", vec![("required", "id,kind,customer")]),
    ] {
        let plugin = rt
            .block_on(Plugin::load(&engine, &hookgate_tests::guest(name), None))
            .expect("plugin loads");
        for (mode, policy) in policies() {
            let setup = setup_with(&config, PluginLimits::default(), policy);
            let check = rt.block_on(plugin.validate(&setup, &hook)).expect("call");
            assert_eq!(check.value, Verdict::Accept, "{name} accepts the payload");
            group.bench_function(format!("{mode}_validate_1k/{name}"), |b| {
                b.iter(|| rt.block_on(plugin.validate(&setup, &hook)))
            });
        }
    }
    let cache = tempfile::tempdir().expect("cache dir");
    // The JavaScript engine's floor: `empty` in JavaScript, next to which the
    // JavaScript template's own work shows.
    let plugin = load_cached(
        &rt,
        &engine,
        "empty-js",
        &hookgate_tests::guest("empty-js"),
        cache.path(),
    );
    print_needs(&rt, &plugin, "empty-js", &hook);
    for (mode, policy) in policies() {
        let setup = setup_with(&[], TEMPLATE_LIMITS, policy);
        group.bench_function(format!("{mode}_validate_1k/empty-js"), |b| {
            b.iter(|| rt.block_on(plugin.validate(&setup, &hook)))
        });
    }
    for lang in hookgate_tests::TEMPLATE_LANGUAGES {
        let name = format!("template-{lang}");
        let plugin = load_cached(
            &rt,
            &engine,
            &name,
            &hookgate_tests::template(lang),
            cache.path(),
        );
        print_needs(&rt, &plugin, &name, &hook);
        for (mode, policy) in policies() {
            let setup = setup_with(&[], TEMPLATE_LIMITS, policy);
            group.bench_function(format!("{mode}_validate_1k/{name}"), |b| {
                b.iter(|| rt.block_on(plugin.validate(&setup, &hook)))
            });
        }
    }
    group.finish();
}

/// Loads a component twice through an empty compile cache: the first load
/// compiles and writes the cache, the second reads it (a restart).
fn load_cached(
    rt: &Runtime,
    engine: &PluginEngine,
    name: &str,
    path: &std::path::Path,
    cache: &std::path::Path,
) -> Plugin {
    let compiled = rt
        .block_on(Plugin::load(engine, path, Some(cache)))
        .expect("component loads");
    let cached = rt
        .block_on(Plugin::load(engine, path, Some(cache)))
        .expect("component loads from the cache");
    assert!(
        cached.info().from_cache,
        "{name}: second load uses the cache"
    );
    eprintln!(
        "{name}: {} bytes; first load (compile) {:.2?}, cached load {:.2?}",
        compiled.info().size,
        compiled.info().load_time,
        cached.info().load_time,
    );
    cached
}

/// Prints the fuel one validate call burns (instantiation included) and one
/// on a warm instance, the wall time of that first call, and the smallest
/// memory cap, to 1 MiB, under which the call still succeeds.
fn print_needs(rt: &Runtime, plugin: &Plugin, name: &str, hook: &Webhook) {
    let call = |limits: PluginLimits| {
        let setup = setup_with(&[], limits, InstancePolicy::Fresh);
        rt.block_on(plugin.validate(&setup, hook))
    };
    let started = Instant::now();
    let report = call(TEMPLATE_LIMITS).expect("plugin validates");
    let first_call = started.elapsed();
    assert_eq!(report.value, Verdict::Accept, "{name} accepts the payload");
    let warm = setup_with(
        &[],
        TEMPLATE_LIMITS,
        InstancePolicy::Warm(WarmPolicy::default()),
    );
    let warm_fuel = (0..2)
        .map(|_| rt.block_on(plugin.validate(&warm, hook)))
        .last()
        .and_then(Result::ok)
        .map_or(0, |report| report.fuel_used);
    let (mut low, mut high) = (0_u64, MAX_PLUGIN_MEMORY >> 20);
    while high - low > 1 {
        let mid = (low + high) / 2;
        let limits = PluginLimits {
            memory: mid << 20,
            ..TEMPLATE_LIMITS
        };
        if call(limits).is_ok() {
            high = mid;
        } else {
            low = mid;
        }
    }
    eprintln!(
        "{name}: validate 1 KB burns {} fuel ({warm_fuel} on a warm instance); \
         first call {first_call:.2?}; needs a memory cap of {high} MiB",
        report.fuel_used
    );
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
