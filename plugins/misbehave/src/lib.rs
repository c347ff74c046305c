//! `misbehave`: a test-only plugin that plays all three roles and misbehaves
//! on purpose, so the gateway's limits and error handling can be tested
//! against a real component. Never route real traffic through it.
//!
//! Config `mode` picks the behaviour, the same for every role:
//! - `ok` or unset: behave (validate accepts; transform forwards the body
//!   unchanged as one outgoing; fallback responds 200 `ok`, message `done`);
//! - `loop`: spin forever (stopped only by fuel or the epoch deadline);
//! - `hog`: allocate and fill 1 MiB blocks forever (stopped by the memory cap);
//! - `recurse`: recurse without bound on the wasm call stack (ends in the
//!   host's stack-overflow trap);
//! - `panic`: panic, which traps (`panic = "abort"`);
//! - `error`: return `err("misbehave asked to fail")`;
//! - `count`: validate rejects with status 409 and, as the reason,
//!   `<instance>:<calls>`: a random id drawn by this instance on its first
//!   call, and how many calls (of any role) it has seen, counting this one.
//!   A host that uses a fresh instance per call always gets `…:1`. A body
//!   of exactly `panic` or `error` then traps or answers `err` (after
//!   counting), so tests can see what a reused instance remembers.
//!   Transform and fallback behave as `ok` in this mode;
//! - `probe`: validate tries every ambient authority a guest could ask WASI
//!   for (files, directories, environment, arguments, stdin, network) and
//!   rejects with status 409 and a `; `-separated list of what it reached;
//!   an empty reason means it reached nothing;
//! - `headers`: validate rejects with status 409 and, as the reason, the
//!   names of the headers it was given, comma-separated, in their order;
//! - `print`: print config `print_bytes` bytes (default 4096) to stdout, in
//!   lines of 64, with `println!` (which panics should a write fail), then
//!   behave as `ok`;
//! - `flood`: call `host.log` config `log_lines` times (default 1000) with a
//!   4 KiB message, then behave as `ok`;
//! - `fill`: validate stores 1000-byte values under fresh keys in the
//!   app's key-value store until `kv-set` refuses one (or 100,000 are
//!   stored), then rejects with status 409 and `stored <n>: <error>` (or
//!   `stored <n>` if none was refused). Other roles behave as `ok`.
//!
//! Any other mode is an `err` naming it.
//!
//! When it behaves, the transform answers with config `out_method` as its
//! method and `out_headers` (`name=value;name=value`, in order) as its
//! headers, if set, so tests can hand the host answers it must refuse or
//! pass on as they are; with `out_body_bytes`, a body of that many `x`
//! instead of the webhook's, and with `out_copies`, that many outgoing
//! messages instead of one.
//!
//! The fallback's decision is chosen by config `fallback_next`: `done`
//! (default), `retry:<ms>`, `reroute:<destination>` or `dead:<reason>`. Its
//! response has status `respond_status` (default 200) and, with
//! `respond_bytes`, a body of that many `x` instead of `ok`.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use exports::hookgate::plugin::{fallback, transform, validate};
use hookgate::plugin::host;
use hookgate::plugin::types::{
    Decision, NextStep, Outgoing, Rejection, Response, Verdict, Webhook,
};

/// Calls this instance has served. Linear memory lives as long as the
/// instance, so this is per instance, not per component.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// This instance's id for `count`, drawn on first use.
static INSTANCE: OnceLock<u64> = OnceLock::new();

/// A random id per instance, from the WASI random source (through the
/// standard library's hasher seeds).
fn instance_id() -> u64 {
    *INSTANCE.get_or_init(|| RandomState::new().hash_one(0u8))
}

/// Block size for `hog`.
const MIB: usize = 1 << 20;

/// The behaviour asked for by config `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Loop,
    Hog,
    Recurse,
    Panic,
    Error,
    Count,
    Probe,
    Headers,
    Print,
    Flood,
    Fill,
}

impl Mode {
    fn parse(mode: Option<&str>) -> Result<Self, String> {
        Ok(match mode {
            None | Some("ok") => Mode::Ok,
            Some("loop") => Mode::Loop,
            Some("hog") => Mode::Hog,
            Some("recurse") => Mode::Recurse,
            Some("panic") => Mode::Panic,
            Some("error") => Mode::Error,
            Some("count") => Mode::Count,
            Some("probe") => Mode::Probe,
            Some("headers") => Mode::Headers,
            Some("print") => Mode::Print,
            Some("flood") => Mode::Flood,
            Some("fill") => Mode::Fill,
            Some(other) => return Err(format!("unknown mode {other:?}")),
        })
    }
}

/// Common start of every export: count the call, read the mode and carry out
/// any misbehaviour. Returns the mode only when the role should go on to
/// answer normally (`ok` or `count`), together with this call's number.
fn start_call() -> Result<(Mode, u32), String> {
    // Relaxed is enough: a component instance is single-threaded.
    let call = CALLS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let mode = Mode::parse(host::config("mode").as_deref())?;
    match mode {
        Mode::Ok | Mode::Count | Mode::Probe | Mode::Headers | Mode::Fill => Ok((mode, call)),
        Mode::Flood => {
            let lines = host::config("log_lines")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1000);
            let message = "x".repeat(4096);
            for _ in 0..lines {
                host::log(host::Level::Info, &message, &[]);
            }
            Ok((mode, call))
        }
        Mode::Print => {
            let bytes = host::config("print_bytes")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(4096);
            let line = "x".repeat(63);
            for _ in 0..bytes / 64 {
                println!("{line}");
            }
            Ok((mode, call))
        }
        Mode::Loop => spin(),
        Mode::Hog => hog(),
        Mode::Recurse => {
            // The first step goes through `black_box`, so every later call is
            // an indirect call to a target the optimizer cannot know.
            let step = Step(black_box(dive as fn(u64, Step) -> u64));
            Err(format!("recursion ended at {}", dive(0, step)))
        }
        Mode::Panic => panic!("misbehave asked to panic"),
        Mode::Error => Err("misbehave asked to fail".to_string()),
    }
}

/// Stores values under fresh keys until the store refuses one; says how
/// many it stored and why it stopped.
fn fill(call: u32) -> String {
    let value = vec![0x5A; 1000];
    let seed = instance_id();
    for n in 0..100_000u32 {
        // Keys of one length, so every entry costs the same.
        let key = format!("fill:{seed:020}:{call:010}:{n:06}");
        if let Err(why) = host::kv_set(&key, &value, None) {
            return format!("stored {n}: {why}");
        }
    }
    "stored 100000".to_string()
}

/// Burns instructions forever. `black_box` makes each step observable, so
/// the optimizer can neither drop the loop nor fold it away.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Grows memory forever. Each block is filled with a non-zero byte, so its
/// pages are really written (an all-zero block could come from fresh,
/// untouched memory), and `black_box` keeps the optimizer from eliding
/// blocks nobody reads.
fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![0xA5; MIB]));
        black_box(&mut hoard);
    }
}

/// The next function `dive` calls, carried as an argument.
#[derive(Clone, Copy)]
struct Step(fn(u64, Step) -> u64);

/// Recurses without bound on the wasm call stack. The recursive call is
/// indirect (its target came through `black_box`), so it cannot be inlined
/// or turned into a loop, and the addition after it keeps it out of tail
/// position. Nothing in the frame has its address taken, so Rust's shadow
/// stack in linear memory is not used: the frames pile up on the wasm stack
/// until the host's `max_wasm_stack` stops them.
fn dive(depth: u64, step: Step) -> u64 {
    (step.0)(depth.wrapping_add(1), step).wrapping_add(depth)
}

/// Tries each ambient authority and names the ones that worked.
fn probe() -> String {
    use std::io::Read as _;
    let mut reached = Vec::new();
    if std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok() {
        reached.push("a directory listing".to_string());
    }
    if std::fs::read("/etc/passwd").is_ok() {
        reached.push("a host file".to_string());
    }
    if std::fs::write("escape.txt", b"x").is_ok() {
        reached.push("a writable file".to_string());
    }
    let vars = std::env::vars_os().count();
    if vars > 0 {
        reached.push(format!("{vars} environment variables"));
    }
    if std::env::args_os().count() > 0 {
        reached.push("command-line arguments".to_string());
    }
    let mut input = Vec::new();
    if std::io::stdin()
        .read_to_end(&mut input)
        .is_ok_and(|n| n > 0)
    {
        reached.push("stdin data".to_string());
    }
    if std::net::TcpStream::connect("127.0.0.1:80").is_ok() {
        reached.push("a network connection".to_string());
    }
    reached.join("; ")
}

/// The fallback's next step from config `fallback_next`: `done` (default),
/// `retry:<ms>`, `reroute:<destination>` or `dead:<reason>`.
fn next_step(spec: Option<&str>) -> Result<NextStep, String> {
    let spec = spec.unwrap_or("done");
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "done" => NextStep::Done,
        "retry" => NextStep::RetryAfter(
            arg.parse()
                .map_err(|_| format!("fallback_next {spec:?}: retry needs milliseconds"))?,
        ),
        "reroute" => NextStep::Reroute(arg.to_string()),
        "dead" => NextStep::DeadLetter(arg.to_string()),
        _ => return Err(format!("unknown fallback_next {spec:?}")),
    })
}

struct Misbehave;

impl validate::Guest for Misbehave {
    fn validate(hook: Webhook) -> Result<Verdict, String> {
        Ok(match start_call()? {
            (Mode::Count, call) => match hook.body.as_slice() {
                b"panic" => panic!("misbehave asked to panic after counting"),
                b"error" => return Err("misbehave asked to fail after counting".to_string()),
                _ => Verdict::Reject(Rejection {
                    status: 409,
                    reason: format!("{}:{call}", instance_id()),
                }),
            },
            (Mode::Probe, _) => Verdict::Reject(Rejection {
                status: 409,
                reason: probe(),
            }),
            (Mode::Fill, call) => Verdict::Reject(Rejection {
                status: 409,
                reason: fill(call),
            }),
            (Mode::Headers, _) => Verdict::Reject(Rejection {
                status: 409,
                reason: hook
                    .headers
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            }),
            _ => Verdict::Accept,
        })
    }
}

impl transform::Guest for Misbehave {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String> {
        start_call()?;
        let headers = host::config("out_headers").map(|spec| {
            spec.split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect()
        });
        let body = number("out_body_bytes").map_or(hook.body, |n| vec![b'x'; n]);
        let copies = number("out_copies").unwrap_or(1);
        Ok(vec![
            Outgoing {
                destination: None,
                method: host::config("out_method"),
                path: None,
                query: None,
                headers,
                body: Some(body),
                deliver_at: None,
                max_attempts: None,
            };
            copies
        ])
    }
}

impl fallback::Guest for Misbehave {
    fn fallback(_hook: Webhook, _failure: fallback::Failure) -> Result<Decision, String> {
        start_call()?;
        Ok(Decision {
            respond: Some(Response {
                status: number("respond_status").map_or(200, |n| n as u16),
                headers: vec![("content-type".to_string(), b"text/plain".to_vec())],
                body: number("respond_bytes").map_or(b"ok".to_vec(), |n| vec![b'x'; n]),
            }),
            next: next_step(host::config("fallback_next").as_deref())?,
        })
    }
}

/// Config value `key` as a number, if set and one.
fn number(key: &str) -> Option<usize> {
    host::config(key).and_then(|n| n.parse().ok())
}

export!(Misbehave);

// Pure logic only: these run on the host target with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_modes_and_names_unknown_ones() {
        assert_eq!(Mode::parse(None), Ok(Mode::Ok));
        assert_eq!(Mode::parse(Some("count")), Ok(Mode::Count));
        assert_eq!(Mode::parse(Some("headers")), Ok(Mode::Headers));
        assert_eq!(Mode::parse(Some("print")), Ok(Mode::Print));
        assert_eq!(
            Mode::parse(Some("explode")),
            Err(r#"unknown mode "explode""#.to_string())
        );
    }
}
