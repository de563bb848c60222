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
    #[inline]
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
    let header = header_name(name)?;
    let framing = header == http::header::CONTENT_LENGTH || header == http::header::HOST;
    if crate::http_rules::is_hop_by_hop(&header) || framing {
        return Err(TransformErrorKind::Forbidden(name.to_owned(), "hop-by-hop or framing"));
    }
    if crate::http_rules::is_owned_header(name) {
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
    HeaderName::from_bytes(name.as_bytes())
        .map(static_name)
        .map_err(|_| TransformErrorKind::HeaderName(name.to_owned()))
}

/// A literal header value, backed by interned bytes (see [`intern`]).
pub(crate) fn literal_value(text: &str) -> Result<HeaderValue, TransformErrorKind> {
    let value = HeaderValue::from_str(text).map_err(|_| TransformErrorKind::HeaderValue(text.to_owned()))?;
    Ok(match intern(value.as_bytes()) {
        Some(bytes) => HeaderValue::from_maybe_shared(bytes::Bytes::from_static(bytes)).unwrap_or(value),
        None => value,
    })
}

/// `name`, backed by interned bytes (see [`intern`]).
fn static_name(name: HeaderName) -> HeaderName {
    match intern(name.as_str().as_bytes()).and_then(|bytes| std::str::from_utf8(bytes).ok()) {
        // `as_str` of a valid name is its canonical lower-case form, which `from_static` accepts.
        Some(text) => HeaderName::from_static(text),
        None => name,
    }
}

/// Bytes that live as long as the process, shared by every layer that names them.
///
/// A rule's header names and literal values are copied into every request they apply to;
/// `Bytes` from a static slice clones and drops without touching a reference count, where
/// shared bytes cost two atomic operations per copy. The set only grows by distinct strings
/// (a config reload with the same rules adds nothing) and stops at [`INTERN_LIMIT`] bytes;
/// past it, `None`: the caller keeps its reference-counted bytes.
fn intern(bytes: &[u8]) -> Option<&'static [u8]> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    #[derive(Default)]
    struct Interned {
        set: HashSet<&'static [u8]>,
        bytes: usize,
    }
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut interned = INTERNED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = interned.set.get(bytes) {
        return Some(found);
    }
    if interned.bytes + bytes.len() > INTERN_LIMIT {
        return None;
    }
    interned.bytes += bytes.len();
    let leaked: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    interned.set.insert(leaked);
    Some(leaked)
}

/// The most bytes [`intern`] keeps.
const INTERN_LIMIT: usize = 256 << 10;

/// One header rule, compiled: [`Ops`]' five lists flattened in Kong's order, so a request
/// walks one slice, and rules with an empty literal value (which never fire) left out.
#[derive(Debug, Clone)]
pub(crate) enum HeaderOp {
    Remove(HeaderName),
    Rename(HeaderName, HeaderName),
    Replace(HeaderName, HeaderVal),
    Add(HeaderName, HeaderVal),
    Append(HeaderName, HeaderVal),
}

impl Ops<HeaderName, HeaderVal> {
    /// The rules in the order they apply.
    pub(crate) fn compile(&self) -> Vec<HeaderOp> {
        let fires = |value: &HeaderVal| !matches!(value, HeaderVal::Literal(None));
        let with_value = |list: &[(HeaderName, HeaderVal)], op: fn(HeaderName, HeaderVal) -> HeaderOp| {
            let fired = list.iter().filter(|(_, value)| fires(value));
            fired.map(move |(name, value)| op(name.clone(), value.clone())).collect::<Vec<_>>()
        };
        let mut ops: Vec<HeaderOp> = self.remove.iter().cloned().map(HeaderOp::Remove).collect();
        ops.extend(self.rename.iter().cloned().map(|(old, new)| HeaderOp::Rename(old, new)));
        ops.extend(with_value(&self.replace, HeaderOp::Replace));
        ops.extend(with_value(&self.add, HeaderOp::Add));
        ops.extend(with_value(&self.append, HeaderOp::Append));
        ops
    }
}

/// Headers: Kong's request-transformer and response-transformer semantics.
///
/// `HeaderMap::entry` and `insert` make room for one more header before they look: on a full
/// map (hyper sizes a request's map to its headers) that reallocates it even when the rule
/// only renames or replaces. So a full map takes paths that grow it only when a header (or a
/// second value) is really added.
pub(crate) fn apply_headers(ops: &[HeaderOp], headers: &mut HeaderMap, env: &mut HeaderEnv<'_>) {
    for op in ops {
        match op {
            HeaderOp::Remove(name) => {
                headers.remove(name);
            }
            HeaderOp::Rename(old, new) => rename(headers, old, new),
            HeaderOp::Replace(name, value) => {
                // A template is rendered before the lookup: it may read the map.
                let value = match value {
                    HeaderVal::Literal(value) => value.clone(),
                    HeaderVal::Template(_) => value.header(headers, env),
                };
                if let Some(value) = value {
                    replace(headers, name, value);
                }
            }
            HeaderOp::Add(name, HeaderVal::Literal(value)) => {
                if let (Entry::Vacant(absent), Some(value)) = (headers.entry(name), value) {
                    absent.insert(value.clone());
                }
            }
            HeaderOp::Add(name, value) => {
                // Rendered, then one lookup for the test and the write; the price is a
                // rendering the rule may drop, rare as `add` targets absent headers.
                if let Some(value) = value.header(headers, env) {
                    if let Entry::Vacant(absent) = headers.entry(name) {
                        absent.insert(value);
                    }
                }
            }
            HeaderOp::Append(name, value) => {
                if let Some(value) = value.header(headers, env) {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
}

fn is_full(headers: &HeaderMap) -> bool {
    headers.keys_len() >= headers.capacity()
}

/// Kong: the renamed values replace any the new name had.
fn rename(headers: &mut HeaderMap, old: &HeaderName, new: &HeaderName) {
    let (first, rest) = if is_full(headers) {
        // Copies of the extra values (rare), then `remove`, which never grows the map.
        let rest: Vec<HeaderValue> = headers.get_all(old).iter().skip(1).cloned().collect();
        match headers.remove(old) {
            Some(first) => (first, rest),
            None => return,
        }
    } else {
        // One lookup of `old` takes every value out; a vector only for extra values.
        let Entry::Occupied(present) = headers.entry(old) else { return };
        if present.iter().nth(1).is_none() {
            (present.remove(), Vec::new())
        } else {
            let (_, mut values) = present.remove_entry_mult();
            let Some(first) = values.next() else { return };
            (first, values.collect())
        }
    };
    headers.insert(new.clone(), first);
    for value in rest {
        headers.append(new.clone(), value);
    }
}

/// Kong: `replace` sets a header only if present, replacing all its values.
fn replace(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    if !is_full(headers) {
        if let Entry::Occupied(mut present) = headers.entry(name) {
            present.insert(value);
        }
        return;
    }
    let mut values = headers.get_all(name).iter();
    match (values.next().is_some(), values.next().is_some()) {
        (false, _) => {}
        (true, false) => {
            if let Some(slot) = headers.get_mut(name) {
                *slot = value;
            }
        }
        // Several values to drop: `insert` (which may grow the map).
        (true, true) => {
            headers.insert(name.clone(), value);
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
    // Only an object is rewritten: anything else is not parsed at all (a megabyte of `[0,0,…]`
    // would cost tens of megabytes as `Value`s).
    let mut object = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Map::new(),
        Some(b'{') => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => object,
            _ => return None,
        },
        Some(_) => return None,
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

    /// A map with no room left, as hyper hands one over (sized to the headers it parsed).
    fn full_map() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [("a", "1"), ("b", "2"), ("x-old", "o1"), ("c", "3"), ("d", "4")] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers.append("e", HeaderValue::from_static("5"));
        while headers.keys_len() < headers.capacity() {
            let name = format!("pad-{}", headers.keys_len());
            headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("p"));
        }
        assert!(is_full(&headers));
        headers
    }

    fn apply(ops: &Ops<HeaderName, HeaderVal>, headers: &mut HeaderMap) {
        let (mut early, extensions) = (Vec::new(), http::Extensions::new());
        let mut env = HeaderEnv { templates: &[], query: None, extensions: &extensions, early: &mut early };
        apply_headers(&ops.compile(), headers, &mut env);
    }

    fn literal(text: &str) -> HeaderVal {
        HeaderVal::Literal(Some(literal_value(text).unwrap()))
    }

    #[test]
    fn rename_and_replace_on_a_full_map_keep_every_value_and_do_not_grow_it() {
        let mut ops: Ops<HeaderName, HeaderVal> = Ops::default();
        ops.rename.push((header_name("X-Old").unwrap(), header_name("X-New").unwrap()));
        ops.replace.push((header_name("a").unwrap(), literal("one")));
        ops.replace.push((header_name("absent").unwrap(), literal("never")));
        let mut headers = full_map();
        let capacity = headers.capacity();
        apply(&ops, &mut headers);
        assert_eq!(headers.capacity(), capacity, "no reallocation");
        let all = |h: &HeaderMap, n: &str| {
            h.get_all(n).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(all(&headers, "x-new"), ["o1"]);
        assert!(!headers.contains_key("x-old"));
        assert_eq!(all(&headers, "a"), ["one"]);
        assert!(!headers.contains_key("absent"));

        // Several values: every one is renamed, all of a replaced header's go (adding a second
        // value to a full map grows it: http reserves a key slot for every append).
        let mut headers = full_map();
        headers.append("x-old", HeaderValue::from_static("o2"));
        headers.append("a", HeaderValue::from_static("1b"));
        apply(&ops, &mut headers);
        assert_eq!(all(&headers, "x-new"), ["o1", "o2"]);
        assert_eq!(all(&headers, "a"), ["one"]);

        // The same rules on a map with room take the one-lookup paths, same result.
        let mut roomy = full_map();
        roomy.append("x-old", HeaderValue::from_static("o2"));
        roomy.reserve(4);
        apply(&ops, &mut roomy);
        assert_eq!(all(&roomy, "x-new"), ["o1", "o2"]);
        assert_eq!(all(&roomy, "a"), ["one"]);
    }

    #[test]
    fn literal_names_and_values_are_interned() {
        let (a, b) = (literal_value("v-interned").unwrap(), literal_value("v-interned").unwrap());
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr(), "one copy for every layer");
        let (a, b) = (header_name("X-Interned").unwrap(), header_name("x-interned").unwrap());
        assert_eq!(a, b);
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        // Every token character a name may hold (RFC 9110), and a standard name, survive.
        let odd = "X-Tok!#$%&'*+-.^_`|~09";
        assert_eq!(header_name(odd).unwrap(), HeaderName::from_bytes(odd.as_bytes()).unwrap());
        assert_eq!(header_name("Content-Type").unwrap(), http::header::CONTENT_TYPE);
        // Still checked: a value a header cannot carry is an error, not an interned string.
        assert!(matches!(literal_value("bad\nvalue"), Err(TransformErrorKind::HeaderValue(_))));
        // Bytes outside visible ASCII are a valid header value and stay one.
        let latin = literal_value("caf\u{e9}").unwrap();
        assert_eq!(latin.as_bytes(), "caf\u{e9}".as_bytes());
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
