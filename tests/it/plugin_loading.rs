//! Bad files are refused with one clear line naming the file; good ones are
//! compiled once and then loaded from the on-disk cache.

use std::path::Path;

use hookgate::plugin::{Plugin, PluginError, Role, Verdict};

use crate::support::{engine, load, setup, webhook};

async fn load_error(path: &Path) -> String {
    match Plugin::load(engine(), path, None).await {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(err @ PluginError::Load { .. }) => {
            let text = err.to_string();
            assert!(
                text.starts_with(&path.display().to_string()),
                "names the file: {text}"
            );
            assert!(!text.contains('\n'), "one line: {text}");
            text
        }
        Err(other) => panic!("expected a load error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "this is not a plugin").expect("write");
    assert!(load_error(&path).await.contains("not a WebAssembly file"));
}

#[tokio::test]
async fn a_core_module_is_refused_as_not_a_component() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&path, b"\0asm\x01\0\0\0").expect("write");
    assert!(
        load_error(&path)
            .await
            .contains("core WebAssembly module, not a component")
    );
}

#[tokio::test]
async fn a_truncated_component_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.wasm");
    let bytes = std::fs::read(hookgate_tests::guest("json-validator")).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    assert!(load_error(&path).await.contains("does not compile"));
}

#[tokio::test]
async fn a_component_built_against_another_wit_version_is_refused() {
    let text = load_error(&hookgate_tests::guest("wrong-wit")).await;
    assert!(text.contains("hookgate:plugin@0.9.0"), "{text}");
    assert!(text.contains("speaks hookgate:plugin@0.1.0"), "{text}");
}

#[tokio::test]
async fn roles_come_from_the_component_exports() {
    let all = load("misbehave").await;
    assert_eq!(
        all.info().roles,
        vec![Role::Validate, Role::Transform, Role::Fallback]
    );
    let validator = load("json-validator").await;
    assert_eq!(validator.info().roles, vec![Role::Validate]);
    assert_eq!(validator.info().wit_version, "0.1.0");
}

#[tokio::test]
async fn calling_a_role_the_plugin_does_not_play_is_a_typed_error() {
    let validator = load("json-validator").await;
    let err = validator
        .transform(&setup(&[]), &webhook("{}"))
        .await
        .expect_err("json-validator has no transform");
    assert!(
        matches!(
            err,
            PluginError::MissingRole {
                role: Role::Transform,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_restart_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let file = hookgate_tests::guest("json-validator");
    let first = Plugin::load(engine(), &file, Some(cache.path()))
        .await
        .expect("first load");
    assert!(!first.info().from_cache);
    let second = Plugin::load(engine(), &file, Some(cache.path()))
        .await
        .expect("second load");
    assert!(second.info().from_cache, "second load compiled again");
    assert_eq!(first.info().hash, second.info().hash);
    let verdict = second
        .validate(&setup(&[]), &webhook("{}"))
        .await
        .expect("call")
        .value;
    assert_eq!(verdict, Verdict::Accept);
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().expect("tempdir");
    let file = hookgate_tests::guest("json-validator");
    Plugin::load(engine(), &file, Some(cache.path()))
        .await
        .expect("first load");
    for entry in std::fs::read_dir(cache.path()).expect("cache dir") {
        std::fs::write(entry.expect("entry").path(), b"garbage").expect("corrupt");
    }
    let again = Plugin::load(engine(), &file, Some(cache.path()))
        .await
        .expect("reload");
    assert!(!again.info().from_cache);
    let verdict = again
        .validate(&setup(&[]), &webhook("{}"))
        .await
        .expect("call")
        .value;
    assert_eq!(verdict, Verdict::Accept);
}
