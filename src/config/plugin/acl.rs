//! `acl`: Kong's `allow` xor `deny` groups, and the consumers' `acls` that auth plugins attach.

use std::sync::Arc;

use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::{PluginContext, Wrap, consumer_identity};
use crate::auth::acl::AclLayer;
use crate::config::ConfigError;
use crate::config::schema::{Config, Consumer, Plugin};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    hide_groups_header: bool,
}

/// One `consumers[].acls[]` entry (decK's shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclEntry {
    group: String,
    #[serde(default)]
    #[allow(dead_code)] // Accepted as decK writes it; portcullis does not use it.
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Vec<String>,
}

pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: AclConfig = ctx.parse(plugin)?;
    let layer = match (config.allow.is_empty(), config.deny.is_empty()) {
        (false, true) => AclLayer::allow(config.allow),
        (true, false) => AclLayer::deny(config.deny),
        (false, false) => return Err(ctx.error("deny", "set `allow` or `deny`, not both")),
        (true, true) => {
            return Err(ctx.error("allow", "expected a non-empty `allow` or `deny` list of groups"));
        }
    }
    .hide_groups_header(config.hide_groups_header);
    Ok(Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner))))
}

/// The groups of `consumers[index]`, from its `acls: [{group: admins}]`, in file order. Errors
/// name the entry (`consumers[0].acls[1].group`).
pub(crate) fn consumer_groups(
    origin: &str,
    index: usize,
    consumer: &Consumer,
) -> Result<Arc<[Arc<str>]>, ConfigError> {
    let Some(value) = &consumer.acls else { return Ok(Arc::from([])) };
    let entries: Vec<AclEntry> = serde_path_to_error::deserialize(value.clone()).map_err(|error| {
        let inner = error.path().to_string();
        let path = match inner.as_str() {
            "." | "" => format!("consumers[{index}].acls"),
            inner => {
                format!("consumers[{index}].acls{}{inner}", if inner.starts_with('[') { "" } else { "." })
            }
        };
        ConfigError::invalid(origin, path, error.into_inner().to_string())
    })?;
    let mut groups: Vec<Arc<str>> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        if entry.group.trim().is_empty() {
            return Err(ConfigError::invalid(
                origin,
                format!("consumers[{index}].acls[{i}].group"),
                "expected a non-empty group name",
            ));
        }
        if !groups.iter().any(|g| **g == *entry.group) {
            groups.push(entry.group.into());
        }
    }
    Ok(groups.into())
}

/// The identity auth layers attach for `consumers[index]`: [`consumer_identity`] plus its groups.
pub(crate) fn identity_with_groups(
    origin: &str,
    index: usize,
    consumer: &Consumer,
) -> Result<crate::consumer::Consumer, ConfigError> {
    Ok(crate::consumer::Consumer {
        groups: consumer_groups(origin, index, consumer)?,
        ..consumer_identity(consumer)
    })
}

/// The consumer a plugin's `anonymous` names (by id, username or custom id), with its groups and
/// marked anonymous; an unknown name is an error at `<plugin>.config.anonymous`.
pub(crate) fn anonymous_with_groups(
    ctx: &PluginContext<'_>,
    config: &Config,
    name: &str,
) -> Result<crate::consumer::Consumer, ConfigError> {
    let found = config
        .consumers
        .iter()
        .enumerate()
        .find(|(_, c)| [&c.id, &c.username, &c.custom_id].iter().any(|v| v.as_deref() == Some(name)));
    match found {
        Some((index, consumer)) => Ok(crate::consumer::Consumer {
            anonymous: true,
            ..identity_with_groups(ctx.origin, index, consumer)?
        }),
        None => Err(ctx.error("anonymous", format!("no consumer with id, username or custom_id `{name}`"))),
    }
}
