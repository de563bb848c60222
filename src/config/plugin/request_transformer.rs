//! `request-transformer`: Kong's config keys into a request-side [`TransformLayer`].

use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::{PluginContext, Wrap};
use crate::config::ConfigError;
use crate::config::schema::Plugin;
use crate::transform::{Action, RequestPart, TransformBuilder, TransformError, TransformLayer};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    remove: Lists,
    #[serde(default)]
    rename: Lists,
    #[serde(default)]
    replace: ReplaceLists,
    #[serde(default)]
    add: Lists,
    #[serde(default)]
    append: Lists,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    querystring: Option<Vec<String>>,
    #[serde(default)]
    body: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceLists {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    querystring: Option<Vec<String>>,
    #[serde(default)]
    body: Option<Vec<String>>,
}

/// Adds one action's three lists to the builder.
fn lists(
    builder: TransformBuilder,
    action: Action,
    headers: &Option<Vec<String>>,
    querystring: &Option<Vec<String>>,
    body: &Option<Vec<String>>,
) -> TransformBuilder {
    let each = |list: &Option<Vec<String>>| list.clone().unwrap_or_default();
    builder
        .request(action, RequestPart::Headers, each(headers))
        .request(action, RequestPart::Querystring, each(querystring))
        .request(action, RequestPart::Body, each(body))
}

pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: Config = ctx.parse(plugin)?;
    let gateway = &ctx.config.gateway;
    let mut builder = TransformLayer::builder()
        .max_body_bytes(gateway.max_body_bytes)
        .max_json_body_bytes(gateway.max_json_body_bytes)
        .max_json_depth(gateway.max_json_depth);
    if let Some(method) = &config.http_method {
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| ctx.error("http_method", format!("invalid HTTP method `{method}`")))?;
        builder = builder.http_method(method);
    }
    if let Some(uri) = &config.replace.uri {
        builder = builder.replace_uri(uri.clone());
    }
    let r = &config.remove;
    builder = lists(builder, Action::Remove, &r.headers, &r.querystring, &r.body);
    let r = &config.rename;
    builder = lists(builder, Action::Rename, &r.headers, &r.querystring, &r.body);
    let r = &config.replace;
    builder = lists(builder, Action::Replace, &r.headers, &r.querystring, &r.body);
    let r = &config.add;
    builder = lists(builder, Action::Add, &r.headers, &r.querystring, &r.body);
    let r = &config.append;
    builder = lists(builder, Action::Append, &r.headers, &r.querystring, &r.body);
    let layer = builder.build().map_err(|e| config_error(ctx, &e))?;
    Ok(std::sync::Arc::new(move |stack| BoxCloneSyncService::new(layer.layer(stack))))
}

/// A rule error at its config key (`...config.add.headers[0]`).
pub(super) fn config_error(ctx: &PluginContext<'_>, error: &TransformError) -> ConfigError {
    ctx.error(error.location(), error.kind().to_string())
}
