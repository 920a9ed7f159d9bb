//! Admin endpoints of an app's secrets: list their names, set one from the request body, delete
//! one. No endpoint ever answers a value, and no message carries one.

use crate::admin::{ApiError, Gw, gw};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Limited};
use nubo_control::secrets::{SecretError, Secrets};
use nubo_core::api::v1::{SecretList, SecretSummary};
use nubo_core::limits::MAX_SECRET_VALUE_BYTES;
use nubo_core::{ErrorCode, rfc3339};

fn secret_error(e: SecretError) -> ApiError {
    let code = e.code();
    if code == ErrorCode::Internal {
        // Secret errors never carry a value, so the message is safe to log.
        tracing::error!(error = %e, "secrets admin request failed");
        return ApiError::Plain(
            code,
            "Nubo failed while handling the request; the server log has details".into(),
        );
    }
    ApiError::Plain(code, e.to_string())
}

/// Runs a blocking secrets call off the async threads.
async fn blocking<T: Send + 'static>(
    w: &Gw,
    f: impl FnOnce(Secrets) -> Result<T, SecretError> + Send + 'static,
) -> Result<T, ApiError> {
    let secrets = gw(w)?.control.store().secrets().map_err(secret_error)?;
    tokio::task::spawn_blocking(move || f(secrets))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "secrets admin request panicked");
            ApiError::Plain(
                ErrorCode::Internal,
                "Nubo failed while handling the request; the server log has details".into(),
            )
        })?
        .map_err(secret_error)
}

/// `GET /apps/{app}/secrets`: the names of the app's secrets and when each was set.
pub(crate) async fn list(
    State(w): State<Gw>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let a = app.clone();
    let names = blocking(&w, move |s| s.names(&a)).await?;
    Ok(axum::Json(SecretList {
        app,
        secrets: names
            .into_iter()
            .map(|s| SecretSummary {
                name: s.name,
                updated_at: rfc3339(s.updated_at),
            })
            .collect(),
    }))
}

/// `PUT /apps/{app}/secrets/{name}`: sets the secret to the request body (raw bytes). The app
/// need not be deployed yet: secrets are set before the first deploy that references them.
pub(crate) async fn put(
    State(w): State<Gw>,
    Path((app, name)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    // Read one byte past the limit so a value over it is refused without reading it all.
    let value = match Limited::new(body, MAX_SECRET_VALUE_BYTES + 1)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(secret_error(SecretError::TooLarge {
                len: MAX_SECRET_VALUE_BYTES + 1,
            }));
        }
        Err(e) => {
            return Err(ApiError::Plain(
                ErrorCode::BadRequest,
                format!("reading the secret value failed: {e}; send it again"),
            ));
        }
    };
    blocking(&w, move |s| s.set(&app, &name, &value)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /apps/{app}/secrets/{name}`: 204 when deleted, 404 when it was not set.
pub(crate) async fn delete(
    State(w): State<Gw>,
    Path((app, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (a, n) = (app.clone(), name.clone());
    if blocking(&w, move |s| s.delete(&a, &n)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Plain(
            ErrorCode::SecretNotFound,
            format!(
                "app {app:?} has no secret {name:?}; `nubo secrets ls {app}` lists the ones it has"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_the_secret_endpoints() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let paths = &doc["paths"];
        for (path, method) in [
            ("/_nubo/api/v1/apps/{app}/secrets", "get"),
            ("/_nubo/api/v1/apps/{app}/secrets/{name}", "put"),
            ("/_nubo/api/v1/apps/{app}/secrets/{name}", "delete"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "openapi.json lacks {method} {path}"
            );
        }
        assert!(doc["components"]["schemas"]["SecretList"].is_object());
    }
}
