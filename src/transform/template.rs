//! `$(...)` templates: parsed once when the layer is built, rendered per request against the
//! request as it arrived (before any rule of the layer changed it).

use std::borrow::Cow;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, HeaderValue};

use crate::client_ip::{ClientIp, PeerAddr};
use crate::consumer::Consumer;
use crate::ext::RequestId;
use crate::ext::RouteMatch;

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `$(` without its closing `)`.
    #[error("unclosed `$(` in template `{0}`")]
    Unclosed(String),
    /// An expression that is not one of the supported ones.
    #[error(
        "unknown template expression `{0}`; expected uri_captures.NAME, headers.NAME, query_params.NAME, consumer.id, consumer.username, consumer.custom_id, route.name, service.name, request_id, client_ip or a quoted string, joined by `or`"
    )]
    Unknown(String),
}

/// A value read from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Capture(Arc<str>),
    CaptureIndex(usize),
    Header(HeaderName),
    Query(String),
    ConsumerId,
    ConsumerUsername,
    ConsumerCustomId,
    RouteName,
    ServiceName,
    RequestId,
    ClientIp,
}

/// One alternative of `a or b or 'default'`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Source(Source),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Expr(Vec<Alt>),
}

/// A parsed template: literal text and `$(...)` expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// What a template reads: the original request's headers, query and extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
    pub(crate) extensions: &'a Extensions,
}

impl Template {
    /// Parses `text`; `$` not followed by `(` is literal.
    pub(crate) fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("$(") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let body = &rest[start + 2..];
            let end = closing_paren(body).ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            pieces.push(Piece::Expr(parse_expr(&body[..end])?));
            rest = &body[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self { pieces })
    }

    /// Whether the template has no expression (its text is its value).
    pub(crate) fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// The literal text (only meaningful when [`is_literal`](Self::is_literal)).
    pub(crate) fn text(&self) -> String {
        self.pieces.iter().map(|p| if let Piece::Text(t) = p { t.as_str() } else { "" }).collect()
    }

    /// `Some(source)` when the template is exactly one expression reading exactly `source`.
    pub(crate) fn only_source(&self) -> Option<&Source> {
        match self.pieces.as_slice() {
            [Piece::Expr(alts)] => match alts.as_slice() {
                [Alt::Source(source)] => Some(source),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the template reads any of `names` (a header that rules may change).
    pub(crate) fn reads_any_header(&self, names: &[&HeaderName]) -> bool {
        self.pieces.iter().any(|piece| match piece {
            Piece::Text(_) => false,
            Piece::Expr(alts) => alts
                .iter()
                .any(|alt| matches!(alt, Alt::Source(Source::Header(name)) if names.contains(&name))),
        })
    }

    /// Renders against `env` as a header value: exactly `render` then a header value of its
    /// text, `None` when that is empty or not a valid header value. A template that is one
    /// expression whose value is one request header, or the request id, shares that value's
    /// bytes instead of copying them through a `String`.
    #[inline]
    pub(crate) fn render_header(&self, env: &Env<'_>) -> Option<HeaderValue> {
        let [Piece::Expr(alts)] = self.pieces.as_slice() else {
            return text_header(&self.render(env));
        };
        for alt in alts {
            match alt {
                Alt::Literal(text) => return text_header(text),
                Alt::Source(Source::Header(name)) => {
                    let mut values = env.headers.get_all(name).iter();
                    match (values.next(), values.next()) {
                        (None, _) => continue,
                        (Some(lone), None) if lone.to_str().is_ok() => return shared_header(lone),
                        // Several values, or one that is not text: `source.read` joins the
                        // text ones (as `render` does).
                        _ => {}
                    }
                }
                Alt::Source(Source::RequestId) => {
                    let Some(id) = env.extensions.get::<RequestId>() else { continue };
                    // Always visible ASCII (generated, static, or checked by `RequestId::parse`).
                    return shared_header(id.header_value());
                }
                Alt::Source(_) => {}
            }
            if let Alt::Source(source) = alt {
                if let Some(value) = source.read(env) {
                    return text_header(&value);
                }
            }
        }
        None
    }

    /// Renders against `env`; an expression that finds nothing renders as the empty string.
    pub(crate) fn render(&self, env: &Env<'_>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Expr(alts) => {
                    if let Some(value) = first_value(alts, env) {
                        out.push_str(value.text());
                    }
                }
            }
        }
        out
    }

    /// Renders a path template (`replace.uri`): the template's own text (literal pieces and
    /// quoted defaults) as configured, each value read from the request as exactly one path
    /// segment — every byte but an unreserved character or `!$&'()*+,=:@` percent-encoded, `/`,
    /// `\`, `%`, `;`, `?` and `#` included. A value that is, or holds between `/` or `\` (or
    /// their escapes `%2F`, `%5C`), a `.` or `..` segment (`%2e` and `;` forms too) is refused.
    pub(crate) fn render_path(&self, env: &Env<'_>) -> Result<String, DotSegmentValue> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Expr(alts) => match first_value(alts, env) {
                    Some(Value::Config(text)) => out.push_str(text),
                    Some(Value::Request(value)) => push_segment(&mut out, &value)?,
                    None => {}
                },
            }
        }
        Ok(out)
    }

    /// The template with every expression replaced by `x`: what its own text looks like as a
    /// path, for checks at build time.
    pub(crate) fn sample(&self) -> String {
        self.pieces.iter().map(|p| if let Piece::Text(t) = p { t.as_str() } else { "x" }).collect()
    }
}

/// A request value in a path template that is or holds a `.` or `..` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DotSegmentValue;

/// The value of `a or b or 'default'`: the template's own text, or one read from the request.
enum Value<'a> {
    Config(&'a str),
    Request(Cow<'a, str>),
}

impl Value<'_> {
    fn text(&self) -> &str {
        match self {
            Value::Config(text) => text,
            Value::Request(value) => value,
        }
    }
}

/// The first alternative that has a value.
fn first_value<'a>(alts: &'a [Alt], env: &Env<'a>) -> Option<Value<'a>> {
    alts.iter().find_map(|alt| match alt {
        Alt::Literal(text) => Some(Value::Config(text)),
        Alt::Source(source) => source.read(env).map(Value::Request),
    })
}

/// Appends `value` as one path segment (see [`Template::render_path`]).
fn push_segment(out: &mut String, value: &str) -> Result<(), DotSegmentValue> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Split on `%2F` and `%5C` too: a header value is not decoded, and an upstream may decode twice.
    if crate::http_rules::has_dot_segment(value) {
        return Err(DotSegmentValue);
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Ok(())
}

/// A rendered text as a header value; `None` when empty or invalid.
fn text_header(text: &str) -> Option<HeaderValue> {
    if text.is_empty() { None } else { HeaderValue::from_str(text).ok() }
}

/// A copy of a request's header value (bytes shared), as a value built from text would be:
/// `None` when empty, never marked sensitive.
fn shared_header(value: &HeaderValue) -> Option<HeaderValue> {
    if value.is_empty() {
        return None;
    }
    let mut value = value.clone();
    value.set_sensitive(false);
    Some(value)
}

/// The index of the `)` closing an expression, skipping quoted strings.
fn closing_paren(body: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ')') => return Some(i),
            _ => {}
        }
    }
    None
}

/// `a or b or 'default'`.
fn parse_expr(expr: &str) -> Result<Vec<Alt>, TemplateError> {
    let unknown = || TemplateError::Unknown(expr.trim().to_owned());
    let mut alts = Vec::new();
    let mut rest = expr.trim();
    loop {
        let (alt, after) = parse_alt(rest).ok_or_else(unknown)?;
        alts.push(alt);
        let after = after.trim_start();
        if after.is_empty() {
            return Ok(alts);
        }
        let next =
            after.strip_prefix("or").filter(|r| r.starts_with(char::is_whitespace)).ok_or_else(unknown)?;
        rest = next.trim_start();
    }
}

/// One alternative and what follows it.
fn parse_alt(s: &str) -> Option<(Alt, &str)> {
    if let Some(q) = s.chars().next().filter(|c| matches!(c, '\'' | '"')) {
        let end = s[1..].find(q)? + 1;
        return Some((Alt::Literal(s[1..end].to_owned()), &s[end + 1..]));
    }
    let ident_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let (ident, rest) = s.split_at(ident_end);
    let (key, rest) = if let Some(r) = rest.strip_prefix('.') {
        // Dotted keys may contain `-` (`headers.x-name`), unlike Lua.
        let end = r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(r.len());
        (Some(Key::Name(&r[..end])), &r[end..])
    } else if let Some(r) = rest.strip_prefix('[') {
        let close = r.find(']')?;
        let inner = r[..close].trim();
        let key = match inner.chars().next() {
            Some(q @ ('\'' | '"')) if inner.len() >= 2 && inner.ends_with(q) => {
                Key::Name(&inner[1..inner.len() - 1])
            }
            _ => Key::Index(inner.parse().ok()?),
        };
        (Some(key), &r[close + 1..])
    } else {
        (None, rest)
    };
    let source = match (ident, key) {
        ("uri_captures", Some(Key::Name(n))) if !n.is_empty() => Source::Capture(n.into()),
        ("uri_captures", Some(Key::Index(i))) => Source::CaptureIndex(i),
        ("headers", Some(Key::Name(n))) => Source::Header(HeaderName::from_bytes(n.as_bytes()).ok()?),
        ("query_params", Some(Key::Name(n))) if !n.is_empty() => Source::Query(n.to_owned()),
        ("consumer", Some(Key::Name("id"))) => Source::ConsumerId,
        ("consumer", Some(Key::Name("username"))) => Source::ConsumerUsername,
        ("consumer", Some(Key::Name("custom_id"))) => Source::ConsumerCustomId,
        ("route", Some(Key::Name("name"))) => Source::RouteName,
        ("service", Some(Key::Name("name"))) => Source::ServiceName,
        ("request_id", None) => Source::RequestId,
        ("client_ip", None) => Source::ClientIp,
        _ => return None,
    };
    Some((Alt::Source(source), rest))
}

enum Key<'a> {
    Name(&'a str),
    Index(usize),
}

impl Source {
    /// The value in `env`, `None` when the request has none.
    fn read<'a>(&self, env: &Env<'a>) -> Option<Cow<'a, str>> {
        let ext = env.extensions;
        let route = || ext.get::<RouteMatch>();
        let consumer = || ext.get::<Consumer>();
        match self {
            Source::Capture(name) => route()?.captures.get(name).map(Cow::Borrowed),
            Source::CaptureIndex(i) => {
                route()?.captures.positional.get(*i).map(|v| Cow::Borrowed(v.as_str()))
            }
            Source::Header(name) => {
                let mut values = env.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                let first = values.next()?;
                // Repeated fields read as one, the way HTTP combines them.
                match values.next() {
                    None => Some(Cow::Borrowed(first)),
                    Some(second) => {
                        let mut joined = format!("{first}, {second}");
                        for v in values {
                            joined.push_str(", ");
                            joined.push_str(v);
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
            Source::Query(name) => super::form::first_value(env.query?, name),
            Source::ConsumerId => Some(Cow::Borrowed(&*consumer()?.id)),
            Source::ConsumerUsername => consumer()?.username.as_deref().map(Cow::Borrowed),
            Source::ConsumerCustomId => consumer()?.custom_id.as_deref().map(Cow::Borrowed),
            Source::RouteName => route()?.route.name.as_deref().map(Cow::Borrowed),
            Source::ServiceName => route()?.route.service_name.as_deref().map(Cow::Borrowed),
            Source::RequestId => ext.get::<RequestId>().map(|id| Cow::Borrowed(id.as_str())),
            Source::ClientIp => ext
                .get::<ClientIp>()
                .map(|ip| ip.0)
                .or_else(|| ext.get::<PeerAddr>().map(|p| p.0.ip()))
                .map(|ip| Cow::Owned(ip.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, req: &http::Request<()>) -> String {
        let env = Env { headers: req.headers(), query: req.uri().query(), extensions: req.extensions() };
        Template::parse(text).unwrap().render(&env)
    }

    #[test]
    fn expressions_defaults_and_literals() {
        let mut req = http::Request::get("/v1/users/42?q=a%20b&q=2&flag")
            .header("x-name", "n1")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap();
        let captures = crate::ext::UriCaptures {
            named: vec![("id".into(), "42".into())],
            positional: vec!["/v1/users/42".into(), "42".into()],
        };
        let route = Arc::new(crate::ext::RouteInfo {
            name: Some("users-v1".into()),
            service_name: Some("users".into()),
            preserve_host: false,
        });
        req.extensions_mut().insert(RouteMatch { route, captures, strip_len: 0 });
        req.extensions_mut().insert(RequestId::from_static("rid-1"));
        req.extensions_mut().insert(ClientIp("203.0.113.7".parse().unwrap()));
        assert_eq!(render("/users/$(uri_captures.id)", &req), "/users/42");
        assert_eq!(render(r#"$(uri_captures["id"])-$(uri_captures[1])"#, &req), "42-42");
        assert_eq!(render("$(headers.x-name)|$(headers['x-name'])|$(headers.x-multi)", &req), "n1|n1|a, b");
        assert_eq!(render("$(query_params.q)|$(query_params.flag)|", &req), "a b||");
        assert_eq!(
            render("$(route.name)/$(service.name)/$(request_id)/$(client_ip)", &req),
            "users-v1/users/rid-1/203.0.113.7"
        );
        assert_eq!(render("$(consumer.id or 'anon')", &req), "anon");
        assert_eq!(render(r#"$(headers.x-none or query_params.none or "d)x")!"#, &req), "d)x!");
        assert_eq!(render("$(consumer.username)", &req), "");
        assert_eq!(render("cost: $5", &req), "cost: $5");
        req.extensions_mut().insert(Consumer {
            id: "c-1".into(),
            username: Some("alice".into()),
            ..Consumer::default()
        });
        assert_eq!(
            render("$(consumer.id):$(consumer.username):$(consumer.custom_id or '-')", &req),
            "c-1:alice:-"
        );
    }

    #[test]
    fn header_rendering_matches_text_rendering() {
        let mut req = http::Request::get("/?q=v")
            .header("x-name", "n1")
            .header("x-empty", "")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("x-bin", HeaderValue::from_bytes(b"\xff").unwrap())
            .header("x-mixed", HeaderValue::from_bytes(b"\xff").unwrap())
            .header("x-mixed", "ok")
            .body(())
            .unwrap();
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        req.headers_mut().insert("x-secret", secret);
        req.extensions_mut().insert(RequestId::from_static("rid-1"));
        let env = Env { headers: req.headers(), query: req.uri().query(), extensions: req.extensions() };
        for text in [
            "$(headers.x-name)",
            "$(headers.x-empty or 'd')",
            "$(headers.x-multi)",
            "$(headers.x-bin or 'd')",
            "$(headers.x-mixed)",
            "$(headers.x-none or headers.x-name)",
            "$(headers.x-none or '')",
            "$(headers.x-none)",
            "$(headers.x-secret)",
            "$(request_id)",
            "$(consumer.id or request_id)",
            "$(query_params.q)",
            "id=$(request_id)",
        ] {
            let template = Template::parse(text).unwrap();
            let rendered = template.render(&env);
            let expected = (!rendered.is_empty()).then(|| HeaderValue::from_str(&rendered).unwrap());
            let value = template.render_header(&env);
            assert_eq!(value, expected, "{text}");
            assert!(!value.is_some_and(|v| v.is_sensitive()), "{text}");
        }
    }

    #[test]
    fn unknown_expressions_are_errors() {
        for bad in [
            "$(nope)",
            "$(consumer.password)",
            "$(headers)",
            "$(uri_captures.id or)",
            "$(uri_captures.id and 'x')",
            "$(headers.bad name)",
            "$(os.execute('x'))",
        ] {
            assert!(matches!(Template::parse(bad), Err(TemplateError::Unknown(_))), "{bad}");
        }
        assert_eq!(
            Template::parse("/a/$(uri_captures.id"),
            Err(TemplateError::Unclosed("/a/$(uri_captures.id".into()))
        );
        assert!(Template::parse("plain").unwrap().is_literal());
        assert_eq!(Template::parse("$(consumer.id)").unwrap().only_source(), Some(&Source::ConsumerId));
    }
}
