//! The checks that need more than one key: names, references, upstreams, plugins.

use std::collections::HashMap;

use super::error::Invalid;
use super::plugins::{self, PluginSpec};
use super::schema::{Config, Plugin, Route, Service, Upstream};

/// Where a plugin list sits, which decides the references it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Global,
    Service,
    Route,
    /// `consumers[i].plugins`: scoped to that consumer by where it is.
    Consumer,
}

/// Names the file defines, for resolving plugin references.
struct Names<'a> {
    services: HashMap<&'a str, String>,
    routes: HashMap<&'a str, String>,
    consumers: HashMap<&'a str, String>,
}

// === impl Config ===

impl Config {
    /// Checks everything a single key cannot, and resolves each service's upstream. The first
    /// problem in document order wins.
    pub(crate) fn validate(&mut self, registry: &[PluginSpec]) -> Result<(), Invalid> {
        // Port 0 asks the OS for a free port, so two of them never collide.
        if self.gateway.admin_listen == Some(self.gateway.listen) && self.gateway.listen.port() != 0 {
            return Err(Invalid::new(
                "gateway.admin_listen",
                format!("`{}` is already `listen`, expected a different address", self.gateway.listen),
            ));
        }
        if let Some((path, message)) = self.gateway.admin_problem() {
            return Err(Invalid::new(path, message));
        }
        let depth = self.gateway.max_json_depth;
        if !(1..=crate::body::MAX_JSON_DEPTH_LIMIT).contains(&depth) {
            return Err(Invalid::new(
                "gateway.max_json_depth",
                format!(
                    "expected 1..={} levels (serde_json's limit), got {depth}",
                    crate::body::MAX_JSON_DEPTH_LIMIT
                ),
            ));
        }
        if self.gateway.max_connections == 0 {
            return Err(Invalid::new("gateway.max_connections", "0, expected at least 1 connection"));
        }
        if self.gateway.body_read_timeout.is_zero() {
            return Err(Invalid::new("gateway.body_read_timeout", "0, expected a duration above zero"));
        }
        let upstreams = {
            let names = self.names()?;
            let upstreams = self
                .services
                .iter()
                .enumerate()
                .map(|(index, service)| {
                    validate_service(&format!("services[{index}]"), service, registry, &names)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.validate_consumers()?;
            for (index, consumer) in self.consumers.iter().enumerate() {
                let at = format!("consumers[{index}].plugins");
                validate_plugins(&at, &consumer.plugins, Scope::Consumer, registry, &names)?;
            }
            validate_plugins("plugins", &self.plugins, Scope::Global, registry, &names)?;
            upstreams
        };
        for (service, upstream) in self.services.iter_mut().zip(upstreams) {
            service.upstream = upstream;
        }
        Ok(())
    }

    /// Collects service, route and consumer names, rejecting duplicates.
    fn names(&self) -> Result<Names<'_>, Invalid> {
        let mut names = Names { services: HashMap::new(), routes: HashMap::new(), consumers: HashMap::new() };
        for (index, service) in self.services.iter().enumerate() {
            let at = format!("services[{index}].name");
            if service.name.trim().is_empty() {
                return Err(Invalid::new(at, "empty name, expected a service name"));
            }
            if let Some(first) = names.services.insert(&service.name, at.clone()) {
                return Err(Invalid::new(
                    at,
                    format!("duplicate service name `{}` (first at {first})", service.name),
                ));
            }
            for (route_index, route) in service.routes.iter().enumerate() {
                let Some(name) = &route.name else { continue };
                let at = format!("services[{index}].routes[{route_index}].name");
                if name.trim().is_empty() {
                    return Err(Invalid::new(at, "empty name, expected a route name or no `name`"));
                }
                if let Some(first) = names.routes.insert(name, at.clone()) {
                    return Err(Invalid::new(
                        at,
                        format!("duplicate route name `{name}` (first at {first})"),
                    ));
                }
            }
        }
        for (index, consumer) in self.consumers.iter().enumerate() {
            let keys =
                [("id", &consumer.id), ("username", &consumer.username), ("custom_id", &consumer.custom_id)];
            for (key, value) in keys {
                let Some(value) = value else { continue };
                let at = format!("consumers[{index}].{key}");
                if value.trim().is_empty() {
                    return Err(Invalid::new(at, format!("empty `{key}`, expected a value or no `{key}`")));
                }
                if let Some(first) = names.consumers.insert(value, at.clone()) {
                    // Plugins name consumers by any of the three, so they share one namespace.
                    return Err(Invalid::new(
                        at,
                        format!("duplicate consumer {key} `{value}` (first at {first})"),
                    ));
                }
            }
        }
        Ok(names)
    }

    fn validate_consumers(&self) -> Result<(), Invalid> {
        for (index, consumer) in self.consumers.iter().enumerate() {
            if consumer.username.is_none() && consumer.custom_id.is_none() {
                return Err(Invalid::new(
                    format!("consumers[{index}]"),
                    "a consumer needs `username`, `custom_id` or both",
                ));
            }
        }
        Ok(())
    }
}

fn validate_service(
    at: &str,
    service: &Service,
    registry: &[PluginSpec],
    names: &Names<'_>,
) -> Result<Upstream, Invalid> {
    for (key, timeout) in [("read_timeout", service.read_timeout), ("write_timeout", service.write_timeout)] {
        if timeout.is_zero() {
            return Err(Invalid::new(format!("{at}.{key}"), "0, expected a duration above zero"));
        }
    }
    if let Some(policy) = &service.retry_policy {
        policy.validate(&format!("{at}.retry_policy"))?;
    }
    let upstream = resolve_upstream(at, service)?;
    super::hosts::validate(at, service)?;
    validate_plugins(&format!("{at}.plugins"), &service.plugins, Scope::Service, registry, names)?;
    for (index, route) in service.routes.iter().enumerate() {
        validate_route(&format!("{at}.routes[{index}]"), route, registry, names)?;
    }
    Ok(upstream)
}

fn validate_route(
    at: &str,
    route: &Route,
    registry: &[PluginSpec],
    names: &Names<'_>,
) -> Result<(), Invalid> {
    if let Some(policy) = &route.retry_policy {
        policy.validate(&format!("{at}.retry_policy"))?;
    }
    if route.paths.is_empty()
        && route.methods.is_empty()
        && route.hosts.is_empty()
        && route.headers.is_empty()
    {
        return Err(Invalid::new(at, "a route needs at least one of `paths`, `methods`, `hosts`, `headers`"));
    }
    for (index, host) in route.hosts.iter().enumerate() {
        if host.trim().is_empty() || host.contains(['/', ' ']) {
            return Err(Invalid::new(
                format!("{at}.hosts[{index}]"),
                format!(
                    "invalid host `{host}`, expected a host name like `api.example.com` or `*.example.com`"
                ),
            ));
        }
    }
    for (name, values) in &route.headers {
        let at = format!("{at}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Invalid::new(at, format!("invalid header name `{name}`")));
        }
        if values.is_empty() {
            return Err(Invalid::new(at, "empty list, expected at least one header value"));
        }
    }
    if route.protocols.is_empty() {
        return Err(Invalid::new(format!("{at}.protocols"), "empty list, expected `http`, `https` or both"));
    }
    validate_plugins(&format!("{at}.plugins"), &route.plugins, Scope::Route, registry, names)
}

/// A plugin instance's identity in its list: name, then `service`, `route`, `consumer`.
type InstanceKey<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn validate_plugins(
    list_at: &str,
    list: &[Plugin],
    scope: Scope,
    registry: &[PluginSpec],
    names: &Names<'_>,
) -> Result<(), Invalid> {
    // One instance per plugin name per target (Kong): the key is the name plus its references.
    let mut seen: HashMap<InstanceKey<'_>, usize> = HashMap::new();
    for (index, plugin) in list.iter().enumerate() {
        let at = format!("{list_at}[{index}]");
        match plugins::lookup(registry, &plugin.name) {
            Some(spec) if spec.supported => {}
            Some(_) => {
                return Err(Invalid::unsupported(
                    format!("{at}.name"),
                    format!("plugin `{}` is not supported yet", plugin.name),
                ));
            }
            None => {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    format!("unknown plugin `{}`; expected one of {}", plugin.name, plugins::names(registry)),
                ));
            }
        }
        if (scope == Scope::Consumer || plugin.consumer.is_some())
            && !plugins::consumer_scope_allowed(&plugin.name)
        {
            let at = if scope == Scope::Consumer { format!("{at}.name") } else { format!("{at}.consumer") };
            return Err(Invalid::new(
                at,
                format!(
                    "plugin `{}` cannot be scoped to a consumer, expected one of {} (as in Kong: auth \
                     plugins are what finds the consumer)",
                    plugin.name,
                    plugins::CONSUMER_SCOPED.join(", ")
                ),
            ));
        }
        let references = [
            ("service", &plugin.service, &names.services),
            ("route", &plugin.route, &names.routes),
            ("consumer", &plugin.consumer, &names.consumers),
        ];
        for (key, reference, defined) in references {
            let Some(reference) = reference else { continue };
            if key == "consumer" && scope == Scope::Consumer {
                return Err(Invalid::new(
                    format!("{at}.consumer"),
                    "`consumer` is not allowed on a consumer's own plugins; they are already scoped to it",
                ));
            }
            if key != "consumer" && !matches!(scope, Scope::Global | Scope::Consumer) {
                return Err(Invalid::new(
                    format!("{at}.{key}"),
                    format!(
                        "`{key}` is only allowed on global plugins; this plugin is already scoped by where it is"
                    ),
                ));
            }
            if !defined.contains_key(reference.as_str()) {
                let what = if key == "consumer" {
                    "a consumer username, custom_id or id"
                } else {
                    "a name defined in this file"
                };
                return Err(Invalid::new(
                    format!("{at}.{key}"),
                    format!("unknown {key} `{reference}`, expected {what}"),
                ));
            }
        }
        let key = (
            plugin.name.as_str(),
            plugin.service.as_deref(),
            plugin.route.as_deref(),
            plugin.consumer.as_deref(),
        );
        if let Some(first) = seen.insert(key, index) {
            return Err(Invalid::new(
                format!("{at}.name"),
                format!(
                    "duplicate plugin `{}` (first at {list_at}[{first}]); one instance per plugin runs",
                    plugin.name,
                ),
            ));
        }
    }
    Ok(())
}

/// Resolves `url`, or Kong's `protocol`/`host`/`port`/`path`, into an [`Upstream`].
fn resolve_upstream(at: &str, service: &Service) -> Result<Upstream, Invalid> {
    let split = service.protocol.is_some()
        || service.host.is_some()
        || service.port.is_some()
        || service.path.is_some();
    match (&service.url, split) {
        (Some(_), true) => Err(Invalid::new(
            at,
            "both `url` and `protocol`/`host`/`port`/`path` are set, expected one or the other",
        )),
        // With targets, connections go to them: the scheme is http and the base path `/`.
        (None, false) if !service.targets.is_empty() => target_upstream(at, &service.targets[0].target, "/"),
        (None, false) => Err(Invalid::new(
            at,
            "no upstream, expected `url` (http://host:port/path), `host` (with optional `protocol`, `port`, `path`) or `targets`",
        )),
        (Some(url), false) => parse_url(&format!("{at}.url"), url),
        (None, true) => {
            check_scheme(&format!("{at}.protocol"), service.protocol.as_deref().unwrap_or("http"))?;
            let path = checked_path(at, service)?;
            match (service.host.as_deref(), service.targets.first()) {
                (Some(host), _) => upstream(&format!("{at}.host"), host, service.port.unwrap_or(80), &path),
                // `targets` with `protocol`/`path`: the targets are the hosts.
                (None, Some(first)) if service.port.is_none() => target_upstream(at, &first.target, &path),
                _ => Err(Invalid::new(at, "`protocol`/`port`/`path` without `host`, expected `host` too")),
            }
        }
    }
}

fn checked_path(at: &str, service: &Service) -> Result<String, Invalid> {
    let path = service.path.as_deref().unwrap_or("/");
    if !path.starts_with('/') || path.contains(['?', '#']) {
        return Err(Invalid::new(
            format!("{at}.path"),
            format!("invalid path `{path}`, expected a path starting with `/` and no query"),
        ));
    }
    Ok(path.to_owned())
}

/// A service with `targets` and no host of its own: the first target stands in as the
/// [`Upstream`]'s authority (connections go to every target).
fn target_upstream(at: &str, target: &str, path: &str) -> Result<Upstream, Invalid> {
    let at = format!("{at}.targets[0]");
    let authority = target
        .parse::<http::uri::Authority>()
        .map_err(|_| Invalid::new(&at, format!("invalid target `{target}`")))?;
    upstream(&at, authority.host(), authority.port_u16().unwrap_or(80), path)
}

fn check_scheme(at: &str, scheme: &str) -> Result<(), Invalid> {
    match scheme {
        "http" => Ok(()),
        "https" => Err(Invalid::unsupported(at, "https upstreams are not supported yet")),
        other => Err(Invalid::new(at, format!("invalid protocol `{other}`, expected `http`"))),
    }
}

/// `url` with any userinfo (`user:password@`) replaced by `***@`: config errors are printed and
/// logged, and must not carry a password.
fn redacted(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

fn parse_url(at: &str, url: &str) -> Result<Upstream, Invalid> {
    let url = &*redacted(url);
    let expected = || Invalid::new(at, format!("invalid url `{url}`, expected `http://host:port/path`"));
    let uri: http::Uri = url.parse().map_err(|_| expected())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(expected());
    };
    check_scheme(at, scheme)?;
    if authority.as_str().contains('@') {
        return Err(Invalid::new(
            at,
            format!("invalid url `{url}`: credentials in the url are not supported"),
        ));
    }
    if uri.query().is_some() {
        return Err(Invalid::new(
            at,
            format!("invalid url `{url}`: a service url cannot have a query string"),
        ));
    }
    // Every request to such a service would be refused (400): say so at load.
    if crate::http_rules::has_dot_segment(uri.path()) {
        return Err(Invalid::new(
            at,
            format!("invalid url `{url}`: its path holds a `.` or `..` segment, which no request may reach"),
        ));
    }
    upstream(at, authority.host(), authority.port_u16().unwrap_or(80), uri.path())
}

fn upstream(at: &str, host: &str, port: u16, path: &str) -> Result<Upstream, Invalid> {
    let authority = format!("{host}:{port}")
        .parse::<http::uri::Authority>()
        .ok()
        .filter(|parsed| !host.is_empty() && parsed.host() == host)
        .ok_or_else(|| {
            Invalid::new(at, format!("invalid host `{host}`, expected a host name or IP address"))
        })?;
    Ok(Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority,
        host: host.to_owned(),
        port,
        path: if path.is_empty() { "/".to_owned() } else { path.to_owned() },
    })
}
