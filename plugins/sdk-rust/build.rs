//! Writes the macro that generates a plugin's export bindings.
//!
//! `wit_bindgen::generate!` reads WIT from a path relative to the crate it is
//! expanded in, and only takes the path as a string literal. `export!` is
//! expanded in the plugin's crate, so this script writes the absolute path of
//! `wit/` (next to this crate in the repository) into a small macro the SDK
//! includes.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let wit = manifest.join("../../wit");
    let wit = wit
        .canonicalize()
        .unwrap_or_else(|err| panic!("the WIT package is not at {}: {err}", wit.display()));
    println!("cargo:rerun-if-changed={}", wit.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wit = wit.to_str().expect("the repository path is UTF-8");
    let source = format!(
        r#"/// Generates a world's bindings in the plugin's crate; see `export!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __generate {{
    ($world:tt) => {{
        $crate::__wit_bindgen::generate!({{
            path: {wit:?},
            world: $world,
            runtime_path: "::hookgate_sdk::__wit_bindgen::rt",
            with: {{
                "hookgate:plugin/types@0.1.0": ::hookgate_sdk::types,
                "hookgate:plugin/host@0.1.0": ::hookgate_sdk::host,
            }},
        }});
    }};
}}
"#
    );
    std::fs::write(out.join("generate.rs"), source).expect("OUT_DIR is writable");
}
