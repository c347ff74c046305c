//! Turning a `.wasm` file into a [`Plugin`]: checks, compile cache, roles.
//!
//! Loading is strict so that a bad file is refused with one clear line and
//! never reaches the request path: not wasm, a core module instead of a
//! component, a component built against another version of our WIT package,
//! an import we do not provide, a role export with the wrong shape. A file
//! that passes has been compiled, linked, instantiated once and had each of its
//! roles' functions type-checked.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre};

use super::bindings::{WIT_PACKAGE, WIT_VERSION, fallback, success, transform, validate};
use super::host::CallState;
use super::{PluginEngine, PluginError, PluginLimits, PluginSetup, Role};
use crate::store::{KeyValue, StoreError};

/// Facts about one loaded version of a plugin file, for `/health`,
/// `hookgate plugin inspect` and the attempt log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginVersionInfo {
    /// File stem (`json-validator` for `json-validator.wasm`): how routes name it.
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, hex. Identifies the version everywhere.
    pub hash: String,
    pub size: u64,
    /// The roles the component exports, in `Role::ALL` order.
    pub roles: Vec<Role>,
    /// The version of `hookgate:plugin` the component was built against.
    pub wit_version: String,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// Time spent compiling (or loading from cache) and checking.
    #[serde(with = "humantime_serde")]
    pub load_time: Duration,
}

impl PluginVersionInfo {
    /// The first 12 hex digits of the content hash: enough to tell versions
    /// apart in logs.
    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

/// One compiled, checked version of a plugin file. Cheap to clone; a call in
/// flight holds its own clone, so replacing the version in a registry never
/// disturbs it.
#[derive(Clone)]
pub struct Plugin {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) info: Arc<PluginVersionInfo>,
    /// The content hash, shared: warm instances are tagged with it.
    pub(super) version: Arc<str>,
    pub(super) engine: PluginEngine,
    pub(super) pre: InstancePre<CallState>,
    pub(super) validate: Option<validate::GuestIndices>,
    pub(super) transform: Option<transform::GuestIndices>,
    pub(super) fallback: Option<fallback::GuestIndices>,
    pub(super) success: Option<success::GuestIndices>,
}

impl Plugin {
    /// Reads, checks and compiles `path`. `cache_dir`, when given, holds
    /// compiled code keyed by content hash and engine fingerprint, so a
    /// restart does not recompile. Compilation runs on a blocking thread.
    pub async fn load(
        engine: &PluginEngine,
        path: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<Plugin, PluginError> {
        let bytes = read_plugin_file_async(path)
            .await
            .map_err(|err| load_error(path, format!("cannot read: {err}")))?;
        Plugin::from_bytes(engine, path, bytes, cache_dir).await
    }

    /// Like [`Plugin::load`], from bytes already read from `path` (hot
    /// reload hashes a file before deciding to compile it, and compiles
    /// exactly the bytes it hashed).
    pub async fn from_bytes(
        engine: &PluginEngine,
        path: &Path,
        bytes: Vec<u8>,
        cache_dir: Option<&Path>,
    ) -> Result<Plugin, PluginError> {
        let started = Instant::now();
        let (engine2, path2, cache2) = (
            engine.clone(),
            path.to_path_buf(),
            cache_dir.map(Path::to_path_buf),
        );
        let compiled = tokio::task::spawn_blocking(move || {
            compile(&engine2, &path2, &bytes, cache2.as_deref())
        })
        .await
        .map_err(|err| load_error(path, format!("compile task failed: {err}")))??;
        let plugin = link(engine, path, compiled, started)?;
        plugin.check_exports().await?;
        Ok(plugin)
    }

    /// Facts about this version.
    pub fn info(&self) -> &Arc<PluginVersionInfo> {
        &self.inner.info
    }

    pub fn plays(&self, role: Role) -> bool {
        self.inner.info.roles.contains(&role)
    }

    /// The error a call of a role this version does not play gets.
    pub fn missing_role(&self, role: Role) -> PluginError {
        let info = &self.inner.info;
        PluginError::MissingRole {
            plugin: info.name.clone(),
            role,
            exports: roles_list(&info.roles),
        }
    }

    /// Instantiates once and type-checks every exported role, so a role with
    /// the right name but the wrong signature is refused at load, not on the
    /// first request.
    async fn check_exports(&self) -> Result<(), PluginError> {
        let setup = Arc::new(PluginSetup {
            app: "(load check)".into(),
            route: "(load check)".into(),
            config: Default::default(),
            // A type check, not a test of the guest's speed: a generous
            // deadline, so a loaded machine cannot fail a good component.
            limits: PluginLimits {
                deadline: std::time::Duration::from_secs(10),
                ..PluginLimits::default()
            },
            kv: Arc::new(NoKeyValue),
            kv_quota: 0,
            answer_cap: u64::MAX,
            instances: Default::default(),
            headers: None,
            turns: PluginSetup::turns(1),
        });
        let info = &self.inner.info;
        let mut call = self
            .start(&setup, "load-check")
            .await
            .map_err(|err| load_error(&info.path, format!("cannot be instantiated: {err}")))?;
        let bad = |role: Role, err: wasmtime::Error| {
            load_error(
                &info.path,
                format!("its {role} export has the wrong shape: {}", one_line(&err)),
            )
        };
        if let Some(ix) = &self.inner.validate {
            ix.load(&mut call.store, &call.instance)
                .map_err(|e| bad(Role::Validate, e))?;
        }
        if let Some(ix) = &self.inner.transform {
            ix.load(&mut call.store, &call.instance)
                .map_err(|e| bad(Role::Transform, e))?;
        }
        if let Some(ix) = &self.inner.fallback {
            ix.load(&mut call.store, &call.instance)
                .map_err(|e| bad(Role::Fallback, e))?;
        }
        if let Some(ix) = &self.inner.success {
            ix.load(&mut call.store, &call.instance)
                .map_err(|e| bad(Role::Success, e))?;
        }
        Ok(())
    }
}

/// The name of a version: SHA-256 of the file's bytes, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What `compile` hands to `link`.
struct Compiled {
    component: Component,
    hash: String,
    size: u64,
    from_cache: bool,
}

fn load_error(path: &Path, reason: impl Into<String>) -> PluginError {
    PluginError::Load {
        file: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Flattens a wasmtime error chain into one line for logs and `/health`.
pub(super) fn one_line(err: &wasmtime::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn roles_list(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "no roles".into();
    }
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The WebAssembly binary header: magic, then a version/layer word that tells
/// a core module from a component.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let Some((magic, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(load_error(path, "not a WebAssembly file (too short)"));
    };
    if magic != WASM_MAGIC {
        return Err(load_error(path, "not a WebAssembly file"));
    }
    match rest.first_chunk::<4>() {
        Some(v) if *v == COMPONENT_VERSION => Ok(()),
        Some(v) if *v == CORE_MODULE_VERSION => Err(load_error(
            path,
            "is a core WebAssembly module, not a component (build for wasm32-wasip2 \
             or wrap it with `wasm-tools component new`)",
        )),
        _ => Err(load_error(
            path,
            "unsupported WebAssembly binary version (expected a component)",
        )),
    }
}

fn compile(
    engine: &PluginEngine,
    path: &Path,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Compiled, PluginError> {
    check_header(path, bytes)?;
    let hash = content_hash(bytes);
    let size = bytes.len() as u64;
    let cache_file =
        cache_dir.map(|dir| dir.join(format!("{hash}-{:016x}.cwasm", engine.compatibility_key())));
    if let Some(file) = &cache_file
        && let Some(component) = load_cached(engine, file)
    {
        return Ok(Compiled {
            component,
            hash,
            size,
            from_cache: true,
        });
    }
    let component = Component::new(engine.engine(), bytes)
        .map_err(|err| load_error(path, format!("does not compile: {}", one_line(&err))))?;
    if let Some(file) = &cache_file {
        store_cached(&component, file);
    }
    Ok(Compiled {
        component,
        hash,
        size,
        from_cache: false,
    })
}

/// Largest plugin file read. The interpreted guests are tens of MiB (a
/// Python component ~40 MiB); a larger file is a mistake, and reading it
/// whole would cost that much memory before any check could refuse it.
pub const MAX_PLUGIN_FILE: u64 = 256 << 20;

/// The bytes of the plugin file at `path`: a regular file (after symlinks)
/// of at most [`MAX_PLUGIN_FILE`] bytes. It is opened without blocking and
/// judged by what was opened, so a FIFO dropped into the plugins folder
/// cannot hang the reader waiting for a writer, and a file swapped after
/// the check is not read instead.
pub(super) fn read_plugin_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device?)",
        ));
    }
    let too_large = |size: u64| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{size} bytes; a plugin file may be at most {MAX_PLUGIN_FILE}"),
        )
    };
    if meta.len() > MAX_PLUGIN_FILE {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PLUGIN_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_plugin_file`] on a blocking thread, for async callers.
pub(super) async fn read_plugin_file_async(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_plugin_file(&file))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())))
}

/// Loads compiled code from the cache; any problem just means "recompile".
fn load_cached(engine: &PluginEngine, file: &Path) -> Option<Component> {
    let bytes = fs::read(file).ok()?;
    // SAFETY: deserializing runs no checks on the machine code it loads, so the
    // bytes must be wasmtime's own output for a compatible engine. They are:
    // the cache directory belongs to the gateway, files in it are written only
    // by `store_cached` (temp file, then rename, so never half-written), and
    // the name carries the engine's compatibility fingerprint, which wasmtime
    // checks again in the header. The bytes are read into memory first, so the
    // file cannot change under the loaded code.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine.engine(), &bytes) };
    match loaded {
        Ok(component) => Some(component),
        Err(err) => {
            tracing::warn!(file = %file.display(), cause = %one_line(&err), "ignoring unusable compile cache entry");
            None
        }
    }
}

/// Writes compiled code to the cache, temp file then rename. Failure only
/// costs a recompile next time, so it is logged, not returned.
fn store_cached(component: &Component, file: &Path) {
    let result = (|| -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| one_line(&e))?;
        let dir = file.parent().ok_or("cache path has no parent")?;
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let mut out = fs::File::create(&tmp).map_err(|e| e.to_string())?;
        out.write_all(&bytes).map_err(|e| e.to_string())?;
        out.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp, file).map_err(|e| e.to_string())
    })();
    if let Err(cause) = result {
        tracing::warn!(file = %file.display(), %cause, "could not write compile cache entry");
    }
}

/// Parses `hookgate:plugin/NAME@VERSION`; other names give `None`.
fn our_interface(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@')
}

/// Reads the component's imports and exports: which roles it plays, and
/// whether it speaks our version of the package.
fn roles_of(
    engine: &PluginEngine,
    path: &Path,
    component: &Component,
) -> Result<(Vec<Role>, String), PluginError> {
    let ty = component.component_type();
    let engine = engine.engine();
    let imports = ty.imports(engine).map(|(name, _)| name);
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let mut roles = Vec::new();
    let mut version = None;
    for name in imports.chain(exports.iter().copied()) {
        let Some((iface, v)) = our_interface(name) else {
            continue;
        };
        if v != WIT_VERSION {
            return Err(load_error(
                path,
                format!(
                    "built against {WIT_PACKAGE}@{v} ({name}); this gateway speaks {WIT_PACKAGE}@{WIT_VERSION}"
                ),
            ));
        }
        version = Some(v.to_string());
        if let Ok(role) = iface.parse::<Role>()
            && exports.contains(&name)
        {
            roles.push(role);
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        let shown = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(load_error(
            path,
            format!(
                "exports none of the {WIT_PACKAGE}@{WIT_VERSION} roles (validate, transform, fallback, success); it exports {shown}"
            ),
        ));
    }
    Ok((roles, version.unwrap_or_else(|| WIT_VERSION.to_string())))
}

/// Why a component cannot be linked, with what to do about the usual case:
/// it imports `wasi:http`, which the gateway never provides (plugins get no
/// network) and componentize-js adds unless told not to.
fn link_problem(cause: &str) -> String {
    let hint = if cause.contains("wasi:http/") {
        "; plugins get no network: build a JavaScript component with \
         `componentize-js ... -d http fetch-event`, as plugins/templates/javascript does"
    } else {
        ""
    };
    format!("cannot be linked: {cause}{hint}")
}

fn link(
    engine: &PluginEngine,
    path: &Path,
    compiled: Compiled,
    started: Instant,
) -> Result<Plugin, PluginError> {
    let (roles, wit_version) = roles_of(engine, path, &compiled.component)?;
    let pre = engine
        .linker()
        .instantiate_pre(&compiled.component)
        .map_err(|err| load_error(path, link_problem(&one_line(&err))))?;
    let index_error = |err: wasmtime::Error| load_error(path, one_line(&err));
    let has = |role| roles.contains(&role);
    let validate = has(Role::Validate)
        .then(|| validate::GuestIndices::new(&pre))
        .transpose()
        .map_err(index_error)?;
    let transform = has(Role::Transform)
        .then(|| transform::GuestIndices::new(&pre))
        .transpose()
        .map_err(index_error)?;
    let fallback = has(Role::Fallback)
        .then(|| fallback::GuestIndices::new(&pre))
        .transpose()
        .map_err(index_error)?;
    let success = has(Role::Success)
        .then(|| success::GuestIndices::new(&pre))
        .transpose()
        .map_err(index_error)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let info = PluginVersionInfo {
        name,
        path: path.to_path_buf(),
        hash: compiled.hash,
        size: compiled.size,
        roles,
        wit_version,
        from_cache: compiled.from_cache,
        load_time: started.elapsed(),
    };
    Ok(Plugin {
        inner: Arc::new(Inner {
            version: Arc::from(info.hash.as_str()),
            info: Arc::new(info),
            engine: engine.clone(),
            pre,
            validate,
            transform,
            fallback,
            success,
        }),
    })
}

/// The key-value store seen during the load check: there is no app yet.
struct NoKeyValue;

impl KeyValue for NoKeyValue {
    fn get(&self, _: &str, _: &str, _: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn set(&self, _: &str, _: &str, _: &[u8], _: Option<u64>, _: u64) -> Result<(), StoreError> {
        Err(StoreError::Backend(
            "no key-value store during the load check".into(),
        ))
    }
    fn delete(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_within_the_size_limit_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ok.wasm");
        fs::write(&file, b"\0asm").expect("write");
        assert_eq!(read_plugin_file(&file).expect("read"), b"\0asm");

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let err = read_plugin_file(&fifo).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_plugin_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        // Sparse: the size is refused before anything is read.
        let huge = dir.path().join("huge.wasm");
        fs::File::create(&huge)
            .and_then(|f| f.set_len(MAX_PLUGIN_FILE + 1))
            .expect("sparse file");
        let err = read_plugin_file(&huge).expect_err("too large");
        assert!(err.to_string().contains("may be at most"), "{err}");
    }
}
