//! The one JSON error body, and how each rejection maps to a status and headers.
//!
//! Every response the gateway itself produces goes through [`Rejection::into_response`], so the
//! body shape (`{"error", "message", "request_id"}`) and the `Content-Type` are decided in exactly
//! one place.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::ext::RequestId;

/// A response the gateway produces instead of calling the next service.
///
/// Layers return rejections as *responses* (never as `Err`), so a stack keeps `Error = S::Error`
/// and axum needs no `HandleErrorLayer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    // Rarely more than one or two; a Vec keeps `Result<_, Rejection>` small.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection with any status, machine-readable `code` and human `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, code, message: message.into(), headers: Vec::new() }
    }

    /// 404 `no_route`: no route matched (a method mismatch included).
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no_route", "no Route matched with those values")
    }

    /// 400 `bad_request`, saying what was wrong.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 431 `request_header_fields_too_large`.
    pub fn header_fields_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_header_fields_too_large",
            "request header fields too large",
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
    }

    /// 408 `request_timeout`: the client stopped sending its request body.
    pub fn request_timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "request body read timeout")
    }

    /// 502 `bad_gateway`: connect failure, reset or an invalid upstream response.
    pub fn bad_gateway(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
    }

    /// 504 `upstream_timeout`.
    pub fn upstream_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "upstream request timeout")
    }

    /// 503 `no_healthy_upstream`.
    pub fn no_healthy_upstream() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_upstream", "no healthy upstream")
    }

    /// Adds a header to the rejection response (`WWW-Authenticate`, `Retry-After`, ...).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable `error` code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human-readable `message`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Renders the JSON response. `request_id` is echoed in the body when known.
    pub fn into_response<B: From<Bytes>>(self, request_id: Option<&RequestId>) -> Response<B> {
        let mut body = serde_json::Map::with_capacity(3);
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into_owned().into());
        if let Some(id) = request_id {
            body.insert("request_id".into(), id.as_str().into());
        }
        let bytes = Bytes::from(serde_json::Value::Object(body).to_string());
        let mut response = Response::new(B::from(bytes.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }

    /// Renders the JSON response for `request`, reading its [`RequestId`] extension.
    pub fn into_response_for<B: From<Bytes>, R>(self, request: &http::Request<R>) -> Response<B> {
        self.into_response(request.extensions().get::<RequestId>())
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

/// A type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_request_id() {
        let id = RequestId::from_static("abc");
        let response: Response<Bytes> = Rejection::no_route().into_response(Some(&id));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "no_route", "message": "no Route matched with those values", "request_id": "abc"})
        );
        assert_eq!(response.headers()[CONTENT_LENGTH], response.body().len().to_string().as_str());
    }

    #[test]
    fn extra_headers_are_kept() {
        let response: Response<Bytes> =
            Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
                .with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Key"))
                .into_response(None);
        assert_eq!(response.headers()[http::header::WWW_AUTHENTICATE], "Key");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert!(body.get("request_id").is_none());
    }
}
