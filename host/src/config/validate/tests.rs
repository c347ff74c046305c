use super::*;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
data_dir = "data"
plugins_dir = "plugins"

[defaults]
max_body = "512KiB"
plugin_limits = { fuel = 1000000, deadline = "50ms", memory = "32MiB" }

[apps.shop.routes.orders]
path = "/hooks/shop/orders"
success_status = 200
verify = { scheme = "github", secret_env = "SHOP_SECRET" }
idempotency = { header = "x-github-delivery", window = "1h" }
validate = { plugin = "json-validator", config = { required = "id", max = 3, strict = true } }

[apps.shop.routes.orders.destinations.warehouse]
url = "http://127.0.0.1:9000/orders"
timeout = "2s"
headers = { x-team = "ops" }

[apps.shop.routes.orders.destinations.audit]
url = "https://audit.example.com/in"
"#;

fn env(name: &str) -> Option<String> {
    (name == "SHOP_SECRET").then(|| "s3cret".to_string())
}

#[test]
fn a_good_file_parses_with_defaults_filled_in() {
    let config = Config::parse(GOOD).expect("parses");
    assert_eq!(config.validate(&env), Vec::<String>::new());
    let (app, name, route) = config.routes().next().expect("one route");
    assert_eq!((app, name), ("shop", "orders"));
    assert_eq!(route.methods, vec!["POST"]);
    assert_eq!(route.mode, Mode::Async);
    assert_eq!(config.defaults.max_body.0, 512 << 10);
    assert_eq!(config.server.journal_cache.0, 256 << 20, "the default");
    // Destinations keep file order: the first is the default.
    let names: Vec<_> = route.destinations.keys().collect();
    assert_eq!(names, ["warehouse", "audit"]);
    let validate = route.validate.as_ref().expect("validate plugin");
    assert_eq!(validate.config["max"].to_text(), "3");
    assert_eq!(validate.config["strict"].to_text(), "true");
    assert_eq!(
        config.defaults.plugin_limits.deadline,
        std::time::Duration::from_millis(50)
    );
}

#[test]
fn a_journal_cache_too_small_to_use_is_refused_with_its_size() {
    let small = GOOD.replace(
        "plugins_dir = \"plugins\"",
        "plugins_dir = \"plugins\"\njournal_cache = \"1MiB\"",
    );
    let config = Config::parse(&small).expect("parses");
    assert_eq!(config.server.journal_cache.0, 1 << 20);
    assert_eq!(
        config.validate(&env),
        ["server.journal_cache: 1048576 bytes is below the smallest useful cache, 8 MiB"]
    );
}

#[test]
fn the_door_limits_must_leave_room_to_serve() {
    let text = GOOD.replace(
        "plugins_dir = \"plugins\"",
        "plugins_dir = \"plugins\"\nbody_memory = \"128KiB\"\nmax_header_bytes = \"1KiB\"\nmax_connections = 0",
    );
    let config = Config::parse(&text).expect("parses");
    assert_eq!(
        config.validate(&env),
        [
            "server.max_header_bytes: 1024 bytes is below hyper's smallest read buffer, 8 KiB",
            "server.max_connections: must be at least 1",
            // The route takes the default: the key to change is the default's.
            "defaults.max_body: 524288 bytes is more than server.body_memory \
             (131072 bytes): no body that large could ever be read",
        ]
    );
    let huge = GOOD.replace(
        "plugins_dir = \"plugins\"",
        "plugins_dir = \"plugins\"\nmax_header_bytes = \"2MiB\"",
    );
    let config = Config::parse(&huge).expect("parses");
    assert_eq!(
        config.validate(&env),
        [
            "server.max_header_bytes: 2097152 bytes is above 1 MiB: headers are journaled with every message"
        ]
    );
}

/// A zero read timeout would cut off every request, and a sub-second
/// tolerance rounds down to none: both are refused with their key.
#[test]
fn timeouts_that_would_refuse_every_request_are_refused() {
    let text = GOOD
        .replace(
            "plugins_dir = \"plugins\"",
            "plugins_dir = \"plugins\"\nheader_timeout = \"0s\"\nbody_timeout = \"0ms\"",
        )
        .replace(
            "verify = { scheme = \"github\", secret_env = \"SHOP_SECRET\" }",
            "verify = { scheme = \"stripe\", secret_env = \"SHOP_SECRET\", tolerance = \"500ms\" }",
        );
    let config = Config::parse(&text).expect("parses");
    assert_eq!(
        config.validate(&env),
        [
            "server.header_timeout: must be more than 0s (0 would cut off every request)",
            "server.body_timeout: must be more than 0s (0 would cut off every request)",
            "apps.shop.routes.orders.verify.tolerance: 500ms is under 1s: \
             the signed timestamps are whole seconds",
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_key_path() {
    let bad = r#"
[server]
listen = "localhost"
data_dir = "data"
plugins_dir = "plugins"

[apps.Shop.routes.orders]
path = "hooks/orders"
success_status = 404
verify = { scheme = "github", secret_env = "MISSING_SECRET" }
validate = { plugin = "../evil.wasm", limits = { fuel = 0, memory = "4GiB" } }

[apps.Shop.routes.orders.destinations.warehouse]
url = "ftp://example.com"
concurrency = 0
secret_env = "ALSO_MISSING"

[apps.shop.routes.dup]
path = "hooks/orders"
mode = "sync"
idempotency = { header = "x-request-id" }
backlog_limit = 0
"#;
    let config = Config::parse(bad).expect("well-formed TOML");
    let problems = config.validate(&env);
    let expect = [
        "server.listen: \"localhost\"",
        "apps.Shop: name \"Shop\"",
        "apps.Shop.routes.orders.path: \"hooks/orders\" must start with '/'",
        "apps.Shop.routes.orders.success_status: 404",
        "apps.Shop.routes.orders.verify:",
        "MISSING_SECRET",
        "apps.Shop.routes.orders.validate.plugin: \"../evil.wasm\"",
        "apps.Shop.routes.orders.validate.limits.fuel: must be at least 1",
        "apps.Shop.routes.orders.validate.limits.memory:",
        "apps.Shop.routes.orders.destinations.warehouse.url: \"ftp://example.com\"",
        "apps.Shop.routes.orders.destinations.warehouse.concurrency: must be at least 1",
        "apps.Shop.routes.orders.destinations.warehouse.secret_env: environment variable \"ALSO_MISSING\"",
        "apps.shop.routes.dup.path: \"hooks/orders\" is already the path of apps.Shop.routes.orders",
        "apps.shop.routes.dup.destinations: a route needs at least one destination",
        "apps.shop.routes.dup.idempotency: not supported on a sync route",
        "apps.shop.routes.dup.backlog_limit: must be at least 1",
    ];
    let all = problems.join("\n");
    for fragment in expect {
        assert!(all.contains(fragment), "missing {fragment:?} in:\n{all}");
    }
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let typo = GOOD.replace("success_status = 200", "sucess_status = 200");
    let err = Config::parse(&typo).expect_err("typo is refused");
    assert!(
        err[0].starts_with("apps.shop.routes.orders.sucess_status (line 13, column 1): unknown field `sucess_status`"),
        "{err:?}"
    );
}

/// A value of the wrong shape is named by its key path and line, with the
/// value and what would have been right; on one line, for the log and
/// `/health`.
#[test]
fn shape_errors_name_the_key_path_the_line_and_the_value() {
    let cases = [
        (
            "success_status = 200",
            "success_status = \"200\"",
            "apps.shop.routes.orders.success_status (line 13, column 18): invalid type: string \"200\", expected u16",
        ),
        (
            "verify = { scheme = \"github\", secret_env = \"SHOP_SECRET\" }",
            "verify = \"github\"",
            "apps.shop.routes.orders.verify (line 14, column 10): invalid type: string \"github\", \
             expected a table such as { scheme = \"github\", secret_env = \"GITHUB_SECRET\" }",
        ),
        (
            "deadline = \"50ms\"",
            "deadline = \"500000000000years\"",
            "defaults.plugin_limits.deadline (line 9, column 46): invalid duration \"500000000000years\": \
             longer than the 10years any setting allows",
        ),
        (
            "window = \"1h\"",
            "window = 3600",
            "expected a duration such as \"250ms\"",
        ),
        ("[defaults]", "[defaults", "line 7, column 10: "),
    ];
    for (from, to, expected) in cases {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "{from}");
        let err = Config::parse(&text).expect_err(to);
        assert_eq!(err.len(), 1, "{err:?}");
        let err = &err[0];
        assert!(
            err.contains(expected),
            "{to}:\n  got      {err}\n  expected {expected}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

/// Shape errors in different places are listed together, as problems of
/// meaning are; a key taken out to read on is not reported missing.
#[test]
fn every_shape_error_is_listed_in_one_read() {
    let text = GOOD
        .replace("[server]\n", "[server]\nlistn = \"0.0.0.0:80\"\n")
        .replace("success_status = 200", "success_status = \"200\"")
        .replace("timeout = \"2s\"", "timeout = 2");
    let err = Config::parse(&text).expect_err("three problems");
    assert_eq!(err.len(), 3, "{err:#?}");
    assert!(
        err[0].starts_with(
            "server.listn (line 3, column 1): unknown field `listn`, expected one of `listen`,"
        ),
        "{err:#?}"
    );
    assert_eq!(
        err[1..],
        [
            "apps.shop.routes.orders.success_status (line 14, column 18): invalid type: string \
             \"200\", expected u16",
            "apps.shop.routes.orders.destinations.warehouse.timeout (line 21, column 11): \
             invalid type: integer `2`, expected a duration such as \"250ms\", \"30s\" or \"1h 30m\"",
        ]
    );
    // `path` is required: taking the bad one out must not add "missing".
    let text = GOOD.replace("path = \"/hooks/shop/orders\"", "path = 5");
    let err = Config::parse(&text).expect_err("one problem");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].starts_with("apps.shop.routes.orders.path (line 12"),
        "{err:?}"
    );
}

#[test]
fn load_resolves_folders_against_the_file_and_reports_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            "secret_env = \"SHOP_SECRET\"",
            "secret_env = \"HOOKGATE_TEST_UNSET_VAR\"",
        ),
    )
    .expect("write");
    let err = Config::load(&path).expect_err("secret missing");
    let text = err.to_string();
    assert!(text.starts_with(&path.display().to_string()), "{text}");
    assert!(text.contains("HOOKGATE_TEST_UNSET_VAR"), "{text}");

    let unsigned = GOOD.replace(
        "verify = { scheme = \"github\", secret_env = \"SHOP_SECRET\" }\n",
        "",
    );
    std::fs::write(&path, unsigned).expect("write");
    let config = Config::load(&path).expect("loads");
    assert_eq!(config.server.data_dir, dir.path().join("data"));
    assert_eq!(config.server.plugins_dir, dir.path().join("plugins"));
}

#[test]
fn instances_default_to_warm_only_for_large_components() {
    use crate::config::InstancesConfig;
    use crate::plugin::{AUTO_WARM_MIN_SIZE, InstancePolicy};
    let auto = InstancesConfig::default();
    assert_eq!(auto.policy(60 << 10), InstancePolicy::Fresh);
    assert!(matches!(
        auto.policy(AUTO_WARM_MIN_SIZE),
        InstancePolicy::Warm(_)
    ));
    let text = GOOD.replace(
        "validate = { plugin = \"json-validator\", config = { required = \"id\", max = 3, strict = true } }",
        "validate = { plugin = \"json-validator\", instances = { mode = \"warm\", max_calls = 0, pool_size = 99 } }",
    );
    let config = Config::parse(&text).expect("parses");
    let problems = config.validate(&env).join("\n");
    assert!(
        problems.contains("validate.instances.max_calls: must be at least 1"),
        "{problems}"
    );
    assert!(
        problems.contains("validate.instances.pool_size: 99 is outside 1..16"),
        "{problems}"
    );
    let (_, _, route) = config.routes().next().expect("route");
    let instances = route
        .validate
        .as_ref()
        .and_then(|v| v.instances)
        .expect("instances");
    assert!(
        matches!(instances.policy(1), InstancePolicy::Warm(_)),
        "warm is warm at any size"
    );
}

#[test]
fn a_plugins_header_list_must_name_headers() {
    let text = GOOD.replace(
        "validate = { plugin = \"json-validator\", config = { required = \"id\", max = 3, strict = true } }",
        "validate = { plugin = \"json-validator\", headers = [\"X-Event-Type\", \"bad header\"] }",
    );
    let config = Config::parse(&text).expect("parses");
    let problems = config.validate(&env).join("\n");
    assert!(
        problems.contains(r#"validate.headers: "bad header" is not a valid header name"#),
        "{problems}"
    );
    assert!(!problems.contains("X-Event-Type"), "{problems}");
}
