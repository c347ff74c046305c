//! The servers under test, each its own process so its CPU time and peak
//! memory can be read from `/proc/<pid>`: the real `hookgate serve` on a
//! generated config, and the baseline, raw hyper answering 200 (this same
//! binary, re-run with `raw-server`).

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

/// Argument that makes this binary serve the raw-hyper baseline.
pub const RAW_SERVER: &str = "raw-server";

/// Kernel clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 on
/// every Linux architecture this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The gateway's folder (config, plugins, journal, log), removed on drop.
    dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `hookgate serve` on `config` (the TOML after `[server]`, which is
    /// written here), with the named plugins from `plugins/` installed and
    /// the inbound secret in its environment. Logs at the default level
    /// (info, JSON) to a file, as an operator would run it: in a folder of
    /// its own, not beside the config file, whose folder the gateway
    /// watches (each log write there would wake the watcher).
    /// `Err` carries the gateway's log when it exits or does not start
    /// listening within a minute (a config it refuses, say).
    pub fn gateway(
        config: &str,
        plugins: &[(String, PathBuf)],
        secret: &str,
    ) -> Result<Server, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugins dir");
        for (name, component) in plugins {
            std::fs::copy(component, plugin_dir.join(format!("{name}.wasm"))).expect("copy plugin");
        }
        // One compile cache for every gateway the bench starts (and the
        // tests): a JavaScript or Python component compiles for seconds,
        // which is not what a run measures.
        hookgate_tests::share_compile_cache(dir.path());
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\nplugins_dir = \"plugins\"\n\n{config}"
        );
        std::fs::write(dir.path().join("gateway.toml"), text).expect("write config");
        let log_dir = dir.path().join("log");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log_path = log_dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env(crate::webhook::SECRET_ENV, secret)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("hookgate starts");
        let addr = wait_for_listening(&mut child, &log_path)?;
        Ok(Server {
            child,
            addr,
            dir: Some(dir),
        })
    }

    /// The raw-hyper baseline in its own process.
    pub fn raw() -> Server {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg(RAW_SERVER)
            .stdout(Stdio::piped())
            .spawn()
            .expect("raw server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("raw server prints its address");
        let addr = line.trim().parse().expect("raw server address");
        Server {
            child,
            addr,
            dir: None,
        }
    }

    /// Keeps the gateway's folder (config, journal, log) after the process
    /// ends, for a look at what went wrong; its path.
    pub fn keep(&mut self) -> Option<std::path::PathBuf> {
        self.dir.take().map(tempfile::TempDir::keep)
    }

    /// Starts measuring the process's CPU time.
    pub fn meter(&self) -> Meter {
        Meter {
            pid: self.child.id(),
            ticks: cpu_ticks(self.child.id()).unwrap_or(0),
            written: written_bytes(self.child.id()).unwrap_or(0),
            at: Instant::now(),
        }
    }

    /// The most memory the process has had resident (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// CPU time of one process over a window.
pub struct Meter {
    pid: u32,
    ticks: u64,
    written: u64,
    at: Instant,
}

impl Meter {
    /// CPU used since the meter started, in percent of one core (200% = both
    /// cores of this machine busy).
    pub fn cpu_percent(&self) -> Option<f64> {
        let ticks = cpu_ticks(self.pid)?.checked_sub(self.ticks)?;
        let secs = self.at.elapsed().as_secs_f64();
        Some(ticks as f64 / TICKS_PER_SEC / secs * 100.0)
    }

    /// Bytes written to disk since the meter started.
    pub fn written(&self) -> Option<u64> {
        written_bytes(self.pid)?.checked_sub(self.written)
    }
}

/// Bytes the process caused to be written to disk (`write_bytes` in
/// `/proc/<pid>/io`: the journal, its fsyncs' page rewrites, the log).
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// `utime + stime` of every thread of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields are counted after its closing one. utime and stime are fields
    // 14 and 15, so the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Polls the gateway's log for its "listening" line and returns the
/// address; the log if the process exits or takes a minute.
fn wait_for_listening(child: &mut Child, log: &Path) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let addr = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|v| v["message"] == "hookgate listening")
            .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()));
        if let Some(addr) = addr {
            return Ok(addr);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the gateway did not start ({exited:?}):\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The baseline server: raw hyper, HTTP/1.1 keep-alive, reads the body and
/// answers 200, on the same kind of tokio runtime as the gateway. Prints
/// its address on stdout, then serves until killed.
pub fn raw_server_main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("address"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
