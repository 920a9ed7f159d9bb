//! The S3-compatible endpoint: the object store's buckets served with the S3 REST API on a
//! listener of its own (path-style addressing, `http://HOST:7701/bucket/key`), so `aws s3`,
//! boto3 and any other S3 client work against Nubo. Requests are parsed and their SigV4
//! signatures checked by s3s (unsigned requests are refused); the operations are in `ops`,
//! and bodies stream between the network and the store's files in `transfer`.

mod credentials;
mod ops;
mod transfer;

pub use credentials::{CREDENTIALS_FILE, CredentialsError, S3Credentials};
/// The S3 service [`service`] builds; [`serve`] runs it on a listener.
pub use s3s::service::S3Service;

use crate::admin::{ApiError, Gw, gw};
use axum::extract::State;
use axum::response::IntoResponse;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use nubo_control::objects::Objects;
use nubo_core::ErrorCode;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The region clients are told to sign for. Any region works: signatures are checked against
/// the region the client names.
pub const REGION: &str = "us-east-1";

/// How long a client may take to send request headers (slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the S3 endpoint listens and the key pair it accepts, as the admin API reports them.
#[derive(Debug, Clone)]
pub struct S3Endpoint {
    /// The endpoint's URL, e.g. `http://127.0.0.1:7701`.
    pub url: String,
    /// The accepted key pair.
    pub credentials: S3Credentials,
}

/// The S3 service over `objects`, accepting requests signed with `credentials` only.
pub fn service(objects: Objects, credentials: &S3Credentials) -> S3Service {
    let mut builder = S3ServiceBuilder::new(ops::NuboS3 { objects });
    builder.set_auth(SimpleAuth::from_single(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
    ));
    builder.build()
}

/// Serves `service` on `listener` until `shutdown` completes, then waits up to `drain_timeout`
/// for requests in flight (a long download is cut off after it).
pub async fn serve(
    listener: TcpListener,
    service: S3Service,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "S3 accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "S3 connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(timeout_s = drain_timeout.as_secs(), "S3 drain deadline passed; closing remaining connections");
        }
    }
    Ok(())
}

/// The answer of `GET /_nubo/api/v1/s3/credentials`.
#[derive(Serialize)]
struct CredentialsAnswer<'a> {
    endpoint: &'a str,
    region: &'static str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
}

/// `GET /s3/credentials`: the S3 endpoint's URL and key pair, for `nubo s3 credentials`.
pub(crate) async fn credentials_endpoint(
    State(w): State<Gw>,
) -> Result<axum::response::Response, ApiError> {
    let gw = gw(&w)?;
    let Some(s3) = &gw.config.s3 else {
        return Err(ApiError::Plain(
            ErrorCode::NotFound,
            "the S3 endpoint is off on this server; start it with --s3-listen ADDR (or NUBO_S3_LISTEN)"
                .into(),
        ));
    };
    Ok(axum::Json(CredentialsAnswer {
        endpoint: &s3.url,
        region: REGION,
        access_key_id: &s3.credentials.access_key_id,
        secret_access_key: &s3.credentials.secret_access_key,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_the_credentials_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let get = &doc["paths"]["/_nubo/api/v1/s3/credentials"]["get"];
        assert!(get["summary"].as_str().unwrap().contains("key pair"));
        let schema = &doc["components"]["schemas"]["S3Credentials"]["required"];
        for field in ["endpoint", "region", "access_key_id", "secret_access_key"] {
            assert!(
                schema.as_array().unwrap().iter().any(|f| f == field),
                "{field}"
            );
        }
    }
}
