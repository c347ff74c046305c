//! Test support for hookgate's integration tests and benchmarks.
//!
//! The guest plugins: `build.rs` compiles every plugin in `plugins/` (Rust
//! crates, and folders in JavaScript, Python or C) to a WebAssembly component
//! and records where they are, so a test asks for a plugin by name
//! (`guest("json-validator")`) and never builds or finds one itself.
//!
//! [`receiver`]: a scripted HTTP receiver the gateway delivers to in tests.

pub mod receiver;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A realistic ~1 KB JSON webhook (an order with eight line items): the
/// payload the plugin-call benchmark and the runtime tests use.
pub fn payload_1k() -> String {
    let items: Vec<Value> = (0..8)
        .map(|i| {
            json!({"sku": format!("SKU-{i:04}"), "name": "Widget, blue, large",
                   "qty": i + 1, "price_cents": 1999})
        })
        .collect();
    json!({
        "id": "evt_1NqQ2e2eZvKYlo2C",
        "kind": "order.created",
        "created_at": "2026-11-22T10:00:00Z",
        "customer": {"id": "cus_9s6XKzkNRiz8i3", "email": "ada@example.com", "name": "Ada Lovelace"},
        "items": items,
        "currency": "EUR",
    })
    .to_string()
}

/// The directory holding one `<name>.wasm` component per plugin in
/// `plugins/` (named after its crate or folder), e.g. `json-validator.wasm`.
///
/// It is `<target-dir>/guests/plugins`, shared by every profile of the host
/// build; the path is fixed when this crate is compiled
/// (`HOOKGATE_GUEST_DIR`, set by the build script).
pub fn guest_dir() -> &'static Path {
    Path::new(env!("HOOKGATE_GUEST_DIR"))
}

/// The component built from `plugins/<name>`, e.g. `guest("misbehave")`.
///
/// # Panics
///
/// When there is no such component: with the reason the build script
/// recorded if it could not build that plugin (a missing toolchain, a
/// compile error), else with the names of those that exist, so a misspelt
/// name fails at its cause, not later as a confusing load error.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_dir().join(format!("{name}.wasm"));
    if path.is_file() {
        return path;
    }
    if let Ok(reason) = std::fs::read_to_string(guest_dir().join(format!("{name}.error"))) {
        panic!("no guest plugin {name:?}: {reason}");
    }
    panic!(
        "no guest plugin {name:?}: {} does not exist (built: {}); plugins are named \
         after their crate or folder in plugins/, and if the directory was deleted \
         or the folder is new, `cargo clean -p hookgate-tests` makes the build \
         script run again",
        path.display(),
        available_guests().join(", "),
    );
}

/// The languages of the plugin templates in `plugins/templates/`.
pub const TEMPLATE_LANGUAGES: [&str; 4] = ["rust", "javascript", "python", "c"];

/// Where the build script puts the non-Rust template components
/// (`<target-dir>/guests/templates`), shared by every profile.
pub fn template_dir() -> &'static Path {
    Path::new(env!("HOOKGATE_TEMPLATE_DIR"))
}

/// The component built from the template `plugins/templates/<lang>`.
///
/// The Rust template is a guest like the others (`template-rust`); the other
/// languages are built by their own toolchains in the build script.
///
/// # Panics
///
/// When the template could not be built, with the reason the build script
/// recorded (a missing toolchain, a failed install, a compile error): a test
/// that needs a language fails with the cause, it is never skipped.
pub fn template(lang: &str) -> PathBuf {
    if lang == "rust" {
        return guest("template-rust");
    }
    let dir = template_dir();
    let path = dir.join(format!("template-{lang}.wasm"));
    if path.is_file() {
        return path;
    }
    let reason = std::fs::read_to_string(dir.join(format!("template-{lang}.error")))
        .unwrap_or_else(|_| format!("{} does not exist", path.display()));
    panic!("no {lang} template component: {reason}");
}

/// Names of the components in `guest_dir()`, sorted, for error messages.
fn available_guests() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(guest_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".wasm").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Makes `<dir>/data/compiled`, the compile cache of a gateway whose
/// `data_dir` is `<dir>/data`, a link to one cache shared by every gateway
/// the tests start (under the target dir, so it also survives between
/// runs). The JavaScript and Python components take seconds to compile (tens
/// of seconds in a debug build); with the shared cache each version is
/// compiled once, not once per test.
pub fn share_compile_cache(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    std::os::unix::fs::symlink(shared_compile_cache(), dir.join("data/compiled"))
        .expect("link the compile cache");
}

/// `<target-dir>/guests/compiled`, created if missing.
pub fn shared_compile_cache() -> std::path::PathBuf {
    let cache = guest_dir().with_file_name("compiled");
    std::fs::create_dir_all(&cache).expect("shared compile cache");
    cache
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_is_built_as_a_component() {
        for name in [
            "bug-js",      // JavaScript
            "embed-order", // JavaScript
            "empty",
            "json-validator",
            "last-good",
            "misbehave",
            "postback",      // Python
            "random-winner", // C
            "reshape",
            "template-rust",
            "wrong-wit",
        ] {
            let bytes = std::fs::read(guest(name)).expect("guest is readable");
            // `\0asm`, then the component-model layer and version (0x0d,
            // layer 1); a core module would have version 1, layer 0.
            assert_eq!(
                bytes.get(..8),
                Some(&b"\0asm\x0d\x00\x01\x00"[..]),
                "{name}"
            );
        }
    }

    #[test]
    fn every_template_is_built_as_a_component() {
        for lang in TEMPLATE_LANGUAGES {
            let bytes = std::fs::read(template(lang)).expect("template is readable");
            assert_eq!(
                bytes.get(..8),
                Some(&b"\0asm\x0d\x00\x01\x00"[..]),
                "{lang}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "no guest plugin \"no-such-plugin\"")]
    fn unknown_guest_names_the_problem() {
        guest("no-such-plugin");
    }
}
