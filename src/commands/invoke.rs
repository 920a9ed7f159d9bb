//! `nubo invoke APP/FN`: call a function directly and print its response.

use crate::client::{Client, encode_query};
use crate::commands::split_target;
use anyhow::{Context as _, bail};
use http::{HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

/// The request header that pins a revision.
const PIN_HEADER: &str = "nubo-revision";

pub(crate) async fn run(
    target: &str,
    data: Option<String>,
    method: Option<String>,
    path: &str,
    headers: &[String],
    include: bool,
    revision: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let (app, function) = split_target(target, true)?;
    let function = function.unwrap_or_default();
    let body = match data.as_deref() {
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
    let method = match method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid method {m:?}"))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut hs = Vec::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} must look like \"Name: value\""))?;
        hs.push((
            HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("invalid header name in {h:?}"))?,
            HeaderValue::from_str(v.trim())
                .with_context(|| format!("invalid header value in {h:?}"))?,
        ));
    }
    if !path.starts_with('/') {
        bail!("--path must start with '/', like --path /hello/world");
    }
    if let Some(r) = revision {
        if hs.iter().any(|(k, _)| k.as_str() == PIN_HEADER) {
            bail!(
                "pass the revision once: either --revision {r} or -H '{PIN_HEADER}: N', not both"
            );
        }
        hs.push((HeaderName::from_static(PIN_HEADER), HeaderValue::from(r)));
    }
    let client = Client::from_env()?;
    let url = format!(
        "/_nubo/api/v1/apps/{}/functions/{}/invoke?path={}",
        encode_query(&app),
        encode_query(&function),
        encode_query(path)
    );
    let body = match body {
        Some(b) => nubo_core::full_body(b),
        None => nubo_core::empty_body(),
    };
    let resp = client.send(method, &url, body, &hs).await?;
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
            .map(|e| e.error.code);
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
