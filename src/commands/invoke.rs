//! `nubo invoke APP/FN`: call a function directly and print its response, or with `--async`
//! queue the call and print its invocation id.

use crate::client::{Client, api_error, encode_query, read_body};
use crate::commands::split_target;
use anyhow::{Context as _, bail};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use nubo_core::api::v1::AsyncAccepted;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

/// The request header that pins a revision.
const PIN_HEADER: &str = "nubo-revision";
/// The request header that makes an invocation async.
const INVOCATION_TYPE_HEADER: &str = "nubo-invocation-type";
/// The request header naming an async invocation for deduplication.
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// What to send, as given on the command line.
pub(crate) struct Request<'a> {
    /// APP/FUNCTION.
    pub target: &'a str,
    /// The body, or @FILE, or @-.
    pub data: Option<String>,
    /// The method; default POST with data, GET without.
    pub method: Option<String>,
    /// Path and query the function sees.
    pub path: &'a str,
    /// "Name: value" headers.
    pub headers: &'a [String],
}

/// A request checked and ready to send.
struct Prepared {
    app: String,
    url: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
}

fn prepare(r: Request<'_>) -> anyhow::Result<Prepared> {
    let (app, function) = split_target(r.target, true)?;
    let function = function.unwrap_or_default();
    let body = match r.data.as_deref() {
        None => None,
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the request body from stdin")?;
            Some(buf)
        }
        Some(d) if d.starts_with('@') => Some(
            std::fs::read(&d[1..])
                .with_context(|| format!("reading the request body from {}", &d[1..]))?,
        ),
        Some(d) => Some(d.as_bytes().to_vec()),
    };
    let method = match r.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid method {m:?}"))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = Vec::new();
    for h in r.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} must look like \"Name: value\""))?;
        headers.push((
            HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("invalid header name in {h:?}"))?,
            HeaderValue::from_str(v.trim())
                .with_context(|| format!("invalid header value in {h:?}"))?,
        ));
    }
    if !r.path.starts_with('/') {
        bail!("--path must start with '/', like --path /hello/world");
    }
    let url = format!(
        "/_nubo/api/v1/apps/{}/functions/{}/invoke?path={}",
        encode_query(&app),
        encode_query(&function),
        encode_query(r.path)
    );
    Ok(Prepared {
        app,
        url,
        method,
        headers,
        body,
    })
}

impl Prepared {
    fn body(&mut self) -> nubo_core::Body {
        match self.body.take() {
            Some(b) => nubo_core::full_body(b),
            None => nubo_core::empty_body(),
        }
    }
}

/// `nubo invoke APP/FN --async`: queues the invocation and prints its id.
pub(crate) async fn submit(
    r: Request<'_>,
    idempotency_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut p = prepare(r)?;
    if p.headers.iter().any(|(k, _)| k.as_str() == PIN_HEADER) {
        bail!(
            "an async invocation runs on the revision taking traffic when it is delivered; drop -H '{PIN_HEADER}: N'"
        );
    }
    p.headers.push((
        HeaderName::from_static(INVOCATION_TYPE_HEADER),
        HeaderValue::from_static("event"),
    ));
    if let Some(k) = idempotency_key {
        if p.headers
            .iter()
            .any(|(h, _)| h.as_str() == IDEMPOTENCY_KEY_HEADER)
        {
            bail!(
                "pass the idempotency key once: either --idempotency-key or -H '{IDEMPOTENCY_KEY_HEADER}: K', not both"
            );
        }
        p.headers.push((
            HeaderName::from_static(IDEMPOTENCY_KEY_HEADER),
            HeaderValue::from_str(k).with_context(|| {
                format!("--idempotency-key {k:?} must be visible ASCII characters")
            })?,
        ));
    }
    let client = Client::from_env()?;
    let body = p.body();
    let resp = client.send(p.method, &p.url, body, &p.headers).await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_body(resp).await?;
    if status != StatusCode::ACCEPTED {
        let err = api_error(status, &bytes);
        if status.is_success() {
            bail!(
                "the server ran the invocation instead of queueing it (it answered {status}); it may predate async invocations: upgrade it"
            );
        }
        return Err(match retry_after {
            Some(s) if status == StatusCode::TOO_MANY_REQUESTS => {
                err.context(format!("not queued; retry in {s}s"))
            }
            _ => err.context(format!("not queued in {}", p.app)),
        });
    }
    let accepted: AsyncAccepted = serde_json::from_slice(&bytes)
        .context("unexpected answer from the server for an async invocation")?;
    println!("{}", accepted.invocation_id);
    if accepted.replay {
        eprintln!(
            "(seen before: the original invocation, now {}; nothing new was queued)",
            accepted.state
        );
    } else {
        eprintln!(
            "queued; `nubo invocation {}` shows how it goes",
            accepted.invocation_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `nubo invoke APP/FN`: runs the function and streams its response body to stdout.
pub(crate) async fn run(
    r: Request<'_>,
    include: bool,
    revision: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut p = prepare(r)?;
    let app = p.app.clone();
    let mut hs = std::mem::take(&mut p.headers);
    if let Some(r) = revision {
        if hs.iter().any(|(k, _)| k.as_str() == PIN_HEADER) {
            bail!(
                "pass the revision once: either --revision {r} or -H '{PIN_HEADER}: N', not both"
            );
        }
        hs.push((HeaderName::from_static(PIN_HEADER), HeaderValue::from(r)));
    }
    let client = Client::from_env()?;
    let body = p.body();
    let resp = client.send(p.method.clone(), &p.url, body, &hs).await?;
    let status = resp.status();
    let id = resp
        .headers()
        .get("nubo-invocation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if include {
        eprintln!("{status}");
        for (k, v) in resp.headers() {
            eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
        eprintln!();
    }
    if let Some(asked) = revision
        && status.is_success()
    {
        let served = resp
            .headers()
            .get(PIN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if served != Some(asked) {
            bail!(
                "asked for revision {asked} of {app} but the server ran {}; it may predate revision pinning: upgrade it",
                served.map_or("an unnamed revision".to_string(), |s| format!(
                    "revision {s}"
                ))
            );
        }
    }
    // A process function's handler error: the body is the runtime's own error document.
    let function_error = resp.headers().contains_key("x-amz-function-error");
    let mut body = resp.into_body();
    let mut out = std::io::stdout();
    let is_error = status.is_client_error() || status.is_server_error();
    let mut error_bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the response was cut off")?;
        if let Some(data) = frame.data_ref() {
            if is_error && error_bytes.len() < 64 * 1024 {
                error_bytes.extend_from_slice(data);
            }
            out.write_all(data)?;
            out.flush()?;
        }
    }
    if is_error {
        // Nubo's own errors are JSON with a code; a function's own 4xx/5xx passes through.
        let code = serde_json::from_slice::<nubo_core::api::v1::ErrorBody>(&error_bytes)
            .ok()
            .map(|e| e.error.code)
            .or_else(|| function_error.then(|| "function_error".to_string()));
        if !error_bytes.ends_with(b"\n") {
            println!();
        }
        eprintln!(
            "{status}{}{}",
            code.map(|c| format!(" {c}")).unwrap_or_default(),
            id.map(|i| format!(" (invocation {i})")).unwrap_or_default()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
