use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{ServiceExt, service_fn};

use super::*;

const NOW: u64 = 1_700_000_000;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
const SECRET: &[u8] = b"a-shared-secret-of-decent-length";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).unwrap()
}

fn consumer(id: &str) -> Consumer {
    Consumer { id: id.into(), username: Some(format!("{id}-name").into()), ..Consumer::default() }
}

/// The private key and the matching credential for `alg`, under key claim value `key`.
fn pair(alg: Algorithm, key: &str) -> (EncodingKey, JwtCredential) {
    let c = consumer("alice");
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            (EncodingKey::from_secret(SECRET), JwtCredential::secret(c, key, alg, SECRET).unwrap())
        }
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap(),
            JwtCredential::public_key_pem(c, key, alg, fixture("ec256_public.pem")).unwrap(),
        ),
        Algorithm::ES384 => (
            EncodingKey::from_ec_pem(&fixture("ec384_private.pem")).unwrap(),
            JwtCredential::public_key_pem(c, key, alg, fixture("ec384_public.pem")).unwrap(),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(),
            JwtCredential::public_key_pem(c, key, alg, fixture("ed25519_public.pem")).unwrap(),
        ),
        _ => (
            EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
            JwtCredential::public_key_pem(c, key, alg, fixture("rsa_public.pem")).unwrap(),
        ),
    }
}

/// Signs `claims`, adding an `exp` an hour after `NOW` when there is none (the builder verifies
/// `exp` by default).
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    sign_as_is(alg, key, &with_exp(claims))
}

fn with_exp(claims: &Value) -> Value {
    let mut claims = claims.clone();
    if let Some(map) = claims.as_object_mut() {
        map.entry("exp").or_insert(json!(NOW + 3600));
    }
    claims
}

fn sign_as_is(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// A token with hand-written header and payload JSON and an HMAC-SHA256 signature by `secret`.
fn handmade(header: &str, payload: &str, secret: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
            .unwrap();
    format!("{message}.{signature}")
}

fn fixed_clock(builder: JwtAuthLayerBuilder) -> JwtAuthLayerBuilder {
    builder.clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
}

/// Echo service: answers 200 with the request's URI as body and its headers as response headers.
async fn call(layer: &JwtAuthLayer, req: Request<()>) -> Response<Bytes> {
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let mut res = Response::new(Bytes::from(req.uri().to_string()));
        *res.headers_mut() = req.headers().clone();
        Ok::<_, Infallible>(res)
    }));
    svc.oneshot(req).await.unwrap()
}

fn bearer(token: &str) -> Request<()> {
    Request::get("/orders").header("authorization", format!("Bearer {token}")).body(()).unwrap()
}

fn message(res: &Response<Bytes>) -> String {
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    body["message"].as_str().unwrap().to_owned()
}

#[track_caller]
fn assert_invalid(res: &Response<Bytes>, expected: &str) {
    assert_eq!(res.status(), 401, "{:?}", res.body());
    assert_eq!(message(res), expected);
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(res.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert!(res.headers().get("x-consumer-id").is_none());
}

#[track_caller]
fn assert_admitted(res: &Response<Bytes>, credential: &str) {
    assert_eq!(res.status(), 200, "{:?}", res.body());
    assert_eq!(res.headers()["x-consumer-id"], "alice");
    assert_eq!(res.headers()["x-consumer-username"], "alice-name");
    assert_eq!(res.headers()["x-credential-identifier"], credential);
    assert!(res.headers().get("x-anonymous-consumer").is_none());
    let consumer = res.extensions().get::<Consumer>().expect("consumer copied into response extensions");
    assert_eq!(consumer.credential_id.as_deref(), Some(credential));
}

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The four algorithms every Kong case runs with.
const MAIN: [Algorithm; 4] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

#[tokio::test]
async fn every_supported_algorithm_verifies_a_real_token() {
    // A missing crypto backend feature would fail here, not in production.
    for alg in ALL {
        let (enc, cred) = pair(alg, "k");
        let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
        let token = sign(alg, &enc, &json!({"iss": "k"}));
        assert_admitted(&call(&layer, bearer(&token)).await, "k");
        // And a token signed by another key (or tampered) fails.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_invalid(&call(&layer, bearer(&forged)).await, "Invalid signature");
    }
}

#[tokio::test]
async fn missing_multiple_and_garbage_tokens() {
    for alg in MAIN {
        let (enc, cred) = pair(alg, "k");
        let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();

        let res = call(&layer, Request::get("/orders").body(()).unwrap()).await;
        assert_eq!(res.status(), 401);
        assert_eq!(message(&res), "Unauthorized");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"], "unauthorized");

        let a = sign(alg, &enc, &json!({"iss": "k", "n": 1}));
        let b = sign(alg, &enc, &json!({"iss": "k", "n": 2}));
        let req = Request::get(format!("/orders?jwt={a}"))
            .header("authorization", format!("Bearer {b}"))
            .body(())
            .unwrap();
        assert_invalid(&call(&layer, req).await, "Multiple tokens provided");
        // The same token twice is one token.
        let req = Request::get(format!("/orders?jwt={a}"))
            .header("authorization", format!("bearer {a}"))
            .body(())
            .unwrap();
        assert_admitted(&call(&layer, req).await, "k");

        for garbage in ["garbage", "a.b.c", "a.b", "x.y.z.w", "e30.e30.e30.e30", "W10.e30.sig"] {
            assert_invalid(&call(&layer, bearer(garbage)).await, "Bad token; invalid JSON");
        }
        let huge = sign(alg, &enc, &json!({"iss": "k", "pad": "x".repeat(MAX_TOKEN_LEN)}));
        assert_invalid(&call(&layer, bearer(&huge)).await, "Bad token; too large");
    }
}

#[tokio::test]
async fn key_claim_missing_empty_unknown_and_from_the_header() {
    for alg in MAIN {
        let (enc, cred) = pair(alg, "k");
        let layer = fixed_clock(JwtAuthLayer::builder().credential(cred.clone())).build();
        let t = sign(alg, &enc, &json!({"sub": "x"}));
        assert_invalid(&call(&layer, bearer(&t)).await, "No mandatory 'iss' in claims");
        let t = sign(alg, &enc, &json!({"iss": ""}));
        assert_invalid(&call(&layer, bearer(&t)).await, "Invalid 'iss' in claims");
        let t = sign(alg, &enc, &json!({"iss": 7}));
        assert_invalid(&call(&layer, bearer(&t)).await, "Invalid 'iss' in claims");
        let t = sign(alg, &enc, &json!({"iss": "nobody"}));
        assert_invalid(&call(&layer, bearer(&t)).await, "No credentials found for given 'iss'");

        // key_claim_name: kid, found in the JOSE header (the seed's setting).
        let layer = fixed_clock(JwtAuthLayer::builder().key_claim_name("kid").credential(cred)).build();
        let header = Header { kid: Some("k".into()), ..Header::new(alg) };
        let t = jsonwebtoken::encode(&header, &with_exp(&json!({"sub": "x"})), &enc).unwrap();
        assert_admitted(&call(&layer, bearer(&t)).await, "k");
        let t = sign(alg, &enc, &json!({"sub": "x"}));
        assert_invalid(&call(&layer, bearer(&t)).await, "No mandatory 'kid' in claims");
    }
}

#[tokio::test]
async fn only_the_credentials_algorithm_is_accepted() {
    // HS512 token for an HS256 credential, same secret.
    let (_, cred) = pair(Algorithm::HS256, "k");
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    let t = sign(Algorithm::HS512, &EncodingKey::from_secret(SECRET), &json!({"iss": "k"}));
    assert_invalid(&call(&layer, bearer(&t)).await, "Invalid algorithm");

    // RS256 credential: an ES256, EdDSA or PS256 token is refused before any signature check.
    let (_, cred) = pair(Algorithm::RS256, "k");
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256] {
        let (enc, _) = pair(alg, "k");
        assert_invalid(
            &call(&layer, bearer(&sign(alg, &enc, &json!({"iss": "k"})))).await,
            "Invalid algorithm",
        );
    }

    // HS/RS confusion: HS256 "signed" with the RSA public key PEM as the secret.
    let pem = fixture("rsa_public.pem");
    let t = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &json!({"iss": "k"}));
    assert_invalid(&call(&layer, bearer(&t)).await, "Invalid algorithm");

    // alg: none, unsigned and "signed".
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"iss":"k"}"#)
    );
    assert_invalid(&call(&layer, bearer(&none)).await, "Bad token; invalid alg");
    let none = handmade(r#"{"alg":"none"}"#, r#"{"iss":"k"}"#, SECRET);
    assert_invalid(&call(&layer, bearer(&none)).await, "Bad token; invalid alg");
    let t = handmade(r#"{"alg":"HS256","typ":"JWE"}"#, r#"{"iss":"k"}"#, SECRET);
    assert_invalid(&call(&layer, bearer(&t)).await, "Bad token; invalid typ");
}

#[tokio::test]
async fn bad_signatures() {
    for alg in MAIN {
        let (_, cred) = pair(alg, "k");
        let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
        let other = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(b"another-secret"),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa2_private.pem")).unwrap(),
            // A key of the same type from another curve would not sign; use a fresh payload
            // spliced onto a valid signature instead.
            _ => {
                let (enc, _) = pair(alg, "k");
                let good = sign(alg, &enc, &json!({"iss": "k", "admin": false}));
                let evil = URL_SAFE_NO_PAD.encode(r#"{"iss":"k","admin":true}"#);
                let parts: Vec<&str> = good.split('.').collect();
                let spliced = format!("{}.{evil}.{}", parts[0], parts[2]);
                assert_invalid(&call(&layer, bearer(&spliced)).await, "Invalid signature");
                continue;
            }
        };
        let t = sign(alg, &other, &json!({"iss": "k"}));
        assert_invalid(&call(&layer, bearer(&t)).await, "Invalid signature");
    }
}

#[tokio::test]
async fn exp_nbf_leeway_and_maximum_expiration() {
    let now = NOW as i64;
    for alg in MAIN {
        let (enc, cred) = pair(alg, "k");
        let verify = |b: JwtAuthLayerBuilder| {
            fixed_clock(
                b.credential(cred.clone()).claims_to_verify([RegisteredClaim::Exp, RegisteredClaim::Nbf]),
            )
            .build()
        };
        let layer = verify(JwtAuthLayer::builder());
        let t = |claims: Value| sign_as_is(alg, &enc, &claims);
        assert_admitted(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": now + 60, "nbf": now})))).await,
            "k",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": now - 1, "nbf": now})))).await,
            "token expired",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": now, "nbf": now})))).await,
            "token expired",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": now + 60, "nbf": now + 5})))).await,
            "token not valid yet",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "nbf": now})))).await,
            "'exp' must be a number",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": (now + 60).to_string(), "nbf": now})))).await,
            "'exp' must be a number",
        );
        assert_invalid(
            &call(&layer, bearer(&t(json!({"iss": "k", "exp": now + 60, "nbf": now.to_string()})))).await,
            "'nbf' must be a number",
        );
        // The builder's default verifies `exp`: missing or past, refused.
        let default = fixed_clock(JwtAuthLayer::builder().credential(cred.clone())).build();
        assert_invalid(&call(&default, bearer(&t(json!({"iss": "k"})))).await, "'exp' must be a number");
        assert_invalid(
            &call(&default, bearer(&t(json!({"iss": "k", "exp": now - 100})))).await,
            "token expired",
        );
        assert_admitted(&call(&default, bearer(&t(json!({"iss": "k", "exp": now + 1})))).await, "k");
        // Kong's default (`claims_to_verify: []`), asked for explicitly: a string exp is still
        // refused, a past or missing one is not checked.
        let lax = fixed_clock(JwtAuthLayer::builder().credential(cred.clone()).claims_to_verify([])).build();
        assert_invalid(
            &call(&lax, bearer(&t(json!({"iss": "k", "exp": "9999999999"})))).await,
            "'exp' must be a number",
        );
        assert_admitted(&call(&lax, bearer(&t(json!({"iss": "k", "exp": now - 100})))).await, "k");
        assert_admitted(&call(&lax, bearer(&t(json!({"iss": "k"})))).await, "k");

        // Leeway: 30 s of skew tolerated on both sides.
        let lenient = verify(JwtAuthLayer::builder().leeway(Duration::from_secs(30)));
        assert_admitted(
            &call(&lenient, bearer(&t(json!({"iss": "k", "exp": now - 29, "nbf": now + 29})))).await,
            "k",
        );
        assert_invalid(
            &call(&lenient, bearer(&t(json!({"iss": "k", "exp": now - 30, "nbf": now})))).await,
            "token expired",
        );
        assert_invalid(
            &call(&lenient, bearer(&t(json!({"iss": "k", "exp": now + 60, "nbf": now + 31})))).await,
            "token not valid yet",
        );

        let capped = verify(JwtAuthLayer::builder().maximum_expiration(Duration::from_secs(3600)));
        assert_admitted(
            &call(&capped, bearer(&t(json!({"iss": "k", "exp": now + 3600, "nbf": now})))).await,
            "k",
        );
        assert_invalid(
            &call(&capped, bearer(&t(json!({"iss": "k", "exp": now + 3601, "nbf": now})))).await,
            "exceeds maximum allowed expiration",
        );
        // Without `exp` in claims_to_verify (the config refuses this; the library still caps).
        let capped_only = fixed_clock(
            JwtAuthLayer::builder()
                .credential(cred.clone())
                .claims_to_verify([])
                .maximum_expiration(Duration::from_secs(60)),
        )
        .build();
        assert_invalid(
            &call(&capped_only, bearer(&t(json!({"iss": "k"})))).await,
            "exceeds maximum allowed expiration",
        );
    }
}

#[tokio::test]
async fn query_cookie_and_header_sources() {
    for alg in MAIN {
        let (enc, cred) = pair(alg, "k");
        let t = sign(alg, &enc, &json!({"iss": "k"}));
        let layer = fixed_clock(
            JwtAuthLayer::builder()
                .credential(cred)
                .uri_param_names(["jwt", "access_token"])
                .cookie_names(["session", "jwt"])
                .header_names([http::header::AUTHORIZATION, HeaderName::from_static("x-token")]),
        )
        .build();

        // Query: the token parameters are removed, the others kept byte for byte, in order.
        let req = Request::get(format!("/orders?b=2&jwt={t}&a=%20x&z&a=1&access_token={t}&%6Awt="))
            .body(())
            .unwrap();
        let res = call(&layer, req).await;
        assert_admitted(&res, "k");
        assert_eq!(res.body().as_ref(), b"/orders?b=2&a=%20x&z&a=1");
        let res = call(&layer, Request::get(format!("/orders?jwt={t}")).body(()).unwrap()).await;
        assert_admitted(&res, "k");
        assert_eq!(res.body().as_ref(), b"/orders");

        let req = Request::get("/orders")
            .header("cookie", format!("theme=dark; session={t}; x=1"))
            .body(())
            .unwrap();
        assert_admitted(&call(&layer, req).await, "k");
        let req = Request::get("/orders").header("x-token", format!("  Bearer   {t}")).body(()).unwrap();
        assert_admitted(&call(&layer, req).await, "k");
        // Not a Bearer value: no token.
        let req = Request::get("/orders").header("authorization", format!("Basic {t}")).body(()).unwrap();
        assert_eq!(message(&call(&layer, req).await), "Unauthorized");
        // Two different tokens in two cookies.
        let other = sign(alg, &enc, &json!({"iss": "k", "v": 2}));
        let req =
            Request::get("/orders").header("cookie", format!("session={t}; jwt={other}")).body(()).unwrap();
        assert_invalid(&call(&layer, req).await, "Multiple tokens provided");

        // Sources not configured are not read.
        let headers_only = fixed_clock(
            JwtAuthLayer::builder().credential(pair(alg, "k").1).uri_param_names(Vec::<String>::new()),
        )
        .build();
        let res = call(&headers_only, Request::get(format!("/orders?jwt={t}")).body(()).unwrap()).await;
        assert_eq!(message(&res), "Unauthorized");
    }
}

#[tokio::test]
async fn preflight_is_skipped_only_when_configured() {
    let (_, cred) = pair(Algorithm::HS256, "k");
    let skip = fixed_clock(JwtAuthLayer::builder().credential(cred.clone()).run_on_preflight(false)).build();
    let options = || Request::options("/orders").body(()).unwrap();
    let res = call(&skip, options()).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-consumer-id").is_none());
    assert_eq!(call(&skip, Request::get("/orders").body(()).unwrap()).await.status(), 401);
    let run = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    assert_eq!(call(&run, options()).await.status(), 401);
}

#[tokio::test]
async fn base64_secret() {
    let raw = b"\x00\x01binary\xffsecret-bytes";
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let cred = JwtCredential::base64_secret(consumer("alice"), "k", Algorithm::HS256, &encoded).unwrap();
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    let t = sign(Algorithm::HS256, &EncodingKey::from_secret(raw), &json!({"iss": "k"}));
    assert_admitted(&call(&layer, bearer(&t)).await, "k");
    // Signed with the base64 text itself: wrong key.
    let t = sign(Algorithm::HS256, &EncodingKey::from_secret(encoded.as_bytes()), &json!({"iss": "k"}));
    assert_invalid(&call(&layer, bearer(&t)).await, "Invalid signature");
    assert!(matches!(
        JwtCredential::base64_secret(consumer("a"), "k", Algorithm::HS256, "not base64!"),
        Err(JwtCredentialError::Base64(_))
    ));
}

#[tokio::test]
async fn crit_headers_and_credential_kinds() {
    let (_, cred) = pair(Algorithm::HS256, "k");
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    let t = handmade(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#, r#"{"iss":"k"}"#, SECRET);
    assert_invalid(&call(&layer, bearer(&t)).await, "Bad token; unsupported critical header");
    let t = handmade(r#"{"alg":"HS256"}"#, &format!(r#"{{"iss":"k","exp":{}}}"#, NOW + 60), SECRET);
    assert_admitted(&call(&layer, bearer(&t)).await, "k");

    assert!(JwtCredential::secret(consumer("a"), "k", Algorithm::RS256, SECRET).is_err());
    assert!(
        JwtCredential::public_key_pem(consumer("a"), "k", Algorithm::HS256, fixture("rsa_public.pem"))
            .is_err()
    );
    assert!(
        JwtCredential::public_key_pem(consumer("a"), "k", Algorithm::ES256, fixture("rsa_public.pem"))
            .is_err()
    );
    assert!(
        JwtCredential::jwks(consumer("a"), "k", Algorithm::RS256, "https://x/jwks", Duration::ZERO).is_err()
    );
    assert!(
        JwtCredential::jwks(consumer("a"), "k", Algorithm::HS256, "http://x/jwks", Duration::ZERO).is_err()
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_and_anonymous_applies() {
    let (enc, cred) = pair(Algorithm::RS256, "k");
    let t = sign(Algorithm::RS256, &enc, &json!({"iss": "k"}));
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred.clone())).build();
    let spoofed = |token: Option<&str>| {
        let mut req = Request::get("/orders")
            .header("x-consumer-id", "admin")
            .header("x-consumer-custom-id", "root")
            .header("x-anonymous-consumer", "false");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(()).unwrap()
    };
    let res = call(&layer, spoofed(Some(&t))).await;
    assert_admitted(&res, "k");
    assert!(res.headers().get("x-consumer-custom-id").is_none());

    let anonymous = Consumer { id: "anon".into(), ..Consumer::default() };
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred).anonymous(anonymous)).build();
    for req in [spoofed(None), spoofed(Some("garbage")), spoofed(Some(&t[..t.len() - 2]))] {
        let res = call(&layer, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-consumer-id"], "anon");
        assert_eq!(res.headers()["x-anonymous-consumer"], "true");
        assert!(res.headers().get("x-consumer-custom-id").is_none());
        assert!(res.extensions().get::<Consumer>().unwrap().anonymous);
    }
    // A higher-priority auth layer already identified the caller: left as it is.
    let mut req = Request::get("/orders?jwt=garbage").body(()).unwrap();
    let bob = Consumer { id: "bob".into(), ..Consumer::default() };
    bob.apply_to(&mut req);
    let res = call(&layer, req).await;
    assert_eq!(res.headers()["x-consumer-id"], "bob");
    assert_eq!(res.body().as_ref(), b"/orders?jwt=garbage");
    assert!(res.extensions().get::<Consumer>().is_none());
}

#[tokio::test]
async fn clones_share_the_verified_token_cache() {
    let (enc, cred) = pair(Algorithm::RS256, "k");
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = now.clone();
    let layer = JwtAuthLayer::builder()
        .credential(cred)
        .claims_to_verify([RegisteredClaim::Exp])
        .verified_token_cache(2)
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .build();
    let clones: Vec<JwtAuthLayer> = (0..16).map(|_| layer.clone()).collect();
    assert!(clones.iter().all(|c| c.shares_state_with(&layer)));
    assert!(!layer.shares_state_with(&JwtAuthLayer::builder().build()));

    let t = sign(Algorithm::RS256, &enc, &json!({"iss": "k", "exp": NOW + 10}));
    assert_admitted(&call(&clones[3], bearer(&t)).await, "k");
    assert_eq!(layer.cached_tokens(), 1);
    // Hit through another clone; exp is re-checked on every use.
    assert_admitted(&call(&clones[9], bearer(&t)).await, "k");
    now.store(NOW + 10, Ordering::Relaxed);
    assert_invalid(&call(&clones[1], bearer(&t)).await, "token expired");
    // Bounded.
    for (i, clone) in clones.iter().take(5).enumerate() {
        let t = sign(Algorithm::RS256, &enc, &json!({"iss": "k", "exp": NOW + 100, "i": i}));
        assert_admitted(&call(clone, bearer(&t)).await, "k");
    }
    assert_eq!(layer.cached_tokens(), 2);
    // A forged token never enters the cache.
    let forged = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&fixture("rsa2_private.pem")).unwrap(),
        &json!({"iss": "k"}),
    );
    assert_invalid(&call(&layer, bearer(&forged)).await, "Invalid signature");
    assert_invalid(&call(&layer, bearer(&forged)).await, "Invalid signature");
}

// === JWKS against a real local HTTP server ===

/// A JWKS endpoint on loopback that counts the requests it answers; `down` makes it answer 500.
struct JwksServer {
    url: String,
    calls: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
}

fn jwk(kid: &str, modulus_file: &str) -> Value {
    let n = String::from_utf8(fixture(modulus_file)).unwrap();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n.trim(), "e": "AQAB"})
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(json!({"keys": keys}).to_string()));
        let down = Arc::new(AtomicBool::new(false));
        let (c, b, d) = (calls.clone(), body.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let (c, b, d) = (c.clone(), b.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if d.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", String::from("{}"))
                    } else {
                        ("200 OK", b.lock().unwrap().clone())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer { url, calls, body, down }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn rs256(private: &str, kid: &str, claims: Value) -> String {
    let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::RS256) };
    let claims = with_exp(&claims);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&fixture(private)).unwrap()).unwrap()
}

#[tokio::test]
async fn jwks_rotation_refresh_limit_and_stale_keys() {
    let server = JwksServer::start(vec![jwk("k1", "rsa_n.b64u")]).await;
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = now.clone();
    let cred = JwtCredential::jwks(
        consumer("alice"),
        "issuer",
        Algorithm::RS256,
        &server.url,
        Duration::from_secs(60),
    )
    .unwrap();
    let layer = JwtAuthLayer::builder()
        .credential(cred)
        .verified_token_cache(100)
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .build();
    let claims = json!({"iss": "issuer"});

    // First use fetches; later uses are served from the cache.
    let t1 = rs256("rsa_private.pem", "k1", claims.clone());
    assert_admitted(&call(&layer, bearer(&t1)).await, "issuer");
    assert_admitted(&call(&layer.clone(), bearer(&t1)).await, "issuer");
    assert_eq!(server.calls(), 1);

    // Rotation: the endpoint now serves k2 only. Within the interval an unknown kid is refused
    // without a fetch; after it, one fetch picks the new key up.
    *server.body.lock().unwrap() = json!({"keys": [jwk("k2", "rsa2_n.b64u")]}).to_string();
    let t2 = rs256("rsa2_private.pem", "k2", claims.clone());
    now.store(NOW + 30, Ordering::Relaxed);
    assert_invalid(&call(&layer, bearer(&t2)).await, "Invalid signature");
    assert_eq!(server.calls(), 1);
    now.store(NOW + 60, Ordering::Relaxed);
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_eq!(server.calls(), 2);
    // The rotated-out key is gone, and its cached verification went with it.
    assert_invalid(&call(&layer, bearer(&t1)).await, "Invalid signature");

    // A flood of unknown kids: at most one fetch per interval.
    now.store(NOW + 200, Ordering::Relaxed);
    let flood: Vec<_> = (0..50)
        .map(|i| {
            let layer = layer.clone();
            let t = rs256("rsa_private.pem", &format!("unknown-{i}"), claims.clone());
            tokio::spawn(async move { call(&layer, bearer(&t)).await.status() })
        })
        .collect();
    for task in flood {
        assert_eq!(task.await.unwrap(), 401);
    }
    assert_eq!(server.calls(), 3);

    // Endpoint down: cached keys keep being served; the failed refresh is not retried early.
    server.down.store(true, Ordering::SeqCst);
    now.store(NOW + 300, Ordering::Relaxed);
    let t3 = rs256("rsa_private.pem", "k3", claims.clone());
    assert_invalid(&call(&layer, bearer(&t3)).await, "Invalid signature");
    assert_eq!(server.calls(), 4);
    let fresh = rs256("rsa2_private.pem", "k2", json!({"iss": "issuer", "n": 1}));
    assert_admitted(&call(&layer, bearer(&fresh)).await, "issuer");
    assert_invalid(&call(&layer, bearer(&t3)).await, "Invalid signature");
    assert_eq!(server.calls(), 4);
}

#[tokio::test]
async fn jku_and_x5u_are_never_fetched() {
    let server = JwksServer::start(vec![jwk("k1", "rsa_n.b64u")]).await;
    let decoy = JwksServer::start(vec![jwk("evil", "rsa2_n.b64u")]).await;
    let cred = JwtCredential::jwks(
        consumer("alice"),
        "issuer",
        Algorithm::RS256,
        &server.url,
        Duration::from_secs(60),
    )
    .unwrap();
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred)).build();
    let header = Header {
        kid: Some("evil".into()),
        jku: Some(decoy.url.clone()),
        x5u: Some(decoy.url.clone()),
        ..Header::new(Algorithm::RS256)
    };
    let key = EncodingKey::from_rsa_pem(&fixture("rsa2_private.pem")).unwrap();
    let t = jsonwebtoken::encode(&header, &json!({"iss": "issuer"}), &key).unwrap();
    assert_invalid(&call(&layer, bearer(&t)).await, "Invalid signature");
    assert_eq!(decoy.calls(), 0);
    assert_eq!(server.calls(), 1);
    // No kid at all: nothing to look up, nothing fetched.
    let t = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
        &json!({"iss": "issuer"}),
    );
    assert_invalid(&call(&layer, bearer(&t)).await, "Invalid signature");
    assert_eq!(server.calls(), 1);
}

#[test]
fn bearer_parsing_and_header_values() {
    assert_eq!(token::invalid("x").message(), "x");
    let value = HeaderValue::from_static("Bearer error=\"invalid_token\"");
    assert_eq!(token::invalid("x").into_response::<Bytes>(None).headers()["www-authenticate"], value);
}

// === issue 12: defaults that cannot be misread ===

#[tokio::test]
async fn duplicate_member_names_are_refused() {
    let (_, cred) = pair(Algorithm::HS256, "k");
    let layer = fixed_clock(JwtAuthLayer::builder().credential(cred).issuers(["k"])).build();
    let exp = NOW + 60;
    let ok = handmade(r#"{"alg":"HS256"}"#, &format!(r#"{{"iss":"k","sub":"a","exp":{exp}}}"#), SECRET);
    assert_admitted(&call(&layer, bearer(&ok)).await, "k");
    for payload in [
        format!(r#"{{"iss":"k","sub":"a","sub":"b","exp":{exp}}}"#),
        // A later `exp` would win with serde_json, an earlier one with other parsers.
        format!(r#"{{"iss":"k","exp":{},"exp":{exp}}}"#, NOW - 60),
        format!(r#"{{"iss":"other","iss":"k","exp":{exp}}}"#),
        // Escapes name the same member.
        format!(r#"{{"iss":"k","sub":"a","s\u0075b":"b","exp":{exp}}}"#),
        // Past the inline list: the hash set still sees it.
        format!(
            r#"{{"iss":"k",{}"exp":{exp},"c7":0}}"#,
            (0..40).map(|i| format!(r#""c{i}":0,"#)).collect::<String>()
        ),
    ] {
        let t = handmade(r#"{"alg":"HS256"}"#, &payload, SECRET);
        assert_invalid(&call(&layer, bearer(&t)).await, "Bad token; duplicate claim names");
    }
    // Nested objects are values, not claims: their members may repeat top-level names.
    let nested = format!(r#"{{"iss":"k","exp":{exp},"ctx":{{"iss":"x","exp":1}}}}"#);
    assert_admitted(&call(&layer, bearer(&handmade(r#"{"alg":"HS256"}"#, &nested, SECRET))).await, "k");
    let payload = format!(r#"{{"iss":"k","exp":{exp}}}"#);
    for header in [r#"{"alg":"none","alg":"HS256"}"#, r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#] {
        let t = handmade(header, &payload, SECRET);
        assert_invalid(&call(&layer, bearer(&t)).await, "Bad token; duplicate header names");
    }
}

#[tokio::test]
async fn audiences_and_issuers_allow_lists() {
    let (enc, cred) = pair(Algorithm::RS256, "k");
    let layer = fixed_clock(
        JwtAuthLayer::builder().credential(cred.clone()).audiences(["orders", "billing"]).issuers(["k"]),
    )
    .build();
    let t = |claims: Value| sign(Algorithm::RS256, &enc, &claims);
    for aud in [json!("orders"), json!(["other", "billing"]), json!(["orders"])] {
        assert_admitted(&call(&layer, bearer(&t(json!({"iss": "k", "aud": aud})))).await, "k");
    }
    for (aud, message) in [
        (json!("other"), "Invalid 'aud' in claims"),
        (json!(["other", "another"]), "Invalid 'aud' in claims"),
        (json!([]), "Invalid 'aud' in claims"),
        (json!(["orders", 7]), "Invalid 'aud' in claims"),
        (json!(7), "Invalid 'aud' in claims"),
        (json!({"aud": "orders"}), "Invalid 'aud' in claims"),
        (Value::Null, "No mandatory 'aud' in claims"),
    ] {
        assert_invalid(&call(&layer, bearer(&t(json!({"iss": "k", "aud": aud})))).await, message);
    }
    // `iss` selects the credential by key_claim_name; the allow-list is checked too.
    let by_kid =
        fixed_clock(JwtAuthLayer::builder().key_claim_name("kid").credential(cred).issuers(["https://idp"]))
            .build();
    let header = Header { kid: Some("k".into()), ..Header::new(Algorithm::RS256) };
    let signed = |claims: Value| jsonwebtoken::encode(&header, &with_exp(&claims), &enc).unwrap();
    assert_admitted(&call(&by_kid, bearer(&signed(json!({"iss": "https://idp"})))).await, "k");
    assert_invalid(
        &call(&by_kid, bearer(&signed(json!({"iss": "https://evil"})))).await,
        "Invalid 'iss' in claims",
    );
    assert_invalid(
        &call(&by_kid, bearer(&signed(json!({"sub": "x"})))).await,
        "No mandatory 'iss' in claims",
    );
    assert_invalid(
        &call(&by_kid, bearer(&signed(json!({"iss": ["https://idp"]})))).await,
        "Invalid 'iss' in claims",
    );
    // A forged token with a bad `aud` learns only that its signature is bad.
    let other = EncodingKey::from_rsa_pem(&fixture("rsa2_private.pem")).unwrap();
    let forged = sign(Algorithm::RS256, &other, &json!({"iss": "k", "aud": "other"}));
    assert_invalid(&call(&layer, bearer(&forged)).await, "Invalid signature");
}

#[tokio::test]
async fn a_jwks_key_the_endpoint_dropped_stops_being_trusted_after_max_age() {
    let server = JwksServer::start(vec![jwk("k1", "rsa_n.b64u"), jwk("k2", "rsa2_n.b64u")]).await;
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = now.clone();
    let cred =
        JwtCredential::jwks(consumer("alice"), "issuer", Algorithm::RS256, &server.url, Duration::ZERO)
            .unwrap()
            .jwks_max_age(Duration::from_secs(120));
    let layer = JwtAuthLayer::builder()
        .credential(cred)
        .verified_token_cache(100)
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .build();
    let t1 = rs256("rsa_private.pem", "k1", json!({"iss": "issuer"}));
    let t2 = rs256("rsa2_private.pem", "k2", json!({"iss": "issuer"}));
    assert_admitted(&call(&layer, bearer(&t1)).await, "issuer");
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_eq!(server.calls(), 1);
    // The endpoint drops k1. Within max age, the set (and the verified-token cache) is trusted.
    *server.body.lock().unwrap() = json!({"keys": [jwk("k2", "rsa2_n.b64u")]}).to_string();
    now.store(NOW + 119, Ordering::Relaxed);
    assert_admitted(&call(&layer, bearer(&t1)).await, "issuer");
    assert_eq!(server.calls(), 1);
    // Past it, the next request re-fetches: k1 is refused, k2 still admitted, one fetch.
    now.store(NOW + 120, Ordering::Relaxed);
    assert_invalid(&call(&layer, bearer(&t1)).await, "Invalid signature");
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_eq!(server.calls(), 2);
    // An outage is not a revocation: past max age with the endpoint down, k2 keeps working, and
    // the failed fetch is retried at most once per refresh interval (raised to 1 s).
    server.down.store(true, Ordering::SeqCst);
    now.store(NOW + 240, Ordering::Relaxed);
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_eq!(server.calls(), 3);
    now.store(NOW + 241, Ordering::Relaxed);
    assert_admitted(&call(&layer, bearer(&t2)).await, "issuer");
    assert_eq!(server.calls(), 4);
}
