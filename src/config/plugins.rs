//! The plugin registry: every plugin name the config accepts, and whether it is implemented.

/// A plugin name the config knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginSpec {
    /// Kong's plugin name (`rate-limiting`).
    pub name: &'static str,
    /// Whether portcullis implements it; a known but unimplemented plugin is a config error
    /// (`plugin `jwt` is not supported yet`) rather than silently ignored.
    pub supported: bool,
}

/// Every plugin the config knows, in the order error messages list them. A plugin's issue flips
/// its `supported` flag when it lands.
pub const PLUGINS: &[PluginSpec] = &[
    PluginSpec { name: "jwt", supported: cfg!(feature = "jwt") },
    PluginSpec { name: "key-auth", supported: true },
    PluginSpec { name: "oauth2-introspection", supported: true },
    PluginSpec { name: "acl", supported: true },
    PluginSpec { name: "rate-limiting", supported: cfg!(feature = "ratelimit") },
    PluginSpec { name: "request-transformer", supported: true },
    PluginSpec { name: "response-transformer", supported: true },
];

/// Looks a plugin name up in `registry`.
pub(crate) fn lookup<'r>(registry: &'r [PluginSpec], name: &str) -> Option<&'r PluginSpec> {
    registry.iter().find(|spec| spec.name == name)
}

/// `jwt, key-auth, ...` for "expected one of" messages.
pub(crate) fn names(registry: &[PluginSpec]) -> String {
    registry.iter().map(|spec| spec.name).collect::<Vec<_>>().join(", ")
}

/// The plugins that may be scoped to a consumer (`consumer:` on a plugin, or a consumer's own
/// `plugins:`), as in Kong: the ones that act on an identified caller. The auth plugins (`jwt`,
/// `key-auth`, `oauth2-introspection`) and `acl` are what find and judge the consumer, so Kong
/// refuses them there (`no_consumer`); so does portcullis, by path.
pub const CONSUMER_SCOPED: &[&str] = &["rate-limiting", "request-transformer", "response-transformer"];

/// Whether plugin `name` may be scoped to a consumer.
pub(crate) fn consumer_scope_allowed(name: &str) -> bool {
    CONSUMER_SCOPED.contains(&name)
}
