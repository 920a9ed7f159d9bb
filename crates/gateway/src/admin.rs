//! The admin API (`/_nubo/api/v1/...`) and ops endpoints (`/_nubo/health`, `/_nubo/ready`).
//! The CLI uses nothing else.

use crate::rescue::error_response;
use crate::server::Gateway;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use nubo_control::{DeployError, LiveApp, route_infos};
use nubo_core::api::v1::AppSummary;
use nubo_core::{ErrorCode, limits, rfc3339};
use serde::Deserialize;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// Most records one listing returns. Bounds response size and query time.
const MAX_LIST: usize = 1_000;
/// How often a log follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often a follower is sent an empty keep-alive line (also how a gone client is noticed).
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(5);

type Gw = Weak<Gateway>;

/// An admin API error: a code from the registry and a message.
struct ApiError(ErrorCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0, self.1, None).map(axum::body::Body::new)
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let code = e.code();
        let msg = if code == ErrorCode::Internal {
            tracing::error!(error = %e, "admin request failed");
            "Nubo failed while handling the request; the server log has details".to_string()
        } else {
            e.to_string()
        };
        ApiError(code, msg)
    }
}

fn gw(w: &Gw) -> Result<Arc<Gateway>, ApiError> {
    w.upgrade().ok_or_else(|| {
        ApiError(
            ErrorCode::ShuttingDown,
            "the server is shutting down".into(),
        )
    })
}

pub(crate) fn router(weak: Gw) -> Router {
    Router::new()
        .route("/_nubo/health", get(health))
        .route("/_nubo/ready", get(ready))
        .route("/_nubo/api/v1/openapi.json", get(openapi))
        .route("/_nubo/api/v1/apps", get(list_apps).post(deploy))
        .route("/_nubo/api/v1/apps/{app}", get(get_app).delete(remove_app))
        .route("/_nubo/api/v1/apps/{app}/invocations", get(invocations))
        .route("/_nubo/api/v1/apps/{app}/logs", get(logs))
        .route(
            "/_nubo/api/v1/apps/{app}/functions/{function}/invoke",
            any(invoke),
        )
        .route("/_nubo/api/v1/invocations/{id}", get(invocation))
        .fallback(|| async {
            ApiError(
                ErrorCode::NotFound,
                "no such admin endpoint; see /_nubo/api/v1/openapi.json".into(),
            )
        })
        .layer(DefaultBodyLimit::max(limits::MAX_DEPLOY_BYTES as usize))
        .with_state(weak)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(w): State<Gw>) -> Response {
    match w.upgrade() {
        Some(g) if !g.is_draining() => {
            axum::Json(serde_json::json!({ "status": "ready" })).into_response()
        }
        _ => ApiError(
            ErrorCode::ShuttingDown,
            "the server is shutting down".into(),
        )
        .into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

fn summary(a: &LiveApp) -> AppSummary {
    AppSummary {
        name: a.name.to_string(),
        revision: a.revision,
        deployed_at: rfc3339(a.deployed_at),
        functions: a.manifest.functions.keys().cloned().collect(),
        routes: route_infos(&a.manifest),
    }
}

async fn list_apps(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let apps: Vec<AppSummary> = g.control.apps().iter().map(|a| summary(a)).collect();
    Ok(axum::Json(apps))
}

async fn get_app(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let a = g.control.app(&app).ok_or(DeployError::AppNotFound(app))?;
    Ok(axum::Json(summary(&a)))
}

async fn deploy(State(w): State<Gw>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let resp = g.control.deploy(&body).await?;
    Ok((StatusCode::CREATED, axum::Json(resp)))
}

async fn remove_app(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let revision = g.control.remove(&app).await?;
    Ok(axum::Json(
        serde_json::json!({ "app": app, "removed_revision": revision }),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    function: Option<String>,
    limit: Option<usize>,
}

async fn invocations(
    State(w): State<Gw>,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let limit = q.limit.unwrap_or(50).min(MAX_LIST);
    let recs = g.control.invocations(app, q.function, limit).await?;
    Ok(axum::Json(recs))
}

async fn invocation(
    State(w): State<Gw>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    match g.control.invocation(id.clone()).await? {
        Some((record, logs)) => Ok(axum::Json(
            serde_json::json!({ "record": record, "logs": logs }),
        )),
        None => Err(ApiError(
            ErrorCode::InvocationNotFound,
            format!("no invocation {id:?} is recorded"),
        )),
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    function: Option<String>,
    /// A duration back from now (`10m`, `1h`).
    since: Option<String>,
    /// Resume after this cursor.
    after: Option<i64>,
    follow: Option<bool>,
    limit: Option<usize>,
}

/// Log lines as newline-delimited JSON, each with its `cursor`; with `follow=true` the stream
/// stays open and new lines arrive as they are written.
async fn logs(
    State(w): State<Gw>,
    Path(app): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let g = gw(&w)?;
    if g.control.app(&app).is_none() && !q.follow.unwrap_or(false) {
        // A removed app may still have logs; only refuse names that never had any.
        let any = g
            .control
            .logs(app.clone(), None, SystemTime::UNIX_EPOCH, None, 1)
            .await?;
        if any.is_empty() {
            return Err(DeployError::AppNotFound(app).into());
        }
    }
    let since = match &q.since {
        Some(s) => {
            let d = nubo_core::parse_duration(s)
                .map_err(|e| ApiError(ErrorCode::BadRequest, format!("since: {e}")))?;
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
        None => SystemTime::UNIX_EPOCH,
    };
    let limit = q.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let first = g
        .control
        .logs(app.clone(), q.function.clone(), since, q.after, limit)
        .await?;
    let mut cursor = q.after;
    let mut out = String::new();
    for (c, line) in &first {
        cursor = Some(*c);
        push_line(&mut out, *c, line);
    }
    if !q.follow.unwrap_or(false) {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let _ = tx.try_send(Ok(Bytes::from(out)));
    tokio::spawn(async move {
        let mut last_sent = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let Some(g) = w.upgrade() else { break };
            if tx.is_closed() || g.is_draining() {
                break;
            }
            let lines = match g
                .control
                .logs(app.clone(), q.function.clone(), since, cursor, MAX_LIST)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "log follower query failed");
                    continue;
                }
            };
            drop(g);
            let mut chunk = String::new();
            for (c, line) in &lines {
                cursor = Some(*c);
                push_line(&mut chunk, *c, line);
            }
            if chunk.is_empty() && last_sent.elapsed() >= FOLLOW_HEARTBEAT {
                chunk.push('\n');
            }
            if !chunk.is_empty() {
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    break;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

fn push_line(out: &mut String, cursor: i64, line: &nubo_core::api::v1::LogLine) {
    let mut v = serde_json::to_value(line).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("cursor".into(), cursor.into());
    }
    out.push_str(&v.to_string());
    out.push('\n');
}

#[derive(Deserialize)]
struct InvokeQuery {
    path: Option<String>,
}

/// Invokes a function directly, bypassing routes: the request's method, headers and body are
/// passed on; `path` sets the path (and query) the function sees.
async fn invoke(
    State(w): State<Gw>,
    Path((app, function)): Path<(String, String)>,
    Query(q): Query<InvokeQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let g = gw(&w)?;
    let (target, live) = g.control.target(&app, &function)?;
    let max_body = live
        .manifest
        .functions
        .get(&function)
        .map_or(limits::DEFAULT_MAX_REQUEST_BODY, |f| f.max_request_body);
    let path = q.path.unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        return Err(ApiError(
            ErrorCode::BadRequest,
            format!("path {path:?} must start with '/'"),
        ));
    }
    let uri: http::Uri = path.parse().map_err(|_| {
        ApiError(
            ErrorCode::BadRequest,
            format!("path {path:?} is not a valid request path"),
        )
    })?;
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    let resp = g.invoke(&target, max_body, parts, body, "invoke").await;
    Ok(resp.map(axum::body::Body::new))
}
