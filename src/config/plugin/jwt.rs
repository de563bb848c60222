//! `jwt`: Kong's config keys, and the consumers' `jwt_secrets`, into a [`JwtAuthLayer`].

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tower::Layer;

use super::acl::{anonymous_with_groups, identity_with_groups};
use super::{PluginContext, Wrap};
use crate::auth::jwt::{
    Algorithm, DEFAULT_JWKS_MAX_AGE, DEFAULT_JWKS_REFRESH_INTERVAL, JwtAuthLayer, JwtCredential,
    MIN_JWKS_REFRESH_INTERVAL, RegisteredClaim, parse_algorithm,
};
use crate::config::schema::{Config, Plugin};
use crate::config::{ConfigError, RouteService, duration};

/// The plugin's `config:` block (Kong's keys plus `leeway`, `jwks_refresh_interval`,
/// `jwks_max_age`, `audiences`, `issuers` and `verified_token_cache_size`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtPluginConfig {
    #[serde(default = "default_key_claim_name")]
    pub(crate) key_claim_name: String,
    #[serde(default)]
    pub(crate) claims_to_verify: Vec<ClaimName>,
    /// Seconds (Kong) or a duration; 0 disables the check.
    #[serde(default, deserialize_with = "duration::deserialize_secs")]
    pub(crate) maximum_expiration: Duration,
    #[serde(default = "default_uri_param_names")]
    pub(crate) uri_param_names: Vec<String>,
    #[serde(default)]
    pub(crate) cookie_names: Vec<String>,
    #[serde(default = "default_header_names")]
    pub(crate) header_names: Vec<String>,
    #[serde(default = "default_true")]
    pub(crate) run_on_preflight: bool,
    #[serde(default)]
    pub(crate) secret_is_base64: bool,
    #[serde(default)]
    pub(crate) anonymous: Option<String>,
    /// Clock skew tolerated on `exp` / `nbf`: seconds (Kong) or a duration (`500ms`).
    #[serde(default, deserialize_with = "duration::deserialize_secs")]
    pub(crate) leeway: Duration,
    /// Time between JWKS fetches caused by unknown `kid`s (at least 1 s): seconds or a duration.
    #[serde(default, deserialize_with = "duration::deserialize_secs_option")]
    pub(crate) jwks_refresh_interval: Option<Duration>,
    /// How long a fetched JWKS is trusted before it is fetched again (default 600 s): seconds or
    /// a duration.
    #[serde(default, deserialize_with = "duration::deserialize_secs_option")]
    pub(crate) jwks_max_age: Option<Duration>,
    /// Allowed `aud` values (RFC 8725 §3.9); absent: not checked.
    #[serde(default)]
    pub(crate) audiences: Option<Vec<String>>,
    /// Allowed `iss` values; absent: not checked.
    #[serde(default)]
    pub(crate) issuers: Option<Vec<String>>,
    /// Verified tokens kept (by digest); 0 disables the cache.
    #[serde(default)]
    pub(crate) verified_token_cache_size: usize,
}

/// `claims_to_verify` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClaimName {
    Exp,
    Nbf,
}

fn default_key_claim_name() -> String {
    "iss".into()
}

fn default_uri_param_names() -> Vec<String> {
    vec!["jwt".into()]
}

fn default_header_names() -> Vec<String> {
    vec!["authorization".into()]
}

fn default_true() -> bool {
    true
}

/// One `jwt_secrets` entry as written (Kong's credential fields, plus `jwks_url`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSecret {
    #[serde(default)]
    #[allow(dead_code)] // Kong's credential id: accepted, not used.
    id: Option<String>,
    key: String,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    rsa_public_key: Option<String>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Free-form, like consumers' tags.
    tags: Vec<String>,
}

fn default_algorithm() -> String {
    "HS256".into()
}

const ALGORITHMS: &str = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// Every consumer's `jwt_secrets` as credentials; errors name `consumers[0].jwt_secrets[1].<key>`.
pub(crate) fn credentials(
    origin: &str,
    config: &Config,
    secret_is_base64: bool,
    refresh_interval: Duration,
    max_age: Duration,
) -> Result<Vec<JwtCredential>, ConfigError> {
    let mut out: Vec<JwtCredential> = Vec::new();
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (c, consumer) in config.consumers.iter().enumerate() {
        let Some(value) = &consumer.jwt_secrets else { continue };
        let base = format!("consumers[{c}].jwt_secrets");
        let secrets: Vec<JwtSecret> = serde_path_to_error::deserialize(value.clone()).map_err(|error| {
            let inner = error.path().to_string();
            let path = if inner == "." { base.clone() } else { format!("{base}{inner}") };
            // serde_path_to_error writes sequence indexes as `[1].key`; keep them attached.
            let path = path.replace("jwt_secrets.[", "jwt_secrets[");
            ConfigError::invalid(origin, path, error.into_inner().to_string())
        })?;
        // With its ACL groups, so an `acl` plugin after `jwt` judges the right groups.
        let identity = identity_with_groups(origin, c, consumer)?;
        for (i, secret) in secrets.into_iter().enumerate() {
            let at = |key: &str| format!("{base}[{i}].{key}");
            let invalid = |key: &str, message: String| ConfigError::invalid(origin, at(key), message);
            let algorithm = parse_algorithm(&secret.algorithm).ok_or_else(|| {
                invalid(
                    "algorithm",
                    format!("unknown algorithm `{}`, expected one of {ALGORITHMS}", secret.algorithm),
                )
            })?;
            if secret.key.is_empty() {
                return Err(invalid("key", "expected a non-empty key".into()));
            }
            if let Some(first) = seen.insert(secret.key.clone(), at("key")) {
                return Err(invalid("key", format!("duplicate jwt key `{}` (first at {first})", secret.key)));
            }
            let consumer = identity.clone();
            let credential = match (algorithm, &secret.secret, &secret.rsa_public_key, &secret.jwks_url) {
                (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, Some(value), None, None) => {
                    if secret_is_base64 {
                        JwtCredential::base64_secret(consumer, &secret.key, algorithm, value)
                            .map_err(|e| invalid("secret", e.to_string()))?
                    } else {
                        JwtCredential::secret(consumer, &secret.key, algorithm, value)
                            .map_err(|e| invalid("secret", e.to_string()))?
                    }
                }
                (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _, _, _) => {
                    return Err(invalid(
                        "secret",
                        format!("{algorithm:?} needs `secret` (and no `rsa_public_key` or `jwks_url`)"),
                    ));
                }
                (_, None, Some(pem), None) => {
                    JwtCredential::public_key_pem(consumer, &secret.key, algorithm, pem)
                        .map_err(|e| invalid("rsa_public_key", e.to_string()))?
                }
                (_, None, None, Some(url)) => {
                    JwtCredential::jwks(consumer, &secret.key, algorithm, url, refresh_interval)
                        .map_err(|e| invalid("jwks_url", e.to_string()))?
                        .jwks_max_age(max_age)
                }
                _ => {
                    return Err(invalid(
                        "rsa_public_key",
                        format!("{algorithm:?} needs exactly one of `rsa_public_key` (PEM) or `jwks_url`"),
                    ));
                }
            };
            out.push(credential);
        }
    }
    Ok(out)
}

/// Builds the layer from a parsed block.
pub(crate) fn layer(ctx: &PluginContext<'_>, config: JwtPluginConfig) -> Result<JwtAuthLayer, ConfigError> {
    let mut header_names = Vec::with_capacity(config.header_names.len());
    for (i, name) in config.header_names.iter().enumerate() {
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|_| ctx.error(&format!("header_names[{i}]"), format!("invalid header name `{name}`")))?;
        header_names.push(name);
    }
    // Kong refuses this too: without `exp` verified, a token with no `exp` never expires.
    if !config.maximum_expiration.is_zero() && !config.claims_to_verify.contains(&ClaimName::Exp) {
        return Err(ctx.error(
            "maximum_expiration",
            "needs `exp` in `claims_to_verify` (add it, or set maximum_expiration to 0)",
        ));
    }
    let refresh = config.jwks_refresh_interval.unwrap_or(DEFAULT_JWKS_REFRESH_INTERVAL);
    if refresh < MIN_JWKS_REFRESH_INTERVAL {
        return Err(ctx.error(
            "jwks_refresh_interval",
            format!("expected at least {} s between JWKS fetches", MIN_JWKS_REFRESH_INTERVAL.as_secs()),
        ));
    }
    let max_age = config.jwks_max_age.unwrap_or(DEFAULT_JWKS_MAX_AGE);
    if max_age < refresh {
        return Err(ctx.error(
            "jwks_max_age",
            format!("expected at least jwks_refresh_interval ({})", humantime::format_duration(refresh)),
        ));
    }
    for (key, list) in [("audiences", &config.audiences), ("issuers", &config.issuers)] {
        if let Some(list) = list {
            if list.is_empty() {
                return Err(ctx.error(key, "expected at least one value (leave the key out to not check)"));
            }
            if let Some(i) = list.iter().position(String::is_empty) {
                return Err(ctx.error(&format!("{key}[{i}]"), "expected a non-empty value"));
            }
        }
    }
    let credentials = credentials(ctx.origin, ctx.config, config.secret_is_base64, refresh, max_age)?;
    let mut builder = JwtAuthLayer::builder()
        .key_claim_name(config.key_claim_name)
        .claims_to_verify(config.claims_to_verify.iter().map(|c| match c {
            ClaimName::Exp => RegisteredClaim::Exp,
            ClaimName::Nbf => RegisteredClaim::Nbf,
        }))
        .maximum_expiration(config.maximum_expiration)
        .audiences(config.audiences.unwrap_or_default())
        .issuers(config.issuers.unwrap_or_default())
        .uri_param_names(config.uri_param_names)
        .cookie_names(config.cookie_names)
        .header_names(header_names)
        .run_on_preflight(config.run_on_preflight)
        .leeway(config.leeway)
        .verified_token_cache(config.verified_token_cache_size)
        .credentials(credentials);
    if let Some(name) = &config.anonymous {
        builder = builder.anonymous(anonymous_with_groups(ctx, ctx.config, name)?);
    }
    Ok(builder.build())
}

/// The `jwt` plugin at global, service or route scope.
pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: JwtPluginConfig = ctx.parse(plugin)?;
    let layer = layer(ctx, config)?;
    Ok(Arc::new(move |inner: RouteService| RouteService::new(layer.layer(inner))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginSpec;

    const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed/kong-plugins.yaml");
    const PEM: &str = include_str!("../../../tests/fixtures/jwt/rsa_public.pem");

    fn build_error(yaml: &str) -> String {
        let config = Config::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
        match config.build_router("test.yaml") {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn with(consumers: &str, plugin_config: &str) -> String {
        format!(
            "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n  routes:\n  - name: r0\n    paths: [/a]\n    plugins:\n    - name: jwt\n      config: {plugin_config}\nconsumers:\n{consumers}"
        )
    }

    #[tokio::test]
    async fn credentials_and_config_build_at_every_scope() {
        let pem = PEM.replace('\n', "\n      ");
        let consumers = format!(
            "- username: alice\n  jwt_secrets:\n  - {{key: a-hs, secret: s3cret}}\n  - key: a-rs\n    algorithm: RS256\n    rsa_public_key: |\n      {pem}\n- username: anon\n  jwt_secrets: [{{key: a-jwks, algorithm: ES256, jwks_url: http://127.0.0.1:1/jwks}}]\n"
        );
        let config = "{key_claim_name: kid, claims_to_verify: [exp, nbf], maximum_expiration: 3600, leeway: 5, \
                      cookie_names: [c], header_names: [authorization, x-jwt], run_on_preflight: false, \
                      anonymous: anon, verified_token_cache_size: 1000, jwks_refresh_interval: 30, \
                      jwks_max_age: 300, audiences: [orders], issuers: [\"https://idp.example\"]}";
        let yaml = with(&consumers, config);
        Config::from_yaml(&yaml, "test.yaml").unwrap().build_router("test.yaml").unwrap();
        // Every time-valued key takes a duration as well as Kong's seconds.
        let durations = config
            .replace("maximum_expiration: 3600", "maximum_expiration: 1h")
            .replace("leeway: 5", "leeway: 500ms")
            .replace("jwks_refresh_interval: 30", "jwks_refresh_interval: 30s")
            .replace("jwks_max_age: 300", "jwks_max_age: 5m");
        let yaml = with(&consumers, &durations);
        Config::from_yaml(&yaml, "test.yaml").unwrap().build_router("test.yaml").unwrap();
        // Service and global scope.
        let service = "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n  plugins: [{name: jwt}]\n  routes:\n  - {name: r0, paths: [/a]}\nplugins: [{name: jwt, config: {secret_is_base64: true}}]\nconsumers:\n- username: bob\n  jwt_secrets: [{key: b, secret: c2VjcmV0}]\n";
        let router = Config::from_yaml(service, "test.yaml").unwrap().build_router("test.yaml").unwrap();
        // The service-scope instance runs (the route has none): no token, 401 before any upstream.
        let req = http::Request::get("/a").body(crate::Body::empty()).unwrap();
        let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key(http::header::WWW_AUTHENTICATE));
    }

    #[test]
    fn errors_name_the_path() {
        let c = "- username: alice\n  jwt_secrets:\n  - {key: a, secret: s}\n";
        let cases = [
            (
                with(c, "{claims_to_verify: [iat]}"),
                "services[0].routes[0].plugins[0].config.claims_to_verify[0]: unknown variant `iat`",
            ),
            (
                with(c, "{maximum_expiration: 60}"),
                "services[0].routes[0].plugins[0].config.maximum_expiration: needs `exp` in `claims_to_verify`",
            ),
            (
                with(c, "{claims_to_verify: [nbf], maximum_expiration: 60}"),
                "services[0].routes[0].plugins[0].config.maximum_expiration: needs `exp` in `claims_to_verify`",
            ),
            (
                with(c, "{jwks_refresh_interval: 0}"),
                "services[0].routes[0].plugins[0].config.jwks_refresh_interval: expected at least 1 s",
            ),
            (
                with(c, "{jwks_refresh_interval: 30, jwks_max_age: 10}"),
                "services[0].routes[0].plugins[0].config.jwks_max_age: expected at least jwks_refresh_interval (30s)",
            ),
            (
                with(c, "{jwks_refresh_interval: 500ms}"),
                "services[0].routes[0].plugins[0].config.jwks_refresh_interval: expected at least 1 s",
            ),
            (
                with(c, "{leeway: soon}"),
                "services[0].routes[0].plugins[0].config.leeway: invalid duration `soon`: expected a duration like `60s`, `500ms` or seconds as a number",
            ),
            (
                with(c, "{leeway: -5}"),
                "services[0].routes[0].plugins[0].config.leeway: invalid duration `-5`",
            ),
            (
                with(c, "{audiences: []}"),
                "services[0].routes[0].plugins[0].config.audiences: expected at least one value",
            ),
            (
                with(c, "{issuers: [a, \"\"]}"),
                "services[0].routes[0].plugins[0].config.issuers[1]: expected a non-empty value",
            ),
            (with(c, "{realm: x}"), "services[0].routes[0].plugins[0].config.realm: unknown field `realm`"),
            (
                with(c, "{anonymous: nobody}"),
                "services[0].routes[0].plugins[0].config.anonymous: no consumer with id, username or custom_id `nobody`",
            ),
            (
                with(c, "{header_names: [\"bad header\"]}"),
                "services[0].routes[0].plugins[0].config.header_names[0]: invalid header name",
            ),
            (
                with(
                    "- username: a\n  jwt_secrets: [{key: a, secret: s}, {key: b, algorithm: HS257, secret: s}]\n",
                    "{}",
                ),
                "consumers[0].jwt_secrets[1].algorithm: unknown algorithm `HS257`",
            ),
            (
                with("- username: a\n  jwt_secrets: [{key: a, secret: s}, {key: b, secrett: s}]\n", "{}"),
                "consumers[0].jwt_secrets[1].secrett: unknown field `secrett`",
            ),
            (
                with(
                    "- username: a\n  jwt_secrets: [{key: a, algorithm: RS256, rsa_public_key: nope}]\n",
                    "{}",
                ),
                "consumers[0].jwt_secrets[0].rsa_public_key: invalid PEM public key for RS256",
            ),
            (
                with("- username: a\n  jwt_secrets: [{key: a, algorithm: RS256, secret: s}]\n", "{}"),
                "consumers[0].jwt_secrets[0].rsa_public_key: RS256 needs exactly one of",
            ),
            (
                with("- username: a\n  jwt_secrets: [{key: a, algorithm: HS384}]\n", "{}"),
                "consumers[0].jwt_secrets[0].secret: HS384 needs `secret`",
            ),
            (
                with(
                    "- username: a\n  jwt_secrets: [{key: a, secret: s}]\n- username: b\n  jwt_secrets: [{key: a, secret: t}]\n",
                    "{}",
                ),
                "consumers[1].jwt_secrets[0].key: duplicate jwt key `a` (first at consumers[0].jwt_secrets[0].key)",
            ),
            (
                with(
                    "- username: a\n  jwt_secrets: [{key: a, secret: \"not base64!\"}]\n",
                    "{secret_is_base64: true}",
                ),
                "consumers[0].jwt_secrets[0].secret: secret is not valid base64",
            ),
            (
                with(
                    "- username: a\n  jwt_secrets: [{key: a, algorithm: RS256, jwks_url: \"https://idp/jwks\"}]\n",
                    "{}",
                ),
                "consumers[0].jwt_secrets[0].jwks_url: jwks_url must be an absolute http:// URL",
            ),
            (
                with("- username: a\n  jwt_secrets: {key: a}\n", "{}"),
                "consumers[0].jwt_secrets: invalid type",
            ),
        ];
        for (yaml, expected) in cases {
            let err = build_error(&yaml);
            assert!(err.starts_with(&format!("test.yaml: {expected}")), "expected `{expected}`, got `{err}`");
        }
    }

    #[test]
    fn seed_jwt_block_parses_and_builds() {
        let registry: Vec<PluginSpec> =
            crate::config::PLUGINS.iter().map(|p| PluginSpec { supported: true, ..*p }).collect();
        let text = std::fs::read_to_string(SEED).unwrap();
        let config = Config::from_yaml_with(&text, SEED, &registry).unwrap();
        let service = &config.services[0];
        let plugin = &service.routes[0].plugins[0];
        assert_eq!(plugin.name, "jwt");
        let ctx = PluginContext {
            origin: SEED,
            config: &config,
            service,
            path: "services[0].routes[0].plugins[0]".into(),
            instruments: &Default::default(),
            route_label: "r",
            consumer: None,
        };
        let parsed: JwtPluginConfig = ctx.parse(plugin).unwrap();
        assert_eq!(parsed.key_claim_name, "kid");
        assert_eq!(parsed.claims_to_verify, [ClaimName::Exp, ClaimName::Nbf]);
        assert_eq!(parsed.maximum_expiration, Duration::from_secs(3600));
        assert_eq!(parsed.uri_param_names, ["jwt"]);
        assert!(parsed.cookie_names.is_empty());
        assert_eq!(parsed.header_names, ["authorization"]);
        assert!(!parsed.run_on_preflight && !parsed.secret_is_base64 && parsed.anonymous.is_none());
        let layer = layer(&ctx, parsed).unwrap();
        assert_eq!(layer.cached_tokens(), 0);
        build(&ctx, plugin).unwrap();
    }
}
