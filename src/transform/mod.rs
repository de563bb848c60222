//! Request and response transformation: Kong's `request-transformer` and `response-transformer`
//! as one tower layer.
//!
//! [`TransformLayer`] rewrites, on the way in, the URI path (`replace.uri`), the method, the
//! headers, the query string and the body (JSON objects and `application/x-www-form-urlencoded`);
//! on the way back, the headers and the JSON body. Rules are Kong's `name:value` entries (the
//! value runs from the first `:` on, so `p1:anything:1` sets `p1` to `anything:1`). They run in
//! Kong's order — uri → method → headers → body → querystring, and inside each part remove →
//! rename → replace (only if present) → add (only if absent) → append — and an empty value makes
//! a rule do nothing.
//!
//! **Templates.** Request values may hold `$(...)` expressions: `uri_captures.id` (or
//! `uri_captures["id"]`, `uri_captures[1]`), `headers.x-name`, `query_params.q`, `consumer.id`,
//! `consumer.username`, `consumer.custom_id`, `route.name`, `service.name`, `request_id`,
//! `client_ip`, and `a or b or 'default'`. They are parsed when the layer is built (an unknown
//! expression is a [`TransformError`]) and rendered against the request *as it arrived*, so a
//! template reading a header that `remove` deletes still sees its value. An expression that finds
//! nothing renders empty. Response values are literal (as in Kong); an expression there is an
//! error rather than a silent literal.
//!
//! **Headers a rule may not set**: hop-by-hop headers, `Content-Length` and `Host` (the gateway
//! computes them), and gateway-owned headers (`X-Consumer-*`, `X-Real-IP`, `X-Portcullis-*`,
//! ...), except an owned consumer header set to exactly its verified field
//! (`X-Consumer-ID:$(consumer.id)`, as in Kong's seed configurations): that renders verified
//! state, never a client's.
//!
//! **Bodies** are read only when a body rule exists and the body's `Content-Type` is one the rules
//! apply to, and only up to [`max_body_bytes`](TransformBuilder::max_body_bytes) — for JSON,
//! [`max_json_body_bytes`](TransformBuilder::max_json_body_bytes) (default 1 MiB): reading stops
//! at the limit, nothing past it is buffered. A request body over it is answered 413 (a rule that
//! must apply is never silently skipped); a response body over it is a 502 (a response whose
//! `Content-Length` already says it is too large passes through untransformed). JSON nested
//! deeper than [`max_json_depth`](TransformBuilder::max_json_depth) (default 64) is answered 400
//! on the request side and passes untouched on the response side; only a top-level object is
//! parsed at all. Otherwise the body streams
//! through untouched, chunk by chunk. A body that is not a JSON object passes through unchanged;
//! multipart bodies pass through untouched. `Content-Length` is recomputed whenever a body is
//! rewritten.
//!
//! **`http_method`** sets the method the request continues with. Changed to `GET`, `HEAD` or
//! `TRACE`, a form (`application/x-www-form-urlencoded`) body's fields are also added to the
//! query, after the fields already there and before the querystring rules run, as Kong does;
//! the body is read for that (within the same limit) and still sent as it was. A change to any
//! other method moves nothing: Kong does not turn a query into a body.
//!
//! **`replace.uri`** sets the whole upstream path, as Kong's `kong.service.request.set_path`
//! does: the service's path is not prepended. The layer rewrites the request URI (so a router
//! behind it sees the new path) and, with the `proxy` feature, records it in
//! [`UpstreamPath`](crate::ext::UpstreamPath) so the [`Proxy`](crate::proxy::Proxy) sends it as
//! is. The template's own text is trusted (it is configuration; a `.` or `..` segment in it is a
//! [`TransformError`]); the values it reads from the request are not: each becomes exactly one
//! path segment, every `/`, `\`, `%`, `;`, `?`, `#`, control byte and other non-path character
//! percent-encoded (a value `a/b?c` is the one segment `a%2Fb%3Fc`, never decoded again),
//! and a value that is, or holds between `/` or `\` (or `%2F`, `%5C`), a `.` or `..` segment
//! (`%2e` and `..;` forms too) is answered 400 `bad_request`, as is a result that holds one. So
//! `/users/$(query_params.id)` never leaves `/users/`.
//!
//! ```
//! use http_body_util::BodyExt;
//! use portcullis::Body;
//! use portcullis::transform::{Action, RequestPart, ResponsePart, TransformLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), portcullis::error::BoxError> {
//! let transform = TransformLayer::builder()
//!     .request(Action::Remove, RequestPart::Headers, ["X-Internal-Token"])
//!     .request(Action::Add, RequestPart::Headers, ["X-Token-Seen:$(headers.x-internal-token or 'none')"])
//!     .request(Action::Append, RequestPart::Querystring, ["source:gateway"])
//!     .response(Action::Add, ResponsePart::Headers, ["X-Served-By:portcullis"])
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(transform).service_fn(|req: http::Request<Body>| async move {
//!     assert!(req.headers().get("x-internal-token").is_none());
//!     assert_eq!(req.headers()["x-token-seen"], "s3cret"); // rendered before `remove` ran
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(req.uri().to_string())))
//! });
//! let req = http::Request::get("/orders?id=1").header("x-internal-token", "s3cret").body(Body::empty())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.headers()["x-served-by"], "portcullis");
//! assert_eq!(res.into_body().collect().await?.to_bytes(), "/orders?id=1&source=gateway");
//! # Ok(()) }
//! ```
//!
//! # API versioning by rewrite
//!
//! `/v1/users/{id}` and `/v2/users/{id}` served by one `/users/{id}` backend, which learns the
//! version from `X-API-Version` (in a config file: two regex routes with a `request-transformer`
//! each, `replace.uri: "/users/$(uri_captures.id)"`):
//!
//! ```
//! use http_body_util::BodyExt;
//! use portcullis::Body;
//! use portcullis::router::{Route, Router};
//! use portcullis::transform::{Action, RequestPart, TransformLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), portcullis::error::BoxError> {
//! let users = service_fn(|req: http::Request<Body>| async move {
//!     let version = req.headers()["x-api-version"].to_str().unwrap_or("").to_owned();
//!     let body = format!("{} v{version}", req.uri().path());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(body)))
//! });
//! let versioned = |version: &str| {
//!     TransformLayer::builder()
//!         .replace_uri("/users/$(uri_captures.id)")
//!         .request(Action::Add, RequestPart::Headers, [format!("X-API-Version:{version}")])
//!         .build()
//! };
//! let router = Router::builder()
//!     .route(Route::new().paths(["~/v1/users/(?P<id>[^/]+)$"]).strip_path(false), versioned("1")?.layer(users))
//!     .route(Route::new().paths(["~/v2/users/(?P<id>[^/]+)$"]).strip_path(false), versioned("2")?.layer(users))
//!     .build()?;
//! for (path, answer) in [("/v2/users/42", "/users/42 v2"), ("/v1/users/7", "/users/7 v1")] {
//!     let res = router.clone().oneshot(http::Request::get(path).body(Body::empty())?).await?;
//!     assert_eq!(res.into_body().collect().await?.to_bytes(), answer);
//! }
//! # Ok(()) }
//! ```

mod form;
mod rules;
mod template;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use template::TemplateError;

use crate::body::{
    DEFAULT_MAX_JSON_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_LIMIT, json_deeper_than,
};
use crate::error::{BoxError, Rejection};
use crate::ext::RequestId;
use form::Pairs;
use rules::{HeaderEnv, HeaderOp, HeaderTemplate, HeaderVal, Ops, Val};
use template::{Env, Template};

/// What a rule does; Kong's config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `remove`: drop every value of the name.
    Remove,
    /// `rename`: `old:new`, keeping the values.
    Rename,
    /// `replace`: set the value, only if the name is present.
    Replace,
    /// `add`: set the value, only if the name is absent.
    Add,
    /// `append`: add one more value.
    Append,
}

/// The part of a request a rule changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPart {
    /// `headers`.
    Headers,
    /// `querystring`.
    Querystring,
    /// `body`: the top-level fields of a JSON object, or form fields.
    Body,
}

/// The part of a response a rule changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponsePart {
    /// `headers`.
    Headers,
    /// `json`: the top-level fields of a JSON object body.
    Json,
}

/// Kong's `json_types`: how a response `json` value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonType {
    /// A JSON string (the default).
    #[default]
    String,
    /// A JSON number; the value must parse as one.
    Number,
    /// `true` when the value is `true`, else `false`.
    Boolean,
}

/// A rule the layer cannot be built with, and where it was (`add.headers[1]`, `replace.uri`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct TransformError {
    location: String,
    kind: TransformErrorKind,
}

impl TransformError {
    /// Where the rule is, in Kong's config keys (`add.headers[1]`, `replace.uri`, `http_method`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &TransformErrorKind {
        &self.kind
    }
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformErrorKind {
    /// Not a `name:value` entry.
    #[error("invalid entry `{0}`, expected `name:value`")]
    Entry(String),
    /// Not a valid header name.
    #[error("invalid header name `{0}`")]
    HeaderName(String),
    /// Not a valid header value.
    #[error("invalid header value `{0}`")]
    HeaderValue(String),
    /// A header no rule may set.
    #[error("`{0}` is a {1} header; a transform rule may not set it")]
    Forbidden(String, &'static str),
    /// A template that does not parse.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A response value with an expression (response values are literal).
    #[error("templates are not supported in response rules: `{0}`")]
    ResponseTemplate(String),
    /// A `json_types: number` value that is not a number.
    #[error("`{0}` is not a number")]
    Number(String),
    /// A `replace.uri` whose own text holds a `.` or `..` segment.
    #[error("`{0}` holds a '.' or '..' segment; an upstream path may not")]
    DotSegment(String),
}

/// Builds a [`TransformLayer`]; rules are checked and templates parsed by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct TransformBuilder {
    request: Vec<(Action, RequestPart, String)>,
    response: Vec<(Action, ResponsePart, String, JsonType)>,
    uri: Option<String>,
    method: Option<Method>,
    max_body_bytes: u64,
    max_json_body_bytes: u64,
    max_json_depth: usize,
}

/// Rewrites requests and responses; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct TransformLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Templates of uri, querystring and body values, rendered before any rule runs.
    templates: Vec<Template>,
    /// Templates of header values.
    header_templates: Vec<HeaderTemplate>,
    /// Whether some header template must be rendered before the rules run.
    early_header_templates: bool,
    /// The `replace.uri` template, rendered apart: its values become path segments.
    uri: Option<Template>,
    method: Option<Method>,
    req_headers: Vec<HeaderOp>,
    req_query: Ops<String, Val<String>>,
    req_body: Ops<String, Val<String>>,
    res_headers: Vec<HeaderOp>,
    res_json: Ops<String, serde_json::Value>,
    max_body_bytes: u64,
    /// JSON bodies (either side) are read up to this many bytes: at most `max_body_bytes`.
    max_json_body_bytes: u64,
    /// JSON nested deeper than this is not parsed (400 for a request, untouched response).
    max_json_depth: usize,
    /// The request rules are header rules only (or there are none): applied in `call`, nothing
    /// else to do.
    headers_only: bool,
    /// `http_method` is GET, HEAD or TRACE: a form body's fields join the query (Kong).
    form_to_query: bool,
}

// === impl TransformBuilder ===

impl Default for TransformBuilder {
    fn default() -> Self {
        Self {
            request: Vec::new(),
            response: Vec::new(),
            uri: None,
            method: None,
            max_body_bytes: 10 << 20,
            max_json_body_bytes: DEFAULT_MAX_JSON_BODY_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

fn label(action: Action) -> &'static str {
    match action {
        Action::Remove => "remove",
        Action::Rename => "rename",
        Action::Replace => "replace",
        Action::Add => "add",
        Action::Append => "append",
    }
}

impl TransformBuilder {
    /// Request rules: Kong `name:value` entries (`remove` takes names, `rename` `old:new`).
    pub fn request<I>(mut self, action: Action, part: RequestPart, entries: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.request.extend(entries.into_iter().map(|e| (action, part, e.into())));
        self
    }

    /// Response rules; `json` values are strings (see [`response_json_typed`](Self::response_json_typed)).
    pub fn response<I>(mut self, action: Action, part: ResponsePart, entries: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.response.extend(entries.into_iter().map(|e| (action, part, e.into(), JsonType::String)));
        self
    }

    /// One response `json` rule whose value is written as `ty` (Kong's `json_types`).
    pub fn response_json_typed(mut self, action: Action, entry: impl Into<String>, ty: JsonType) -> Self {
        self.response.push((action, ResponsePart::Json, entry.into(), ty));
        self
    }

    /// `replace.uri`: the whole upstream path, a template (`/users/$(uri_captures.id)`).
    pub fn replace_uri(mut self, template: impl Into<String>) -> Self {
        self.uri = Some(template.into());
        self
    }

    /// `http_method`: the method the request continues with (to `GET`, `HEAD` or `TRACE`, a form
    /// body's fields also join the query; see the [module docs](self)).
    pub fn http_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Reads at most this many body bytes for body rules (default 10 MiB; the gateway passes its
    /// `max_body_bytes`).
    pub fn max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Reads at most this many bytes of a JSON body, request or response (default 1 MiB, and
    /// never more than [`max_body_bytes`](Self::max_body_bytes)): the memory a JSON rule may
    /// cost. A request body over it is answered 413; a response body over it passes untouched
    /// when its `Content-Length` says so, and is a 502 when it is streamed past the limit.
    pub fn max_json_body_bytes(mut self, limit: u64) -> Self {
        self.max_json_body_bytes = limit;
        self
    }

    /// Refuses JSON nested deeper than `depth` arrays and objects (default 64, at most 128,
    /// serde_json's own recursion limit): a request body is answered 400, a response body passes
    /// untouched. Checked by a byte scan before anything recurses.
    pub fn max_json_depth(mut self, depth: usize) -> Self {
        self.max_json_depth = depth.clamp(1, MAX_JSON_DEPTH_LIMIT);
        self
    }

    /// Checks every rule and parses every template.
    pub fn build(self) -> Result<TransformLayer, TransformError> {
        let mut shared = Shared {
            templates: Vec::new(),
            header_templates: Vec::new(),
            early_header_templates: false,
            uri: None,
            method: self.method.clone(),
            req_headers: Vec::new(),
            req_query: Ops::default(),
            req_body: Ops::default(),
            res_headers: Vec::new(),
            res_json: Ops::default(),
            max_body_bytes: self.max_body_bytes,
            max_json_body_bytes: self.max_json_body_bytes.min(self.max_body_bytes),
            max_json_depth: self.max_json_depth,
            headers_only: false,
            form_to_query: self
                .method
                .as_ref()
                .is_some_and(|m| [Method::GET, Method::HEAD, Method::TRACE].contains(m)),
        };
        if let Some(uri) = &self.uri {
            let error = |kind| TransformError { location: "replace.uri".into(), kind };
            let template = Template::parse(uri).map_err(|e| error(e.into()))?;
            // Its own text is trusted but must not climb either (values are checked per request).
            if crate::http_rules::has_dot_segment(&template.sample()) {
                return Err(error(TransformErrorKind::DotSegment(uri.clone())));
            }
            shared.uri = Some(template);
        }
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut location = |key: String| {
            let n = match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((key.clone(), 0));
                    0
                }
            };
            format!("{key}[{n}]")
        };
        let (mut req_headers, mut res_headers) = (Ops::default(), Ops::default());
        for (action, part, entry) in &self.request {
            let key = match part {
                RequestPart::Headers => "headers",
                RequestPart::Querystring => "querystring",
                RequestPart::Body => "body",
            };
            let at = location(format!("{}.{key}", label(*action)));
            shared
                .request_rule(&mut req_headers, *action, *part, entry)
                .map_err(|kind| TransformError { location: at, kind })?;
        }
        for (action, part, entry, ty) in &self.response {
            let key = match part {
                ResponsePart::Headers => "headers",
                ResponsePart::Json => "json",
            };
            let at = location(format!("{}.{key}", label(*action)));
            shared
                .response_rule(&mut res_headers, *action, *part, entry, *ty)
                .map_err(|kind| TransformError { location: at, kind })?;
        }
        shared.mark_early_header_templates(&req_headers);
        shared.req_headers = req_headers.compile();
        shared.res_headers = res_headers.compile();
        shared.headers_only = shared.uri.is_none()
            && shared.method.is_none()
            && shared.req_query.is_empty()
            && shared.req_body.is_empty();
        Ok(TransformLayer { shared: Arc::new(shared) })
    }
}

impl Shared {
    fn request_rule(
        &mut self,
        headers: &mut Ops<HeaderName, HeaderVal>,
        action: Action,
        part: RequestPart,
        entry: &str,
    ) -> Result<(), TransformErrorKind> {
        match action {
            Action::Remove => {
                let name = entry.split(':').next().unwrap_or(entry);
                match part {
                    RequestPart::Headers => headers.remove.push(rules::header_name(name)?),
                    RequestPart::Querystring => self.req_query.remove.push(name.to_owned()),
                    RequestPart::Body => self.req_body.remove.push(name.to_owned()),
                }
            }
            Action::Rename => {
                let (old, new) = rules::split_entry(entry)?;
                match part {
                    RequestPart::Headers => {
                        headers.rename.push((rules::header_name(old)?, rules::settable_header(new, None)?))
                    }
                    RequestPart::Querystring => self.req_query.rename.push((old.to_owned(), new.to_owned())),
                    RequestPart::Body => self.req_body.rename.push((old.to_owned(), new.to_owned())),
                }
            }
            Action::Replace | Action::Add | Action::Append => {
                let (name, value) = rules::split_entry(entry)?;
                let template = Template::parse(value)?;
                match part {
                    RequestPart::Headers => {
                        let header = rules::settable_header(name, Some(&template))?;
                        let value = self.header_value(template)?;
                        headers.push_value(action, header, value);
                    }
                    RequestPart::Querystring => {
                        let value = self.text_value(template);
                        self.req_query.push_value(action, name.to_owned(), value);
                    }
                    RequestPart::Body => {
                        let value = self.text_value(template);
                        self.req_body.push_value(action, name.to_owned(), value);
                    }
                }
            }
        }
        Ok(())
    }

    fn response_rule(
        &mut self,
        headers: &mut Ops<HeaderName, HeaderVal>,
        action: Action,
        part: ResponsePart,
        entry: &str,
        ty: JsonType,
    ) -> Result<(), TransformErrorKind> {
        match action {
            Action::Remove => {
                let name = entry.split(':').next().unwrap_or(entry);
                match part {
                    ResponsePart::Headers => headers.remove.push(rules::header_name(name)?),
                    ResponsePart::Json => self.res_json.remove.push(name.to_owned()),
                }
            }
            Action::Rename => {
                let (old, new) = rules::split_entry(entry)?;
                match part {
                    ResponsePart::Headers => {
                        headers.rename.push((rules::header_name(old)?, rules::settable_header(new, None)?))
                    }
                    ResponsePart::Json => self.res_json.rename.push((old.to_owned(), new.to_owned())),
                }
            }
            Action::Replace | Action::Add | Action::Append => {
                let (name, value) = rules::split_entry(entry)?;
                if !Template::parse(value)?.is_literal() {
                    return Err(TransformErrorKind::ResponseTemplate(value.to_owned()));
                }
                match part {
                    ResponsePart::Headers => {
                        let header = rules::settable_header(name, None)?;
                        let value = self.header_value(Template::parse(value)?)?;
                        headers.push_value(action, header, value);
                    }
                    ResponsePart::Json if value.is_empty() => {}
                    ResponsePart::Json => {
                        self.res_json.push_value(action, name.to_owned(), rules::typed_json(value, ty)?);
                    }
                }
            }
        }
        Ok(())
    }

    fn text_value(&mut self, template: Template) -> Val<String> {
        if template.is_literal() {
            return Val::Literal(template.text());
        }
        self.templates.push(template);
        Val::Slot(self.templates.len() - 1)
    }

    fn header_value(&mut self, template: Template) -> Result<HeaderVal, TransformErrorKind> {
        if !template.is_literal() {
            self.header_templates.push(HeaderTemplate { template, early: false });
            return Ok(HeaderVal::Template(self.header_templates.len() - 1));
        }
        let text = template.text();
        if text.is_empty() {
            return Ok(HeaderVal::Literal(None));
        }
        rules::literal_value(&text).map(|v| HeaderVal::Literal(Some(v)))
    }

    /// Templates must see the request as it arrived: one reading a header that some request
    /// header rule changes is rendered before the rules run; the others read nothing a header
    /// rule changes, so they render when (and only if) their rule needs them.
    fn mark_early_header_templates(&mut self, ops: &Ops<HeaderName, HeaderVal>) {
        let touched: Vec<&HeaderName> = (ops.remove.iter())
            .chain(ops.rename.iter().flat_map(|(old, new)| [old, new]))
            .chain([&ops.replace, &ops.add, &ops.append].into_iter().flatten().map(|(name, _)| name))
            .collect();
        for t in &mut self.header_templates {
            t.early = t.template.reads_any_header(&touched);
        }
        self.early_header_templates = self.header_templates.iter().any(|t| t.early);
    }
}

// === impl TransformLayer ===

impl TransformLayer {
    /// Starts a layer with no rules.
    pub fn builder() -> TransformBuilder {
        TransformBuilder::default()
    }
}

impl<S> Layer<S> for TransformLayer {
    type Service = Transform<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Transform { inner, shared: self.shared.clone() }
    }
}

/// The service made by [`TransformLayer`].
#[derive(Debug, Clone)]
pub struct Transform<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Which body rules apply to this request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

impl<S> Transform<S> {
    /// Applies uri, method, header and querystring rules (the querystring ones only when
    /// `defer_query` is false: they then wait for a form body to merge); returns the rendered
    /// templates (the body rules still need them) or the rejection.
    /// Applies the request's header rules.
    #[inline]
    fn rewrite_headers<B>(&self, req: &mut Request<B>) {
        let shared = &*self.shared;
        // Out of the request for the rules' run, so templates can read the extensions.
        let mut headers = std::mem::take(req.headers_mut());
        let mut early: Vec<Option<HeaderValue>> = if shared.early_header_templates {
            let env = Env { headers: &headers, query: req.uri().query(), extensions: req.extensions() };
            let render = |t: &HeaderTemplate| if t.early { t.template.render_header(&env) } else { None };
            shared.header_templates.iter().map(render).collect()
        } else {
            Vec::new()
        };
        let mut env = HeaderEnv {
            templates: &shared.header_templates,
            query: req.uri().query(),
            extensions: req.extensions(),
            early: &mut early,
        };
        rules::apply_headers(&shared.req_headers, &mut headers, &mut env);
        *req.headers_mut() = headers;
    }

    fn rewrite<B>(&self, req: &mut Request<B>, defer_query: bool) -> Result<Vec<String>, Rejection> {
        let shared = &*self.shared;
        let rendered: Vec<String> = if shared.templates.is_empty() {
            Vec::new()
        } else {
            let env = Env { headers: req.headers(), query: req.uri().query(), extensions: req.extensions() };
            shared.templates.iter().map(|t| t.render(&env)).collect()
        };
        let new_path = match &shared.uri {
            Some(template) => {
                let env =
                    Env { headers: req.headers(), query: req.uri().query(), extensions: req.extensions() };
                upstream_path(template, &env)?
            }
            None => None,
        };
        if let Some(method) = &shared.method {
            *req.method_mut() = method.clone();
        }
        if !shared.req_headers.is_empty() {
            self.rewrite_headers(req);
        }
        let new_query = if shared.req_query.is_empty() || defer_query {
            None
        } else {
            let mut pairs = Pairs::parse(req.uri().query().unwrap_or(""));
            rules::apply_pairs(&shared.req_query, &mut pairs, &rendered);
            pairs.changed().then(|| pairs.encode())
        };
        if new_path.is_some() || new_query.is_some() {
            let path = new_path.as_deref().unwrap_or(req.uri().path());
            let query = new_query.as_deref().or(req.uri().query());
            *req.uri_mut() = with_path_and_query(req.uri(), path, query)?;
            #[cfg(feature = "proxy")]
            if let Some(path) = new_path {
                req.extensions_mut().insert(crate::ext::UpstreamPath(path));
            }
        }
        Ok(rendered)
    }
}

/// `uri` with its path and query replaced (an empty query is dropped).
fn with_path_and_query(uri: &Uri, path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
    let pq = match query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|_| Rejection::bad_request("invalid rewritten URI"))?);
    Uri::from_parts(parts).map_err(|_| Rejection::bad_request("invalid rewritten URI"))
}

/// The rendered `replace.uri` ([`Template::render_path`]; `None` when it renders empty): a
/// leading `/`, then characters a path cannot hold percent-encoded (only the template's own text
/// can have any). Never decoded again, so a value's `%2F` stays inside its segment; a result
/// that still holds a dot segment (`/a/.$(x)` with `x` empty) is answered 400 like a value that is one.
fn upstream_path(template: &Template, env: &Env<'_>) -> Result<Option<String>, Rejection> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let dot_segment = || Rejection::bad_request("rewritten path: a '.' or '..' segment");
    let rendered = template.render_path(env).map_err(|_| dot_segment())?;
    if rendered.is_empty() {
        return Ok(None);
    }
    let mut path = String::with_capacity(rendered.len() + 1);
    if !rendered.starts_with('/') {
        path.push('/');
    }
    let bytes = rendered.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let escape =
            b == b'%' && bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) || escape;
        if keep {
            path.push(char::from(b));
        } else {
            path.push('%');
            path.push(char::from(HEX[usize::from(b >> 4)]));
            path.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    if crate::http_rules::has_dot_segment(&path) {
        return Err(dot_segment());
    }
    Ok(Some(path))
}

impl<S> Transform<S> {
    /// What the response side needs, `None` when it has nothing to do (the common header-only
    /// request transform: no `Arc` clone, a smaller future).
    #[inline]
    fn after<B>(&self, req: &Request<B>) -> Option<After> {
        let shared = &self.shared;
        if shared.res_headers.is_empty() && shared.res_json.is_empty() {
            return None;
        }
        // The id is needed only to answer a response body that fails to read.
        let request_id =
            if shared.res_json.is_empty() { None } else { req.extensions().get::<RequestId>().cloned() };
        Some(After { shared: self.shared.clone(), request_id, head: req.method() == Method::HEAD })
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Transform<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: http_body::Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Small enough to inline, so the request is not copied on its way through; the rest of
    // the work is out of line.
    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if !self.shared.headers_only {
            return self.call_with_body_or_uri(req);
        }
        // The common case (and no rule at all): no template list, no URI, no body.
        if !self.shared.req_headers.is_empty() {
            self.rewrite_headers(&mut req);
        }
        let after = self.after(&req);
        ResponseFuture::inner(self.inner.call(req), after)
    }
}

impl<S> Transform<S> {
    /// `call` for rules beyond headers: URI, method, querystring, body.
    #[inline(never)]
    fn call_with_body_or_uri<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        ReqBody: http_body::Body<Data = Bytes> + From<Bytes>,
        ReqBody::Error: Into<BoxError>,
        ResBody: http_body::Body<Data = Bytes> + From<Bytes>,
    {
        let shared = &*self.shared;
        // Kong reads the body's type from the request as it arrived.
        let content_type = if shared.req_body.is_empty() && !shared.form_to_query {
            None
        } else {
            req.headers().get(CONTENT_TYPE)
        };
        let body_kind = if shared.req_body.is_empty() {
            None
        } else if rules::is_json(content_type) {
            Some(BodyKind::Json)
        } else if rules::is_form(content_type) {
            Some(BodyKind::Form)
        } else {
            None
        };
        // Kong: a method changed to GET, HEAD or TRACE takes a form body's fields into the query.
        let form_to_query = shared.form_to_query && rules::is_form(content_type);
        let rendered = match self.rewrite(&mut req, form_to_query) {
            Ok(rendered) => rendered,
            Err(rejection) => {
                return ResponseFuture::rejected(
                    rejection.into_response(req.extensions().get::<RequestId>()),
                );
            }
        };
        if body_kind.is_none() && !form_to_query {
            let after = self.after(&req);
            return ResponseFuture::inner(self.inner.call(req), after);
        }
        let head = req.method() == Method::HEAD;
        // A JSON rule parses what it reads: the smaller JSON budget applies.
        let limit = match body_kind {
            Some(BodyKind::Json) => shared.max_json_body_bytes,
            _ => shared.max_body_bytes,
        };
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            let id = req.extensions().get::<RequestId>();
            return ResponseFuture::rejected(Rejection::payload_too_large().into_response(id));
        }
        // The clone that was driven ready goes with the request; this one waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let request_id = req.extensions().get::<RequestId>().cloned();
        let (parts, body) = req.into_parts();
        let read = ReadRequest {
            body,
            parts: Some(parts),
            inner: Some(inner),
            buf: Vec::new(),
            limit,
            rendered,
            kind: body_kind,
            form_to_query,
            shared: self.shared.clone(),
            request_id,
            head,
        };
        ResponseFuture { state: State::ReadRequest { read: Box::pin(read) } }
    }
}

/// What the response side needs once the inner service answers.
struct After {
    shared: Arc<Shared>,
    request_id: Option<RequestId>,
    // A HEAD answer has no body to rewrite (and its Content-Length describes the GET's).
    head: bool,
}

pin_project! {
    /// A request body being read for the body rules (boxed in the future: rare and large).
    struct ReadRequest<S, ReqBody> {
        #[pin]
        body: ReqBody,
        parts: Option<http::request::Parts>,
        inner: Option<S>,
        buf: Vec<u8>,
        // Reading stops here (413): nothing past it is buffered.
        limit: u64,
        rendered: Vec<String>,
        kind: Option<BodyKind>,
        form_to_query: bool,
        shared: Arc<Shared>,
        request_id: Option<RequestId>,
        head: bool,
    }
}

pin_project! {
    /// A JSON response body being read for the `json` rules.
    struct ReadResponse<ResBody> {
        #[pin]
        body: ResBody,
        parts: Option<http::response::Parts>,
        buf: Vec<u8>,
        shared: Arc<Shared>,
        request_id: Option<RequestId>,
    }
}

pin_project! {
    /// Response future of [`Transform`].
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        Rejected { response: Option<Response<ResBody>> },
        ReadRequest { read: Pin<Box<ReadRequest<S, ReqBody>>> },
        Inner { #[pin] future: S::Future, after: Option<After> },
        ReadResponse { read: Pin<Box<ReadResponse<ResBody>>> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    fn inner(future: S::Future, after: Option<After>) -> Self {
        Self { state: State::Inner { future, after } }
    }

    fn rejected(response: Response<ResBody>) -> Self {
        Self { state: State::Rejected { response: Some(response) } }
    }
}

impl<S, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Why a body could not be read whole.
enum ReadError {
    /// Over the layer's limit.
    TooLarge,
    /// The body failed: with the client's answer when the client caused it (over the body's own
    /// limit, stopped sending).
    Failed(Option<Rejection>),
}

/// Reads `body` into `buf`, failing once it passes `limit`; `client_part` tells the client's
/// answer for a body error the client caused.
fn poll_read<B>(
    mut body: Pin<&mut B>,
    buf: &mut Vec<u8>,
    limit: u64,
    client_part: impl Fn(B::Error) -> Option<Rejection>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ReadError>>
where
    B: http_body::Body<Data = Bytes>,
{
    loop {
        match ready!(body.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Ok(())),
            Some(Err(e)) => {
                return Poll::Ready(Err(ReadError::Failed(client_part(e))));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > limit {
                        return Poll::Ready(Err(ReadError::TooLarge));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The client's answer for a request-body error the client caused (413, 408).
fn client_part(error: impl Into<BoxError>) -> Option<Rejection> {
    crate::body::client_body_failure(&*error.into())
}

fn set_length(headers: &mut http::HeaderMap, len: usize) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

/// Kong's `http_method` change to GET/HEAD/TRACE: the form body's fields are added to the query
/// (after the fields already there), then the querystring rules run on the result. The body
/// itself is left as it is.
fn merge_form_into_query(
    shared: &Shared,
    uri: &Uri,
    body: &[u8],
    rendered: &[String],
) -> Result<Option<Uri>, Rejection> {
    let body = String::from_utf8_lossy(body);
    let mut pairs = Pairs::parse(uri.query().unwrap_or(""));
    pairs.extend_form(&body);
    rules::apply_pairs(&shared.req_query, &mut pairs, rendered);
    if !pairs.changed() {
        return Ok(None);
    }
    with_path_and_query(uri, uri.path(), Some(&pairs.encode())).map(Some)
}

/// Whether a response to this request can have a body the `json` rules may rewrite.
fn has_body(status: http::StatusCode, head: bool) -> bool {
    !(head
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED)
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        // The common case, small enough to inline: the inner service's answer with no response
        // rule to apply.
        if let StateProj::Inner { future, after: None } = state.as_mut().project() {
            return future.poll(cx);
        }
        poll_state(state, cx)
    }
}

/// [`ResponseFuture`]'s states, past the common case.
#[inline(never)]
fn poll_state<S, ReqBody, ResBody>(
    mut state: Pin<&mut State<S, ReqBody, ResBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + From<Bytes>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Rejected { response } => {
                return match response.take() {
                    Some(response) => Poll::Ready(Ok(response)),
                    None => Poll::Pending,
                };
            }
            StateProj::ReadRequest { read } => {
                let read = read.as_mut().project();
                let shared = &**read.shared;
                let rejection = match ready!(poll_read(read.body, read.buf, *read.limit, client_part, cx)) {
                    Ok(()) => None,
                    Err(ReadError::TooLarge) => Some(Rejection::payload_too_large()),
                    Err(ReadError::Failed(rejection)) => Some(
                        rejection
                            .unwrap_or_else(|| Rejection::bad_request("failed to read the request body")),
                    ),
                };
                if let Some(rejection) = rejection {
                    let response = rejection.into_response(read.request_id.as_ref());
                    state.set(State::Rejected { response: Some(response) });
                    continue;
                }
                let (Some(mut parts), Some(mut inner)) = (read.parts.take(), read.inner.take()) else {
                    return Poll::Pending;
                };
                let original = std::mem::take(read.buf);
                if *read.form_to_query {
                    match merge_form_into_query(shared, &parts.uri, &original, read.rendered) {
                        Ok(Some(uri)) => parts.uri = uri,
                        Ok(None) => {}
                        Err(rejection) => {
                            let response = rejection.into_response(read.request_id.as_ref());
                            state.set(State::Rejected { response: Some(response) });
                            continue;
                        }
                    }
                }
                // A rule that must read the body and cannot is not skipped: refused.
                if *read.kind == Some(BodyKind::Json) && json_deeper_than(&original, shared.max_json_depth) {
                    let message = format!("JSON body nested deeper than {} levels", shared.max_json_depth);
                    let response = Rejection::bad_request(message).into_response(read.request_id.as_ref());
                    state.set(State::Rejected { response: Some(response) });
                    continue;
                }
                let rendered = &*read.rendered;
                let rewritten = match read.kind {
                    None => None,
                    Some(BodyKind::Json) => {
                        rules::apply_json(&shared.req_body, &original, |v: &Val<String>| {
                            v.text(rendered).map(|t| serde_json::Value::String(t.to_owned()))
                        })
                    }
                    Some(BodyKind::Form) => {
                        let text = String::from_utf8_lossy(&original);
                        let mut pairs = Pairs::parse(&text);
                        rules::apply_pairs(&shared.req_body, &mut pairs, rendered);
                        pairs.changed().then(|| pairs.encode().into_bytes())
                    }
                };
                let body = Bytes::from(rewritten.unwrap_or(original));
                set_length(&mut parts.headers, body.len());
                let response_side = !(shared.res_headers.is_empty() && shared.res_json.is_empty());
                let after = response_side.then(|| After {
                    shared: read.shared.clone(),
                    request_id: read.request_id.take(),
                    head: *read.head,
                });
                let future = inner.call(Request::from_parts(parts, ReqBody::from(body)));
                state.set(State::Inner { future, after });
            }
            StateProj::Inner { future, after } => {
                let mut response = ready!(future.poll(cx))?;
                let Some(after) = after.take() else { return Poll::Ready(Ok(response)) };
                let shared = &*after.shared;
                if !shared.res_headers.is_empty() {
                    // Response values are literal: no template to render.
                    let none = http::Extensions::new();
                    let mut env =
                        HeaderEnv { templates: &[], query: None, extensions: &none, early: &mut [] };
                    rules::apply_headers(&shared.res_headers, response.headers_mut(), &mut env);
                }
                let wants_body = !shared.res_json.is_empty()
                    && has_body(response.status(), after.head)
                    && rules::is_json(response.headers().get(CONTENT_TYPE));
                if !wants_body {
                    return Poll::Ready(Ok(response));
                }
                let declared =
                    response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if declared.is_some_and(|len| len > shared.max_json_body_bytes) {
                    return Poll::Ready(Ok(response));
                }
                let (parts, body) = response.into_parts();
                let read = ReadResponse {
                    body,
                    parts: Some(parts),
                    buf: Vec::new(),
                    shared: after.shared,
                    request_id: after.request_id,
                };
                state.set(State::ReadResponse { read: Box::pin(read) });
            }
            StateProj::ReadResponse { read } => {
                let read = read.as_mut().project();
                let shared = &**read.shared;
                let result = ready!(poll_read(read.body, read.buf, shared.max_json_body_bytes, |_| None, cx));
                if let Err(e) = result {
                    let message = match e {
                        ReadError::TooLarge => "upstream response body over the transform limit",
                        ReadError::Failed(_) => "upstream response body failed",
                    };
                    let response = Rejection::bad_gateway(message).into_response(read.request_id.as_ref());
                    state.set(State::Rejected { response: Some(response) });
                    continue;
                }
                let Some(mut parts) = read.parts.take() else { return Poll::Pending };
                let original = std::mem::take(read.buf);
                // Unlike a request (Kong adds fields to an empty one), an empty response body
                // stays empty: there is no object to change.
                let empty = original.iter().all(u8::is_ascii_whitespace);
                // Too deep to parse: the upstream's answer goes back as it came.
                let rewritten = if empty || json_deeper_than(&original, shared.max_json_depth) {
                    None
                } else {
                    rules::apply_json(&shared.res_json, &original, |v| Some(v.clone()))
                };
                let body = Bytes::from(rewritten.unwrap_or(original));
                set_length(&mut parts.headers, body.len());
                return Poll::Ready(Ok(Response::from_parts(parts, ResBody::from(body))));
            }
        }
    }
}

#[cfg(test)]
mod tests;
