//! A small client of the admin API, used by every CLI command. It reads `NUBO_URL` (default the
//! local server) and `NUBO_TOKEN`.

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nubo_core::Body;
use nubo_core::api::v1::ErrorBody;
use serde::de::DeserializeOwned;

/// The default server address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// A connection to one server's admin API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Body>,
}

impl Client {
    /// A client for `NUBO_URL`.
    pub fn from_env() -> anyhow::Result<Client> {
        let url = std::env::var("NUBO_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        Client::new(&url, std::env::var("NUBO_TOKEN").ok())
    }

    /// A client for `base`.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!(
                "NUBO_URL {base:?} must start with http:// (put a TLS proxy in front of Nubo for https)"
            );
        }
        base.parse::<Uri>()
            .with_context(|| format!("NUBO_URL {base:?} is not a valid URL"))?;
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { base, token, http })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to `path` (which starts with '/').
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(header::HeaderName, HeaderValue)],
    ) -> anyhow::Result<Response<Incoming>> {
        let uri = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&uri).body(body)?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}"))?,
            );
        }
        for (k, v) in headers {
            req.headers_mut().append(k.clone(), v.clone());
        }
        self.http.request(req).await.map_err(|e| {
            anyhow!("cannot reach the Nubo server at {} ({e}); start one with `nubo server` or set NUBO_URL", self.base)
        })
    }

    /// Sends a request and decodes a JSON answer, turning error bodies into errors.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(header::HeaderName, HeaderValue)],
    ) -> anyhow::Result<T> {
        let resp = self.send(method, path, body, headers).await?;
        let status = resp.status();
        let bytes = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the server for {path}"))
    }

    /// DELETE, expecting a success with no body worth reading.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .send(Method::DELETE, path, nubo_core::empty_body(), &[])
            .await?;
        let status = resp.status();
        let body = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(())
    }

    /// GET and decode JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::GET, path, nubo_core::empty_body(), &[])
            .await
    }
}

/// Reads a whole response body.
pub async fn read_body(resp: Response<Incoming>) -> anyhow::Result<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .context("reading the server's answer")?
        .to_bytes())
}

/// Turns an error response into an error whose message is the server's.
pub fn api_error(status: http::StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => match e.error.invocation_id {
            Some(id) => anyhow!("{} ({}, invocation {id})", e.error.message, e.error.code),
            None => anyhow!("{} ({})", e.error.message, e.error.code),
        },
        Err(_) => anyhow!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        ),
    }
}

/// Percent-encodes a query parameter value.
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
