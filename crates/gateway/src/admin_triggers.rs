//! Admin endpoint of an app's triggers: what is in force and how each is doing. The gateway
//! does not run triggers; the server hands it a [`TriggerStatuses`] that reads them.

use crate::admin::{ApiError, Gw, gw};
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use nubo_control::DeployError;
use nubo_core::api::v1::{TriggerInfo, TriggerList};
use std::future::Future;
use std::pin::Pin;

/// Reads the status of an app's triggers, for `GET /_nubo/api/v1/apps/{app}/triggers`.
pub trait TriggerStatuses: Send + Sync {
    /// The triggers of `app` in force now, in manifest order (empty when it has none).
    fn statuses<'a>(
        &'a self,
        app: &'a str,
    ) -> Pin<Box<dyn Future<Output = Vec<TriggerInfo>> + Send + 'a>>;
}

/// `GET /apps/{app}/triggers`: the app's triggers with their state and figures.
pub(crate) async fn list(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let g = gw(&w)?;
    if g.control.app(&app).is_none() {
        return Err(DeployError::AppNotFound(app).into());
    }
    let triggers = match g.triggers.get() {
        Some(t) => t.statuses(&app).await,
        None => Vec::new(),
    };
    Ok(axum::Json(TriggerList { app, triggers }))
}
