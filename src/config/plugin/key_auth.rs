//! `key-auth`: Kong's options, and the consumers' `keyauth_credentials` (hashed at load).

use std::sync::Arc;

use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::acl::{anonymous_with_groups, identity_with_groups};
use super::{PluginContext, Wrap};
use crate::auth::api_key::{ApiKeyAuthLayer, ApiKeys, KeyDigest, KeyHasher};
use crate::config::ConfigError;
use crate::config::schema::Plugin;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthConfig {
    #[serde(default = "default_key_names")]
    key_names: Vec<String>,
    #[serde(default = "yes")]
    key_in_header: bool,
    #[serde(default = "yes")]
    key_in_query: bool,
    #[serde(default)]
    key_in_body: bool,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default = "yes")]
    run_on_preflight: bool,
    #[serde(default)]
    realm: Option<String>,
    /// portcullis: digests are HMAC-SHA256 under this pepper.
    #[serde(default)]
    pepper: Option<String>,
    /// portcullis: the pepper is read from this environment variable at load.
    #[serde(default)]
    pepper_env: Option<String>,
    /// portcullis: largest body read for `key_in_body` (default 64 KiB).
    #[serde(default)]
    body_limit: Option<usize>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".to_owned()]
}

fn yes() -> bool {
    true
}

/// One `consumers[].keyauth_credentials[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    /// Sent upstream as `X-Credential-Identifier`.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_hash: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted as decK writes it.
    tags: Vec<String>,
}

pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: KeyAuthConfig = ctx.parse(plugin)?;
    if config.key_names.is_empty() {
        return Err(ctx.error("key_names", "expected at least one key name"));
    }
    for (i, name) in config.key_names.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ctx.error(&format!("key_names[{i}]"), format!("`{name}` is not a valid header name")));
        }
    }
    let pepper = match (&config.pepper, &config.pepper_env) {
        (Some(_), Some(_)) => return Err(ctx.error("pepper_env", "set `pepper` or `pepper_env`, not both")),
        (Some(pepper), None) => Some(pepper.clone()),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            ctx.error("pepper_env", format!("environment variable `{var}` is not set (or not UTF-8)"))
        })?),
        (None, None) => None,
    };
    let hasher = match pepper {
        Some(pepper) => KeyHasher::hmac_sha256(pepper).map_err(|e| {
            ctx.error(if config.pepper.is_some() { "pepper" } else { "pepper_env" }, e.to_string())
        })?,
        None => KeyHasher::sha256(),
    };
    let keys = load_keys(ctx, hasher)?;
    let mut builder = ApiKeyAuthLayer::builder(keys)
        .key_names(config.key_names)
        .key_in_header(config.key_in_header)
        .key_in_query(config.key_in_query)
        .key_in_body(config.key_in_body)
        .hide_credentials(config.hide_credentials)
        .run_on_preflight(config.run_on_preflight)
        .max_json_depth(ctx.config.gateway.max_json_depth);
    // A key is parsed out of at most `gateway.max_json_body_bytes`, whatever `body_limit` says.
    let json_budget = usize::try_from(ctx.config.gateway.max_json_body_bytes).unwrap_or(usize::MAX);
    builder = builder.body_limit(config.body_limit.unwrap_or(64 * 1024).min(json_budget));
    if let Some(realm) = &config.realm {
        builder = builder.realm(realm);
    }
    if let Some(name) = config.anonymous.as_deref().filter(|n| !n.is_empty()) {
        builder = builder.anonymous(anonymous_with_groups(ctx, ctx.config, name)?);
    }
    let layer = builder.build();
    Ok(Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner))))
}

/// The id of a credential written without one: Kong gives every credential an id, sent upstream as
/// `X-Credential-Identifier`. A UUID (version 8 layout) from the consumer's id and the
/// credential's place among its credentials, so it is the same on every load and every gateway,
/// and tells nothing about the key.
fn derived_credential_id(consumer_id: &str, index: usize) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"portcullis keyauth_credentials\0")
        .chain_update(consumer_id.as_bytes())
        .chain_update(index.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// Every consumer's `keyauth_credentials`, digested with `hasher`; plain keys are dropped here.
fn load_keys(ctx: &PluginContext<'_>, hasher: KeyHasher) -> Result<ApiKeys, ConfigError> {
    let origin = ctx.origin;
    let (prefix, other) =
        if hasher.is_keyed() { ("hmac-sha256:", "sha256:") } else { ("sha256:", "hmac-sha256:") };
    let mut keys = ApiKeys::new(hasher);
    // Where each digest was written, for duplicate errors.
    let mut written: std::collections::HashMap<KeyDigest, String> = std::collections::HashMap::new();
    for (c, consumer) in ctx.config.consumers.iter().enumerate() {
        // Every consumer's `acls` are checked, whether or not it has keys.
        let identity = identity_with_groups(origin, c, consumer)?;
        let Some(value) = &consumer.keyauth_credentials else { continue };
        let at = format!("consumers[{c}].keyauth_credentials");
        let credentials: Vec<Credential> =
            serde_path_to_error::deserialize(value.clone()).map_err(|error| {
                let inner = error.path().to_string();
                let path = match inner.as_str() {
                    "." | "" => at.clone(),
                    inner if inner.starts_with('[') => format!("{at}{inner}"),
                    inner => format!("{at}.{inner}"),
                };
                ConfigError::invalid(origin, path, error.into_inner().to_string())
            })?;
        for (i, credential) in credentials.into_iter().enumerate() {
            let here = format!("{at}[{i}]");
            let digest = match (&credential.key, &credential.key_hash) {
                (Some(key), None) if !key.is_empty() => keys.hasher().digest(key.as_bytes()),
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        origin,
                        format!("{here}.key"),
                        "expected a non-empty key",
                    ));
                }
                (None, Some(hash)) => {
                    let path = format!("{here}.key_hash");
                    let hex = match hash.strip_prefix(prefix) {
                        Some(hex) => hex,
                        None if hash.starts_with(other) => {
                            let why = if prefix == "sha256:" {
                                "this key-auth plugin has no `pepper`, so digests are plain SHA-256: expected `sha256:<64 hex digits>`"
                            } else {
                                "this key-auth plugin sets a pepper, so digests are HMAC-SHA256: expected `hmac-sha256:<64 hex digits>`"
                            };
                            return Err(ConfigError::invalid(origin, path, why));
                        }
                        None => {
                            return Err(ConfigError::invalid(
                                origin,
                                path,
                                format!("expected `{prefix}<64 hex digits>`"),
                            ));
                        }
                    };
                    KeyDigest::from_hex(hex)
                        .map_err(|e| ConfigError::invalid(origin, path, format!("after `{prefix}`: {e}")))?
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        origin,
                        format!("{here}.key_hash"),
                        "set `key` or `key_hash`, not both",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::invalid(origin, here, "expected `key` or `key_hash`"));
                }
            };
            if let Some(first) = written.get(&digest) {
                return Err(ConfigError::invalid(
                    origin,
                    here,
                    format!("duplicate API key (first at {first})"),
                ));
            }
            written.insert(digest, here);
            let credential_id = credential.id.unwrap_or_else(|| derived_credential_id(&identity.id, i));
            let consumer =
                crate::consumer::Consumer { credential_id: Some(credential_id.into()), ..identity.clone() };
            // Duplicates were refused above with their paths.
            let _ = keys.insert_digest(digest, consumer);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::derived_credential_id;

    #[test]
    fn a_derived_credential_id_is_a_stable_uuid_of_the_consumer_and_place() {
        let id = derived_credential_id("alice", 1);
        assert_eq!(id, derived_credential_id("alice", 1), "the same on every load");
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(id, derived_credential_id("alice", 0));
        assert_ne!(id, derived_credential_id("bob", 1));
    }
}
