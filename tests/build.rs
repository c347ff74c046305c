//! Builds the guest plugins in `plugins/` so that `cargo test` stays one command.
//!
//! `plugins/` is its own cargo workspace for `wasm32-wasip2`, so it cannot be
//! an ordinary dependency. This script runs a nested
//! `cargo build --release --target wasm32-wasip2` on it (as wasmtime's
//! `test-programs` artifacts do), copies every component to
//! `<guests>/plugins/<crate-name>.wasm`, and hands that directory to the crate
//! as `HOOKGATE_GUEST_DIR`.
//!
//! `<guests>` is `<target-dir>/guests`: a target dir of its own, so the nested
//! cargo never waits for the lock the outer build holds, and shared by every
//! host profile (dev, test, release, bench), so the guests are compiled once.
//! Guests are always built in release: that is how they ship, and the profile
//! keeps them small.
//!
//! Plugins written in other languages (a folder in `plugins/` with a
//! `package.json`, an `app.py` or `*.c` files instead of a `Cargo.toml`)
//! and the language templates in `plugins/templates/` that are not Rust are
//! built by `build/languages.rs`: the plugins into `<guests>/plugins` with
//! the Rust ones, the templates into `<guests>/templates`, handed over as
//! `HOOKGATE_TEMPLATE_DIR`.

#[path = "build/c.rs"]
mod c;
#[path = "build/languages.rs"]
mod languages;

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The target every guest is built for; it emits components directly.
const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let repo = manifest_dir
        .parent()
        .expect("tests/ lives inside the repository");
    let plugins = repo.join("plugins");
    let target_dir = guest_target_dir();
    let guest_dir = target_dir.join("plugins");
    let template_dir = target_dir.join("templates");
    let mut other_languages = languages::find(&plugins, "", &guest_dir);
    let plugin_names: BTreeSet<String> = other_languages
        .iter()
        .map(|guest| guest.name.clone())
        .collect();
    other_languages.extend(languages::find(
        &plugins.join("templates"),
        "template-",
        &template_dir,
    ));
    watch_guest_sources(repo, &plugins, &other_languages);

    let built = build_guests(&plugins, &target_dir);
    install_guests(&built, &plugin_names, &guest_dir);
    languages::build(repo, &target_dir, &other_languages);

    println!("cargo:rustc-env=HOOKGATE_GUEST_DIR={}", guest_dir.display());
    println!(
        "cargo:rustc-env=HOOKGATE_TEMPLATE_DIR={}",
        template_dir.display()
    );
}

fn env_var(name: &str) -> std::ffi::OsString {
    env::var_os(name).unwrap_or_else(|| panic!("cargo did not set {name}"))
}

/// Tells cargo what the guests are built from. Watching `plugins/` as a whole
/// would also watch `plugins/target/` (left there by anyone who builds the
/// plugins by hand) and rerun this script after every such build, so only the
/// workspace files, the member crates' directories and the folders of the
/// plugins in other languages are watched. (So a new plugin folder in another
/// language is noticed at the next change to a watched file, e.g.
/// `touch plugins/Cargo.toml`.)
fn watch_guest_sources(repo: &Path, plugins: &Path, other_languages: &[languages::Guest]) {
    let mut watched = vec![
        repo.join("wit"),
        // The templates (and the Rust one, a workspace member one level down).
        plugins.join("templates"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
    ];
    let members = fs::read_dir(plugins)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", plugins.display()));
    for entry in members.flatten() {
        // A member crate is a directory with a manifest; `target/` has none.
        if entry.path().join("Cargo.toml").is_file() {
            watched.push(entry.path());
        }
    }
    watched.extend(
        other_languages
            .iter()
            .map(|guest| guest.source().to_path_buf()),
    );
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `<target-dir>/guests`. The target dir is `CARGO_TARGET_DIR` when that is
/// an absolute path, else it is found from `OUT_DIR` (always absolute).
fn guest_target_dir() -> PathBuf {
    let from_env = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        // A relative value is relative to wherever cargo was started, which
        // this script cannot know (it runs in the package directory).
        .filter(|dir| dir.is_absolute());
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    let target_dir = from_env
        .or_else(|| target_dir_of(&out_dir))
        // An unknown layout: still correct, only not shared across profiles.
        .unwrap_or(out_dir);
    target_dir.join("guests")
}

/// The target dir, from an `OUT_DIR` of the form
/// `<target-dir>[/<triple>]/<profile>/build/<pkg>-<hash>/out`; the
/// `<triple>` level is there when cargo was given `--target`. `None` when
/// the path does not look like that.
fn target_dir_of(out_dir: &Path) -> Option<PathBuf> {
    let build = out_dir.ancestors().nth(2)?;
    if build.file_name()? != "build" {
        return None;
    }
    let mut target_dir = out_dir.ancestors().nth(4)?;
    if env::var_os("TARGET").is_some_and(|triple| target_dir.file_name() == Some(&triple)) {
        target_dir = target_dir.parent()?;
    }
    Some(target_dir.to_path_buf())
}

/// Runs the nested cargo build and returns the components it produced.
/// Panics with cargo's output if the build fails, so the reason shows up in
/// the outer build's error.
fn build_guests(plugins: &Path, target_dir: &Path) -> Vec<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        // Run from `plugins/` so cargo reads the config files a developer
        // building the plugins by hand would get, not those around `tests/`.
        .current_dir(plugins)
        .args(["build", "--release", "--target", GUEST_TARGET])
        // JSON on stdout tells exactly which files were produced; the
        // diagnostics are still rendered as text, on stderr.
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (key, _) in env::vars_os() {
        if key.to_str().is_some_and(is_outer_build_setting) {
            command.env_remove(&key);
        }
    }

    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo to build the guest plugins: {err}"));
    if !output.status.success() {
        panic!(
            "building the guest plugins in {} failed ({}):\n{}",
            plugins.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = components_in(&String::from_utf8_lossy(&output.stdout));
    if built.is_empty() {
        panic!("cargo built no components in {}", plugins.display());
    }
    built
}

/// Whether an environment variable belongs to the outer (host) build and
/// must not reach the nested guest build.
///
/// - Flags, wrappers, target and target dir: host rustflags (a `-C
///   target-cpu=native`, coverage instrumentation) or a wrapper set up for the
///   host build (clippy's driver, a coverage tool) would change or break the
///   wasm build; target and target dir are given on the command line.
/// - `CARGO_PROFILE_*`: the guests have their own release profile.
/// - `CARGO_CFG_*`, `CARGO_FEATURE_*`, `DEP_*`: cargo hands these to this
///   script about the host crate; it sets fresh ones for each nested build
///   script, but never removes leftovers, so a host-only `CARGO_CFG_UNIX`
///   would otherwise reach build scripts compiling for wasm.
///
/// `CARGO`, `RUSTC` and `CARGO_MAKEFLAGS` stay: the same toolchain, and the
/// outer build's jobserver, so the nested build shares its job slots.
fn is_outer_build_setting(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ];
    const PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_CFG_", "CARGO_FEATURE_", "DEP_"];
    EXACT.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

/// The `.wasm` files of the `cdylib` artifacts in cargo's JSON messages.
/// Fresh (already up-to-date) artifacts are reported too, so a no-op build
/// still lists every component.
fn components_in(messages: &str) -> Vec<PathBuf> {
    let mut components = Vec::new();
    for message in messages.lines() {
        let Ok(message) = serde_json::from_str::<Value>(message) else {
            continue; // not a JSON message; cargo only prints JSON here
        };
        let is_cdylib = message["reason"] == "compiler-artifact"
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let files = message["filenames"].as_array().into_iter().flatten();
        components.extend(
            files
                .filter_map(Value::as_str)
                .filter(|file| file.ends_with(".wasm"))
                .map(PathBuf::from),
        );
    }
    components
}

/// Copies each component to `<guest_dir>/<crate-name>.wasm` and removes the
/// files of plugins that no longer exist (neither a crate nor one of
/// `other_languages`, built into the same folder with their `.stamp` and
/// `.error` files), so a test cannot pass against a stale plugin.
fn install_guests(built: &[PathBuf], other_languages: &BTreeSet<String>, guest_dir: &Path) {
    fs::create_dir_all(guest_dir)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", guest_dir.display()));

    let mut installed = BTreeSet::new();
    for source in built {
        // rustc names the file after the crate, with `_` for the `-` of the
        // crate name; the tests use crate names, which have `-`.
        let stem = source
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or_else(|| panic!("unexpected artifact name {}", source.display()));
        let name = format!("{}.wasm", stem.replace('_', "-"));
        copy_if_changed(source, &guest_dir.join(&name));
        installed.insert(name);
    }

    for entry in fs::read_dir(guest_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(|name| name.rsplit_once('.'))
            .is_some_and(|(stem, extension)| {
                matches!(extension, "wasm" | "stamp" | "error")
                    && !installed.contains(&format!("{stem}.wasm"))
                    && !other_languages.contains(stem)
            });
        if stale {
            // Best effort: a leftover file is harmless unless a test names it.
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Copies `source` to `dest` unless `dest` already has the same bytes, so an
/// unchanged guest keeps its modification time. The copy goes through a
/// temporary file and a rename, so a test binary of another profile that is
/// running meanwhile never reads half a file.
fn copy_if_changed(source: &Path, dest: &Path) {
    let bytes =
        fs::read(source).unwrap_or_else(|err| panic!("cannot read {}: {err}", source.display()));
    if fs::read(dest).is_ok_and(|existing| existing == bytes) {
        return;
    }
    let temp = dest.with_extension(format!("wasm.{}.tmp", std::process::id()));
    fs::write(&temp, &bytes)
        .and_then(|()| fs::rename(&temp, dest))
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", dest.display()));
}
