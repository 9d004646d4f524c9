//! Publishing the token signing keys so anyone can verify release tokens and receipts with a standard JWT
//! library: a JWKS (`/.well-known/jwks.json`, RFC 7517, every replica's key, `kid` = RFC 7638 thumbprint) and
//! an OpenID-style discovery document (`/.well-known/openid-configuration`) naming the issuer and the JWKS,
//! over HTTP on their own listener (`sealroom broker serve --http-listen`).
//!
//! The documents are public by nature; the HTTP face answers only these two GETs (anything else is 404/405),
//! reads no request body, and serves the keys a [`KeySource`] lists at the time of the request, so a replica
//! that joined later is published by every replica.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::error::{Error, Result};

const LAYER: &str = "jwks";
/// Path of the key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of the discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Where the published public keys come from.
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// Every signing key whose tokens may still be presented (JWKs with `kid`).
    ///
    /// # Errors
    /// When the keys cannot be read.
    fn signing_keys(&self) -> Result<Vec<Value>>;
}

/// A fixed set of keys (the embedded broker publishes its own).
#[derive(Debug, Clone)]
pub struct StaticKeys(pub Vec<Value>);

impl KeySource for StaticKeys {
    fn signing_keys(&self) -> Result<Vec<Value>> {
        Ok(self.0.clone())
    }
}

/// The JWKS document.
#[must_use]
pub fn jwks_document(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// The discovery document for `issuer` (an absolute URL without trailing slash).
#[must_use]
pub fn discovery_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["iss", "iat", "exp", "eat_profile", "eat_nonce", "ear_verifier_id", "submods"],
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    // Keys rotate rarely; relying parties may cache briefly.
    h.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("public, max-age=300"));
    resp
}

/// The answer to one request.
fn answer(method: &Method, path: &str, issuer: &str, keys: &dyn KeySource) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, JWKS_PATH) => match keys.signing_keys() {
            Ok(k) => json_response(StatusCode::OK, &jwks_document(&k)),
            Err(e) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": e.to_string()})),
        },
        (&Method::GET, DISCOVERY_PATH) => json_response(StatusCode::OK, &discovery_document(issuer)),
        (_, JWKS_PATH | DISCOVERY_PATH) => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "only GET"}))
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves the two documents on `listener` until it fails.
///
/// # Errors
/// When accepting fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    issuer: String,
    keys: Arc<dyn KeySource>,
) -> Result<()> {
    let issuer: Arc<str> = issuer.into();
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| Error::check(LAYER, format!("accept: {e}")))?;
        let (issuer, keys) = (Arc::clone(&issuer), Arc::clone(&keys));
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (issuer, keys) = (Arc::clone(&issuer), Arc::clone(&keys));
                    async move {
                        // Reading the keys may block on the database: off the async workers.
                        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                        let resp = tokio::task::spawn_blocking(move || {
                            answer(&method, &path, &issuer, keys.as_ref())
                        })
                        .await
                        .unwrap_or_else(|_| {
                            json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": "task failed"}))
                        });
                        Ok::<_, Infallible>(resp)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_name_issuer_keys_and_refuse_other_requests() {
        let keys = StaticKeys(vec![json!({"kty": "EC", "kid": "k1"}), json!({"kty": "EC", "kid": "k2"})]);
        let ok = answer(&Method::GET, JWKS_PATH, "https://broker.example", &keys);
        assert_eq!(ok.status(), StatusCode::OK);
        let d = discovery_document("https://broker.example");
        assert_eq!(d["jwks_uri"], "https://broker.example/.well-known/jwks.json");
        assert_eq!(jwks_document(&keys.0)["keys"][1]["kid"], "k2");
        assert_eq!(answer(&Method::POST, JWKS_PATH, "x", &keys).status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer(&Method::GET, "/admin", "x", &keys).status(), StatusCode::NOT_FOUND);
    }
}
