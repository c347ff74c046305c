//! Shared helpers for the runtime tests: one engine per test, a setup with
//! chosen config and limits, and webhooks built from JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hookgate::plugin::{
    InstancePolicy, Instances, Plugin, PluginEngine, PluginLimits, PluginSetup, WarmPolicy, Webhook,
};
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

/// Loads a guest through the shared compile cache (see
/// [`hookgate_tests::share_compile_cache`]): for the JavaScript and Python plugins, which
/// take tens of seconds to compile in a debug build.
pub async fn load_cached(name: &str) -> Plugin {
    let cache = hookgate_tests::shared_compile_cache();
    Plugin::load(engine(), &hookgate_tests::guest(name), Some(&cache))
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
    setup_full(app, config, limits, kv, InstancePolicy::Fresh)
}

/// A route's setup whose plugin keeps warm instances within `policy`. The
/// deadline is generous: pool tests run hundreds of calls at once and are
/// about which instance serves them, not how fast.
pub fn warm_setup(app: &str, config: &[(&str, &str)], policy: WarmPolicy) -> Arc<PluginSetup> {
    let kv = SledStore::temporary().expect("temporary store");
    let limits = PluginLimits {
        deadline: std::time::Duration::from_secs(10),
        ..PluginLimits::default()
    };
    setup_full(app, config, limits, kv, InstancePolicy::Warm(policy))
}

fn setup_full(
    app: &str,
    config: &[(&str, &str)],
    limits: PluginLimits,
    kv: SledStore,
    policy: InstancePolicy,
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
        kv_quota: 64 << 20,
        answer_cap: u64::MAX,
        instances: Instances::new(policy),
        headers: None,
        // As many turns as the engine has fresh slots: the pool tests run
        // calls side by side.
        turns: PluginSetup::turns(192),
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

/// Tests that measure this process's resident memory hold it for writing;
/// tests that put load through this process hold it for reading, so the two
/// never overlap (their allocations would count as growth).
pub static PROCESS_MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A real `hookgate serve` process on a config written to a temporary
/// folder, with the named guest plugins copied into its plugins folder.
/// Killed when dropped.
pub struct GatewayProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// The admin listener's address, when it runs (see [`GatewayProcess::start_admin`]).
    pub admin: Option<std::net::SocketAddr>,
    pub dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A config file: the `[server]` table every test process gets (port 0,
/// `data` and `plugins` folders) with the `server` keys added, then `config`.
fn config_text(server: &str, config: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nplugins_dir = \"plugins\"\n{server}\n\n{config}"
    )
}

/// Runs `hookgate serve` on `dir/gateway.toml` and waits for its address.
fn spawn(
    dir: &std::path::Path,
    env: &[(String, String)],
) -> (std::process::Child, std::net::SocketAddr, Log) {
    spawn_under(dir, env, None)
}

/// [`spawn`], with `file_limit` (bytes) as the process's file-size limit
/// (`prlimit --fsize`) when given: a write past it fails as on a full disk.
fn spawn_under(
    dir: &std::path::Path,
    env: &[(String, String)],
    file_limit: Option<u64>,
) -> (std::process::Child, std::net::SocketAddr, Log) {
    use std::io::BufRead as _;
    let hookgate = env!("CARGO_BIN_EXE_hookgate");
    let mut command = match file_limit {
        Some(bytes) => {
            let mut prlimit = std::process::Command::new("prlimit");
            prlimit.arg(format!("--fsize={bytes}")).arg(hookgate);
            prlimit
        }
        None => std::process::Command::new(hookgate),
    };
    let mut child = command
        .args(["--log-format", "json", "serve", "--config"])
        .arg(dir.join("gateway.toml"))
        // A test may set its own RUST_LOG.
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hookgate starts");
    let stderr = child.stderr.take().expect("stderr");
    let log: Log = std::sync::Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            if let Some(addr) = parsed
                .as_ref()
                .filter(|v| v["message"] == "hookgate listening")
                .and_then(|v| v["addr"].as_str())
            {
                let _ = tx.send(addr.to_string());
            }
            sink.lock().expect("log lock").push(line);
        }
    });
    // Generous: a debug build compiles the JavaScript and Python template
    // components (12 and 18 MB) in tens of seconds each before it listens.
    match rx.recv_timeout(std::time::Duration::from_secs(300)) {
        Ok(addr) => (child, addr.parse().expect("socket address"), log),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gateway did not start:\n{}",
                log.lock().expect("log lock").join("\n")
            );
        }
    }
}

impl GatewayProcess {
    /// Starts the gateway and waits (up to 300 s) for its "listening" line.
    /// `config` is the TOML after the `[server]` table, which is written here
    /// (port 0, `data` and `plugins` folders). `plugins` names guests from
    /// `plugins/`; `"alias=guest"` installs one as `alias.wasm`.
    pub fn start(config: &str, plugins: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_with("", config, plugins, env)
    }

    /// Like [`GatewayProcess::start`], with extra `[server]` keys.
    pub fn start_with(
        server: &str,
        config: &str,
        plugins: &[&str],
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugins dir");
        // "alias=guest" installs a guest under another file name.
        for name in plugins {
            let (file, guest) = name.split_once('=').unwrap_or((name, name));
            std::fs::copy(
                hookgate_tests::guest(guest),
                plugin_dir.join(format!("{file}.wasm")),
            )
            .expect("copy plugin");
        }
        GatewayProcess::start_in(dir, server, config, env)
    }

    /// Like [`GatewayProcess::start_with`], in a folder the caller has
    /// prepared (its `plugins/` and `data/` subfolders, if any, are used).
    pub fn start_in(
        dir: tempfile::TempDir,
        server: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        GatewayProcess::launch(dir, &config_text(server, config), env)
    }

    /// Runs `examples/<name>/gateway.toml` exactly as written but for where
    /// things are: the listeners move to port 0 (the admin one starts when
    /// `env` sets its token), the data folder to a
    /// temporary one (with the shared compile cache, see
    /// [`hookgate_tests::share_compile_cache`]), the plugins folder to the built guests, and
    /// each `(address, replacement)` in `upstreams` (e.g. the example's
    /// `127.0.0.1:9100`) to a test receiver's address.
    pub fn start_example(
        name: &str,
        upstreams: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let source = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name)
            .join("gateway.toml");
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let guests = hookgate_tests::guest_dir().display().to_string();
        let mut text: String = text
            .lines()
            .map(|line| match line.split_once(" = ") {
                Some(("listen", _)) => {
                    "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"".to_string()
                }
                Some(("admin_listen", _)) => String::new(),
                Some(("data_dir", _)) => "data_dir = \"data\"".to_string(),
                Some(("plugins_dir", _)) => format!("plugins_dir = {guests:?}"),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (address, replacement) in upstreams {
            text = text.replace(address, replacement);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        hookgate_tests::share_compile_cache(dir.path());
        GatewayProcess::launch(dir, &text, env)
    }

    /// Like [`GatewayProcess::start`] (no plugins, no environment), with a
    /// file-size limit of `bytes`, so that the journal's writes fail once
    /// its file reaches it, as they would on a full disk. A
    /// [`GatewayProcess::restart`] runs without the limit.
    pub fn start_with_file_limit(config: &str, bytes: u64) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        GatewayProcess::launch_under(dir, &config_text("", config), &[], Some(bytes))
    }

    /// Writes `text` as `dir/gateway.toml` and starts the gateway on it.
    fn launch(dir: tempfile::TempDir, text: &str, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::launch_under(dir, text, env, None)
    }

    /// [`GatewayProcess::launch`] under an optional file-size limit.
    fn launch_under(
        dir: tempfile::TempDir,
        text: &str,
        env: &[(&str, &str)],
        file_limit: Option<u64>,
    ) -> GatewayProcess {
        std::fs::write(dir.path().join("gateway.toml"), text).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr, log) = spawn_under(dir.path(), &env, file_limit);
        let admin = admin_addr(&log);
        GatewayProcess {
            child,
            addr,
            admin,
            dir,
            log,
            env,
        }
    }

    /// Kills the process with SIGKILL: no shutdown, no final flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the gateway again on the same folder (config, plugins, journal).
    pub fn restart(&mut self) {
        let (child, addr, log) = spawn(self.dir.path(), &self.env);
        self.admin = admin_addr(&log);
        self.child = child;
        self.addr = addr;
        self.log = log;
    }

    /// Waits (polling, up to `timeout`) for the process to exit on its own;
    /// panics with the log if it is still running then.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "gateway still running after {timeout:?}:\n{}",
            self.log_lines().join("\n")
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the log.
    pub fn stop(&mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("gateway exits");
        let log = self.log.lock().expect("log lock").clone();
        assert!(
            exit.success(),
            "gateway exited with {exit}:\n{}",
            log.join("\n")
        );
        log
    }

    /// Waits until a log line contains `needle` (polling the captured log with
    /// a deadline); panics with the log if it never appears.
    pub fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "no log line with {needle:?}:\n{}",
            self.log.lock().expect("log lock").join("\n")
        );
    }

    /// The log lines captured so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// The journal folder, to open once the process has stopped.
    pub fn journal_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data/journal")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin listener's address from its start-up line (logged before the
/// webhook listener's, so it is there once `spawn` returns).
fn admin_addr(log: &Log) -> Option<std::net::SocketAddr> {
    log.lock().expect("log lock").iter().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["message"] == "admin listening").then(|| v["addr"].as_str()?.parse().ok())?
    })
}

/// A `[defaults]` table with a plugin deadline no loaded test machine
/// reaches, for tests about something other than limits.
pub const RELAXED_LIMITS: &str = "[defaults]\nplugin_limits = { deadline = \"5s\" }\n";

/// The admin token [`GatewayProcess::start_admin`] configures.
pub const ADMIN_TOKEN: &str = "test-admin-token";

impl GatewayProcess {
    /// Starts the gateway with its admin listener on a free port and
    /// [`ADMIN_TOKEN`] as the token; `config` is the TOML after `[server]`.
    pub fn start_admin(config: &str, plugins: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut env = env.to_vec();
        env.push(("HOOKGATE_ADMIN_TOKEN", ADMIN_TOKEN));
        GatewayProcess::start_with("admin_listen = \"127.0.0.1:0\"", config, plugins, &env)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("the admin listener runs")
        )
    }

    /// An admin call with the token; the status and the JSON answer.
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("admin answers JSON"))
    }

    /// Scrapes `/metrics` until `name{labels}` reaches `at_least` (metrics
    /// of delivery move shortly after the receiver has answered).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> String {
        eventually(async || {
            let text = self.scrape().await;
            if metric(&text, name, labels) >= at_least {
                Ok(text)
            } else {
                Err(format!(
                    "{name}{labels:?} below {at_least}:
{text}"
                ))
            }
        })
        .await
    }

    /// `GET` an admin path with the token, expecting 200.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_call(reqwest::Method::GET, path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The `/health` report (200 or 503).
    pub async fn health(&self) -> serde_json::Value {
        let response = reqwest::get(self.admin_url("/health"))
            .await
            .expect("health");
        response.json().await.expect("health is JSON")
    }

    /// Polls `/health` until `check` holds; returns the report that
    /// satisfied it, or panics with the last one.
    pub async fn wait_for_health(
        &self,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(async || {
            let report = self.health().await;
            if check(&report) {
                Ok(report)
            } else {
                Err(format!("health: {report:#}"))
            }
        })
        .await
    }

    /// Polls an admin `GET` until `check` holds on its answer.
    pub async fn wait_for_admin(
        &self,
        path: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(async || {
            let body = self.admin_get(path).await;
            if check(&body) {
                Ok(body)
            } else {
                Err(format!("GET {path}: {body:#}"))
            }
        })
        .await
    }

    /// POSTs `body` as JSON to the webhook listener; the status and the
    /// JSON answer (`null` when the answer is not JSON).
    pub async fn post_json(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The `/metrics` text.
    pub async fn scrape(&self) -> String {
        let response = reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    }
}

/// Polls `probe` (every 20 ms, up to 20 s) until it answers `Ok`; panics
/// with its last `Err` if it never does. For state that settles shortly
/// after an event (an attempt journaled after the receiver saw it).
pub async fn eventually<T>(mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if std::time::Instant::now() > deadline => panic!("never happened: {last}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// The value of the sample `name` whose labels include every `labels` pair,
/// or 0 when there is none yet (a counter not yet incremented).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// A file of `examples/`, e.g. `example_file("postback/payloads/credit.json")`.
pub fn example_file(path: &str) -> String {
    let full = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// `host:port` of a test receiver, to put where an example names its upstream.
pub fn host_port(receiver: &hookgate_tests::receiver::TestReceiver) -> String {
    receiver
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}
