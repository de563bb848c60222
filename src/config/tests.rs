use std::time::Duration;

use super::*;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed/kong-plugins.yaml");

/// SPEC §1's example, minus the blocks later issues implement.
const FULL: &str = r#"
_format_version: "3.0"
gateway:
  listen: 127.0.0.1:8000
  admin_listen: 127.0.0.1:8001
  tls: {cert: certs/gw.pem, key: certs/gw.key}
  trusted_proxies: [127.0.0.1/32, 10.0.0.1]
  access_log: /var/log/portcullis.jsonl
  max_body_bytes: 1048576
  header_read_timeout: 5s
services:
- name: orders-api
  url: http://127.0.0.1:9000
  connect_timeout: 1s
  timeout: 5s
  http2: true
  tags: [orders]
  routes:
  - name: orders-v1
    paths: [/v1/orders]
    methods: [GET, POST]
    strip_path: false
  - name: users-v1
    paths: ["~/v1/users/(?P<id>[^/]+)$"]
    regex_priority: 10
    timeout: 250ms
    headers: {x-version: ["1", "1.0"]}
    hosts: [api.example.com]
    protocols: [https]
- name: legacy
  protocol: http
  host: legacy.internal
  port: 8080
  path: /api
  connect_timeout: 60000
  read_timeout: 30000
  write_timeout: "2m"
  retries: 5
  routes:
  - methods: [DELETE]
consumers:
- username: alice
  custom_id: "1001"
  jwt_secrets: [{key: alice-kid, algorithm: HS256, secret: "..."}]
  keyauth_credentials: [{key_hash: "sha256:00"}]
  acls: [{group: admins}]
  plugins: [{name: rate-limiting, config: {minute: 600}}]
- custom_id: "1002"
"#;

fn load(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, "test.yaml")
}

fn error(yaml: &str) -> ConfigError {
    match load(yaml) {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(err) => err,
    }
}

/// Asserts the one-line `Display` names the file, the exact path and the expected-what.
#[track_caller]
fn assert_error(yaml: &str, path: &str, says: &str) -> ConfigError {
    let err = error(yaml);
    let line = err.to_string();
    assert!(!line.contains('\n'), "not one line: {line}");
    let prefix = if path.is_empty() { "test.yaml: ".to_owned() } else { format!("test.yaml: {path}: ") };
    assert!(line.starts_with(&prefix), "expected `{prefix}...`, got: {line}");
    assert_eq!(err.path(), path, "{line}");
    assert!(line.contains(says), "expected it to say `{says}`, got: {line}");
    err
}

fn service(extra: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n{extra}")
}

fn route(extra: &str) -> String {
    service(&format!("  routes:\n  - name: r0\n    paths: [/a]\n  - name: r1\n{extra}"))
}

// === values ===

#[test]
fn full_example_parses_with_the_right_values() {
    let config = load(FULL).unwrap();
    assert_eq!(config.format_version, "3.0");

    let gw = &config.gateway;
    assert_eq!(gw.listen, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(gw.admin_listen, Some("127.0.0.1:8001".parse().unwrap()));
    assert_eq!(gw.tls, Some(Tls { cert: "certs/gw.pem".into(), key: "certs/gw.key".into() }));
    assert!(gw.trusted_proxies.contains("127.0.0.1".parse().unwrap()));
    assert!(gw.trusted_proxies.contains("10.0.0.1".parse().unwrap()));
    assert!(!gw.trusted_proxies.contains("10.0.0.2".parse().unwrap()));
    assert_eq!(gw.access_log, AccessLog::File("/var/log/portcullis.jsonl".into()));
    assert_eq!(gw.max_body_bytes, 1048576);
    assert_eq!(gw.max_header_bytes, 32768);
    assert_eq!(gw.header_read_timeout, Duration::from_secs(5));
    assert_eq!(gw.idle_timeout, Duration::from_secs(60));
    assert_eq!(gw.shutdown_timeout, Duration::from_secs(30));

    let orders = &config.services[0];
    assert_eq!(orders.name, "orders-api");
    let upstream = orders.upstream();
    assert_eq!(upstream.scheme, http::uri::Scheme::HTTP);
    assert_eq!(upstream.authority, "127.0.0.1:9000");
    assert_eq!((upstream.host.as_str(), upstream.port, upstream.path.as_str()), ("127.0.0.1", 9000, "/"));
    assert_eq!(orders.connect_timeout, Duration::from_secs(1));
    assert_eq!(orders.timeout, Some(Duration::from_secs(5)));
    assert!(orders.http2);
    assert_eq!(orders.tags, ["orders"]);

    let v1 = &orders.routes[0];
    assert_eq!(v1.name.as_deref(), Some("orders-v1"));
    assert_eq!(v1.paths, [RoutePath::Prefix("/v1/orders".into())]);
    assert_eq!(v1.methods, [http::Method::GET, http::Method::POST]);
    assert!(!v1.strip_path);
    assert!(!v1.preserve_host);
    assert_eq!(v1.protocols, [Protocol::Http, Protocol::Https]);
    assert_eq!(v1.timeout, None);

    let users = &orders.routes[1];
    assert_eq!(users.paths, [RoutePath::Regex("/v1/users/(?P<id>[^/]+)$".into())]);
    assert_eq!(users.paths[0].to_string(), "~/v1/users/(?P<id>[^/]+)$");
    assert!(users.strip_path);
    assert_eq!(users.regex_priority, 10);
    assert_eq!(users.timeout, Some(Duration::from_millis(250)));
    assert_eq!(users.headers["x-version"], ["1", "1.0"]);
    assert_eq!(users.hosts, ["api.example.com"]);
    assert_eq!(users.protocols, [Protocol::Https]);

    let legacy = &config.services[1];
    assert_eq!(legacy.upstream().authority, "legacy.internal:8080");
    assert_eq!(legacy.upstream().path, "/api");
    assert!(!legacy.http2);
    assert_eq!(legacy.retries, Some(5));
    assert_eq!(legacy.routes[0].name, None);

    let alice = &config.consumers[0];
    assert_eq!(alice.username.as_deref(), Some("alice"));
    assert_eq!(alice.custom_id.as_deref(), Some("1001"));
    assert!(alice.jwt_secrets.is_some() && alice.keyauth_credentials.is_some());
    assert!(alice.acls.is_some());
    assert_eq!(alice.plugins[0].name, "rate-limiting");
    assert_eq!(config.consumers[1].username, None);
}

#[test]
fn kong_millisecond_integers_and_duration_strings() {
    let config = load(FULL).unwrap();
    let legacy = &config.services[1];
    assert_eq!(legacy.connect_timeout, Duration::from_secs(60));
    assert_eq!(legacy.read_timeout, Duration::from_secs(30));
    assert_eq!(legacy.write_timeout, Duration::from_secs(120));

    let config =
        load(&service("  connect_timeout: \"1500\"\n  timeout: 1m\n  read_timeout: 250ms\n")).unwrap();
    let svc = &config.services[0];
    assert_eq!(svc.connect_timeout, Duration::from_millis(1500));
    assert_eq!(svc.timeout, Some(Duration::from_secs(60)));
    assert_eq!(svc.read_timeout, Duration::from_millis(250));

    let config = load(&service("  timeout: ~\n")).unwrap();
    assert_eq!(config.services[0].timeout, None);
}

#[test]
fn defaults() {
    let config = load("_format_version: \"1.1\"\n").unwrap();
    assert_eq!(config.gateway.listen, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(config.gateway.admin_listen, None);
    assert_eq!(config.gateway.access_log, AccessLog::Stdout);
    assert_eq!(config.gateway.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!((config.gateway.max_json_body_bytes, config.gateway.max_json_depth), (1024 * 1024, 64));
    assert_eq!(config.gateway.body_read_timeout, Duration::from_secs(30));
    assert_eq!(config.gateway.max_connections, 10_000);
    assert!(config.gateway.trusted_proxies.is_empty());
    assert!(config.services.is_empty() && config.consumers.is_empty() && config.plugins.is_empty());

    let config = load(&service("")).unwrap();
    let svc = &config.services[0];
    assert_eq!(svc.connect_timeout, Duration::from_secs(60));
    assert_eq!((svc.read_timeout, svc.write_timeout), (Duration::from_secs(60), Duration::from_secs(60)));
    assert_eq!((svc.timeout, svc.retries, svc.http2), (None, None, false));
}

#[test]
fn access_log_forms() {
    for (text, expected) in
        [("stdout", AccessLog::Stdout), ("off", AccessLog::Off), ("false", AccessLog::Off)]
    {
        let config = load(&format!("_format_version: \"3.0\"\ngateway:\n  access_log: {text}\n")).unwrap();
        assert_eq!(config.gateway.access_log, expected);
    }
}

#[test]
fn format_versions() {
    for version in ["\"1.1\"", "\"2.1\"", "\"3.0\"", "3.0"] {
        assert!(load(&format!("_format_version: {version}\n")).is_ok(), "{version}");
    }
    assert_error("_format_version: \"4.0\"\n", "_format_version", r#"expected one of "1.1", "2.1", "3.0""#);
    assert_error("services: []\n", "", "missing field `_format_version`");
}

#[test]
fn ipv6_and_split_upstreams() {
    let config = load(&service("").replace("http://127.0.0.1:9000", "http://[::1]:8080/api/")).unwrap();
    let upstream = config.services[0].upstream();
    assert_eq!((upstream.host.as_str(), upstream.port, upstream.path.as_str()), ("[::1]", 8080, "/api/"));

    let split = "_format_version: \"3.0\"\nservices:\n- name: s\n  host: example.internal\n";
    let config = load(split).unwrap();
    assert_eq!(config.services[0].upstream().authority, "example.internal:80");
    assert_eq!(config.services[0].upstream().path, "/");
}

// === errors ===

#[test]
fn unreadable_file() {
    let err = Config::from_file("/nonexistent/portcullis.yaml").unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Read);
    assert_eq!(err.to_string(), "/nonexistent/portcullis.yaml: cannot read: No such file or directory");
}

#[test]
fn from_file_names_the_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/unknown-key.yaml");
    let err = Config::from_file(path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{path}: services[0].routes[0]: unknown field `pathz`, expected one of `name`, `paths`, `methods`, \
             `hosts`, `headers`, `protocols`, `strip_path`, `preserve_host`, `regex_priority`, \
             `case_insensitive_paths`, `timeout`, `retry_policy`, `plugins`, `tags` (line 7, column 5)"
        )
    );
    let ok = Config::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minimal.yaml")).unwrap();
    assert_eq!(ok.services[0].name, "echo");
}

#[test]
fn syntax_error_has_line_and_column() {
    let err = assert_error(&service("   routes: []\n"), "services[0]", "mapping values are not allowed");
    assert_eq!((err.line(), err.column()), (Some(5), Some(10)));
    assert!(err.to_string().ends_with("(line 5, column 10)"), "{err}");
    assert_eq!(err.kind(), ConfigErrorKind::Parse);
}

#[test]
fn unknown_keys_at_every_level() {
    let err = assert_error(
        &route("    pathz: [/a]\n"),
        "services[0].routes[1]",
        "unknown field `pathz`, expected one of",
    );
    assert_eq!(err.line(), Some(9));
    assert_error("_format_version: \"3.0\"\nservicez: []\n", "", "unknown field `servicez`");
    assert_error("_format_version: \"3.0\"\ngateway:\n  lisen: 1\n", "gateway", "unknown field `lisen`");
    assert_error(&service("  retry: 1\n"), "services[0]", "unknown field `retry`");
    for url in
        ["http://127.0.0.1:9000/a/../b", "http://127.0.0.1:9000/%2e%2E/b", "http://127.0.0.1:9000/a/.;x/"]
    {
        let yaml = service("").replace("http://127.0.0.1:9000", url);
        assert_error(&yaml, "services[0].url", "`.` or `..` segment");
    }
    assert_error(
        &service("  plugins:\n  - name: jwt\n    confg: {}\n"),
        "services[0].plugins[0]",
        "unknown field `confg`",
    );
    assert_error(
        "_format_version: \"3.0\"\nconsumers:\n- username: a\n  password: x\n",
        "consumers[0]",
        "unknown field `password`",
    );
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  tls: {cert: a, key: b, ca: c}\n",
        "gateway.tls",
        "unknown field `ca`",
    );
}

#[test]
fn wrong_types() {
    assert_error(
        &route("    paths: /a\n"),
        "services[0].routes[1].paths",
        "invalid type: string \"/a\", expected a sequence",
    );
    assert_error(
        &route("    paths: [/a]\n    strip_path: maybe\n"),
        "services[0].routes[1].strip_path",
        "expected a boolean",
    );
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  max_body_bytes: lots\n",
        "gateway.max_body_bytes",
        "expected u64",
    );
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  listen: localhost:80\n",
        "gateway.listen",
        "expected an IP address and port like `127.0.0.1:8000`",
    );
    assert_error(
        &route("    paths: [/a]\n    protocols: [grpc]\n"),
        "services[0].routes[1].protocols[0]",
        "expected `http` or `https`",
    );
    assert_error(
        &route("    methods: [get]\n"),
        "services[0].routes[1].methods[0]",
        "expected an uppercase HTTP method",
    );
}

#[test]
fn bad_durations() {
    let expected = "expected a duration like `5s`, `250ms` or milliseconds as an integer";
    assert_error(&service("  connect_timeout: soon\n"), "services[0].connect_timeout", expected);
    assert_error(&service("  timeout: 1.5\n"), "services[0].timeout", expected);
    assert_error(&service("  read_timeout: -5\n"), "services[0].read_timeout", expected);
    assert_error(&route("    paths: [/a]\n    timeout: [1s]\n"), "services[0].routes[1].timeout", expected);
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  idle_timeout: true\n",
        "gateway.idle_timeout",
        expected,
    );
}

#[test]
fn slow_client_limits_must_allow_something() {
    let gateway = |extra: &str| format!("_format_version: \"3.0\"\ngateway:\n{extra}");
    assert_error(&gateway("  max_connections: 0\n"), "gateway.max_connections", "expected at least 1");
    assert_error(&gateway("  body_read_timeout: 0s\n"), "gateway.body_read_timeout", "above zero");
    assert_error(&gateway("  max_connections: -1\n"), "gateway.max_connections", "");
    assert_error(&service("  read_timeout: 0\n"), "services[0].read_timeout", "above zero");
    assert_error(&service("  write_timeout: 0ms\n"), "services[0].write_timeout", "above zero");
    let config = load(&gateway("  max_connections: 2\n  body_read_timeout: 250ms\n")).unwrap();
    assert_eq!(config.gateway.max_connections, 2);
    assert_eq!(config.gateway.body_read_timeout, Duration::from_millis(250));
}

#[test]
fn bad_cidr() {
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n",
        "gateway.trusted_proxies[1]",
        "invalid CIDR or IP address `10.0.0.0/33`, expected a CIDR like `10.0.0.0/8` or an IP address",
    );
}

#[test]
fn bad_paths() {
    assert_error(
        &route("    paths: [/a, \"~/(\"]\n"),
        "services[0].routes[1].paths[1]",
        "invalid regex path `~/(`: unclosed group",
    );
    assert_error(
        &route("    paths: [v1]\n"),
        "services[0].routes[1].paths[0]",
        "expected a path starting with `/` or a `~` regex",
    );
}

#[test]
fn route_needs_a_matcher() {
    assert_error(
        &route("    strip_path: false\n"),
        "services[0].routes[1]",
        "at least one of `paths`, `methods`, `hosts`, `headers`",
    );
    assert_error(
        &route("    headers: {\"bad header\": [x]}\n"),
        "services[0].routes[1].headers.bad header",
        "invalid header name",
    );
    assert_error(
        &route("    headers: {x-v: []}\n"),
        "services[0].routes[1].headers.x-v",
        "expected at least one header value",
    );
}

#[test]
fn plugins_are_checked_at_every_scope() {
    // A registry where nothing is implemented yet, so this test does not depend on which
    // plugins have landed.
    const NONE_SUPPORTED: &[PluginSpec] = &[
        PluginSpec { name: "jwt", supported: false },
        PluginSpec { name: "key-auth", supported: false },
        PluginSpec { name: "oauth2-introspection", supported: false },
        PluginSpec { name: "acl", supported: false },
        PluginSpec { name: "rate-limiting", supported: false },
        PluginSpec { name: "request-transformer", supported: false },
        PluginSpec { name: "response-transformer", supported: false },
    ];
    #[track_caller]
    fn check(yaml: &str, path: &str, says: &str) -> ConfigError {
        let err = Config::from_yaml_with(yaml, "test.yaml", NONE_SUPPORTED).unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with(&format!("test.yaml: {path}: ")), "{line}");
        assert!(line.contains(says), "expected `{says}` in: {line}");
        err
    }
    let unknown = "unknown plugin `foo`; expected one of jwt, key-auth, oauth2-introspection, acl, rate-limiting, \
                   request-transformer, response-transformer";
    let err = check(
        &route("    paths: [/a]\n    plugins:\n    - name: foo\n"),
        "services[0].routes[1].plugins[0].name",
        unknown,
    );
    assert_eq!(err.kind(), ConfigErrorKind::Invalid);
    let err = check(
        &route("    paths: [/a]\n    plugins:\n    - name: jwt\n"),
        "services[0].routes[1].plugins[0].name",
        "plugin `jwt` is not supported yet",
    );
    assert_eq!(err.kind(), ConfigErrorKind::Unsupported);
    check(
        &service("  plugins:\n  - name: response-transformer\n"),
        "services[0].plugins[0].name",
        "plugin `response-transformer` is not supported yet",
    );
    check(
        "_format_version: \"3.0\"\nplugins:\n- name: request-transformer\n",
        "plugins[0].name",
        "plugin `request-transformer` is not supported yet",
    );
    assert_error("_format_version: \"3.0\"\nplugins:\n- name: foo\n", "plugins[0].name", unknown);
    assert_error("_format_version: \"3.0\"\nplugins:\n- config: {}\n", "plugins[0]", "missing field `name`");
}

#[test]
fn every_known_plugin_is_rejected_until_implemented() {
    for spec in PLUGINS.iter().filter(|spec| !spec.supported) {
        let yaml = format!("_format_version: \"3.0\"\nplugins:\n- name: {}\n", spec.name);
        assert_error(&yaml, "plugins[0].name", &format!("plugin `{}` is not supported yet", spec.name));
    }
}

#[test]
fn consumer_scope_only_for_the_plugins_kong_allows() {
    let with = |yaml: &str| Config::from_yaml_with(yaml, "test.yaml", ALL_SUPPORTED).unwrap_err();
    let consumers = "consumers:\n- username: alice\n  plugins:\n";
    let err = with(&format!("{}{consumers}  - name: jwt\n", service("")));
    assert_eq!(err.path(), "consumers[0].plugins[0].name");
    assert!(err.message().contains("plugin `jwt` cannot be scoped to a consumer"), "{err}");
    assert!(err.message().contains("rate-limiting, request-transformer, response-transformer"), "{err}");
    let err = with(&format!(
        "{}consumers:\n- username: alice\nplugins:\n- name: acl\n  consumer: alice\n",
        service("")
    ));
    assert_eq!(err.path(), "plugins[0].consumer");
    let err = with(&route(&format!(
        "    paths: [/b]\n    plugins:\n    - name: key-auth\n      consumer: alice\n{consumers}  - name: rate-limiting\n"
    )));
    assert_eq!(err.path(), "services[0].routes[1].plugins[0].consumer");
    let err = with(&format!("{}{consumers}  - name: rate-limiting\n    consumer: alice\n", service("")));
    assert_eq!(err.path(), "consumers[0].plugins[0].consumer");
    assert!(err.message().contains("already scoped"), "{err}");
    let err = with(&format!("{}{consumers}  - name: rate-limiting\n    route: nope\n", service("")));
    assert_eq!(err.path(), "consumers[0].plugins[0].route");
    let err = with(&format!(
        "{}{consumers}  - name: rate-limiting\n  - name: request-transformer\n  - name: rate-limiting\n",
        service("")
    ));
    assert_eq!(err.path(), "consumers[0].plugins[2].name");
    assert!(err.message().contains("duplicate plugin `rate-limiting`"), "{err}");
    // Accepted: the same plugin per route, and `plugins: ~`.
    let yaml = format!(
        "{}consumers:\n- username: alice\n  plugins:\n  - {{name: rate-limiting, route: r0}}\n  - {{name: rate-limiting, route: r1}}\n- username: bob\n  plugins: ~\n",
        route("    paths: [/b]\n")
    );
    let config = Config::from_yaml_with(&yaml, "test.yaml", ALL_SUPPORTED).unwrap();
    assert_eq!(config.consumers[0].plugins.len(), 2);
    assert!(config.consumers[1].plugins.is_empty());
}

/// All plugins supported: what the file would mean once every plugin has landed.
const ALL_SUPPORTED: &[PluginSpec] = &[
    PluginSpec { name: "jwt", supported: true },
    PluginSpec { name: "key-auth", supported: true },
    PluginSpec { name: "oauth2-introspection", supported: true },
    PluginSpec { name: "acl", supported: true },
    PluginSpec { name: "rate-limiting", supported: true },
    PluginSpec { name: "request-transformer", supported: true },
    PluginSpec { name: "response-transformer", supported: true },
];

#[test]
fn plugin_fields_references_and_duplicates() {
    let yaml = format!(
        "{}consumers:\n- username: alice\nplugins:\n- name: rate-limiting\n  service: svc\n  route: r0\n  consumer: alice\n  enabled: false\n  tags: [t]\n  config: {{minute: 6}}\n- name: jwt\n",
        route("    paths: [/b]\n    plugins:\n    - name: request-transformer\n      consumer: alice\n")
    );
    let config = Config::from_yaml_with(&yaml, "test.yaml", ALL_SUPPORTED).unwrap();
    let global = &config.plugins[0];
    assert_eq!(
        (global.service.as_deref(), global.route.as_deref(), global.consumer.as_deref()),
        (Some("svc"), Some("r0"), Some("alice"))
    );
    assert!(!global.enabled);
    assert_eq!(global.config["minute"], serde_yaml_ng::Value::from(6));
    assert!(config.plugins[1].enabled);
    assert_eq!(config.plugins[1].config, serde_yaml_ng::Value::Mapping(Default::default()));

    let with = |yaml: &str| Config::from_yaml_with(yaml, "test.yaml", ALL_SUPPORTED).unwrap_err();
    let err = with(&format!("{}plugins:\n- name: jwt\n  service: nope\n", service("")));
    assert_eq!(
        err.to_string(),
        "test.yaml: plugins[0].service: unknown service `nope`, expected a name defined in this file"
    );
    let err = with(&format!("{}plugins:\n- name: jwt\n  consumer: bob\n", service("")));
    assert_eq!(err.path(), "plugins[0].consumer");
    let err = with(&route("    paths: [/b]\n    plugins:\n    - name: jwt\n      route: r0\n"));
    assert_eq!(err.path(), "services[0].routes[1].plugins[0].route");
    assert!(err.message().contains("only allowed on global plugins"), "{err}");
    let err = with(&service("  plugins:\n  - name: jwt\n  - name: acl\n  - name: jwt\n"));
    assert_eq!(
        err.to_string(),
        "test.yaml: services[0].plugins[2].name: duplicate plugin `jwt` (first at services[0].plugins[0]); one instance per plugin runs"
    );
}

#[test]
fn upstream_errors() {
    assert_error(
        &service("").replace("http://127.0.0.1:9000", "https://x"),
        "services[0].url",
        "https upstreams are not supported yet",
    );
    assert_error(
        &service("").replace("http://127.0.0.1:9000", "127.0.0.1:9000"),
        "services[0].url",
        "expected `http://host:port/path`",
    );
    assert_error(
        &service("").replace("http://127.0.0.1:9000", "http://x/?a=1"),
        "services[0].url",
        "cannot have a query string",
    );
    assert_error(&service("  host: x\n"), "services[0]", "expected one or the other");
    assert_error(
        "_format_version: \"3.0\"\nservices:\n- name: s\n",
        "services[0]",
        "no upstream, expected `url`",
    );
    assert_error(
        "_format_version: \"3.0\"\nservices:\n- name: s\n  host: x\n  protocol: https\n",
        "services[0].protocol",
        "https upstreams are not supported yet",
    );
    assert_error(
        "_format_version: \"3.0\"\nservices:\n- name: s\n  host: x\n  path: api\n",
        "services[0].path",
        "expected a path starting with `/`",
    );
    assert_error(
        "_format_version: \"3.0\"\nservices:\n- name: s\n  port: 80\n",
        "services[0]",
        "expected `host` too",
    );
}

#[test]
fn duplicate_names() {
    let two = format!("{}- name: svc\n  url: http://127.0.0.1:9001\n", service(""));
    assert_error(&two, "services[1].name", "duplicate service name `svc` (first at services[0].name)");
    assert_error(
        &route("    paths: [/b]\n").replace("name: r1", "name: r0"),
        "services[0].routes[1].name",
        "duplicate route name `r0` (first at services[0].routes[0].name)",
    );
    assert_error(
        &route("    paths: [/b]\n    paths: [/c]\n"),
        "services[0].routes[1]",
        "duplicate field `paths`",
    );
    assert_error(
        "_format_version: \"3.0\"\nconsumers:\n- username: alice\n- username: alice\n",
        "consumers[1].username",
        "duplicate consumer username `alice` (first at consumers[0].username)",
    );
    assert_error(
        "_format_version: \"3.0\"\nconsumers:\n- id: x\n",
        "consumers[0]",
        "needs `username`, `custom_id` or both",
    );
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  listen: 127.0.0.1:8000\n  admin_listen: 127.0.0.1:8000\n",
        "gateway.admin_listen",
        "expected a different address",
    );
}

#[test]
fn seed_fails_only_because_its_plugins_are_not_supported_yet() {
    // The first of its plugins that has not landed yet is the one reported.
    let seed_plugins = ["jwt", "rate-limiting", "request-transformer"];
    let first_missing =
        seed_plugins.iter().position(|name| PLUGINS.iter().any(|spec| spec.name == *name && !spec.supported));
    match (Config::from_file(SEED), first_missing) {
        (Err(err), Some(i)) => {
            assert_eq!(err.kind(), ConfigErrorKind::Unsupported);
            assert_eq!(
                err.to_string(),
                format!(
                    "{SEED}: services[0].routes[0].plugins[{i}].name: plugin `{}` is not supported yet",
                    seed_plugins[i]
                )
            );
        }
        (Ok(_), None) => {}
        (result, missing) => panic!("seed: {:?} with first unsupported plugin {missing:?}", result.err()),
    }

    // With every plugin implemented, the file as written loads.
    let text = std::fs::read_to_string(SEED).unwrap();
    let config = Config::from_yaml_with(&text, SEED, ALL_SUPPORTED).unwrap();
    let route = &config.services[0].routes[0];
    assert_eq!(config.services[0].upstream().authority, "orders-service.internal:8080");
    let names: Vec<_> = route.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["jwt", "rate-limiting", "request-transformer"]);
    assert_eq!(route.plugins[1].config["hour"], serde_yaml_ng::Value::from(1000));
}

/// The build registers every service (breaker only where configured, hosts always) and every
/// route with a retry policy; routes inheriting their service's policy share its budget.
#[test]
fn build_registers_breakers_hosts_and_retries_with_shared_budgets() {
    let config = load(
        r#"_format_version: "3.0"
services:
- name: orders
  url: http://orders.internal:8080
  circuit_breakers: {consecutive_failures: 5}
  retry_policy: {retry_on: 5xx}
  routes:
  - {name: a, paths: [/a]}
  - {name: b, paths: [/b]}
  - {name: own, paths: [/own], retry_policy: {retry_on: gateway-error}}
- name: users
  targets: [users-1.internal, "users-2.internal:9000"]
  routes:
  - {name: users, paths: [/users]}
"#,
    )
    .unwrap();
    let mut instruments = Instruments::default();
    config.build_router_with("test.yaml", &mut instruments).unwrap();

    let names: Vec<_> = instruments.services().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["orders", "users"]);
    let orders = instruments.service_named("orders").unwrap();
    assert_eq!(orders.breaker.as_ref().unwrap().snapshot().state.as_str(), "closed");
    let addresses = |name: &str| -> Vec<String> {
        let service = instruments.service_named(name).unwrap();
        service.hosts.hosts().iter().map(|h| h.address().to_string()).collect()
    };
    assert_eq!(addresses("orders"), ["orders.internal:8080"]);
    assert!(instruments.service_named("users").unwrap().breaker.is_none());
    assert_eq!(addresses("users"), ["users-1.internal:8000", "users-2.internal:9000"]);

    let routes: Vec<_> =
        instruments.retries().iter().map(|r| (r.route.as_str(), r.service.as_str())).collect();
    assert_eq!(routes, [("a", "orders"), ("b", "orders"), ("own", "orders")]);
    let [a, b, own] = instruments.retries() else { unreachable!() };
    let _permit = a.budget.try_retry().unwrap();
    assert_eq!(b.budget.snapshot().retries_in_flight, 1, "a and b inherit one policy: one budget");
    assert_eq!(own.budget.snapshot().retries_in_flight, 0, "a route's own policy has its own budget");
}

#[test]
fn strip_from_untrusted_defaults_replaces_and_names_a_bad_entry() {
    let config = Config::from_yaml("_format_version: \"3.0\"\n", "test.yaml").unwrap();
    let names: Vec<&str> = config.gateway.strip_from_untrusted.iter().map(|n| n.as_str()).collect();
    assert_eq!(names, crate::http_rules::DEFAULT_STRIP_FROM_UNTRUSTED);
    let config = Config::from_yaml(
        "_format_version: \"3.0\"\ngateway:\n  strip_from_untrusted: [X-Tenant, Forwarded]\n",
        "test.yaml",
    )
    .unwrap();
    let names: Vec<&str> = config.gateway.strip_from_untrusted.iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-tenant", "forwarded"]);
    assert_error(
        "_format_version: \"3.0\"\ngateway:\n  strip_from_untrusted: [Forwarded, \"bad name\"]\n",
        "gateway.strip_from_untrusted[1]",
        "invalid header name `bad name`, expected a name like `X-Original-URL`",
    );
}
