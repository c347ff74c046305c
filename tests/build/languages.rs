//! Builds the guests that are not written in Rust: the plugins in `plugins/`
//! written in JavaScript, Python or C (into `<guests>/plugins/<name>.wasm`,
//! beside the Rust ones, so tests and examples find every plugin in one
//! folder) and the language templates in `plugins/templates/` (into
//! `<guests>/templates/template-<lang>.wasm`). Rust plugins and the Rust
//! template are members of the `plugins/` cargo workspace, built by
//! `build.rs`.
//!
//! A folder's language is known from its files (`Language::of`), and its
//! entry file names the WIT world it targets on a comment line
//! `// world: <name>` (`# world: <name>` in Python), as a Rust plugin names
//! it in `wit_bindgen::generate!`.
//!
//! Each language's componentizer comes from its ordinary registry and is
//! installed once, on demand, under `<guests>/toolchains/` (npm for
//! componentize-js, a venv with pip for componentize-py); C needs only
//! Debian's clang and wasi-libc (`c.rs`). A guest is rebuilt only when its
//! sources, the WIT package or the tool version change, or its component is
//! not the file this build wrote (a stamp of all that sits next to the
//! component), because the JavaScript and Python builds take several
//! seconds each.
//!
//! A guest that cannot be built does not fail the whole build (every other
//! test still runs): its error is written to `<name>.error` next to where
//! the component would be, which `hookgate_tests::guest` and
//! `hookgate_tests::template` report when a test asks for it, so the test
//! fails with the cause instead of being skipped.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::c::build_c;

/// The languages built here besides Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    JavaScript,
    Python,
    C,
}

impl Language {
    /// The language of the plugin in `dir`, from its files: a `package.json`
    /// is JavaScript, an `app.py` Python, any `*.c` C. `None` for a Rust crate
    /// (a `Cargo.toml`) and for a folder that holds no plugin.
    pub fn of(dir: &Path) -> Option<Language> {
        if dir.join("Cargo.toml").is_file() {
            None
        } else if dir.join("package.json").is_file() {
            Some(Language::JavaScript)
        } else if dir.join("app.py").is_file() {
            Some(Language::Python)
        } else if !c_sources(dir).is_empty() {
            Some(Language::C)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Language::JavaScript => "JavaScript",
            Language::Python => "Python",
            Language::C => "C",
        }
    }
}

/// One component to build from a folder of sources.
pub struct Guest {
    /// The component's file stem: `<out_dir>/<name>.wasm`.
    pub name: String,
    source: PathBuf,
    language: Language,
    out_dir: PathBuf,
}

impl Guest {
    /// The folder its sources are in.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Every plugin folder directly in `dir` whose language is built here, each
/// to become `<out_dir>/<prefix><folder name>.wasm`, sorted by name.
pub fn find(dir: &Path, prefix: &str, out_dir: &Path) -> Vec<Guest> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
    let mut guests: Vec<Guest> = entries
        .flatten()
        .filter_map(|entry| {
            let language = Language::of(&entry.path())?;
            let folder = entry.file_name().into_string().ok()?;
            Some(Guest {
                name: format!("{prefix}{folder}"),
                source: entry.path(),
                language,
                out_dir: out_dir.to_path_buf(),
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    guests
}

/// Builds each guest whose stamp is not current. `guests` is the
/// `<target-dir>/guests` folder (toolchains, work folders).
pub fn build(repo: &Path, guests: &Path, list: &[Guest]) {
    fs::create_dir_all(guests)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", guests.display()));
    // Two host profiles building at once must not install or build into the
    // same folders together.
    let lock = fs::File::create(guests.join(".languages.lock"))
        .and_then(|file| file.lock().map(|()| file))
        .unwrap_or_else(|err| panic!("cannot lock {}: {err}", guests.display()));

    let wit = repo.join("wit");
    for guest in list {
        fs::create_dir_all(&guest.out_dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", guest.out_dir.display()));
        let component = guest.out_dir.join(format!("{}.wasm", guest.name));
        let error_file = guest.out_dir.join(format!("{}.error", guest.name));
        let stamp_file = guest.out_dir.join(format!("{}.stamp", guest.name));
        let tool = tool_spec(guest.language, &guest.source);
        let sources = stamp_of(&[&guest.source, &wit], &tool);
        let fresh = fs::read_to_string(&stamp_file)
            .is_ok_and(|old| Some(old) == written_by(&sources, &component));
        if fresh {
            continue;
        }
        let _ = fs::remove_file(&stamp_file);
        let work = guests.join("work").join(&guest.name);
        match build_one(guest, &tool, &wit, guests, &work, &component) {
            Ok(()) => {
                let _ = fs::remove_file(&error_file);
                if let Some(stamp) = written_by(&sources, &component) {
                    let _ = fs::write(&stamp_file, stamp);
                }
            }
            Err(error) => {
                let _ = fs::remove_file(&component);
                let message = format!(
                    "{} ({}, {}) could not be built: {error}",
                    guest.name,
                    guest.language.name(),
                    guest.source.display()
                );
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
}

/// The package (name and exact version) of the language's componentizer, as
/// the plugin pins it for its authors: `package.json`'s devDependencies,
/// `requirements.txt`. C's tools come from Debian and the crates this
/// script is built with.
///
/// Every plugin of a language shares one installation of its tool
/// (`<guests>/toolchains/<lang>`), so the repository's plugins pin the same
/// version: one that differs would be installed over it at each build.
fn tool_spec(language: Language, source: &Path) -> String {
    match language {
        Language::JavaScript => {
            let json = package_json(source);
            let deps = json["devDependencies"].as_object().into_iter().flatten();
            let specs: Vec<String> = deps
                .map(|(name, version)| format!("{name}@{}", version.as_str().unwrap_or("")))
                .collect();
            specs.join(" ")
        }
        Language::Python => {
            let requirements = source.join("requirements.txt");
            fs::read_to_string(&requirements)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", requirements.display()))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }
        Language::C => "clang".to_string(),
    }
}

fn package_json(source: &Path) -> Value {
    let manifest = source.join("package.json");
    let text = fs::read_to_string(&manifest)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", manifest.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", manifest.display()))
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

/// The stamp of `component` built from `sources` (a `stamp_of`): with the
/// file's size and modification time, so a component replaced by anything
/// else (a Rust crate of the same name, a file copied over it by hand) is
/// rebuilt. `None` when there is no component.
fn written_by(sources: &str, component: &Path) -> Option<String> {
    let meta = fs::metadata(component).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{sources} {} {}", meta.len(), modified.as_nanos()))
}

/// Source files only: what a hand build leaves in a plugin folder
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

/// The `*.c` files in `dir`, sorted: a C plugin is all of them.
fn c_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c") && path.is_file())
        .collect();
    sources.sort();
    sources
}

/// The files the componentizer starts from: `package.json`'s `main`
/// (npm's default `index.js`), `app.py`, or every `*.c`.
fn entry_files(guest: &Guest) -> Vec<PathBuf> {
    match guest.language {
        Language::JavaScript => {
            let json = package_json(&guest.source);
            let main = json["main"].as_str().unwrap_or("index.js");
            vec![guest.source.join(main)]
        }
        Language::Python => vec![guest.source.join("app.py")],
        Language::C => c_sources(&guest.source),
    }
}

/// The WIT world the guest targets: the first `world: <name>` comment line
/// (`//` or `#`) of its entry files.
fn world_of(entries: &[PathBuf]) -> Result<String, String> {
    for entry in entries {
        let text = fs::read_to_string(entry)
            .map_err(|err| format!("cannot read {}: {err}", entry.display()))?;
        let world = text.lines().find_map(|line| {
            let line = line.trim_start();
            let comment = line.strip_prefix("//").or_else(|| line.strip_prefix('#'))?;
            let name = comment.trim().strip_prefix("world:")?.trim();
            (!name.is_empty()).then(|| name.to_string())
        });
        if let Some(world) = world {
            return Ok(world);
        }
    }
    let files: Vec<String> = entries.iter().map(|e| e.display().to_string()).collect();
    Err(format!(
        "no WIT world named in {}: add a comment line `world: <name>` (e.g. \
         `// world: transformer`, `# world: transformer` in Python)",
        files.join(", ")
    ))
}

/// Builds `guest` into `out`. The component is written in `work` first and
/// renamed into place, so a test binary of another profile, or a gateway
/// watching the folder, never reads half a file.
fn build_one(
    guest: &Guest,
    tool: &str,
    wit: &Path,
    guests: &Path,
    work: &Path,
    out: &Path,
) -> Result<(), String> {
    let entries = entry_files(guest);
    let world = world_of(&entries)?;
    fs::create_dir_all(work).map_err(|err| format!("cannot create {}: {err}", work.display()))?;
    let built = work.join("component.wasm");
    let tools = guests.join("toolchains");
    match guest.language {
        Language::JavaScript => {
            let bin = install_npm(tool, &tools.join("javascript"))?;
            // The command of the templates' `npm run build`.
            let mut command = Command::new(bin);
            command
                .args(&entries)
                .arg("--wit")
                .arg(wit)
                .args(["--world-name", &world, "-d"])
                // WASI features the gateway does not give plugins.
                .args(["stdio", "random", "clocks", "http", "fetch-event"])
                .arg("-o")
                .arg(&built);
            run(command, "componentize-js")?;
        }
        Language::Python => {
            let bin = install_pip(tool, &tools.join("python"))?;
            // The command in the Python template's README.
            let mut command = Command::new(bin);
            command
                .current_dir(&guest.source)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg("-d")
                .arg(wit)
                .args(["-w", &world, "componentize", "app", "-o"])
                .arg(&built);
            run(command, "componentize-py")?;
        }
        Language::C => build_c(&entries, &world, wit, work, &built)?,
    }
    fs::rename(&built, out).map_err(|err| format!("cannot write {}: {err}", out.display()))
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
