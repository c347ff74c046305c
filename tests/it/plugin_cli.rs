//! `hookgate plugin run|inspect`, run as a user would: the real binary.

use std::process::{Command, Output};

use serde_json::Value;

fn hookgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .output()
        .expect("hookgate runs")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is JSON ({err}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn input_file(body: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), body).expect("write");
    file
}

#[test]
fn run_prints_the_decision_fuel_and_time() {
    let plugin = hookgate_tests::guest("json-validator");
    let input = input_file(r#"{"user_id":"u1"}"#);
    let out = hookgate(&[
        "plugin",
        "run",
        plugin.to_str().expect("utf-8 path"),
        "--role",
        "validate",
        "--input",
        input.path().to_str().expect("utf-8 path"),
        "--config",
        "required=user_id,lead_type",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(json["outcome"], "ok");
    assert_eq!(json["decision"]["verdict"], "reject");
    assert_eq!(json["decision"]["status"], 422);
    assert!(json["fuel_used"].as_u64().is_some_and(|f| f > 0), "{json}");
    assert!(json["wall_time_us"].as_u64().is_some(), "{json}");
}

#[test]
fn run_reports_a_limit_hit_and_exits_non_zero() {
    let out = run_transform(&[
        "--config",
        "mode=loop",
        "--fuel",
        "1000000",
        // Only fuel may stop it, even on a machine too loaded to run the
        // loop's million units within the default 100 ms.
        "--deadline",
        "30s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["outcome"], "out_of_fuel");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ran out of fuel"));
}

#[test]
fn run_on_a_fallback_uses_the_seeded_key_value_store() {
    let plugin = hookgate_tests::guest("last-good");
    let input = input_file(r#"{"question_id":"q1"}"#);
    let out = hookgate(&[
        "plugin",
        "run",
        plugin.to_str().expect("utf-8 path"),
        "--role",
        "fallback",
        "--input",
        input.path().to_str().expect("utf-8 path"),
        "--config",
        "key_field=question_id",
        "--kv",
        r#"last-good:q1={"ok":1}"#,
        "--failure",
        "status:503",
        "--sync",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(json["decision"]["respond"]["status"], 200);
    assert_eq!(json["decision"]["respond"]["body"], r#"{"ok":1}"#);
    assert_eq!(json["decision"]["next"]["step"], "done");
}

#[test]
fn inspect_prints_roles_version_size_and_hash() {
    let plugin = hookgate_tests::guest("misbehave");
    let out = hookgate(&[
        "plugin",
        "inspect",
        "--json",
        plugin.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(
        json["roles"],
        serde_json::json!(["validate", "transform", "fallback"])
    );
    assert_eq!(json["wit_version"], "0.1.0");
    assert_eq!(json["hash"].as_str().map(str::len), Some(64));
    let size = std::fs::metadata(&plugin).expect("metadata").len();
    assert_eq!(json["size"], size);
}

#[test]
fn inspect_names_the_file_when_it_is_not_a_component() {
    let input = input_file("not wasm");
    let path = input.path().to_str().expect("utf-8 path");
    let out = hookgate(&["plugin", "inspect", path]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(path) && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );
}

/// A memory cap no route could give (the pool's slots hold 512 MiB) is a
/// usage error naming the flag, not a run that ends in an unrelated trap.
#[test]
fn run_refuses_a_memory_cap_no_route_could_have() {
    let out = run_transform(&["--memory", "600MiB"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--memory") && stderr.contains("is outside 64KiB..=512MiB"),
        "{stderr}"
    );
}

/// `misbehave` run as a transform on `{}` with `extra` arguments; the
/// process's output.
fn run_transform(extra: &[&str]) -> Output {
    let plugin = hookgate_tests::guest("misbehave");
    let input = input_file("{}");
    let mut args = vec![
        "plugin",
        "run",
        plugin.to_str().expect("utf-8 path"),
        "--role",
        "transform",
        "--input",
        input.path().to_str().expect("utf-8 path"),
    ];
    args.extend(extra);
    hookgate(&args)
}

/// An answer the gateway would refuse is refused here too, with its reason.
#[test]
fn run_refuses_a_transform_answer_the_gateway_would_refuse() {
    let out = run_transform(&["--config", "out_method=GE T"]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["outcome"], "malformed", "{json}");
    let error = json["error"].as_str().unwrap_or_default();
    assert!(error.contains(r#"invalid method "GE T""#), "{json}");
}

/// What the plugin prints reaches stderr without any RUST_LOG.
#[test]
fn run_shows_what_the_plugin_printed() {
    let out = run_transform(&["--config", "mode=print", "--config", "print_bytes=128"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&"x".repeat(63)), "stderr: {stderr}");
}

/// `--input -` reads the body from stdin.
#[test]
fn run_reads_the_body_from_stdin() {
    use std::io::Write as _;
    let plugin = hookgate_tests::guest("json-validator");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["plugin", "run", plugin.to_str().expect("utf-8 path")])
        .args([
            "--role",
            "validate",
            "--input",
            "-",
            "--config",
            "required=id",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hookgate runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"name":"no id"}"#)
        .expect("write stdin");
    let out = child.wait_with_output().expect("hookgate exits");
    let json = stdout_json(&out);
    assert_eq!(json["decision"]["verdict"], "reject", "{json}");
    assert_eq!(json["decision"]["status"], 422, "{json}");
}
