//! Builds a C plugin (`plugins/templates/c`, `plugins/random-winner`) into a
//! component without any CLI tool but clang: the `wit-bindgen c` and `wasm-tools component new`
//! steps run here through their library crates, so CI does not spend minutes
//! installing `wit-bindgen-cli` and `wasm-tools`.
//!
//! The steps are the ones the C template's README gives for a plugin author:
//! generate the bindings for the plugin's world, compile and link a WASI
//! reactor module with clang and Debian's wasi-libc, then wrap the core module
//! into a component with the WASI preview1 reactor adapter.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

/// What a plugin author needs on Debian 12 for this build.
pub const C_PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32";

/// Builds the C files `sources` against the `world` of `wit` into the
/// component `out`, using `work` for intermediate files. The sources include
/// the generated header, named after the world (`plugin.h`,
/// `fallback_handler.h`). The error says which step failed and why.
pub fn build_c(
    sources: &[PathBuf],
    world: &str,
    wit: &Path,
    work: &Path,
    out: &Path,
) -> Result<(), String> {
    let generated = work.join("gen");
    fs::create_dir_all(&generated)
        .map_err(|e| format!("cannot create {}: {e}", generated.display()))?;
    let bindings = generate_bindings(wit, world, &generated)?;

    let core = work.join("core.wasm");
    let mut clang = Command::new("clang");
    clang
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        // Debian's libc.a carries debug info: 143 KB -> 35 KB without it.
        .arg("-Wl,--strip-debug")
        .arg("-I")
        .arg(&generated)
        .arg("-o")
        .arg(&core)
        .args(sources)
        .args(&bindings);
    let output = clang
        .output()
        .map_err(|e| format!("cannot run clang ({e}); on Debian: apt-get install {C_PACKAGES}"))?;
    if !output.status.success() {
        return Err(format!(
            "clang failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    let core = fs::read(&core).map_err(|e| format!("cannot read {}: {e}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|encoder| {
            encoder.validate(true).adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.encode())
        .map_err(|e| format!("cannot make a component of the C module: {e:#}"))?;
    fs::write(out, component).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// `wit-bindgen c wit --world <world> --out-dir <generated>`: writes the
/// header, the glue source and the `*_component_type.o` object that carries
/// the world into the link. Returns the files to compile and link.
fn generate_bindings(wit: &Path, world: &str, generated: &Path) -> Result<Vec<PathBuf>, String> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .map_err(|e| format!("cannot read the WIT package in {}: {e:#}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .map_err(|e| format!("no world {world:?}: {e:#}"))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| format!("cannot generate the C bindings: {e:#}"))?;
    let mut sources = Vec::new();
    for (name, contents) in files.iter() {
        let path = generated.join(name);
        fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            sources.push(path);
        }
    }
    Ok(sources)
}
