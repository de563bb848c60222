//! `response-transformer`: Kong's config keys into a response-side [`TransformLayer`].

use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::{PluginContext, Wrap};
use crate::config::ConfigError;
use crate::config::schema::Plugin;
use crate::transform::{Action, JsonType, ResponsePart, TransformBuilder, TransformLayer};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    remove: Names,
    #[serde(default)]
    rename: Names,
    #[serde(default)]
    replace: Values,
    #[serde(default)]
    add: Values,
    #[serde(default)]
    append: Values,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Names {
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    json: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Values {
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    json: Option<Vec<String>>,
    #[serde(default)]
    json_types: Option<Vec<Type>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Type {
    String,
    Number,
    Boolean,
}

fn names(builder: TransformBuilder, action: Action, lists: &Names) -> TransformBuilder {
    builder.response(action, ResponsePart::Headers, lists.headers.clone().unwrap_or_default()).response(
        action,
        ResponsePart::Json,
        lists.json.clone().unwrap_or_default(),
    )
}

/// `json[i]` is written as `json_types[i]` (a string when there is none).
fn values(builder: TransformBuilder, action: Action, lists: &Values) -> TransformBuilder {
    let mut builder =
        builder.response(action, ResponsePart::Headers, lists.headers.clone().unwrap_or_default());
    let types = lists.json_types.as_deref().unwrap_or_default();
    for (i, entry) in lists.json.iter().flatten().enumerate() {
        let ty = match types.get(i) {
            Some(Type::Number) => JsonType::Number,
            Some(Type::Boolean) => JsonType::Boolean,
            Some(Type::String) | None => JsonType::String,
        };
        builder = builder.response_json_typed(action, entry.clone(), ty);
    }
    builder
}

pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: Config = ctx.parse(plugin)?;
    let gateway = &ctx.config.gateway;
    let mut builder = TransformLayer::builder()
        .max_body_bytes(gateway.max_body_bytes)
        .max_json_body_bytes(gateway.max_json_body_bytes)
        .max_json_depth(gateway.max_json_depth);
    builder = names(builder, Action::Remove, &config.remove);
    builder = names(builder, Action::Rename, &config.rename);
    builder = values(builder, Action::Replace, &config.replace);
    builder = values(builder, Action::Add, &config.add);
    builder = values(builder, Action::Append, &config.append);
    let layer = builder.build().map_err(|e| super::request_transformer::config_error(ctx, &e))?;
    Ok(std::sync::Arc::new(move |stack| BoxCloneSyncService::new(layer.layer(stack))))
}
