//! Hot reload under load: the real binary serves a sync route without a
//! pause while its plugin file is replaced (good versions, broken files, a
//! slow copy) and while its config file is edited (a route added, an invalid
//! file, a key that needs a restart).
//!
//! The route uses one plugin for both validate and transform: `stamp-a` or
//! `stamp-b`, two builds of one guest that differ only in the name they
//! stamp. Every answer therefore names the version that produced it (see
//! `classify`), and an answer whose validate and transform came from
//! different versions is caught as a mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookgate_tests::receiver::{Behaviour, TestReceiver};
use serde_json::{Value, json};

use crate::support::GatewayProcess;

const VERSIONS: [&str; 2] = ["stamp-a", "stamp-b"];
/// How soon a new version must answer after the rename that put it in place.
const SWAP_BUDGET: Duration = Duration::from_secs(1);
/// Deadline for anything the test waits on (generous: a loaded CI machine).
const WAIT: Duration = Duration::from_secs(20);
/// The load runs at least this long and makes at least this many requests.
const MIN_LOAD_TIME: Duration = Duration::from_secs(10);
const MIN_REQUESTS: usize = 2000;

/// A sync route at `path` using plugin `stamp` for validate and transform,
/// forwarding to the echoing receiver. The `mode = "panic"` config is
/// ignored by `stamp-*` but makes `misbehave`, when dropped in as `stamp`,
/// trap: that is how one broken file fails its smoke test.
fn route(name: &str, receiver: &TestReceiver) -> String {
    format!(
        r#"
[apps.shop.routes.{name}]
path = "/hooks/{name}"
mode = "sync"
timeout = "10s"
validate = {{ plugin = "stamp", config = {{ mode = "panic" }}, limits = {{ deadline = "5s" }} }}
transform = {{ plugin = "stamp", config = {{ mode = "panic" }}, limits = {{ deadline = "5s" }} }}

[apps.shop.routes.{name}.destinations.echo]
url = "{}"
"#,
        receiver.url("/echo")
    )
}

/// A route that only makes the gateway compile `stamp-b.wasm` at start.
fn warm_route(receiver: &TestReceiver) -> String {
    format!(
        r#"
[apps.shop.routes.warm]
path = "/hooks/warm"
validate = {{ plugin = "stamp-b" }}

[apps.shop.routes.warm.destinations.echo]
url = "{}"
"#,
        receiver.url("/echo")
    )
}

/// One answer of the load: when its request went out and came back, and
/// the version that produced it (or why it is a failure).
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    done: Instant,
    version: Result<&'static str, String>,
}

/// What one answer says about the version that produced it. A 409 is
/// validate's rejection of a body that forbids that very version; a 200 is
/// the body echoed with transform's stamp, which validate (of the same
/// version) let through only because the stamp is not the forbidden one.
fn classify(status: u16, text: &str, sent: &Value) -> Result<&'static str, String> {
    let forbid = sent["forbid"].as_str().unwrap_or_default();
    let json: Value = serde_json::from_str(text).map_err(|_| format!("{status}: {text}"))?;
    let named = |v: &Value| VERSIONS.into_iter().find(|name| v.as_str() == Some(*name));
    match status {
        409 => named(&json["error"])
            .filter(|v| *v == forbid)
            .ok_or_else(|| format!("409 from the wrong version: {text} for {sent}")),
        200 if json["client"] == sent["client"] && json["n"] == sent["n"] => named(&json["stamp"])
            .filter(|v| *v != forbid)
            .ok_or_else(|| format!("validate and transform of different versions: {text}")),
        _ => Err(format!("{status}: {text} for {sent}")),
    }
}

/// Clients posting to one URL in a loop until stopped.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("http client");
        let tasks = (0..clients)
            .map(|client| {
                let (answers, stop, http, url) =
                    (answers.clone(), stop.clone(), http.clone(), url.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let body = json!({"client": client, "n": n, "forbid": VERSIONS[n % 2]});
                        let sent = Instant::now();
                        let version = match http.post(&url).json(&body).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let text = response.text().await.unwrap_or_default();
                                classify(status, &text, &body)
                            }
                            Err(err) => Err(format!("request failed: {err}")),
                        };
                        let done = Instant::now();
                        answers.lock().expect("answers").push(Answer {
                            sent,
                            done,
                            version,
                        });
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            answers,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Waits for the first answer from `version` to a request sent at or
    /// after `since`; returns when it came back.
    async fn first_from(&self, version: &str, since: Instant) -> Instant {
        self.wait_for(|answers| {
            answers
                .iter()
                .find(|a| a.sent >= since && a.version.as_deref() == Ok(version))
                .map(|a| a.done)
        })
        .await
    }

    /// Waits until `n` more requests sent after `since` have been answered.
    async fn answered_after(&self, since: Instant, n: usize) {
        self.wait_for(|answers| {
            (answers.iter().filter(|a| a.sent >= since).count() >= n).then_some(())
        })
        .await;
    }

    /// Polls the answers every few milliseconds until `found` finds
    /// something, with a deadline.
    async fn wait_for<T>(&self, mut found: impl FnMut(&[Answer]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = found(&self.answers.lock().expect("answers")) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "load: condition not met in {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Keeps the load going until it has lasted [`MIN_LOAD_TIME`] and made
    /// [`MIN_REQUESTS`] requests, then stops it and returns every answer.
    async fn finish(self) -> Vec<Answer> {
        let enough = self.started + MIN_LOAD_TIME;
        self.wait_for(|a| (a.len() >= MIN_REQUESTS).then_some(()))
            .await;
        tokio::time::sleep_until(enough.into()).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load client");
        }
        let answers = self.answers.lock().expect("answers").clone();
        let failed: Vec<_> = answers
            .iter()
            .filter_map(|a| a.version.as_ref().err())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            answers.len(),
            &failed[..failed.len().min(5)]
        );
        answers
    }
}

/// Puts `bytes` in place as `dir/file` the way a careful operator does:
/// written to a dotfile beside it, then renamed over it. Returns the moment
/// of the rename.
fn install(dir: &std::path::Path, file: &str, bytes: &[u8]) -> Instant {
    let temp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&temp, bytes).expect("write temp file");
    std::fs::rename(&temp, dir.join(file)).expect("rename into place");
    Instant::now()
}

/// Writes `bytes` over `dir/file` in place, in slow pieces, as a copy over
/// a network share would. Returns the moment the last piece was written.
async fn copy_slowly(dir: &std::path::Path, file: &str, bytes: &[u8]) -> Instant {
    use std::io::Write as _;
    let mut out = std::fs::File::create(dir.join(file)).expect("create");
    for piece in bytes.chunks(bytes.len() / 8 + 1) {
        out.write_all(piece).expect("write");
        out.flush().expect("flush");
        // The pauses are what is being tested: the gateway must wait them out.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.sync_all().expect("sync");
    Instant::now()
}

fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(hookgate_tests::guest(name)).expect("guest")
}

/// Waits for a log line containing `needle` without blocking the runtime.
fn wait_for_log(gw: &GatewayProcess, needle: &str) {
    tokio::task::block_in_place(|| gw.wait_for_log(needle, WAIT));
}

/// The `/health` entry of plugin `name`.
fn plugin_status<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["plugins"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no plugin {name:?} in {health:#}"))
}

/// The content hash the gateway names a version by.
fn sha256(bytes: &[u8]) -> String {
    hookgate::plugin::content_hash(bytes)
}

/// What happened at one replacement, for the checks after the run.
struct Swap {
    /// The version now expected.
    version: &'static str,
    /// When writing the file began and when it was in place (the rename,
    /// or the end of a slow copy), and when the version first answered.
    began: Instant,
    at: Instant,
    first: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_replaced_20_times_under_load_drops_nothing_and_never_mixes_versions() {
    let _load = crate::support::PROCESS_MEMORY.read().await;
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    // A second route uses `stamp-b` under its own name, so both versions
    // are in the compile cache and the swap times measured are the reload
    // path's own, not Cranelift's (a cold compile of this guest takes
    // 0.3-0.9 s in a debug build on a busy 2-core machine).
    let routes = format!("{}{}", route("live", &receiver), warm_route(&receiver));
    let gw = GatewayProcess::start_admin(&routes, &["stamp=stamp-a", "stamp-b"], &[]);
    let plugins = gw.dir.path().join("plugins");
    let load = Load::start(gw.url("/hooks/live"), 4);
    load.first_from("stamp-a", Instant::now()).await;

    // Four broken files among the 20 replacements, one per reason to refuse.
    let broken: [(usize, Vec<u8>, &str); 4] = [
        (
            3,
            b"not a component at all".to_vec(),
            "not a WebAssembly file",
        ),
        (
            8,
            guest_bytes("wrong-wit"),
            "built against hookgate:plugin@0.9.0",
        ),
        (
            12,
            guest_bytes("json-validator"),
            "does not play the transform role",
        ),
        (
            17,
            guest_bytes("misbehave"),
            "failed its validate smoke test",
        ),
    ];
    let mut serving = "stamp-a";
    let mut swaps = Vec::new();
    for k in 0..20 {
        if let Some((_, bytes, reason)) = broken.iter().find(|(at, ..)| *at == k) {
            let at = install(&plugins, "stamp.wasm", bytes);
            wait_for_log(&gw, reason);
            // `/health` shows the file and why, next to the version serving.
            let health = gw.health().await;
            let stamp = plugin_status(&health, "stamp");
            assert!(
                stamp["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason) && e.contains("stamp.wasm")),
                "{health:#}"
            );
            assert_eq!(stamp["hash"], sha256(&guest_bytes(serving)), "{health:#}");
            assert_eq!(health["status"], "degraded", "{health:#}");
            load.answered_after(at, 30).await;
            continue;
        }
        let next = if serving == "stamp-a" {
            "stamp-b"
        } else {
            "stamp-a"
        };
        let bytes = guest_bytes(next);
        let began = Instant::now();
        let at = if k == 10 {
            copy_slowly(&plugins, "stamp.wasm", &bytes).await
        } else {
            install(&plugins, "stamp.wasm", &bytes)
        };
        let first = load.first_from(next, at).await;
        swaps.push(Swap {
            version: next,
            began,
            at,
            first,
        });
        serving = next;
        load.answered_after(first, 30).await;
    }
    let answers = load.finish().await;
    // The last file in place is good: the error is gone from `/health`.
    let health = gw.health().await;
    assert_eq!(
        plugin_status(&health, "stamp")["error"],
        Value::Null,
        "{health:#}"
    );

    let slowest = swaps
        .iter()
        .map(|s| s.first - s.at)
        .max()
        .unwrap_or_default();
    assert!(
        slowest <= SWAP_BUDGET,
        "a new version took {slowest:?} to answer after its rename"
    );
    // Between a version's first answer and the moment the next good file
    // began to be written, only that version answers: a broken file never
    // served, and no request started after the swap got the old version.
    for (i, swap) in swaps.iter().enumerate() {
        let until = swaps.get(i + 1).map(|s| s.began);
        for answer in &answers {
            if answer.sent >= swap.first && until.is_none_or(|u| answer.done < u) {
                assert_eq!(answer.version.as_deref(), Ok(swap.version), "swap {i}");
            }
        }
    }
    // Exactly the four broken files were refused: the slow copy was read
    // whole, never half-written.
    let refused = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("new plugin file refused"))
        .count();
    assert_eq!(refused, 4, "{:#?}", gw.log_lines());
    let each: Vec<_> = swaps.iter().map(|s| (s.first - s.at).as_millis()).collect();
    eprintln!(
        "{} requests in {:?}, {} swaps, slowest swap {slowest:?}, each (ms): {each:?}",
        answers.len(),
        answers
            .last()
            .map(|a| a.done - answers[0].sent)
            .unwrap_or_default(),
        swaps.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_plugin_keeps_serving_its_last_good_version_until_a_file_returns() {
    let _load = crate::support::PROCESS_MEMORY.read().await;
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    let gw = GatewayProcess::start_admin(&route("live", &receiver), &["stamp=stamp-a"], &[]);
    let plugins = gw.dir.path().join("plugins");
    let load = Load::start(gw.url("/hooks/live"), 2);
    load.first_from("stamp-a", Instant::now()).await;

    std::fs::remove_file(plugins.join("stamp.wasm")).expect("delete");
    let deleted = Instant::now();
    wait_for_log(&gw, "plugin file removed");
    let health = gw.health().await;
    let stamp = plugin_status(&health, "stamp");
    assert!(
        stamp["error"]
            .as_str()
            .is_some_and(|e| e.contains("deleted")),
        "{health:#}"
    );
    assert_eq!(stamp["hash"], sha256(&guest_bytes("stamp-a")), "{health:#}");
    load.answered_after(deleted, 50).await;

    let at = install(&plugins, "stamp.wasm", &guest_bytes("stamp-b"));
    load.first_from("stamp-b", at).await;
    let health = gw.health().await;
    assert_eq!(
        plugin_status(&health, "stamp")["error"],
        Value::Null,
        "{health:#}"
    );
    let answers = load.finish().await;
    // Until the new file, the deleted one's last version answered everything.
    for answer in answers.iter().filter(|a| a.done < at) {
        assert_eq!(answer.version.as_deref(), Ok("stamp-a"));
    }
}

/// A plugin file whose checks take long (here a new version whose smoke
/// call runs into its one-second deadline) holds up no other plugin's swap:
/// each file is prepared on its own, so `stamp` answers in its new version
/// while `slow` is still being checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_slow_to_check_holds_up_no_other_swap() {
    let _load = crate::support::PROCESS_MEMORY.read().await;
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    // `slow` starts as a build that ignores its config; the misbehave build
    // dropped in later loops on it, with fuel to spare, until the deadline.
    let slow = format!(
        r#"
[apps.other.routes.slow]
path = "/hooks/slow"
validate = {{ plugin = "slow", config = {{ mode = "loop" }}, limits = {{ fuel = 1_000_000_000_000, deadline = "5s" }} }}

[apps.other.routes.slow.destinations.echo]
url = "{}"
"#,
        receiver.url("/echo")
    );
    let config = [route("live", &receiver), warm_route(&receiver), slow].concat();
    let gw =
        GatewayProcess::start_admin(&config, &["stamp=stamp-a", "stamp-b", "slow=stamp-a"], &[]);
    let plugins = gw.dir.path().join("plugins");
    let load = Load::start(gw.url("/hooks/live"), 2);
    load.first_from("stamp-a", Instant::now()).await;

    install(&plugins, "slow.wasm", &guest_bytes("misbehave"));
    wait_for_log(&gw, "new plugin file: compiling");
    let at = install(&plugins, "stamp.wasm", &guest_bytes("stamp-b"));
    load.first_from("stamp-b", at).await;
    let refused = |gw: &GatewayProcess| {
        gw.log_lines()
            .iter()
            .any(|l| l.contains("failed its validate smoke test"))
    };
    assert!(
        !refused(&gw),
        "stamp-b answered only after slow's check ended:\n{}",
        gw.log_lines().join("\n")
    );
    // And the slow one's check does end, in a refusal.
    wait_for_log(&gw, "failed its validate smoke test");
    load.finish().await;
}

/// Rewrites the gateway's config file as an editor does (temp file, rename):
/// the `[server]` table it started with, then `routes`. Returns the moment
/// of the rename.
fn rewrite_config(gw: &GatewayProcess, server_extra: &str, routes: &str) -> Instant {
    let file = gw.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    let server_end = text.find("\n[apps.").unwrap_or(text.len());
    let server = &text[..server_end];
    let server = server.replacen(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\n{server_extra}"),
        1,
    );
    install(
        gw.dir.path(),
        "gateway.toml",
        format!("{server}\n{routes}").as_bytes(),
    )
}

/// A config that needs a new plugin version, dropped in while that version
/// is being compiled: the config waits for it, so it finds the new version
/// (which plays the role the config adds) rather than being refused for
/// the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_dropped_in_with_the_plugin_it_needs_waits_for_it() {
    let receiver = TestReceiver::start().await;
    let pair = |transform: &str| {
        format!(
            "[apps.shop.routes.pair]\npath = \"/hooks/pair\"\nvalidate = {{ plugin = \"p\" }}\n{transform}\n\n\
             [apps.shop.routes.pair.destinations.echo]\nurl = \"{}\"\n",
            receiver.url("/echo")
        )
    };
    // `empty` validates only; `misbehave` plays every role.
    let gw = GatewayProcess::start_admin(&pair(""), &["p=empty"], &[]);
    let plugins = gw.dir.path().join("plugins");
    let misbehave = guest_bytes("misbehave");
    install(&plugins, "p.wasm", &misbehave);
    // While the new version compiles (a few hundred ms in a debug build).
    wait_for_log(&gw, "new plugin file: compiling");
    rewrite_config(
        &gw,
        "listen = \"127.0.0.1:0\"",
        &pair("transform = { plugin = \"p\" }"),
    );
    wait_for_log(&gw, "config reloaded");
    let health = gw.health().await;
    assert_eq!(health["config"]["error"], Value::Null, "{health:#}");
    assert_eq!(
        plugin_status(&health, "p")["hash"],
        sha256(&misbehave),
        "{health:#}"
    );
}

/// A deploy that copies its folder in name order writes `gateway.toml`
/// before `plugins/late.wasm`: the config, refused for the missing file, is
/// checked again once the file arrives, and reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_refused_for_a_missing_plugin_reloads_when_the_file_arrives() {
    let receiver = TestReceiver::start().await;
    let gw = GatewayProcess::start_admin(&route("live", &receiver), &["stamp=stamp-a"], &[]);
    let late = format!(
        "{}[apps.shop.routes.late]\npath = \"/hooks/late\"\nvalidate = {{ plugin = \"late\" }}\n\n\
         [apps.shop.routes.late.destinations.echo]\nurl = \"{}\"\n",
        route("live", &receiver),
        receiver.url("/echo")
    );
    rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &late);
    wait_for_log(&gw, "config reload refused");
    assert_eq!(status_of(&gw, "/hooks/late").await, 404);

    install(
        &gw.dir.path().join("plugins"),
        "late.wasm",
        &guest_bytes("empty"),
    );
    wait_for_log(&gw, "config reloaded");
    let health = gw.health().await;
    assert_eq!(health["config"]["error"], Value::Null, "{health:#}");
    assert_eq!(status_of(&gw, "/hooks/late").await, 202);
}

/// A route `name` whose one destination `dest` (at `url`) is retried every
/// 50 ms, for a long while.
fn retrying_route(name: &str, dest: &str, url: &str) -> String {
    format!(
        "[apps.shop.routes.{name}]\npath = \"/hooks/{name}\"\n\
         retry = {{ max_attempts = 1000, initial_delay = \"50ms\", max_delay = \"50ms\" }}\n\n\
         [apps.shop.routes.{name}.destinations.{dest}]\nurl = \"{url}\"\n"
    )
}

/// Sends one webhook to `/hooks/orders` (failing at the receiver), rewrites
/// the config's routes to `after` while it waits for its retry, and
/// returns its id and the dead letter it becomes.
async fn dead_letter_after_rewrite(
    gw: &GatewayProcess,
    receiver: &TestReceiver,
    after: &str,
) -> (String, Value) {
    let (status, answer) = gw.post_json("/hooks/orders", "{}").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().expect("id").to_string();
    receiver.wait_for(1, WAIT).await;
    rewrite_config(gw, "listen = \"127.0.0.1:0\"", after);
    let letters = gw
        .wait_for_admin("/admin/dead-letters", |b| {
            b["dead_letters"].as_array().is_some_and(|l| !l.is_empty())
        })
        .await;
    let letter = letters["dead_letters"][0].clone();
    assert_eq!(letter["message_id"], id.as_str(), "{letters:#}");
    (id, letter)
}

/// A destination renamed while a delivery to it waits for its retry: the
/// delivery cannot go anywhere as it is, so it is dead-lettered with the
/// reason (it used to stay pending for good, out of reach of replay and
/// purge), and a replay sends it through the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_destination_was_renamed_is_dead_lettered_and_replays() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(500));
    let routes = |dest: &str| retrying_route("orders", dest, &receiver.url(&format!("/{dest}")));
    let gw = GatewayProcess::start_admin(&routes("warehouse"), &[], &[]);
    let (id, letter) = dead_letter_after_rewrite(&gw, &receiver, &routes("depot")).await;
    assert_eq!(letter["destination"], "warehouse", "{letter:#}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer in the route's config")),
        "{letter:#}"
    );

    receiver.respond_with(Behaviour::Status(200));
    let (status, body) = gw
        .admin_call(
            reqwest::Method::POST,
            &format!("/admin/dead-letters/{id}/replay"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    gw.wait_for_admin(&format!("/admin/messages/{id}"), |b| {
        b["message"]["status"] == "delivered"
    })
    .await;
    let last = receiver.received().pop().expect("a delivery");
    assert_eq!(last.path_and_query, "/depot");
}

/// A destination that answered 410 and was then taken out of the config,
/// which is what an operator does with a receiver that says it is gone:
/// what it held parked is dead-lettered with the reason. It used to stay
/// parked for good, pending, where `enable` (404 for a destination the
/// config no longer names) could not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_410_held_is_dead_lettered_once_its_destination_leaves_the_config() {
    let receiver = TestReceiver::start().await;
    receiver.enqueue([Behaviour::Status(410)]);
    let routes = |dest: &str| retrying_route("orders", dest, &receiver.url(&format!("/{dest}")));
    let gw = GatewayProcess::start_admin(&routes("warehouse"), &[], &[]);
    let (status, _) = gw.post_json("/hooks/orders", "{}").await;
    assert_eq!(status, 202);
    receiver.wait_for(1, WAIT).await;
    let (status, answer) = gw.post_json("/hooks/orders", "{}").await;
    assert_eq!(status, 202, "{answer}");
    let held = answer["id"].as_str().expect("id").to_string();
    gw.wait_for_admin("/admin/queue", |q| q["parked"] == 1)
        .await;

    rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &routes("depot"));
    let queue = gw
        .wait_for_admin("/admin/queue", |q| q["dead_letters"] == 2)
        .await;
    assert_eq!(
        (&queue["parked"], &queue["pending"]),
        (&json!(0), &json!(0)),
        "{queue}"
    );
    let letters = gw
        .admin_get("/admin/dead-letters?app=shop&route=orders")
        .await;
    let letter = letters["dead_letters"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["message_id"] == held.as_str()))
        .unwrap_or_else(|| panic!("no dead letter for {held}: {letters:#}"));
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer in the route's config")),
        "{letter:#}"
    );
    assert_eq!(receiver.count(), 1, "sent to a destination that said 410");
    gw.wait_for_log(
        "destination shop/orders/warehouse (its route has 1 pending)",
        WAIT,
    );
    // And that its 410 flag stays with the name, should it come back.
    let flagged = gw
        .log_lines()
        .into_iter()
        .find(|l| l.contains("destinations disabled after a 410 left the config"))
        .unwrap_or_else(|| panic!("no warning about the disabled destination"));
    assert!(flagged.contains("shop/orders/warehouse"), "{flagged}");
}

/// A route removed while a message waits for its retry: the message is
/// dead-lettered with the reason (it used to stay pending for good, which
/// purge refused), and the operator can purge the removed route's letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_route_was_removed_is_dead_lettered_and_purgeable() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Status(500));
    let routes = |name: &str| retrying_route(name, "warehouse", &receiver.url("/warehouse"));
    let gw = GatewayProcess::start_admin(&routes("orders"), &[], &[]);
    let (id, letter) = dead_letter_after_rewrite(&gw, &receiver, &routes("refunds")).await;
    assert_eq!(
        letter["reason"], "route shop/orders is no longer in the config",
        "{letter:#}"
    );
    // The reload said so, with the count, before any came due.
    gw.wait_for_log("route shop/orders (1 pending)", WAIT);

    let (status, body) = gw
        .admin_call(
            reqwest::Method::DELETE,
            "/admin/dead-letters?app=shop&route=orders",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.admin_get("/admin/queue").await["pending"], 0);
    let (status, _) = gw
        .admin_call(reqwest::Method::GET, &format!("/admin/messages/{id}"))
        .await;
    assert_eq!(status, 404, "the message was purged");
}

/// A FIFO renamed over a plugin file (a mistake, or a tool streaming
/// through a named pipe) is refused as not a regular file, and `/health`
/// says so. Reading it used to wait for a writer for good, and every later
/// reload waited behind it, config edits included, while `/health` said
/// healthy. The version serving keeps serving; a good file replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_over_a_plugin_file_is_refused_and_reloads_go_on() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    let gw = GatewayProcess::start_admin(&route("live", &receiver), &["stamp=stamp-a"], &[]);
    let plugins = gw.dir.path().join("plugins");
    let fifo = plugins.join(".stamp.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    std::fs::rename(&fifo, plugins.join("stamp.wasm")).expect("rename");
    wait_for_log(&gw, "not a regular file");
    let health = gw.health().await;
    assert!(
        plugin_status(&health, "stamp")["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a regular file")),
        "{health:#}"
    );

    let both = format!("{}{}", route("live", &receiver), route("more", &receiver));
    rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &both);
    let (_, status, text) = first_answer(&gw, "/hooks/more").await;
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!((status, &body["stamp"]), (200, &json!("stamp-a")), "{text}");

    install(&plugins, "stamp.wasm", &guest_bytes("stamp-b"));
    wait_for_log(&gw, "plugin version replaced");
    let (_, status, text) = first_answer(&gw, "/hooks/live").await;
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!((status, &body["stamp"]), (200, &json!("stamp-b")), "{text}");
}

/// A plugin file broken while the gateway was down: the next start serves
/// the version that served last (kept in the data folder) instead of
/// refusing to start every route, and says why on `/health`; a good file
/// then hot-reloads over it as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_broken_while_stopped_falls_back_to_its_last_good_version() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    let mut gw = GatewayProcess::start_admin(&route("live", &receiver), &["stamp=stamp-a"], &[]);
    let stamp = |text: &str| -> Value {
        let body: Value = serde_json::from_str(text).expect("json");
        body["stamp"].clone()
    };
    let (_, status, text) = first_answer(&gw, "/hooks/live").await;
    assert_eq!((status, stamp(&text)), (200, json!("stamp-a")), "{text}");
    gw.stop();

    let plugins = gw.dir.path().join("plugins");
    let good = guest_bytes("stamp-a");
    install(&plugins, "stamp.wasm", &good[..good.len() / 2]);
    gw.restart();
    let (_, status, text) = first_answer(&gw, "/hooks/live").await;
    assert_eq!((status, stamp(&text)), (200, json!("stamp-a")), "{text}");
    let health = gw.health().await;
    assert_eq!(health["status"], "degraded", "{health:#}");
    let plugin = plugin_status(&health, "stamp");
    assert_eq!(plugin["hash"], sha256(&good), "{health:#}");
    assert!(
        plugin["error"]
            .as_str()
            .is_some_and(|e| e.contains("serving its last good version")),
        "{health:#}"
    );

    install(&plugins, "stamp.wasm", &guest_bytes("stamp-b"));
    wait_for_log(&gw, "plugin version replaced");
    let (_, status, text) = first_answer(&gw, "/hooks/live").await;
    assert_eq!((status, stamp(&text)), (200, json!("stamp-b")), "{text}");
    let health = gw.health().await;
    assert_eq!(
        plugin_status(&health, "stamp")["error"],
        Value::Null,
        "{health:#}"
    );
}

/// The kept copy is for start-up only: a config reload that names a broken
/// plugin file is refused, even when a copy of the plugin's last good
/// version is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_naming_a_broken_plugin_is_refused_despite_a_kept_copy() {
    let receiver = TestReceiver::start().await;
    let with_stamp = route("live", &receiver);
    let gw = GatewayProcess::start_admin(&with_stamp, &["stamp=stamp-a", "empty"], &[]);
    let without = format!(
        "[apps.shop.routes.other]\npath = \"/hooks/other\"\nvalidate = {{ plugin = \"empty\" }}\n\n\
         [apps.shop.routes.other.destinations.echo]\nurl = \"{}\"\n",
        receiver.url("/echo")
    );
    // `stamp` served (and was kept); no route uses it any more, and its
    // file breaks.
    rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &without);
    wait_for_log(&gw, "config reloaded");
    let good = guest_bytes("stamp-a");
    install(
        &gw.dir.path().join("plugins"),
        "stamp.wasm",
        &good[..good.len() / 2],
    );

    rewrite_config(
        &gw,
        "listen = \"127.0.0.1:0\"",
        &format!("{without}{with_stamp}"),
    );
    wait_for_log(&gw, "config reload refused");
    let health = gw.health().await;
    assert!(
        health["config"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stamp")),
        "{health:#}"
    );
    assert_eq!(status_of(&gw, "/hooks/live").await, 404);
}

/// The status of one POST of `{}` to `path`.
async fn status_of(gw: &GatewayProcess, path: &str) -> u16 {
    reqwest::Client::new()
        .post(gw.url(path))
        .json(&json!({}))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Posts to `path` until it stops answering 404; returns when that was.
async fn first_answer(gw: &GatewayProcess, path: &str) -> (Instant, u16, String) {
    let url = gw.url(path);
    let deadline = Instant::now() + WAIT;
    loop {
        let response = reqwest::Client::new()
            .post(&url)
            .json(&json!({"client": 99, "n": 0, "forbid": "none"}))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        if status != 404 {
            let text = response.text().await.unwrap_or_default();
            return (Instant::now(), status, text);
        }
        assert!(
            Instant::now() < deadline,
            "{url} still 404 after {WAIT:?}; log:\n{}",
            gw.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_edits_under_load_add_a_route_refuse_an_invalid_file_and_flag_restart_keys() {
    let _load = crate::support::PROCESS_MEMORY.read().await;
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    let live = route("live", &receiver);
    let gw = GatewayProcess::start_admin(&live, &["stamp=stamp-a"], &[]);
    let load = Load::start(gw.url("/hooks/live"), 4);
    load.first_from("stamp-a", Instant::now()).await;

    // A route added: it answers within the budget, with the plugin already
    // serving (no second compile of the same file).
    let both = format!("{live}{}", route("added", &receiver));
    let at = rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &both);
    let (answered, status, text) = first_answer(&gw, "/hooks/added").await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["stamp"], "stamp-a", "{text}");
    assert!(
        answered - at <= SWAP_BUDGET,
        "the added route answered {:?} after the rename",
        answered - at
    );
    load.answered_after(answered, 50).await;

    // An invalid file: every problem logged, nothing changes.
    let invalid = format!(
        "{both}\n[apps.shop.routes.bad]\npath = \"/hooks/bad\"\nmethods = [\"post\"]\n\n[apps.shop.routes.bad.destinations.d]\nurl = \"ftp://nowhere\"\n"
    );
    let at = rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &invalid);
    wait_for_log(&gw, "config reload refused");
    let refused = gw
        .log_lines()
        .into_iter()
        .find(|l| l.contains("config reload refused"))
        .expect("log line");
    for problem in [
        "apps.shop.routes.bad.methods",
        "apps.shop.routes.bad.destinations.d.url",
    ] {
        assert!(refused.contains(problem), "{problem} not in {refused}");
    }
    let health = gw.health().await;
    assert!(
        health["config"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("ftp://nowhere")),
        "{health:#}"
    );
    load.answered_after(at, 50).await;
    let (_, status, _) = first_answer(&gw, "/hooks/added").await;
    assert_eq!(status, 200);
    assert_eq!(
        status_of(&gw, "/hooks/bad").await,
        404,
        "the invalid file's route must not serve"
    );

    // A new listen address needs a restart: reported, routes still applied
    // (here: `added` removed), the old listener keeps serving.
    let at = rewrite_config(&gw, "listen = \"127.0.0.1:1\"", &live);
    wait_for_log(&gw, "take effect only after a restart");
    let health = gw.wait_for_health(|h| h["config"]["error"].is_null()).await;
    assert_eq!(
        health["config"]["restart_needed"],
        json!(["server.listen"]),
        "{health:#}"
    );
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert_eq!(
        status_of(&gw, "/hooks/added").await,
        404,
        "the removed route is gone"
    );
    load.answered_after(at, 50).await;

    let answers = load.finish().await;
    assert!(
        answers
            .iter()
            .all(|a| a.version.as_deref() == Ok("stamp-a"))
    );
}

#[tokio::test]
async fn each_attempt_names_the_plugin_versions_that_handled_its_message() {
    let receiver = TestReceiver::start().await;
    let routes = format!(
        r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
validate = {{ plugin = "stamp" }}
transform = {{ plugin = "stamp" }}

[apps.shop.routes.orders.destinations.d]
url = "{}"
"#,
        receiver.url("/orders")
    );
    let gw = GatewayProcess::start_admin(&routes, &["stamp=stamp-a"], &[]);
    let send_and_read_attempt = async || {
        let response = reqwest::Client::new()
            .post(gw.url("/hooks/orders"))
            .json(&json!({"forbid": "none"}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_string();
        let message = gw
            .wait_for_admin(&format!("/admin/messages/{id}"), |m| {
                m["deliveries"][0]["status"] == "delivered"
            })
            .await;
        message["deliveries"][0]["attempts"][0]["plugin_hashes"].clone()
    };
    let (a, b) = (
        sha256(&guest_bytes("stamp-a")),
        sha256(&guest_bytes("stamp-b")),
    );
    assert_eq!(send_and_read_attempt().await, json!([a, a]));

    install(
        &gw.dir.path().join("plugins"),
        "stamp.wasm",
        &guest_bytes("stamp-b"),
    );
    gw.wait_for_health(|h| plugin_status(h, "stamp")["hash"] == b)
        .await;
    assert_eq!(send_and_read_attempt().await, json!([b, b]));
}

/// A plugin's config is fixed for the life of an instance (the WIT package
/// promises it, so plugins may keep config values in globals): a config
/// reload gives a warm route new instances, even of the same plugin version.
/// `misbehave` in `count` mode answers `<instance>:<calls>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_gives_a_warm_route_new_instances() {
    let receiver = TestReceiver::start().await;
    let routes = |tag: &str| {
        format!(
            r#"
[apps.shop.routes.orders]
path = "/hooks/orders"
validate = {{ plugin = "misbehave", config = {{ mode = "count", tag = "{tag}" }}, instances = {{ mode = "warm" }} }}

[apps.shop.routes.orders.destinations.d]
url = "{}"
"#,
            receiver.url("/orders")
        )
    };
    let gw = GatewayProcess::start(&routes("a"), &["misbehave"], &[]);
    let served_by = async || {
        let response = reqwest::Client::new()
            .post(gw.url("/hooks/orders"))
            .json(&json!({}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 409, "count mode rejects with its count");
        let answer = response.json::<Value>().await.expect("json");
        let reason = answer["error"].as_str().expect("reason").to_string();
        let (instance, calls) = reason.split_once(':').expect("<instance>:<calls>");
        (instance.to_string(), calls.parse::<u32>().expect("a count"))
    };
    let (instance, _) = served_by().await;
    assert_eq!(
        served_by().await,
        (instance.clone(), 2),
        "the route is warm"
    );

    rewrite_config(&gw, "listen = \"127.0.0.1:0\"", &routes("b"));
    wait_for_log(&gw, "config reloaded");
    let (after, calls) = served_by().await;
    assert_eq!(calls, 1, "first call of a new instance");
    assert_ne!(after, instance, "the old instance is not reused");
}

/// A config file that is a symlink, updated the way Kubernetes updates a
/// mounted ConfigMap: `gateway.toml -> ..data/gateway.toml`, and `..data`,
/// a link to a folder, swapped for one to a new folder. No event names
/// `gateway.toml`; the new route must still come into service.
#[tokio::test]
async fn a_config_behind_a_swapped_symlink_is_reloaded() {
    let receiver = TestReceiver::start().await;
    receiver.respond_with(Behaviour::Echo);
    let gw = GatewayProcess::start(&route("live", &receiver), &["stamp=stamp-a"], &[]);
    let dir = gw.dir.path();
    let text = std::fs::read_to_string(dir.join("gateway.toml")).expect("config");
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.join(name)).expect("version folder");
        std::fs::write(dir.join(name).join("gateway.toml"), text).expect("write");
    };
    let link = |target: &str, name: &str, over: &str| {
        std::os::unix::fs::symlink(target, dir.join(name)).expect("symlink");
        std::fs::rename(dir.join(name), dir.join(over)).expect("rename");
    };
    // The config moves behind the two links (with a route added, to know
    // when the gateway has read it: that event names `gateway.toml`).
    let first = format!("{text}{}", route("first", &receiver));
    version("..v1", &first);
    std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("symlink");
    link("..data/gateway.toml", "gateway.toml.new", "gateway.toml");
    let (_, status, body) = first_answer(&gw, "/hooks/first").await;
    assert_eq!(status, 200, "{body}");
    // The update: only `..data` changes.
    version("..v2", &format!("{first}{}", route("added", &receiver)));
    link("..v2", "..data_tmp", "..data");
    let (_, status, body) = first_answer(&gw, "/hooks/added").await;
    assert_eq!(status, 200, "{body}");
}
