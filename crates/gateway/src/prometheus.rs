//! `GET /_nubo/metrics`: the server's metrics in the Prometheus text formats.
//!
//! Counters and histograms come from the [`Metrics`] registry the server attaches with
//! `Gateway::set_metrics`. Gauges are read here, at scrape time, from where they live: the
//! runtime's concurrency figures, the control plane's loaded revisions (for each function's
//! runtime), the triggers' status, the store's async queue and dead-letter counts (each read
//! timed as `op="scrape_read"`), and `/proc`. Between scrapes none of this costs anything.
//! Access follows the admin API's rule (the listener checks it before any `/_nubo/` route but
//! health and readiness).

use crate::admin::{ApiError, Gw, gw};
use crate::server::Gateway;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use nubo_core::ErrorCode;
use nubo_telemetry::{Exposition, FunctionGauges, Gauges, Metrics, StoreOp, TriggerGauges};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `GET /_nubo/metrics`: OpenMetrics when the scraper asks for it, else the classic text.
pub(crate) async fn handler(State(w): State<Gw>, headers: HeaderMap) -> Result<Response, ApiError> {
    let g = gw(&w)?;
    let metrics = g.metrics.get().cloned().ok_or_else(|| {
        ApiError::Plain(
            ErrorCode::NotFound,
            "this server exports no metrics: it was started with --no-telemetry; restart it without that flag to serve them here".into(),
        )
    })?;
    let gauges = gather(&g, &metrics).await?;
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = metrics.render(&gauges, format).map_err(|_| {
        ApiError::Plain(
            ErrorCode::Internal,
            "Nubo failed to encode its metrics; the server log has details".into(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// Reads every scrape-time gauge.
async fn gather(g: &Arc<Gateway>, metrics: &Arc<Metrics>) -> Result<Gauges, ApiError> {
    let apps = g.control.apps();
    let load = g.dispatch.load_metrics();
    let functions = load
        .functions
        .into_iter()
        .map(|f| {
            let app = apps.iter().find(|a| *a.name == *f.app);
            let runtime = app
                .and_then(|a| {
                    let state = a.state();
                    state.loaded(f.revision).and_then(|r| {
                        r.manifest
                            .functions
                            .get(&f.function)
                            .map(|spec| spec.runtime.as_str())
                    })
                })
                .unwrap_or("wasm");
            FunctionGauges {
                app: app.map_or_else(|| Arc::from(f.app.as_str()), |a| a.name.clone()),
                function: Arc::from(f.function.as_str()),
                revision: f.revision,
                runtime,
                in_flight: f.in_flight,
                queued: f.queued,
                throttled: f.throttled,
                instances: f.instances,
            }
        })
        .collect();
    let mut triggers = Vec::new();
    if let Some(statuses) = g.triggers.get() {
        for app in &apps {
            for t in statuses.statuses(&app.name).await {
                triggers.push(TriggerGauges {
                    app: app.name.to_string(),
                    kind: t.kind,
                    backlog: t.backlog,
                    lag: t.lag_ms.map(Duration::from_millis),
                });
            }
        }
    }
    let store = g.control.store().clone();
    let timer = metrics.clone();
    let (backlog, oldest, dead_letters) = tokio::task::spawn_blocking(move || {
        let timed = |started: Instant| {
            timer.observe_store_operation(StoreOp::ScrapeRead, started.elapsed());
        };
        let started = Instant::now();
        let backlog = store.pending_events().map_err(|e| e.to_string())?;
        timed(started);
        let started = Instant::now();
        let oldest = store.oldest_queued_event().map_err(|e| e.to_string())?;
        timed(started);
        let started = Instant::now();
        let dead = store.dead_letter_counts().map_err(|e| e.to_string())?;
        timed(started);
        Ok::<_, String>((backlog, oldest, dead))
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "reading the async queue for metrics panicked");
        internal()
    })?
    .map_err(|e| {
        tracing::error!(error = %e, "reading the async queue for metrics failed");
        internal()
    })?;
    Ok(Gauges {
        functions,
        async_backlog: backlog,
        async_oldest_age: oldest.map(|t| SystemTime::now().duration_since(t).unwrap_or_default()),
        dead_letters,
        triggers,
        records_dropped: g
            .sink
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        resident_memory_bytes: nubo_telemetry::resident_memory_bytes(),
    })
}

fn internal() -> ApiError {
    ApiError::Plain(
        ErrorCode::Internal,
        "Nubo failed while reading its metrics; the server log has details".into(),
    )
}
