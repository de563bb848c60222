//! Compiled rules and how each applies: headers, `name=value` lists and JSON objects, always in
//! Kong's order remove → rename → replace (only if present) → add (only if absent) → append.

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::form::Pairs;
use super::template::{Env, Source, Template};
use super::{Action, JsonType, TransformErrorKind};

/// A rule's value: literal, or the index of its template in the layer's rendered list.
#[derive(Debug, Clone)]
pub(crate) enum Val<L> {
    Literal(L),
    Slot(usize),
}

impl Val<String> {
    /// The value, `None` when it is empty (an empty value makes the rule do nothing, as in Kong).
    pub(crate) fn text<'a>(&'a self, rendered: &'a [String]) -> Option<&'a str> {
        let text = match self {
            Val::Literal(text) => text.as_str(),
            Val::Slot(i) => rendered.get(*i).map_or("", String::as_str),
        };
        (!text.is_empty()).then_some(text)
    }
}

/// A header rule's value.
#[derive(Debug, Clone)]
pub(crate) enum HeaderVal {
    /// Known when the layer was built (`None`: empty, the rule does nothing).
    Literal(Option<HeaderValue>),
    /// The index of its template in the layer's header templates.
    Template(usize),
}

/// A header template, and whether it must be rendered before any rule runs.
#[derive(Debug)]
pub(crate) struct HeaderTemplate {
    pub(crate) template: Template,
    /// It reads a header some rule changes, so it is rendered against the request as it arrived
    /// before the rules run; otherwise it is rendered when its rule runs (what it reads is then
    /// still as it arrived) and only if the rule needs it.
    pub(crate) early: bool,
}

/// What header templates read: the request's query and extensions (headers are read live),
/// and the values rendered early.
pub(crate) struct HeaderEnv<'a> {
    pub(crate) templates: &'a [HeaderTemplate],
    pub(crate) query: Option<&'a str>,
    pub(crate) extensions: &'a http::Extensions,
    pub(crate) early: &'a mut [Option<HeaderValue>],
}

impl HeaderVal {
    /// The value as a header; `None` when empty or not a valid header value.
    fn header(&self, headers: &HeaderMap, env: &mut HeaderEnv<'_>) -> Option<HeaderValue> {
        match self {
            HeaderVal::Literal(value) => value.clone(),
            HeaderVal::Template(i) => {
                let template = env.templates.get(*i)?;
                if template.early {
                    // Each template belongs to one rule: take it, no copy.
                    env.early.get_mut(*i)?.take()
                } else {
                    let live = Env { headers, query: env.query, extensions: env.extensions };
                    template.template.render_header(&live)
                }
            }
        }
    }
}

/// The five lists of one part (headers, querystring, body, json).
#[derive(Debug, Clone)]
pub(crate) struct Ops<N, V> {
    pub(crate) remove: Vec<N>,
    pub(crate) rename: Vec<(N, N)>,
    pub(crate) replace: Vec<(N, V)>,
    pub(crate) add: Vec<(N, V)>,
    pub(crate) append: Vec<(N, V)>,
}

impl<N, V> Default for Ops<N, V> {
    fn default() -> Self {
        Self {
            remove: Vec::new(),
            rename: Vec::new(),
            replace: Vec::new(),
            add: Vec::new(),
            append: Vec::new(),
        }
    }
}

impl<N, V> Ops<N, V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }

    pub(crate) fn push_value(&mut self, action: Action, name: N, value: V) {
        match action {
            Action::Replace => self.replace.push((name, value)),
            Action::Add => self.add.push((name, value)),
            Action::Append => self.append.push((name, value)),
            Action::Remove | Action::Rename => {}
        }
    }
}

/// Kong's `name:value` split: the name runs to the first `:`, then every `:` right after it is
/// skipped; the rest (colons included) is the value.
pub(crate) fn split_entry(entry: &str) -> Result<(&str, &str), TransformErrorKind> {
    match entry.split_once(':') {
        Some((name, value)) if !name.is_empty() => Ok((name, value.trim_start_matches(':'))),
        _ => Err(TransformErrorKind::Entry(entry.to_owned())),
    }
}

/// A header name a rule may set: not hop-by-hop, not framing (`Content-Length`, `Host`, which
/// the gateway computes), and not owned by the gateway — except an owned consumer header whose
/// value is exactly the verified consumer field it names (`X-Consumer-ID:$(consumer.id)`).
pub(crate) fn settable_header(
    name: &str,
    value: Option<&Template>,
) -> Result<HeaderName, TransformErrorKind> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| TransformErrorKind::HeaderName(name.to_owned()))?;
    let framing = header == http::header::CONTENT_LENGTH || header == http::header::HOST;
    if crate::sanitize::is_hop_by_hop(&header) || framing {
        return Err(TransformErrorKind::Forbidden(name.to_owned(), "hop-by-hop or framing"));
    }
    if crate::sanitize::is_owned_header(name) {
        let verified = match header.as_str() {
            "x-consumer-id" => Some(Source::ConsumerId),
            "x-consumer-username" => Some(Source::ConsumerUsername),
            "x-consumer-custom-id" => Some(Source::ConsumerCustomId),
            _ => None,
        };
        if verified.is_none() || value.and_then(Template::only_source) != verified.as_ref() {
            return Err(TransformErrorKind::Forbidden(name.to_owned(), "gateway-owned"));
        }
    }
    Ok(header)
}

pub(crate) fn header_name(name: &str) -> Result<HeaderName, TransformErrorKind> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| TransformErrorKind::HeaderName(name.to_owned()))
}

/// Headers: Kong's request-transformer and response-transformer semantics.
pub(crate) fn apply_headers(
    ops: &Ops<HeaderName, HeaderVal>,
    headers: &mut HeaderMap,
    env: &mut HeaderEnv<'_>,
) {
    for name in &ops.remove {
        headers.remove(name);
    }
    for (old, new) in &ops.rename {
        // One lookup of `old` takes every value out.
        let Entry::Occupied(present) = headers.entry(old) else { continue };
        let (_, mut values) = present.remove_entry_mult();
        let first = values.next();
        let rest: Vec<HeaderValue> = values.collect();
        if let Some(first) = first {
            // Kong: the renamed values replace any the new name had.
            headers.insert(new.clone(), first);
            for value in rest {
                headers.append(new.clone(), value);
            }
        }
    }
    // A literal goes through `entry`: one lookup for the presence test and the write. A
    // template is rendered first (it may read the map, which `entry` borrows), then `entry`:
    // the name is looked up once, not twice; the price is a rendering the rule may drop, rare
    // as `replace` targets present headers and `add` absent ones.
    for (name, value) in &ops.replace {
        let value = match value {
            HeaderVal::Literal(None) => continue,
            HeaderVal::Literal(Some(value)) => {
                if let Entry::Occupied(mut present) = headers.entry(name) {
                    present.insert(value.clone());
                }
                continue;
            }
            HeaderVal::Template(_) => match value.header(headers, env) {
                Some(value) => value,
                None => continue,
            },
        };
        if let Entry::Occupied(mut present) = headers.entry(name) {
            present.insert(value);
        }
    }
    for (name, value) in &ops.add {
        let value = match value {
            HeaderVal::Literal(None) => continue,
            HeaderVal::Literal(Some(value)) => {
                if let Entry::Vacant(absent) = headers.entry(name) {
                    absent.insert(value.clone());
                }
                continue;
            }
            HeaderVal::Template(_) => match value.header(headers, env) {
                Some(value) => value,
                None => continue,
            },
        };
        if let Entry::Vacant(absent) = headers.entry(name) {
            absent.insert(value);
        }
    }
    for (name, value) in &ops.append {
        if let Some(value) = value.header(headers, env) {
            headers.append(name.clone(), value);
        }
    }
}

/// Query strings and form bodies.
pub(crate) fn apply_pairs(ops: &Ops<String, Val<String>>, pairs: &mut Pairs<'_>, rendered: &[String]) {
    for name in &ops.remove {
        pairs.remove(name);
    }
    for (old, new) in &ops.rename {
        pairs.rename(old, new);
    }
    for (name, value) in &ops.replace {
        if let Some(value) = value.text(rendered) {
            pairs.replace(name, value);
        }
    }
    for (name, value) in &ops.add {
        if let Some(value) = value.text(rendered) {
            pairs.add(name, value);
        }
    }
    for (name, value) in &ops.append {
        if let Some(value) = value.text(rendered) {
            pairs.append(name, value);
        }
    }
}

/// A JSON body's top-level object with the rules applied, `None` when the body is not a JSON
/// object (it then passes through unchanged). An empty body counts as `{}`, so `add` and
/// `append` still apply (Kong).
pub(crate) fn apply_json<V>(
    ops: &Ops<String, V>,
    body: &[u8],
    value: impl Fn(&V) -> Option<Value>,
) -> Option<Vec<u8>> {
    let mut object = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => object,
            _ => return None,
        }
    };
    for name in &ops.remove {
        object.shift_remove(name);
    }
    for (old, new) in &ops.rename {
        if object.contains_key(old) {
            // Rebuilt so the renamed field keeps its place.
            object = object
                .into_iter()
                .filter(|(k, _)| k != new || new == old)
                .map(|(k, v)| if &k == old { (new.clone(), v) } else { (k, v) })
                .collect();
        }
    }
    for (name, v) in &ops.replace {
        if let (Some(slot), Some(v)) = (object.get_mut(name), value(v)) {
            *slot = v;
        }
    }
    for (name, v) in &ops.add {
        if !object.contains_key(name) {
            if let Some(v) = value(v) {
                object.insert(name.clone(), v);
            }
        }
    }
    for (name, v) in &ops.append {
        let Some(v) = value(v) else { continue };
        match object.get_mut(name) {
            Some(Value::Array(items)) => items.push(v),
            Some(Value::Null) | None => {
                object.insert(name.clone(), Value::Array(vec![v]));
            }
            Some(old) => *old = Value::Array(vec![old.take(), v]),
        }
    }
    serde_json::to_vec(&Value::Object(object)).ok()
}

/// A response `json` value, cast by its `json_types` entry (Kong: `boolean` is `value == "true"`).
pub(crate) fn typed_json(value: &str, ty: JsonType) -> Result<Value, TransformErrorKind> {
    Ok(match ty {
        JsonType::String => Value::String(value.to_owned()),
        JsonType::Boolean => Value::Bool(value == "true"),
        JsonType::Number => {
            let number: serde_json::Number =
                value.parse().map_err(|_| TransformErrorKind::Number(value.to_owned()))?;
            Value::Number(number)
        }
    })
}

/// Whether `content_type` is JSON (`application/json`, `application/*+json`).
pub(crate) fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether `content_type` is `application/x-www-form-urlencoded`.
pub(crate) fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_at_the_first_colon() {
        assert_eq!(split_entry("p1:anything:1").unwrap(), ("p1", "anything:1"));
        assert_eq!(split_entry("X-Url:http://x:80/").unwrap(), ("X-Url", "http://x:80/"));
        assert_eq!(split_entry("a::b").unwrap(), ("a", "b"));
        assert_eq!(split_entry("a:").unwrap(), ("a", ""));
        assert!(split_entry("novalue").is_err());
        assert!(split_entry(":v").is_err());
    }

    #[test]
    fn forbidden_headers() {
        for name in [
            "Connection",
            "Transfer-Encoding",
            "TE",
            "Content-Length",
            "Host",
            "X-Real-IP",
            "X-Portcullis-Foo",
            "X_Consumer_ID",
        ] {
            assert!(matches!(settable_header(name, None), Err(TransformErrorKind::Forbidden(..))), "{name}");
        }
        let verified = Template::parse("$(consumer.id)").unwrap();
        let other = Template::parse("$(headers.x-id)").unwrap();
        assert!(settable_header("X-Consumer-ID", Some(&verified)).is_ok());
        assert!(settable_header("X-Consumer-ID", Some(&other)).is_err());
        assert!(settable_header("X-Consumer-Username", Some(&verified)).is_err());
        assert!(settable_header("X-API-Version", None).is_ok());
    }

    #[test]
    fn json_rules_keep_other_fields_in_order() {
        let mut ops: Ops<String, String> = Ops::default();
        ops.remove.push("gone".into());
        ops.rename.push(("old".into(), "new".into()));
        ops.replace.push(("name".into(), "bob".into()));
        ops.replace.push(("absent".into(), "x".into()));
        ops.add.push(("name".into(), "ignored".into()));
        ops.add.push(("added".into(), "1".into()));
        ops.append.push(("tags".into(), "t2".into()));
        ops.append.push(("one".into(), "b".into()));
        let body = br#"{"name":"al","gone":1,"old":{"k":[]},"empty":[],"tags":["t1"],"one":"a","n":1.5}"#;
        let out = apply_json(&ops, body, |v: &String| Some(Value::String(v.clone()))).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"name":"bob","new":{"k":[]},"empty":[],"tags":["t1","t2"],"one":["a","b"],"n":1.5,"added":"1"}"#
        );
        assert_eq!(apply_json(&ops, b"{not json", |v: &String| Some(Value::String(v.clone()))), None);
        assert_eq!(apply_json(&ops, b"[1]", |v: &String| Some(Value::String(v.clone()))), None);
        let empty = apply_json(&ops, b"", |v: &String| Some(Value::String(v.clone()))).unwrap();
        assert_eq!(empty, br#"{"name":"ignored","added":"1","tags":["t2"],"one":["b"]}"#);
    }

    #[test]
    fn content_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("application/problem+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(is_form(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_form(Some(&v("multipart/form-data; boundary=x"))));
        assert_eq!(typed_json("1.5", JsonType::Number).unwrap(), serde_json::json!(1.5));
        assert_eq!(typed_json("true", JsonType::Boolean).unwrap(), serde_json::json!(true));
        assert!(typed_json("x", JsonType::Number).is_err());
    }
}
