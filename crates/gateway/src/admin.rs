//! The admin API (`/_nubo/api/v1/...`) and ops endpoints (`/_nubo/health`, `/_nubo/ready`).
//! The CLI uses nothing else.

use crate::admin_async;
use crate::admin_kv;
use crate::admin_objects;
use crate::admin_queues;
use crate::admin_secrets;
use crate::admin_triggers;
use crate::admin_usage;
use crate::rescue::error_response;
use crate::server::Gateway;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use bytes::Bytes;
use nubo_control::{DeployError, DeployOptions, LiveApp, route_infos};
use nubo_core::api::v1::{
    AppSummary, ConflictBody, ErrorDetail, LogFilter, RollbackRequest, RolloutRequest,
    TrafficState, TrafficUpdate,
};
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

pub(crate) type Gw = Weak<Gateway>;

/// An admin API error: a code from the registry and a message, or a conflict with the state
/// the caller should have expected.
pub(crate) enum ApiError {
    Plain(ErrorCode, String),
    Conflict(String, Box<TrafficState>),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Plain(code, msg) => {
                error_response(code, msg, None).map(axum::body::Body::new)
            }
            ApiError::Conflict(message, current) => {
                let body = ConflictBody {
                    error: ErrorDetail {
                        code: ErrorCode::Conflict.as_str().to_string(),
                        message,
                        invocation_id: None,
                    },
                    current: *current,
                };
                (StatusCode::CONFLICT, axum::Json(body)).into_response()
            }
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        if let DeployError::Conflict {
            state: Some(state), ..
        } = &e
        {
            return ApiError::Conflict(e.to_string(), state.clone());
        }
        let code = e.code();
        let msg = if code == ErrorCode::Internal {
            tracing::error!(error = %e, "admin request failed");
            "Nubo failed while handling the request; the server log has details".to_string()
        } else {
            e.to_string()
        };
        ApiError::Plain(code, msg)
    }
}

pub(crate) fn gw(w: &Gw) -> Result<Arc<Gateway>, ApiError> {
    w.upgrade().ok_or_else(|| {
        ApiError::Plain(
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
        .route("/_nubo/api/v1/apps/{app}/revisions", get(revisions))
        .route(
            "/_nubo/api/v1/apps/{app}/traffic",
            get(get_traffic).put(put_traffic),
        )
        .route("/_nubo/api/v1/apps/{app}/rollback", post(rollback))
        .route(
            "/_nubo/api/v1/apps/{app}/rollout",
            get(get_rollout).post(start_rollout).delete(abort_rollout),
        )
        .route(
            "/_nubo/api/v1/apps/{app}/functions/{function}/invoke",
            any(invoke),
        )
        .route(
            "/_nubo/api/v1/invocations/{id}",
            get(admin_async::invocation).delete(admin_async::cancel),
        )
        .route("/_nubo/api/v1/apps/{app}/async", get(admin_async::list))
        .route(
            "/_nubo/api/v1/apps/{app}/dlq",
            get(admin_async::dlq).delete(admin_async::purge),
        )
        .route(
            "/_nubo/api/v1/apps/{app}/dlq/redrive",
            post(admin_async::redrive),
        )
        .route("/_nubo/metrics", get(crate::prometheus::handler))
        .route("/_nubo/api/v1/metrics", get(metrics))
        .route(
            "/_nubo/api/v1/s3/credentials",
            get(crate::s3::credentials_endpoint),
        )
        .route("/_nubo/api/v1/apps/{app}/secrets", get(admin_secrets::list))
        .route(
            "/_nubo/api/v1/apps/{app}/secrets/{name}",
            put(admin_secrets::put).delete(admin_secrets::delete),
        )
        .route("/_nubo/api/v1/kv", get(admin_kv::list_stores))
        .route("/_nubo/api/v1/kv/{store}", put(admin_kv::create_store))
        .route("/_nubo/api/v1/kv/{store}/keys", get(admin_kv::list_keys))
        .route(
            "/_nubo/api/v1/kv/{store}/keys/{*key}",
            get(admin_kv::get_key)
                .put(admin_kv::put_key)
                .delete(admin_kv::delete_key),
        )
        .route("/_nubo/api/v1/queues", get(admin_queues::list))
        .route(
            "/_nubo/api/v1/queues/{queue}",
            get(admin_queues::get)
                .put(admin_queues::create)
                .delete(admin_queues::delete),
        )
        .route(
            "/_nubo/api/v1/queues/{queue}/messages",
            post(admin_queues::publish),
        )
        .route(
            "/_nubo/api/v1/queues/{queue}/purge",
            post(admin_queues::purge),
        )
        .route(
            "/_nubo/api/v1/apps/{app}/triggers",
            get(admin_triggers::list),
        )
        .route("/_nubo/api/v1/usage", get(admin_usage::report))
        .route("/_nubo/api/v1/usage/export", get(admin_usage::export))
        .route("/_nubo/api/v1/buckets", get(admin_objects::list_buckets))
        .route(
            "/_nubo/api/v1/buckets/{bucket}",
            put(admin_objects::create_bucket).delete(admin_objects::delete_bucket),
        )
        .route(
            "/_nubo/api/v1/buckets/{bucket}/objects",
            get(admin_objects::list_objects),
        )
        // Object bodies stream to disk up to `MAX_OBJECT_BYTES` (the put enforces it), so the
        // admin API's body limit does not apply here.
        .route(
            "/_nubo/api/v1/buckets/{bucket}/objects/{*key}",
            get(admin_objects::get_object)
                .head(admin_objects::head_object)
                .put(admin_objects::put_object)
                .delete(admin_objects::delete_object)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(|| async {
            ApiError::Plain(
                ErrorCode::NotFound,
                "no such admin endpoint; see /_nubo/api/v1/openapi.json".into(),
            )
        })
        .layer(DefaultBodyLimit::max(limits::MAX_DEPLOY_BYTES as usize))
        .with_state(weak)
}

/// Concurrency figures: in-flight, queued and throttled invocations per function, and the
/// server-wide capacity in use.
async fn metrics(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let gw = gw(&w)?;
    Ok(axum::Json(gw.dispatch.load_metrics()))
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(w): State<Gw>) -> Response {
    match w.upgrade() {
        Some(g) if !g.is_draining() => {
            axum::Json(serde_json::json!({ "status": "ready" })).into_response()
        }
        _ => ApiError::Plain(
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

/// An app as listed: its highest-weight revision.
fn summary(a: &LiveApp) -> Option<AppSummary> {
    let state = a.state();
    let r = state.primary()?;
    Some(AppSummary {
        name: a.name.to_string(),
        revision: r.revision,
        deployed_at: rfc3339(r.deployed_at),
        functions: r.manifest.functions.keys().cloned().collect(),
        routes: route_infos(&r.manifest),
    })
}

async fn list_apps(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let apps: Vec<AppSummary> = g.control.apps().iter().filter_map(|a| summary(a)).collect();
    Ok(axum::Json(apps))
}

async fn get_app(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let a = g
        .control
        .app(&app)
        .and_then(|a| summary(&a))
        .ok_or(DeployError::AppNotFound(app))?;
    Ok(axum::Json(a))
}

#[derive(Deserialize)]
struct DeployQuery {
    /// Percent the new revision takes (absent = 100).
    traffic: Option<String>,
    expected_generation: Option<String>,
}

async fn deploy(
    State(w): State<Gw>,
    Query(q): Query<DeployQuery>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let traffic = match q.traffic.as_deref() {
        None => None,
        Some(t) => Some(t.parse::<u8>().ok().filter(|p| *p <= 100).ok_or_else(|| {
            ApiError::Plain(
                ErrorCode::InvalidTraffic,
                format!(
                    "traffic={t:?} is not a percent: use 1 to 99 for a canary, 100 for all or 0 for none"
                ),
            )
        })?),
    };
    let expected_generation = parse_generation(q.expected_generation.as_deref())?;
    let opts = DeployOptions {
        traffic,
        expected_generation,
    };
    let resp = g.control.deploy_with(&body, opts).await?;
    Ok((StatusCode::CREATED, axum::Json(resp)))
}

fn parse_generation(g: Option<&str>) -> Result<Option<u64>, ApiError> {
    g.map(|g| {
        g.parse::<u64>().map_err(|_| {
            ApiError::Plain(
                ErrorCode::BadRequest,
                format!("expected_generation={g:?} is not a number; use the `generation` of `GET /apps/{{app}}/traffic`"),
            )
        })
    })
    .transpose()
}

/// Decodes a JSON body, with an error that names the problem.
pub(crate) fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Plain(
            ErrorCode::BadRequest,
            format!("the body is not a valid {what}: {e}"),
        )
    })
}

async fn revisions(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    Ok(axum::Json(g.control.revisions(&app).await?))
}

async fn get_traffic(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    Ok(axum::Json(g.control.traffic(&app)?))
}

async fn put_traffic(
    State(w): State<Gw>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let update: TrafficUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Plain(
            ErrorCode::BadRequest,
            format!(
                "the body is not a valid traffic update: {e}; send {{\"split\":[{{\"revision\":12,\"weight\":90}},{{\"revision\":13,\"weight\":10}}]}}"
            ),
        )
    })?;
    Ok(axum::Json(g.control.set_traffic(&app, update).await?))
}

async fn rollback(
    State(w): State<Gw>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let req: RollbackRequest = json_body(&body, "rollback request")?;
    Ok(axum::Json(g.control.rollback(&app, req).await?))
}

async fn get_rollout(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    Ok(axum::Json(g.control.rollout(&app)?))
}

async fn start_rollout(
    State(w): State<Gw>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let req: RolloutRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Plain(
            ErrorCode::BadRequest,
            format!(
                "the body is not a valid rollout request: {e}; send {{\"to\":13,\"steps\":[10,50,100],\"interval_ms\":300000}}"
            ),
        )
    })?;
    let state = g.control.start_rollout(&app, req).await?;
    Ok((StatusCode::CREATED, axum::Json(state)))
}

async fn abort_rollout(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    Ok(axum::Json(g.control.abort_rollout(&app).await?))
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

#[derive(Deserialize)]
struct LogsQuery {
    function: Option<String>,
    /// Only this invocation's lines.
    invocation: Option<String>,
    /// Only lines containing this text (case-sensitive).
    grep: Option<String>,
    /// Only lines at or above this level (`trace` … `error`).
    level: Option<String>,
    /// A duration back from now (`10m`, `1h`).
    since: Option<String>,
    /// Resume after this cursor.
    after: Option<i64>,
    follow: Option<bool>,
    limit: Option<usize>,
}

/// Log lines as newline-delimited JSON, each with its `cursor`, filtered by function,
/// invocation, text (`grep`, case-sensitive) and minimum level; with `follow=true` the stream
/// stays open and new lines arrive as they are written. A follower that reconnects with
/// `after=<last cursor>` gets every later line exactly once.
async fn logs(
    State(w): State<Gw>,
    Path(app): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let g = gw(&w)?;
    let follow = q.follow.unwrap_or(false);
    if let Some(level) = &q.level
        && nubo_telemetry::normalize_level(level).is_none()
    {
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!(
                "level: unknown log level \"{level}\"; use one of {}",
                nubo_telemetry::LOG_LEVELS.join(", ")
            ),
        ));
    }
    if g.control.app(&app).is_none() && !follow {
        // A removed app may still have logs; only refuse names that never had any.
        let any = g
            .control
            .logs(
                app.clone(),
                LogFilter::default(),
                SystemTime::UNIX_EPOCH,
                None,
                1,
            )
            .await?;
        if any.is_empty() {
            return Err(DeployError::AppNotFound(app).into());
        }
    }
    let since = match &q.since {
        Some(s) => {
            let d = nubo_core::parse_duration(s)
                .map_err(|e| ApiError::Plain(ErrorCode::BadRequest, format!("since: {e}")))?;
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
        None => SystemTime::UNIX_EPOCH,
    };
    let filter = LogFilter {
        function: q.function,
        invocation: q.invocation,
        grep: q.grep,
        level: q.level,
    };
    let limit = q.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let first = g
        .control
        .logs(app.clone(), filter.clone(), since, q.after, limit)
        .await?;
    let mut cursor = q.after;
    let mut out = String::new();
    for (c, line) in &first {
        cursor = Some(*c);
        push_line(&mut out, *c, line);
    }
    if !follow {
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
                .logs(app.clone(), filter.clone(), since, cursor, MAX_LIST)
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
    let (mut parts, body) = req.into_parts();
    // `nubo-revision: N` runs that retained revision (it need not take traffic).
    let pin = match parts.headers.remove(crate::data::REVISION_HEADER) {
        Some(v) => Some(
            crate::affinity::parse_pin_header(v.as_bytes())
                .map_err(|m| ApiError::Plain(ErrorCode::BadRequest, m))?,
        ),
        None => None,
    };
    let (target, live) = match pin {
        None => g.control.target(&app, &function)?,
        Some(n) => {
            let slot = g
                .control
                .app(&app)
                .ok_or_else(|| DeployError::AppNotFound(app.clone()))?;
            let live = g.control.pinned(&slot, n).await?;
            let target = live
                .target(&function)
                .ok_or_else(|| DeployError::FunctionNotFound {
                    app: app.clone(),
                    function: function.clone(),
                    known: live.manifest.functions.keys().cloned().collect(),
                })?;
            (target, live)
        }
    };
    let max_body = live
        .manifest
        .functions
        .get(&function)
        .map_or(limits::DEFAULT_MAX_REQUEST_BODY, |f| f.max_request_body);
    let path = q.path.unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        return Err(ApiError::Plain(
            ErrorCode::BadRequest,
            format!("path {path:?} must start with '/'"),
        ));
    }
    let uri: http::Uri = path.parse().map_err(|_| {
        ApiError::Plain(
            ErrorCode::BadRequest,
            format!("path {path:?} is not a valid request path"),
        )
    })?;
    parts.uri = uri;
    if crate::events::is_async(&parts.headers) {
        if let Some(n) = pin {
            return Err(ApiError::Plain(
                ErrorCode::BadRequest,
                format!(
                    "an async invocation cannot be pinned to revision {n}: it runs on the revision that takes traffic when its attempt starts; send it without nubo-revision"
                ),
            ));
        }
        let retry = live
            .manifest
            .functions
            .get(&function)
            .map(|f| f.retry)
            .unwrap_or_default();
        parts.headers.insert(
            crate::events::ENTRY_HEADER,
            http::HeaderValue::from_static("invoke"),
        );
        let resp = g.submit_event(&target, retry, max_body, parts, body).await;
        return Ok(resp.map(axum::body::Body::new));
    }
    let resp = g.invoke(&target, max_body, parts, body, "invoke").await;
    Ok(resp.map(axum::body::Body::new))
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_the_traffic_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let paths = &doc["paths"];
        for (path, method) in [
            ("/_nubo/api/v1/apps/{app}/revisions", "get"),
            ("/_nubo/api/v1/apps/{app}/traffic", "get"),
            ("/_nubo/api/v1/apps/{app}/traffic", "put"),
            ("/_nubo/api/v1/apps/{app}/rollback", "post"),
            ("/_nubo/api/v1/apps/{app}/rollout", "get"),
            ("/_nubo/api/v1/apps/{app}/rollout", "post"),
            ("/_nubo/api/v1/apps/{app}/rollout", "delete"),
            ("/_nubo/api/v1/invocations/{id}", "delete"),
            ("/_nubo/api/v1/apps/{app}/async", "get"),
            ("/_nubo/api/v1/apps/{app}/dlq", "get"),
            ("/_nubo/api/v1/apps/{app}/dlq", "delete"),
            ("/_nubo/api/v1/apps/{app}/dlq/redrive", "post"),
            ("/_nubo/api/v1/queues", "get"),
            ("/_nubo/api/v1/queues/{queue}", "get"),
            ("/_nubo/api/v1/queues/{queue}", "put"),
            ("/_nubo/api/v1/queues/{queue}", "delete"),
            ("/_nubo/api/v1/queues/{queue}/messages", "post"),
            ("/_nubo/api/v1/queues/{queue}/purge", "post"),
            ("/_nubo/api/v1/apps/{app}/triggers", "get"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
        let deploy = &paths["/_nubo/api/v1/apps"]["post"];
        assert_eq!(deploy["parameters"][0]["name"], "traffic");
        assert!(deploy["responses"]["409"].is_object());
        let schemas = &doc["components"]["schemas"];
        for name in [
            "TrafficState",
            "TrafficUpdate",
            "RollbackRequest",
            "ConflictBody",
            "RevisionList",
            "RolloutRequest",
            "RolloutStatus",
            "AsyncAccepted",
            "AsyncInvocation",
            "InvocationDetail",
            "DlqChange",
            "QueueList",
            "QueueSummary",
            "QueuePublished",
            "QueuePurged",
            "TriggerList",
            "TriggerInfo",
        ] {
            assert!(schemas[name].is_object(), "schema {name}");
        }
    }
}
