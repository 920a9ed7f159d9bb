//! Admin endpoints of metering: the usage report (`GET /usage`) and the per-invocation export
//! (`GET /usage/export`, JSON lines streamed page by page so memory stays bounded however
//! much is exported).

use crate::admin::{ApiError, Gw, gw};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nubo_core::ErrorCode;
use nubo_core::api::v1::UsageQuery;
use serde::Deserialize;

/// Records read per export page; each page is read off the async threads and sent before the
/// next is read.
const EXPORT_PAGE: usize = 500;

/// Pages buffered between the reader and a slow client. Bounds an export's memory to this
/// many pages.
const EXPORT_BUFFER: usize = 2;

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "usage request failed");
    ApiError::Plain(
        ErrorCode::Internal,
        "Nubo failed while handling the request; the server log has details".into(),
    )
}

/// A store usage error as an API error: a bad filter is the caller's to fix, anything else is
/// logged and answered without details.
fn usage_error(code: ErrorCode, message: String) -> ApiError {
    if code == ErrorCode::Internal {
        return internal(message);
    }
    ApiError::Plain(code, message)
}

/// `GET /usage`: requests, errors, billed GB-seconds, bytes and cost between two times,
/// grouped by function, tenant, revision, day or hour.
pub(crate) async fn report(
    State(w): State<Gw>,
    Query(q): Query<UsageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let store = gw(&w)?.control.store().clone();
    let report = tokio::task::spawn_blocking(move || {
        store
            .usage_report(&q)
            .map_err(|e| usage_error(e.code(), e.to_string()))
    })
    .await
    .map_err(internal)??;
    Ok(axum::Json(report))
}

/// The query of `GET /usage/export`.
#[derive(Deserialize)]
pub(crate) struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    app: Option<String>,
    function: Option<String>,
    /// Only `jsonl` (the default).
    format: Option<String>,
}

/// `GET /usage/export`: one JSON line per recorded invocation (oldest first), each with the
/// invocation id as its stable id. A bad filter is answered 400 before anything is streamed.
pub(crate) async fn export(
    State(w): State<Gw>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    if let Some(f) = q.format.as_deref().filter(|f| *f != "jsonl") {
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!("cannot export usage as {f:?}: the export format is jsonl"),
        ));
    }
    let query = UsageQuery {
        since: q.since,
        until: q.until,
        tenant: q.tenant,
        app: q.app,
        function: q.function,
        by: None,
    };
    let store = gw(&w)?.control.store().clone();
    // Every page is read as of the same moment, so the bounds do not move while it streams.
    let now = std::time::SystemTime::now();
    let page = {
        let (store, query) = (store.clone(), query.clone());
        move |after: i64| -> Result<(Bytes, Option<i64>), ApiError> {
            let (records, next) = store
                .usage_export_page(&query, now, after, EXPORT_PAGE)
                .map_err(|e| usage_error(e.code(), e.to_string()))?;
            let mut out = Vec::with_capacity(records.len() * 320);
            for r in &records {
                serde_json::to_writer(&mut out, r).map_err(internal)?;
                out.push(b'\n');
            }
            Ok((Bytes::from(out), next))
        }
    };
    // The first page is read before answering, so a malformed filter gets a proper error.
    let first_page = page.clone();
    let (first, mut next) = tokio::task::spawn_blocking(move || first_page(0))
        .await
        .map_err(internal)??;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_BUFFER);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(after) = next {
            let read = page.clone();
            let chunk = match tokio::task::spawn_blocking(move || read(after)).await {
                Ok(Ok((chunk, n))) => {
                    next = n;
                    Ok(chunk)
                }
                // The client sees the stream cut short, not a truncated-but-complete export.
                _ => {
                    tracing::error!("a usage export failed part way; the stream is cut short");
                    next = None;
                    Err(std::io::Error::other("the usage export failed part way"))
                }
            };
            // A client that went away stops the export.
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_the_usage_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let report = &doc["paths"]["/_nubo/api/v1/usage"]["get"];
        let names: Vec<&str> = report["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["since", "until", "tenant", "app", "function", "by"]);
        let export = &doc["paths"]["/_nubo/api/v1/usage/export"]["get"];
        assert!(export["responses"]["200"]["content"]["application/x-ndjson"].is_object());
        for schema in [
            "UsageReport",
            "UsageRow",
            "UsageGap",
            "UsageExportRecord",
            "InvocationUsage",
        ] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }
}
