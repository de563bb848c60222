//! `TransformLayer` in front of an axum router: `/api/users?id=42` reaches axum's
//! `/users/{id}` with an `X-API-Version` header, and every answer gets `X-Served-By`.
//!
//! ```text
//! cargo run --example transform_axum            # serves one request to itself and exits
//! cargo run --example transform_axum -- serve   # keeps serving on 127.0.0.1:3000
//! ```

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Router, ServiceExt};
use portcullis::transform::{Action, RequestPart, ResponsePart, TransformLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Layer;

async fn user(Path(id): Path<String>, headers: HeaderMap) -> String {
    let version = headers.get("x-api-version").and_then(|v| v.to_str().ok()).unwrap_or("?");
    format!("user {id} (API v{version})\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transform = TransformLayer::builder()
        // The path axum routes on is the rewritten one: the layer wraps the whole router.
        .replace_uri("/users/$(query_params.id or 'unknown')")
        .request(Action::Remove, RequestPart::Querystring, ["id"])
        .request(Action::Add, RequestPart::Headers, ["X-API-Version:$(headers.accept-version or '1')"])
        .response(Action::Add, ResponsePart::Headers, ["X-Served-By:portcullis"])
        .build()?;
    let app = transform.layer(Router::new().route("/users/{id}", get(user)));

    let serve_forever = std::env::args().nth(1).as_deref() == Some("serve");
    let listener =
        tokio::net::TcpListener::bind(if serve_forever { "127.0.0.1:3000" } else { "127.0.0.1:0" }).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, ServiceExt::<axum::extract::Request>::into_make_service(app)).await
    });
    if serve_forever {
        println!(
            "listening on http://{addr}; try: curl -i 'http://{addr}/api/users?id=42' -H 'accept-version: 2'"
        );
        server.await??;
        return Ok(());
    }

    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /api/users?id=42 HTTP/1.1\r\nhost: example\r\naccept-version: 2\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    print!("{answer}");
    assert!(answer.contains("x-served-by: portcullis"), "{answer}");
    assert!(answer.ends_with("user 42 (API v2)\n"), "{answer}");
    Ok(())
}
