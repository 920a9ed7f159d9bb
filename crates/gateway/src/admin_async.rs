//! Admin endpoints of async invocations: one invocation with its attempts, cancelling a queued
//! one, listing an app's, and its dead-letter queue (list, redrive, purge).

use crate::admin::{ApiError, Gw, gw, json_body};
use crate::events::{attempt_to_wire, to_wire};
use crate::server::Gateway;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use nubo_control::EventState;
use nubo_core::ErrorCode;
use nubo_core::api::v1::{AsyncList, DlqChange, InvocationDetail, RedriveRequest};
use serde::Deserialize;
use std::sync::Arc;

/// Most invocations one listing returns.
const MAX_LIST: usize = 1_000;

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin request failed");
    ApiError::Plain(
        ErrorCode::Internal,
        "Nubo failed while handling the request; the server log has details".into(),
    )
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, nubo_control::DeployError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(ApiError::from)
}

fn store_err(e: impl std::fmt::Display) -> nubo_control::DeployError {
    nubo_control::DeployError::Internal(e.to_string())
}

/// `GET /invocations/{id}`: a recorded invocation with its logs, or an async invocation with
/// every attempt and each attempt's logs.
pub(crate) async fn invocation(
    State(w): State<Gw>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    if let Some((record, logs)) = g.control.invocation(id.clone()).await? {
        return Ok(axum::Json(InvocationDetail {
            record: Some(record),
            logs,
            async_invocation: None,
        }));
    }
    let store = g.control.store().clone();
    let owned = id.clone();
    let found = blocking(move || store.event(&owned).map_err(store_err)).await?;
    let Some((event, attempts)) = found else {
        return Err(ApiError::Plain(
            ErrorCode::InvocationNotFound,
            format!("no invocation {id:?} is recorded"),
        ));
    };
    let mut wire = to_wire(&event, true);
    for a in &attempts {
        let mut w = attempt_to_wire(a);
        if let Some((_, logs)) = g.control.invocation(a.result.invocation_id.clone()).await? {
            w.logs = logs;
        }
        wire.attempt_list.push(w);
    }
    Ok(axum::Json(InvocationDetail {
        record: None,
        logs: Vec::new(),
        async_invocation: Some(wire),
    }))
}

/// `DELETE /invocations/{id}`: cancels a queued async invocation.
pub(crate) async fn cancel(
    State(w): State<Gw>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    match g.cancel_event(&id).await.map_err(internal)? {
        None => Err(ApiError::Plain(
            ErrorCode::InvocationNotFound,
            format!(
                "no async invocation {id:?} is recorded; only async invocations can be cancelled"
            ),
        )),
        Some(EventState::Cancelled) => {
            let store = g.control.store().clone();
            let owned = id.clone();
            let found = blocking(move || store.event(&owned).map_err(store_err)).await?;
            match found {
                Some((e, _)) => Ok(axum::Json(to_wire(&e, false))),
                None => Err(ApiError::Plain(
                    ErrorCode::InvocationNotFound,
                    format!("async invocation {id:?} was pruned"),
                )),
            }
        }
        Some(state) => Err(ApiError::Plain(
            ErrorCode::InvocationNotQueued,
            format!(
                "async invocation {id} is {}; only a queued one can be cancelled",
                state.as_str()
            ),
        )),
    }
}

#[derive(Deserialize)]
pub(crate) struct AsyncQuery {
    state: Option<String>,
    function: Option<String>,
    limit: Option<usize>,
}

/// `GET /apps/{app}/async?state=&function=&limit=`: newest first.
pub(crate) async fn list(
    State(w): State<Gw>,
    Path(app): Path<String>,
    Query(q): Query<AsyncQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(EventState::parse(s).ok_or_else(|| {
            ApiError::Plain(
                ErrorCode::BadRequest,
                format!(
                    "state={s:?} is not an async invocation state; use one of: {}",
                    EventState::ALL.map(EventState::as_str).join(", ")
                ),
            )
        })?),
    };
    listing(&g, app, q.function, state, q.limit).await
}

/// `GET /apps/{app}/dlq`: the app's failed async invocations, newest first.
pub(crate) async fn dlq(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    listing(&g, app, None, Some(EventState::Failed), None).await
}

async fn listing(
    g: &Arc<Gateway>,
    app: String,
    function: Option<String>,
    state: Option<EventState>,
    limit: Option<usize>,
) -> Result<axum::Json<AsyncList>, ApiError> {
    let limit = limit.unwrap_or(100).min(MAX_LIST);
    let store = g.control.store().clone();
    let name = app.clone();
    let events = blocking(move || {
        store
            .events(&name, function.as_deref(), state, limit)
            .map_err(store_err)
    })
    .await?;
    Ok(axum::Json(AsyncList {
        app,
        invocations: events.iter().map(|e| to_wire(e, false)).collect(),
    }))
}

/// `POST /apps/{app}/dlq/redrive`: queues failed invocations again (all, or `ids`), their
/// attempts and age starting over; the function's current retry settings apply.
pub(crate) async fn redrive(
    State(w): State<Gw>,
    Path(app): Path<String>,
    body: bytes::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let req: RedriveRequest = json_body(&body, "redrive request")?;
    let store = g.control.store().clone();
    let name = app.clone();
    let failed = blocking(move || {
        store
            .events(&name, None, Some(EventState::Failed), usize::MAX)
            .map_err(store_err)
    })
    .await?;
    if let Some(ids) = &req.ids {
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !failed.iter().any(|e| &e.id == *id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::Plain(
                ErrorCode::BadRequest,
                format!(
                    "not in the dead-letter queue of {app}: {}; `nubo dlq {app}` lists it (nothing was redriven)",
                    missing.join(", ")
                ),
            ));
        }
    }
    let store = g.control.store().clone();
    let name = app.clone();
    let g2 = g.clone();
    let ids = req.ids.clone();
    let redriven = blocking(move || {
        store
            .redrive_events(&name, ids.as_deref(), |function| {
                let retry = g2
                    .control
                    .app(&name)
                    .and_then(|a| {
                        a.state()
                            .primary()
                            .and_then(|r| r.manifest.functions.get(function).map(|f| f.retry))
                    })
                    .unwrap_or_default();
                (
                    std::time::Duration::from_millis(retry.max_age_ms),
                    retry.max_attempts,
                )
            })
            .map_err(store_err)
    })
    .await?;
    if let Some(events) = &g.events {
        events.requeued(redriven.len() as u64);
    }
    tracing::info!(app, redriven = redriven.len(), "dead-letter queue redriven");
    Ok(axum::Json(DlqChange {
        app,
        redriven,
        purged: 0,
    }))
}

/// `DELETE /apps/{app}/dlq`: deletes the app's failed invocations and their attempts.
pub(crate) async fn purge(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    let store = g.control.store().clone();
    let name = app.clone();
    let purged = blocking(move || store.purge_dead_letters(&name).map_err(store_err)).await?;
    tracing::info!(app, purged, "dead-letter queue purged");
    Ok(axum::Json(DlqChange {
        app,
        redriven: Vec::new(),
        purged,
    }))
}
