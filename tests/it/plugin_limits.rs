//! Every limit stops a misbehaving guest with its own typed error, well inside
//! twice the configured limit, and the runtime keeps serving afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hookgate::plugin::{PluginError, PluginLimits, PluginSetup, Verdict};
use hookgate::store::SledStore;

use crate::support::{load, setup, setup_with, webhook};

const LIMITS: PluginLimits = PluginLimits {
    fuel: 20_000_000,
    deadline: Duration::from_secs(10),
    memory: 16 << 20,
};

/// Calls the `misbehave` plugin in `mode` under `limits`; returns the error
/// and the wall time it took.
async fn misbehave(mode: &str, limits: PluginLimits) -> (PluginError, Duration) {
    let plugin = load("misbehave").await;
    let setup = setup_with(
        "test-app",
        &[("mode", mode)],
        limits,
        SledStore::temporary().expect("store"),
    );
    let started = Instant::now();
    let result = plugin.validate(&setup, &webhook("{}")).await;
    let elapsed = started.elapsed();
    let err = result.expect_err("misbehaving call fails");
    (err, elapsed)
}

/// The same plugin, same engine, still answers after a failed call.
async fn assert_next_call_succeeds() {
    let plugin = load("misbehave").await;
    let report = plugin
        .validate(&setup(&[("mode", "ok")]), &webhook("{}"))
        .await
        .expect("a well-behaved call after a failure succeeds");
    assert_eq!(report.value, Verdict::Accept);
}

#[tokio::test]
async fn fuel_budget_stops_an_infinite_loop() {
    let (err, _) = misbehave("loop", LIMITS).await;
    assert_eq!(
        err,
        PluginError::OutOfFuel {
            budget: LIMITS.fuel
        }
    );
    assert!(err.is_fault());
    assert_next_call_succeeds().await;
}

#[tokio::test]
async fn deadline_stops_an_infinite_loop_within_twice_the_deadline() {
    let deadline = Duration::from_millis(100);
    let limits = PluginLimits {
        fuel: u64::MAX / 2,
        deadline,
        ..LIMITS
    };
    let (err, elapsed) = misbehave("loop", limits).await;
    assert_eq!(err, PluginError::Deadline { deadline });
    assert!(elapsed >= deadline, "stopped early: {elapsed:?}");
    assert!(elapsed < deadline * 2, "stopped late: {elapsed:?}");
    assert_next_call_succeeds().await;
}

/// `misbehave` looping for ever, with only `deadline` to stop it.
fn endless_loop(deadline: Duration) -> Arc<PluginSetup> {
    let limits = PluginLimits {
        fuel: u64::MAX / 2,
        deadline,
        ..LIMITS
    };
    setup_with(
        "test-app",
        &[("mode", "loop")],
        limits,
        SledStore::temporary().expect("store"),
    )
}

/// One route's calls of a plugin take turns past `limits.concurrency`: the
/// next call waits for the running one to end, its own deadline not yet
/// running, instead of taking more of the engine's slots and CPU from the
/// other routes. With one turn, two 300 ms loops end one after the other.
#[tokio::test]
async fn calls_past_a_routes_concurrency_wait_their_turn() {
    let plugin = load("misbehave").await;
    let deadline = Duration::from_millis(300);
    let setup = endless_loop(deadline);
    let Ok(setup) = Arc::try_unwrap(setup) else {
        panic!("a new setup has one owner");
    };
    let setup = Arc::new(PluginSetup {
        turns: PluginSetup::turns(1),
        ..setup
    });
    let started = Instant::now();
    let call = || {
        let (plugin, setup) = (plugin.clone(), setup.clone());
        tokio::spawn(async move {
            let result = plugin.validate(&setup, &webhook("{}")).await;
            (result, started.elapsed())
        })
    };
    let (first, second) = (call(), call());
    let (first, second) = (
        first.await.expect("first call"),
        second.await.expect("second call"),
    );
    for (result, _) in [&first, &second] {
        assert_eq!(
            result.as_ref().expect_err("the loop is stopped"),
            &PluginError::Deadline { deadline }
        );
    }
    let last = first.1.max(second.1);
    assert!(
        last >= deadline * 2,
        "the calls ran side by side: both ended within {last:?}"
    );
    assert_eq!(setup.turns.available_permits(), 1, "the turn is given back");
}

/// A guest that runs on gives its worker thread back at each epoch tick:
/// on a one-thread runtime, a task waiting for 50 ms to pass runs while a
/// 300 ms loop is still going, not after it.
#[tokio::test(flavor = "current_thread")]
async fn a_long_call_yields_its_worker_thread() {
    let plugin = load("misbehave").await;
    let deadline = Duration::from_millis(300);
    let setup = endless_loop(deadline);
    let started = Instant::now();
    let waited = Arc::new(AtomicBool::new(false));
    let flag = waited.clone();
    tokio::spawn(async move {
        while started.elapsed() < Duration::from_millis(50) {
            tokio::task::yield_now().await;
        }
        flag.store(true, Ordering::SeqCst);
    });
    let result = plugin.validate(&setup, &webhook("{}")).await;
    let ran_during_the_call = waited.load(Ordering::SeqCst);
    assert_eq!(
        result.expect_err("the loop is stopped"),
        PluginError::Deadline { deadline }
    );
    assert!(
        ran_during_the_call,
        "the other task only ran after the call ended: the call pinned the thread"
    );
}

#[tokio::test]
async fn memory_cap_stops_a_memory_hog() {
    let (err, _) = misbehave("hog", LIMITS).await;
    assert_eq!(err, PluginError::MemoryCap { cap: LIMITS.memory });
    assert_next_call_succeeds().await;
}

#[tokio::test]
async fn stack_limit_stops_unbounded_recursion() {
    let (err, _) = misbehave("recurse", LIMITS).await;
    assert_eq!(err, PluginError::StackOverflow);
    assert_next_call_succeeds().await;
}

#[tokio::test]
async fn a_guest_panic_is_a_contained_trap() {
    let (err, _) = misbehave("panic", LIMITS).await;
    let PluginError::Trap(message) = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert!(message.contains("unreachable"), "{message}");
    assert_next_call_succeeds().await;
}

#[tokio::test]
async fn a_guest_error_is_not_a_trap() {
    let (err, _) = misbehave("error", LIMITS).await;
    assert_eq!(err, PluginError::Guest("misbehave asked to fail".into()));
    assert!(!err.is_fault());
}

#[tokio::test]
async fn every_call_gets_a_fresh_instance() {
    // `count` mode rejects with the number of calls its instance has seen.
    let plugin = load("misbehave").await;
    let setup = setup(&[("mode", "count")]);
    for _ in 0..3 {
        let report = plugin.validate(&setup, &webhook("{}")).await.expect("call");
        let Verdict::Reject(rejection) = report.value else {
            panic!("count mode rejects");
        };
        assert!(
            rejection.reason.ends_with(":1"),
            "state survived between calls: {}",
            rejection.reason
        );
    }
}

#[tokio::test]
async fn the_guest_sees_no_filesystem_environment_or_network() {
    // `probe` mode tries the ambient authorities a guest could ask WASI for
    // and rejects with what it found; an empty report means it found nothing.
    let plugin = load("misbehave").await;
    let report = plugin
        .validate(&setup(&[("mode", "probe")]), &webhook("{}"))
        .await
        .expect("probe call");
    let Verdict::Reject(rejection) = report.value else {
        panic!("probe mode rejects with its findings");
    };
    assert_eq!(
        rejection.reason, "",
        "ambient authority leaked: {}",
        rejection.reason
    );
}

/// Resident memory of this process, from /proc (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// The resident-memory check runs in a process of its own (this test
/// binary again, running only [`resident_memory_probe`]): in the shared
/// test process, other tests' threads, allocator arenas and receivers grow
/// the resident set too, and made the check fail for allocations that were
/// not the plugin runtime's.
#[test]
fn resident_memory_stays_flat_over_100k_calls() {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "plugin_limits::resident_memory_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a process of its own by resident_memory_stays_flat_over_100k_calls"]
async fn resident_memory_probe() {
    let plugin = load("json-validator").await;
    // A generous deadline: this test is about memory, and on a loaded machine
    // one call in 110k may be descheduled for longer than the default 100 ms.
    let limits = PluginLimits {
        deadline: Duration::from_secs(10),
        ..PluginLimits::default()
    };
    let store = SledStore::temporary().expect("temporary store");
    let setup = setup_with("test-app", &[("required", "id,kind")], limits, store);
    let hook = webhook(&hookgate_tests::payload_1k());
    let call = || async {
        let report = plugin.validate(&setup, &hook).await.expect("call");
        assert_eq!(report.value, Verdict::Accept);
    };
    // Warm up: the pool's slots, allocator arenas and caches settle first.
    for _ in 0..10_000 {
        call().await;
    }
    let before = resident_bytes();
    for _ in 0..100_000 {
        call().await;
    }
    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 16 << 20,
        "resident memory grew by {} KiB over 100k calls ({before} -> {after} bytes)",
        growth >> 10
    );
}

/// Stores through `misbehave`'s `fill` at `path` until the store refuses;
/// returns how many values went in, and the refusal.
async fn fill(gw: &crate::support::GatewayProcess, path: &str) -> (usize, String) {
    let (status, answer) = gw.post_json(path, "{}").await;
    assert_eq!(status, 409, "{answer}");
    let reason = answer["error"].as_str().expect("a reason").to_string();
    let stored = reason
        .strip_prefix("stored ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reason {reason:?}"));
    (stored, reason)
}

/// An app whose plugin fills the key-value store stops at its quota:
/// `kv-set` answers an error the plugin can handle, instead of the disk the
/// journal shares filling up for every app. Another app's quota is its own,
/// and a restart counts what each app holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_filling_the_key_value_store_stops_at_its_quota() {
    let app = |name: &str, quota: &str| {
        format!(
            "[apps.{name}]\nkv_quota = \"{quota}\"\n\n\
             [apps.{name}.routes.fill]\npath = \"/hooks/{name}\"\n\
             validate = {{ plugin = \"misbehave\", config = {{ mode = \"fill\" }} }}\n\n\
             [apps.{name}.routes.fill.destinations.nowhere]\nurl = \"http://127.0.0.1:9/\"\n\n"
        )
    };
    let routes = format!("{}{}", app("greedy", "64KiB"), app("modest", "16KiB"));
    let mut gw = crate::support::GatewayProcess::start_admin(&routes, &["misbehave"], &[]);
    // 1000-byte values under 43-byte keys, 64 bytes each on top: 1107.
    let (stored, reason) = fill(&gw, "/hooks/greedy").await;
    assert_eq!(stored, 65536 / 1107, "{reason}");
    assert!(reason.contains("key-value store is full"), "{reason}");
    assert_eq!(fill(&gw, "/hooks/greedy").await.0, 0, "past its quota");
    // What an operator sees of it.
    gw.wait_metric(
        "hookgate_kv_bytes",
        &[("app", "greedy")],
        (59 * 1107) as f64,
    )
    .await;
    let (stored, reason) = fill(&gw, "/hooks/modest").await;
    assert_eq!(stored, 16384 / 1107, "{reason}");

    gw.stop();
    gw.restart();
    assert_eq!(fill(&gw, "/hooks/greedy").await.0, 0, "recounted at start");
    assert_eq!(fill(&gw, "/hooks/modest").await.0, 0, "recounted at start");
}
