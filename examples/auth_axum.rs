//! JWT or API key in front of an axum router, Kong's "logical OR" pattern: both auth layers have
//! an `anonymous` consumer, so a request passes when either credential verifies, and an
//! `AclLayer` turns away the anonymous consumer.
//!
//! ```text
//! cargo run --example auth_axum            # serves three requests to itself and exits
//! cargo run --example auth_axum -- serve   # keeps serving on 127.0.0.1:3000
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Extension, Router};
use portcullis::auth::acl::AclLayer;
use portcullis::auth::api_key::{ApiKeyAuthLayer, ApiKeys, KeyHasher};
use portcullis::auth::jwt::{Algorithm, JwtAuthLayer, JwtCredential};
use portcullis::consumer::Consumer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

const SECRET: &str = "example-secret-of-at-least-32-bytes!";

async fn orders(Extension(consumer): Extension<Consumer>) -> String {
    format!("orders for {}\n", consumer.id)
}

fn consumer(id: &str, groups: &[&str]) -> Consumer {
    Consumer {
        id: id.into(),
        username: Some(id.into()),
        groups: groups.iter().map(|g| (*g).into()).collect(),
        ..Consumer::default()
    }
}

async fn ask(addr: std::net::SocketAddr, header: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET /orders HTTP/1.1\r\nhost: example\r\n{header}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let anonymous = Consumer { anonymous: true, ..consumer("anonymous", &["anonymous"]) };
    let jwt = JwtAuthLayer::builder()
        .credential(JwtCredential::secret(
            consumer("alice", &["staff"]),
            "alice-iss",
            Algorithm::HS256,
            SECRET,
        )?)
        .anonymous(anonymous.clone())
        .build();
    let mut keys = ApiKeys::new(KeyHasher::sha256());
    keys.insert_key(b"ci-bot-key-0123456789", consumer("ci-bot", &["bots"]))?;
    let api_key = ApiKeyAuthLayer::builder(keys).anonymous(anonymous).build();
    let app = Router::new().route("/orders", get(orders)).layer(
        ServiceBuilder::new()
            .layer(jwt) // runs first (Kong priority 1450)
            .layer(api_key) // 1250: skipped when the JWT already authenticated
            .layer(AclLayer::deny(["anonymous"])), // neither credential verified: 403
    );

    let serve_forever = std::env::args().nth(1).as_deref() == Some("serve");
    let listener =
        tokio::net::TcpListener::bind(if serve_forever { "127.0.0.1:3000" } else { "127.0.0.1:0" }).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if serve_forever {
        println!(
            "listening on http://{addr}; try: curl -i http://{addr}/orders -H 'apikey: ci-bot-key-0123456789'"
        );
        server.await??;
        return Ok(());
    }

    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": "alice-iss", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let with_jwt = ask(addr, &format!("authorization: Bearer {token}\r\n")).await?;
    let with_key = ask(addr, "apikey: ci-bot-key-0123456789\r\n").await?;
    let with_nothing = ask(addr, "").await?;
    for answer in [&with_jwt, &with_key, &with_nothing] {
        println!("{}", answer.lines().next().unwrap_or_default());
    }
    assert!(with_jwt.starts_with("HTTP/1.1 200") && with_jwt.ends_with("orders for alice\n"), "{with_jwt}");
    assert!(with_key.starts_with("HTTP/1.1 200") && with_key.ends_with("orders for ci-bot\n"), "{with_key}");
    assert!(with_nothing.starts_with("HTTP/1.1 403"), "{with_nothing}");
    Ok(())
}
