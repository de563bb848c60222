//! Finding the token in a request, and deciding about it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{JwtCredential, KeyMaterial, MAX_TOKEN_LEN, Shared};
use crate::consumer::Consumer;
use crate::error::Rejection;

/// The rejections whose text depends on `key_claim_name`, rendered once.
pub(super) struct Messages {
    no_key_claim: Rejection,
    invalid_key_claim: Rejection,
    no_credentials: Rejection,
}

impl Messages {
    pub(super) fn new(key_claim_name: &str) -> Self {
        Self {
            no_key_claim: invalid(format!("No mandatory '{key_claim_name}' in claims")),
            invalid_key_claim: invalid(format!("Invalid '{key_claim_name}' in claims")),
            no_credentials: invalid(format!("No credentials found for given '{key_claim_name}'")),
        }
    }
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer`: no token was presented.
fn missing() -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
        .with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// 401 `invalid_token` with `WWW-Authenticate: Bearer error="invalid_token"`.
pub(super) fn invalid(message: impl Into<Cow<'static, str>>) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "invalid_token", message).with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    )
}

fn bad_json() -> Rejection {
    invalid("Bad token; invalid JSON")
}

/// What the synchronous check decided.
pub(super) enum Check {
    Verified(Consumer),
    Rejected(Rejection),
    /// The credential's JWKS does not know the token's `kid` yet and may be refreshed.
    Pending(Pending),
}

/// A parsed token waiting for a JWKS refresh.
pub(super) struct Pending {
    parsed: Parsed,
    credential: Arc<JwtCredential>,
    digest: Option<[u8; 32]>,
}

impl Pending {
    pub(super) async fn resolve(self, shared: &Shared) -> Result<Consumer, Rejection> {
        let KeyMaterial::Jwks(jwks) = &self.credential.material else {
            return Err(invalid("Invalid signature"));
        };
        let kid = self.parsed.kid.as_deref().unwrap_or_default();
        let key = jwks.refresh_and_get(kid, shared.now()).await;
        let generation = jwks.generation();
        let key = key.ok_or_else(|| invalid("Invalid signature"))?;
        finish(shared, &self.parsed, &self.credential, &key, self.digest, generation)
    }
}

/// The token's pieces once decoded.
struct Parsed {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`, what the signature covers.
    message_len: usize,
    token: Box<str>,
    exp: Option<f64>,
    nbf: Option<f64>,
    /// The `aud` / `iss` allow-lists' verdict, reported only once the signature is good.
    allowed: Result<(), Rejection>,
}

impl Parsed {
    fn message(&self) -> &[u8] {
        &self.token.as_bytes()[..self.message_len]
    }

    fn signature(&self) -> &str {
        &self.token[self.message_len + 1..]
    }
}

/// The whole synchronous decision for one request.
pub(super) fn check<B>(shared: &Shared, req: &Request<B>) -> Check {
    let token = match find_token(shared, req) {
        Ok(token) => token,
        Err(rejection) => return Check::Rejected(rejection),
    };
    let digest = shared.cache.as_ref().map(|_| Sha256::digest(token.as_bytes()).into());
    if let (Some(cache), Some(digest)) = (&shared.cache, &digest) {
        if let Some(hit) = cache.get(digest, shared) {
            return match check_times(shared, hit.exp, hit.nbf) {
                Ok(()) => Check::Verified(hit.credential.consumer.clone()),
                Err(rejection) => Check::Rejected(rejection),
            };
        }
    }
    let (parsed, credential) = match parse(shared, &token) {
        Ok(found) => found,
        Err(rejection) => return Check::Rejected(rejection),
    };
    let result = match &credential.material {
        KeyMaterial::Static(key) => finish(shared, &parsed, &credential, key, digest, 0),
        KeyMaterial::Jwks(jwks) => {
            let now = shared.now();
            let kid = parsed.kid.as_deref().unwrap_or_default();
            match jwks.get(kid) {
                Some(_) if jwks.due(now) => return Check::Pending(Pending { parsed, credential, digest }),
                Some(key) => finish(shared, &parsed, &credential, &key, digest, jwks.generation()),
                None if !kid.is_empty() && jwks.may_refresh(now) => {
                    return Check::Pending(Pending { parsed, credential, digest });
                }
                None => Err(invalid("Invalid signature")),
            }
        }
    };
    match result {
        Ok(consumer) => Check::Verified(consumer),
        Err(rejection) => Check::Rejected(rejection),
    }
}

/// Signature, then claims; caches the verified token.
fn finish(
    shared: &Shared,
    parsed: &Parsed,
    credential: &Arc<JwtCredential>,
    key: &DecodingKey,
    digest: Option<[u8; 32]>,
    generation: u64,
) -> Result<Consumer, Rejection> {
    let valid =
        jsonwebtoken::crypto::verify(parsed.signature(), parsed.message(), key, parsed.alg).unwrap_or(false);
    if !valid {
        return Err(invalid("Invalid signature"));
    }
    check_times(shared, parsed.exp, parsed.nbf)?;
    parsed.allowed.clone()?;
    if let (Some(cache), Some(digest)) = (&shared.cache, digest) {
        cache.insert(
            digest,
            Cached { credential: credential.clone(), exp: parsed.exp, nbf: parsed.nbf, generation },
        );
    }
    Ok(credential.consumer.clone())
}

/// `claims_to_verify` (with leeway) and `maximum_expiration`, re-run on every cache hit.
fn check_times(shared: &Shared, exp: Option<f64>, nbf: Option<f64>) -> Result<(), Rejection> {
    let now = shared.now() as f64;
    let leeway = shared.leeway;
    if shared.verify_exp {
        let exp = exp.ok_or_else(|| invalid("'exp' must be a number"))?;
        if exp + leeway <= now {
            return Err(invalid("token expired"));
        }
    }
    if shared.verify_nbf {
        let nbf = nbf.ok_or_else(|| invalid("'nbf' must be a number"))?;
        if nbf - leeway > now {
            return Err(invalid("token not valid yet"));
        }
    }
    if let Some(max) = shared.maximum_expiration {
        if exp.is_none_or(|exp| exp - now > max as f64) {
            return Err(invalid("exceeds maximum allowed expiration"));
        }
    }
    Ok(())
}

/// The members of one token segment (JOSE header or payload) that the layer reads; the others
/// are skipped without being built (no map of every claim per request).
#[derive(Default)]
struct Segment {
    key: Option<Value>,
    alg: Option<Value>,
    typ: Option<Value>,
    kid: Option<Value>,
    crit: bool,
    exp: Option<Value>,
    nbf: Option<Value>,
    /// Read only when an allow-list needs it.
    iss: Option<Value>,
    aud: Option<Value>,
    /// A member name appeared twice.
    duplicate: bool,
}

struct SegmentSeed<'n> {
    key_name: &'n str,
    header: bool,
    /// Read `iss` and `aud` (payload only).
    allow_lists: bool,
}

/// The member names of one segment seen so far: a short linear list on the stack (tokens carry a
/// handful of claims, so no allocation), a hash set past it (a padded token cannot make the check
/// quadratic).
struct Names<'de> {
    inline: [Cow<'de, str>; INLINE_NAMES],
    len: usize,
    spill: Option<HashSet<Cow<'de, str>>>,
}

const INLINE_NAMES: usize = 16;

impl<'de> Names<'de> {
    fn new() -> Self {
        Self { inline: [const { Cow::Borrowed("") }; INLINE_NAMES], len: 0, spill: None }
    }

    /// Records `name`; false when it was already there.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if let Some(spill) = &mut self.spill {
            return spill.insert(name);
        }
        if self.inline[..self.len].contains(&name) {
            return false;
        }
        if self.len < INLINE_NAMES {
            self.inline[self.len] = name;
            self.len += 1;
            return true;
        }
        let mut spill: HashSet<Cow<'de, str>> = self.inline.iter_mut().map(std::mem::take).collect();
        spill.insert(name);
        self.spill = Some(spill);
        true
    }
}

struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for SegmentSeed<'_> {
    type Value = Segment;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Segment, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SegmentSeed<'_> {
    type Value = Segment;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Segment, A::Error> {
        let mut segment = Segment::default();
        let mut names = Names::new();
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            // Parsers disagree on which of two same-named members wins (serde_json keeps the
            // last, others the first): refuse the token rather than guess. The rest is skipped
            // so the JSON is still checked whole.
            if segment.duplicate || !names.insert(name.clone()) {
                segment.duplicate = true;
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let is_key = *name == *self.key_name;
            let slot = match (self.header, &*name) {
                (true, "alg") => Some(&mut segment.alg),
                (true, "typ") => Some(&mut segment.typ),
                (true, "kid") => Some(&mut segment.kid),
                (true, "crit") => {
                    segment.crit = true;
                    None
                }
                (false, "exp") => Some(&mut segment.exp),
                (false, "nbf") => Some(&mut segment.nbf),
                (false, "iss") if self.allow_lists => Some(&mut segment.iss),
                (false, "aud") if self.allow_lists => Some(&mut segment.aud),
                _ => None,
            };
            match (slot, is_key) {
                (Some(slot), true) => {
                    let value: Value = map.next_value()?;
                    segment.key = Some(value.clone());
                    *slot = Some(value);
                }
                (Some(slot), false) => *slot = Some(map.next_value()?),
                (None, true) => segment.key = Some(map.next_value()?),
                (None, false) => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(segment)
    }
}

fn decode_segment(segment: &str, key_name: &str, header: bool, allow_lists: bool) -> Option<Segment> {
    use serde::de::DeserializeSeed;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let parsed = SegmentSeed { key_name, header, allow_lists }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(parsed)
}

/// A JOSE `alg` name (`HS256`, ..., `EdDSA`); also reads config `algorithm` values.
pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    // `none` is deliberately absent: it is never a valid algorithm here.
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A registered time claim: absent, or a JSON number (a string `"exp"` is refused).
fn time_claim(value: Option<Value>, name: &'static str) -> Result<Option<f64>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => {
            Err(invalid(if name == "exp" { "'exp' must be a number" } else { "'nbf' must be a number" }))
        }
    }
}

/// Decoding and the checks that come before the signature, in Kong's order.
fn parse(shared: &Shared, token: &str) -> Result<(Parsed, Arc<JwtCredential>), Rejection> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_json());
    };
    let name = &*shared.key_claim_name;
    let allow_lists = shared.audiences.is_some() || shared.issuers.is_some();
    let header = decode_segment(header, name, true, false).ok_or_else(bad_json)?;
    let claims = decode_segment(payload, name, false, allow_lists).ok_or_else(bad_json)?;
    if header.duplicate {
        return Err(invalid("Bad token; duplicate header names"));
    }
    if claims.duplicate {
        return Err(invalid("Bad token; duplicate claim names"));
    }
    if let Some(typ) = &header.typ {
        if !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
            return Err(invalid("Bad token; invalid typ"));
        }
    }
    let alg = header.alg.as_ref().and_then(Value::as_str).and_then(algorithm);
    let alg = alg.ok_or_else(|| invalid("Bad token; invalid alg"))?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; none are.
    if header.crit {
        return Err(invalid("Bad token; unsupported critical header"));
    }
    let key = match claims.key.as_ref().or(header.key.as_ref()) {
        None | Some(Value::Null) => return Err(shared.messages.no_key_claim.clone()),
        Some(Value::String(key)) if !key.is_empty() => key.as_str(),
        Some(_) => return Err(shared.messages.invalid_key_claim.clone()),
    };
    let credential = shared.credentials.get(key).ok_or_else(|| shared.messages.no_credentials.clone())?;
    if alg != credential.algorithm {
        return Err(invalid("Invalid algorithm"));
    }
    let exp = time_claim(claims.exp, "exp")?;
    let nbf = time_claim(claims.nbf, "nbf")?;
    let kid = match header.kid {
        Some(Value::String(kid)) => Some(kid),
        _ => None,
    };
    let allowed = allowed(shared, claims.iss.as_ref(), claims.aud.as_ref());
    let message_len = token.rfind('.').unwrap_or_default();
    let parsed = Parsed { alg, kid, message_len, token: token.into(), exp, nbf, allowed };
    Ok((parsed, credential.clone()))
}

/// The `issuers` and `audiences` allow-lists (RFC 8725 §3.9). `aud` may be one string or an
/// array of strings, one of which must be allowed.
fn allowed(shared: &Shared, iss: Option<&Value>, aud: Option<&Value>) -> Result<(), Rejection> {
    let listed = |list: &[Box<str>], value: &str| list.iter().any(|allowed| **allowed == *value);
    if let Some(issuers) = &shared.issuers {
        match iss {
            None | Some(Value::Null) => return Err(invalid("No mandatory 'iss' in claims")),
            Some(Value::String(iss)) if listed(issuers, iss) => {}
            Some(_) => return Err(invalid("Invalid 'iss' in claims")),
        }
    }
    if let Some(audiences) = &shared.audiences {
        let ok = match aud {
            None | Some(Value::Null) => return Err(invalid("No mandatory 'aud' in claims")),
            Some(Value::String(aud)) => listed(audiences, aud),
            Some(Value::Array(items)) => {
                items.iter().all(Value::is_string)
                    && items.iter().any(|item| item.as_str().is_some_and(|aud| listed(audiences, aud)))
            }
            Some(_) => false,
        };
        if !ok {
            return Err(invalid("Invalid 'aud' in claims"));
        }
    }
    Ok(())
}

/// Exactly one distinct token from the configured query parameters, cookies and headers.
fn find_token<'r, B>(shared: &Shared, req: &'r Request<B>) -> Result<Cow<'r, str>, Rejection> {
    let mut found: Vec<Cow<'r, str>> = Vec::new();
    let mut add = |token: Cow<'r, str>| -> Result<(), Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("Bad token; too large"));
        }
        if !token.is_empty() && !found.contains(&token) {
            found.push(token);
        }
        Ok(())
    };
    if !shared.uri_param_names.is_empty() {
        if let Some(query) = req.uri().query() {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if shared.uri_param_names.iter().any(|n| *percent_decode(name) == **n) {
                    add(percent_decode(value))?;
                }
            }
        }
    }
    if !shared.cookie_names.is_empty() {
        for header in req.headers().get_all(http::header::COOKIE) {
            let Ok(header) = header.to_str() else { continue };
            for cookie in header.split(';') {
                let (name, value) = cookie.trim().split_once('=').unwrap_or((cookie.trim(), ""));
                if shared.cookie_names.iter().any(|n| **n == *name) {
                    add(Cow::Borrowed(value.trim_matches('"')))?;
                }
            }
        }
    }
    for name in shared.header_names.iter() {
        for value in req.headers().get_all(name) {
            if let Some(token) = value.to_str().ok().and_then(bearer) {
                add(Cow::Borrowed(token))?;
            }
        }
    }
    match found.len() {
        0 => Err(missing()),
        1 => Ok(found.swap_remove(0)),
        _ => Err(invalid("Multiple tokens provided")),
    }
}

/// Kong's `\s*[Bb]earer\s+(.+)`.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let scheme = value.get(..6)?;
    if scheme != "Bearer" && scheme != "bearer" {
        return None;
    }
    let rest = &value[6..];
    let token = rest.trim_start();
    (token.len() < rest.len()).then(|| token.trim_end())
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Removes every `uri_param_names` parameter from the URI, keeping the other parameters byte for
/// byte and in order.
pub(super) fn strip_query_tokens<B>(shared: &Shared, req: &mut Request<B>) {
    let Some(query) = req.uri().query() else { return };
    let is_token = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        shared.uri_param_names.iter().any(|n| *percent_decode(name) == **n)
    };
    if !query.split('&').any(is_token) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_token(pair)).collect();
    let path = req.uri().path();
    let path_and_query = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = req.uri().clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        // Unreachable in practice (a subset of a valid query); never forward the token.
        Err(_) => parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/")),
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A verified token, as the cache keeps it.
#[derive(Clone)]
pub(super) struct Cached {
    credential: Arc<JwtCredential>,
    exp: Option<f64>,
    nbf: Option<f64>,
    /// The credential's JWKS generation when verified; a rotation makes the entry stale.
    generation: u64,
}

/// Bounded map from token digest to verification result.
pub(super) struct VerifiedCache {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl VerifiedCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))) }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// A hit verified with the credential's current keys; a JWKS set due for its max-age
    /// refresh makes every hit a miss (the refresh decides whether the key is still served).
    fn get(&self, digest: &[u8; 32], shared: &Shared) -> Option<Cached> {
        let mut entries = self.entries.lock().ok()?;
        let hit = entries.get(digest)?;
        let current = match &hit.credential.material {
            KeyMaterial::Static(_) => 0,
            KeyMaterial::Jwks(jwks) if jwks.due(shared.now()) => return None,
            KeyMaterial::Jwks(jwks) => jwks.generation(),
        };
        if hit.generation != current {
            entries.remove(digest);
            return None;
        }
        Some(hit.clone())
    }

    fn insert(&self, digest: [u8; 32], cached: Cached) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            // Bounded: make room by dropping an arbitrary entry (cheap; a miss only costs a
            // signature check).
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(digest, cached);
    }
}
