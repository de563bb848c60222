//! `JwtAuthLayer` on a valid token against a bare `jsonwebtoken::decode` of the same token, per
//! algorithm, in the same run; and a repeated RS256 token with the verified-token cache.
//!
//! `cargo bench --bench jwt -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis::auth::jwt::{JwtAuthLayer, JwtCredential, RegisteredClaim};
use portcullis::consumer::Consumer;
use serde_json::{Value, json};
use tower::{Layer, Service, service_fn};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}{name}")).unwrap()
}

/// Polls a future that is ready at once (the inner service answers synchronously).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("not ready"),
    }
}

fn keys(alg: Algorithm) -> (EncodingKey, DecodingKey, Vec<u8>, bool) {
    let secret = b"a-shared-secret-of-decent-length".to_vec();
    match alg {
        Algorithm::HS256 => {
            (EncodingKey::from_secret(&secret), DecodingKey::from_secret(&secret), secret, true)
        }
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
            DecodingKey::from_rsa_pem(&fixture("rsa_public.pem")).unwrap(),
            fixture("rsa_public.pem"),
            false,
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap(),
            DecodingKey::from_ec_pem(&fixture("ec256_public.pem")).unwrap(),
            fixture("ec256_public.pem"),
            false,
        ),
        _ => (
            EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(),
            DecodingKey::from_ed_pem(&fixture("ed25519_public.pem")).unwrap(),
            fixture("ed25519_public.pem"),
            false,
        ),
    }
}

fn bench(c: &mut Criterion) {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let mut group = c.benchmark_group("jwt");
    for (alg, name) in [
        (Algorithm::HS256, "HS256"),
        (Algorithm::RS256, "RS256"),
        (Algorithm::ES256, "ES256"),
        (Algorithm::EdDSA, "EdDSA"),
    ] {
        let (encoding, decoding, material, hmac) = keys(alg);
        let claims = json!({"iss": "bench-key", "sub": "user-42", "exp": exp});
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();

        let validation = Validation::new(alg);
        group.bench_function(format!("bare_decode/{name}"), |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap())
        });

        let consumer = Consumer { id: "c-1".into(), username: Some("alice".into()), ..Consumer::default() };
        let credential = if hmac {
            JwtCredential::secret(consumer, "bench-key", alg, &material).unwrap()
        } else {
            JwtCredential::public_key_pem(consumer, "bench-key", alg, &material).unwrap()
        };
        let inner =
            service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Bytes::new())) });
        let layers = [
            ("layer", JwtAuthLayer::builder().credential(credential.clone())),
            ("layer_cached", JwtAuthLayer::builder().credential(credential).verified_token_cache(1024)),
        ];
        for (label, builder) in layers {
            let mut svc = builder.claims_to_verify([RegisteredClaim::Exp]).build().layer(inner);
            let authorization = format!("Bearer {token}");
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter_batched(
                    || Request::get("/orders").header("authorization", &authorization).body(()).unwrap(),
                    |req| {
                        let res = ready(svc.call(req)).unwrap();
                        assert_eq!(res.status(), 200);
                        res
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
