//! Warm instance pools against a real guest: `misbehave` in `count` mode
//! answers `<instance>:<calls>`, so each call tells which instance served it
//! and how many calls that instance had seen.

use std::collections::BTreeMap;
use std::time::Duration;

use hookgate::plugin::{Plugin, PluginError, Verdict, WarmPolicy};

use crate::support::{PROCESS_MEMORY, load, load_cached, setup, warm_setup, webhook};

/// `(instance, calls)` from a `count` answer.
fn served_by(result: Result<hookgate::plugin::CallReport<Verdict>, PluginError>) -> (String, u32) {
    let report = result.expect("count call answers");
    let Verdict::Reject(rejection) = report.value else {
        panic!("count mode rejects with its count");
    };
    let (instance, calls) = rejection
        .reason
        .split_once(':')
        .unwrap_or_else(|| panic!("unexpected reason {:?}", rejection.reason));
    let calls: u32 = calls.parse().expect("a count");
    // The host's account of the instance agrees with the guest's.
    assert_eq!(
        report.new_instance,
        calls == 1,
        "call {calls} of instance {instance}"
    );
    (instance.to_string(), calls)
}

async fn count(
    plugin: &Plugin,
    setup: &std::sync::Arc<hookgate::plugin::PluginSetup>,
) -> (String, u32) {
    served_by(plugin.validate(setup, &webhook("{}")).await)
}

fn policy() -> WarmPolicy {
    WarmPolicy {
        max_calls: 1000,
        idle: Duration::from_secs(60),
        size: 4,
    }
}

#[tokio::test]
async fn a_warm_instance_serves_call_after_call_and_a_fresh_one_only_one() {
    let plugin = load("misbehave").await;
    let warm = warm_setup("shop", &[("mode", "count")], policy());
    let first = count(&plugin, &warm).await;
    for n in 2..=5 {
        assert_eq!(count(&plugin, &warm).await, (first.0.clone(), n));
    }
    assert_eq!(warm.instances.idle(), 1);

    let fresh = setup(&[("mode", "count")]);
    let a = count(&plugin, &fresh).await;
    let b = count(&plugin, &fresh).await;
    assert_eq!((a.1, b.1), (1, 1));
    assert_ne!(a.0, b.0, "a fresh instance each time");
}

/// A plugin's printing never fails its call: each call of a warm instance
/// keeps its own 16 KiB of stdout, and what a call prints past that is
/// dropped, not refused (`misbehave` prints with `println!`, which panics,
/// and so traps, on a failed write).
#[tokio::test]
async fn printing_past_the_capture_never_fails_a_call() {
    let plugin = load("misbehave").await;
    let accepts = |result: Result<hookgate::plugin::CallReport<Verdict>, PluginError>| matches!(result, Ok(report) if report.value == Verdict::Accept);
    // 20 calls of 4 KiB each on one instance: 80 KiB in all.
    let warm = warm_setup(
        "shop",
        &[("mode", "print"), ("print_bytes", "4096")],
        policy(),
    );
    for n in 1..=20 {
        let result = plugin.validate(&warm, &webhook("{}")).await;
        assert!(accepts(result.clone()), "call {n}: {result:?}");
    }
    assert_eq!(warm.instances.idle(), 1, "one instance served them all");
    // One call printing 64 KiB at once.
    let fresh = setup(&[("mode", "print"), ("print_bytes", "65536")]);
    let result = plugin.validate(&fresh, &webhook("{}")).await;
    assert!(accepts(result.clone()), "{result:?}");
}

#[tokio::test]
async fn an_instance_is_retired_after_max_calls() {
    let plugin = load("misbehave").await;
    let warm = warm_setup(
        "shop",
        &[("mode", "count")],
        WarmPolicy {
            max_calls: 3,
            ..policy()
        },
    );
    let served: Vec<(String, u32)> = {
        let mut served = Vec::new();
        for _ in 0..7 {
            served.push(count(&plugin, &warm).await);
        }
        served
    };
    let counts: Vec<u32> = served.iter().map(|s| s.1).collect();
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
}

#[tokio::test]
async fn state_left_by_a_call_that_trapped_is_never_seen_by_the_next_call() {
    let plugin = load("misbehave").await;
    let warm = warm_setup("shop", &[("mode", "count")], policy());
    let (instance, _) = count(&plugin, &warm).await;
    assert_eq!(count(&plugin, &warm).await, (instance.clone(), 2));

    // A deliberate `err` is not a fault: the instance goes back and counts on.
    let err = plugin.validate(&warm, &webhook("error")).await;
    assert!(matches!(err, Err(PluginError::Guest(_))), "{err:?}");
    assert_eq!(count(&plugin, &warm).await, (instance.clone(), 4));

    // A trap is: the instance (and the count it kept) is gone.
    let trap = plugin.validate(&warm, &webhook("panic")).await;
    assert!(matches!(trap, Err(PluginError::Trap(_))), "{trap:?}");
    let (after, calls) = count(&plugin, &warm).await;
    assert_ne!(after, instance, "the trapped instance was reused");
    assert_eq!(calls, 1);
}

/// A bug in a JavaScript plugin whose role is guarded as the template's
/// are (`bug-js`: a TypeError on a body without `customer`) is an `err`
/// naming the error and where it was thrown, not a bare `unreachable` trap,
/// and the warm instance (0.3 ms to start again) goes back to the pool.
#[tokio::test]
async fn a_javascript_bug_is_an_err_naming_its_line_and_keeps_the_instance() {
    let _load = PROCESS_MEMORY.read().await;
    let plugin = load_cached("bug-js").await;
    let warm = warm_setup("shop", &[], policy());
    let valid = || webhook(r#"{"customer":{"name":"Ada"}}"#);
    let first = plugin.validate(&warm, &valid()).await.expect("accepts");
    assert_eq!((first.value, first.new_instance), (Verdict::Accept, true));

    let bug = plugin.validate(&warm, &webhook("{}")).await;
    let Err(PluginError::Guest(reason)) = bug else {
        panic!("expected err(reason), got {bug:?}");
    };
    assert!(
        reason.starts_with("TypeError: ") && reason.contains("plugin.js:"),
        "{reason}"
    );

    let after = plugin.validate(&warm, &valid()).await.expect("accepts");
    assert_eq!((after.value, after.new_instance), (Verdict::Accept, false));
}

#[tokio::test]
async fn two_apps_sharing_a_wasm_never_share_an_instance() {
    let plugin = load("misbehave").await;
    let alpha = warm_setup("alpha", &[("mode", "count")], policy());
    let beta = warm_setup("beta", &[("mode", "count")], policy());
    let mut seen: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
    for _ in 0..3 {
        seen.entry("alpha")
            .or_default()
            .push(count(&plugin, &alpha).await);
        seen.entry("beta")
            .or_default()
            .push(count(&plugin, &beta).await);
    }
    let instances = |app: &str| -> Vec<String> { seen[app].iter().map(|s| s.0.clone()).collect() };
    assert_eq!(
        seen["alpha"].iter().map(|s| s.1).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        seen["beta"].iter().map(|s| s.1).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        instances("alpha")
            .iter()
            .all(|i| !instances("beta").contains(i))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_under_concurrent_load_never_hands_one_instance_to_two_calls() {
    let plugin = load("misbehave").await;
    let warm = warm_setup("shop", &[("mode", "count")], policy());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let (plugin, warm) = (plugin.clone(), warm.clone());
        calls.spawn(async move { count(&plugin, &warm).await });
    }
    let mut by_instance: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    while let Some(served) = calls.join_next().await {
        let (instance, n) = served.expect("call task");
        by_instance.entry(instance).or_default().push(n);
    }
    // Each instance saw its calls one after another: counts 1..=n, each
    // once. Two calls inside one instance at once would repeat or skip one.
    let mut total = 0;
    for (instance, mut counts) in by_instance {
        counts.sort_unstable();
        let expected: Vec<u32> = (1..=counts.len() as u32).collect();
        assert_eq!(counts, expected, "instance {instance}");
        total += counts.len();
    }
    assert_eq!(total, 400);
    assert!(warm.instances.idle() <= policy().size);
}

#[tokio::test]
async fn a_new_plugin_version_drains_the_old_versions_pool() {
    // Two versions of the same plugin: the same guest loaded from two files
    // that differ by one appended custom section, so their hashes differ.
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(hookgate_tests::guest("misbehave")).expect("guest");
    let v1 = dir.path().join("v1.wasm");
    let v2 = dir.path().join("v2.wasm");
    std::fs::write(&v1, &bytes).expect("write v1");
    std::fs::write(&v2, with_custom_section(&bytes, b"v2")).expect("write v2");
    let engine = crate::support::engine();
    let old = Plugin::load(engine, &v1, None).await.expect("v1 loads");
    let new = Plugin::load(engine, &v2, None).await.expect("v2 loads");
    assert_ne!(old.info().hash, new.info().hash);

    let warm = warm_setup("shop", &[("mode", "count")], policy());
    let (old_instance, _) = count(&old, &warm).await;
    assert_eq!(count(&old, &warm).await, (old_instance.clone(), 2));
    assert_eq!(warm.instances.idle(), 1);
    // The first call on the new version drops the old instance and starts
    // the new version's pool.
    let (new_instance, calls) = count(&new, &warm).await;
    assert_ne!(new_instance, old_instance);
    assert_eq!(calls, 1);
    assert_eq!(
        warm.instances.idle(),
        1,
        "only the new version's instance is kept"
    );
    assert_eq!(count(&new, &warm).await, (new_instance, 2));
}

/// `component` with a custom section appended: the same code, new bytes.
fn with_custom_section(component: &[u8], payload: &[u8]) -> Vec<u8> {
    let name = b"hookgate-test";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // LEB128 size (< 128)
    out.extend_from_slice(&section);
    out
}

#[tokio::test]
async fn idle_instances_are_dropped_after_their_idle_time() {
    let plugin = load("misbehave").await;
    let warm = warm_setup(
        "shop",
        &[("mode", "count")],
        WarmPolicy {
            idle: Duration::from_millis(200),
            ..policy()
        },
    );
    count(&plugin, &warm).await;
    assert_eq!(warm.instances.idle(), 1);
    // The engine's sweeper runs every second; poll until it has passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while warm.instances.idle() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle instance never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&plugin, &warm).await.1,
        1,
        "a new instance after the idle drop"
    );
}
