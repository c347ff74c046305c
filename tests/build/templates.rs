//! Builds the language templates that are not Rust (`plugins/templates/`:
//! JavaScript, Python, C) into `<guests>/templates/template-<lang>.wasm`.
//! The Rust template is a member of the `plugins/` workspace and is built
//! with the other guests.
//!
//! Each language's componentizer comes from its ordinary registry and is
//! installed once, on demand, under `<guests>/toolchains/` (npm for
//! componentize-js, a venv with pip for componentize-py); C needs only
//! Debian's clang and wasi-libc (`c.rs`). A template is rebuilt only when
//! its sources, the WIT package or the tool version change (a stamp of all
//! three sits next to the component), because the JavaScript and Python
//! builds take several seconds each.
//!
//! A template that cannot be built does not fail the whole build (every
//! other test still runs): its error is written to
//! `template-<lang>.error`, which `hookgate_tests::template` reports when a
//! test asks for that template, so the language's test fails with the cause
//! instead of being skipped.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::c::build_c;

/// The templates built here, by directory name under `plugins/templates/`.
const LANGUAGES: [&str; 3] = ["javascript", "python", "c"];

/// Builds every template into `<guests>/templates` and returns that folder.
pub fn build_templates(repo: &Path, guests: &Path) -> PathBuf {
    let out_dir = guests.join("templates");
    fs::create_dir_all(&out_dir)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", out_dir.display()));
    // Two host profiles building at once must not install or build into the
    // same folders together.
    let lock = fs::File::create(out_dir.join(".lock"))
        .and_then(|file| file.lock().map(|()| file))
        .unwrap_or_else(|err| panic!("cannot lock {}: {err}", out_dir.display()));

    let wit = repo.join("wit");
    for lang in LANGUAGES {
        let source = repo.join("plugins/templates").join(lang);
        let component = out_dir.join(format!("template-{lang}.wasm"));
        let error_file = out_dir.join(format!("template-{lang}.error"));
        let stamp_file = out_dir.join(format!("template-{lang}.stamp"));
        let tool = tool_spec(lang, &source);
        let stamp = stamp_of(&[&source, &wit], &tool);
        let fresh =
            component.is_file() && fs::read_to_string(&stamp_file).is_ok_and(|old| old == stamp);
        if fresh {
            continue;
        }
        let _ = fs::remove_file(&stamp_file);
        let work = out_dir.join(lang);
        let result = build_one(lang, &tool, &source, &wit, guests, &work, &component);
        match result {
            Ok(()) => {
                let _ = fs::remove_file(&error_file);
                let _ = fs::write(&stamp_file, stamp);
            }
            Err(error) => {
                let _ = fs::remove_file(&component);
                let message = format!("the {lang} template could not be built: {error}");
                println!(
                    "cargo:warning={}",
                    message.lines().next().unwrap_or_default()
                );
                fs::write(&error_file, message)
                    .unwrap_or_else(|err| panic!("cannot write {}: {err}", error_file.display()));
            }
        }
    }
    drop(lock);
    out_dir
}

/// The package (name and exact version) of the language's componentizer, as
/// the template pins it for its authors: `package.json`'s devDependencies,
/// `requirements.txt`. C's tools come from Debian and the crates this
/// script is built with.
fn tool_spec(lang: &str, source: &Path) -> String {
    match lang {
        "javascript" => {
            let manifest = source.join("package.json");
            let text = fs::read_to_string(&manifest)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", manifest.display()));
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not JSON: {err}", manifest.display()));
            let deps = json["devDependencies"].as_object().into_iter().flatten();
            let specs: Vec<String> = deps
                .map(|(name, version)| format!("{name}@{}", version.as_str().unwrap_or("")))
                .collect();
            specs.join(" ")
        }
        "python" => {
            let requirements = source.join("requirements.txt");
            fs::read_to_string(&requirements)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", requirements.display()))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => "clang".to_string(),
    }
}

/// A hash of every file under `roots` (path and bytes) and the tool version.
fn stamp_of(roots: &[&Path], tool: &str) -> String {
    let mut files = Vec::new();
    for root in roots {
        collect_files(root, &mut files);
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    tool.hash(&mut hasher);
    for file in files {
        file.hash(&mut hasher);
        fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// Source files only: what a hand build leaves in a template folder
/// (`node_modules`, `__pycache__`, `gen`, `*.wasm`) and the READMEs are not
/// inputs. (The JavaScript and Python builds are not byte-for-byte
/// reproducible, so a needless rebuild also costs every test a recompile.)
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "node_modules" | "__pycache__" | "gen") {
                collect_files(&path, files);
            }
        } else if !name.ends_with(".wasm") && !name.ends_with(".md") && name != "package-lock.json"
        {
            files.push(path);
        }
    }
}

fn build_one(
    lang: &str,
    tool: &str,
    source: &Path,
    wit: &Path,
    guests: &Path,
    work: &Path,
    out: &Path,
) -> Result<(), String> {
    let tools = guests.join("toolchains");
    match lang {
        "javascript" => {
            let bin = install_npm(tool, &tools.join("javascript"))?;
            // The command in package.json's `build` script.
            let mut command = Command::new(bin);
            command
                .arg(source.join("plugin.js"))
                .arg("--wit")
                .arg(wit)
                .args(["--world-name", "plugin", "-d"])
                .args(["stdio", "random", "clocks", "http", "fetch-event"])
                .arg("-o")
                .arg(out);
            run(command, "componentize-js")
        }
        "python" => {
            let bin = install_pip(tool, &tools.join("python"))?;
            // The command in the template's README.
            let mut command = Command::new(bin);
            command
                .current_dir(source)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg("-d")
                .arg(wit)
                .args(["-w", "plugin", "componentize", "app", "-o"])
                .arg(out);
            run(command, "componentize-py")
        }
        _ => fs::create_dir_all(work)
            .map_err(|err| format!("cannot create {}: {err}", work.display()))
            .and_then(|()| build_c(source, wit, work, out)),
    }
}

/// Installs `spec` with npm under `dir` unless that exact spec is there;
/// returns the path of `componentize-js`.
fn install_npm(spec: &str, dir: &Path) -> Result<PathBuf, String> {
    let bin = dir.join("node_modules/.bin/componentize-js");
    if !installed(dir, spec, &bin) {
        let mut npm = Command::new("npm");
        npm.args([
            "install",
            "--no-save",
            "--no-fund",
            "--no-audit",
            "--prefix",
        ])
        .arg(dir)
        .args(spec.split(' '));
        run(npm, "npm install (Node.js 18 or newer and npm are needed)")?;
        mark_installed(dir, spec)?;
    }
    Ok(bin)
}

/// Installs `spec` with pip into a venv at `dir` unless that exact spec is
/// there; returns the path of `componentize-py`.
fn install_pip(spec: &str, dir: &Path) -> Result<PathBuf, String> {
    let bin = dir.join("bin/componentize-py");
    if !installed(dir, spec, &bin) {
        // `--clear`: a venv works only where it was made (its scripts name
        // its interpreter by path), so one copied or moved here is remade,
        // not patched.
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv", "--clear"]).arg(dir);
        run(
            venv,
            "python3 -m venv (on Debian: apt-get install python3-venv)",
        )?;
        let mut pip = Command::new(dir.join("bin/pip"));
        pip.args(["install", "--quiet", "--disable-pip-version-check"])
            .args(spec.split(' '));
        run(pip, "pip install")?;
        mark_installed(dir, spec)?;
    }
    Ok(bin)
}

/// Whether `spec` is installed in `dir` and its tool `bin` can run here.
fn installed(dir: &Path, spec: &str, bin: &Path) -> bool {
    bin.is_file()
        && interpreter_exists(bin)
        && fs::read_to_string(dir.join(".installed")).is_ok_and(|s| s == spec)
}

/// Whether the interpreter a script names on its `#!` line exists (true
/// for a file without one). A toolchain folder copied from another
/// checkout keeps scripts that point into that checkout.
fn interpreter_exists(script: &Path) -> bool {
    let Ok(text) = fs::read(script) else {
        return false;
    };
    let Some(line) = text.strip_prefix(b"#!") else {
        return true;
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.split_whitespace()
        .next()
        .is_some_and(|interpreter| Path::new(interpreter).is_file())
}

fn mark_installed(dir: &Path, spec: &str) -> Result<(), String> {
    fs::write(dir.join(".installed"), spec)
        .map_err(|err| format!("cannot write {}: {err}", dir.display()))
}

/// Runs a tool; the error names it and carries its output.
fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {what}: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
