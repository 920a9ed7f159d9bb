//! The one place where errors become HTTP responses: a JSON body with a stable code from the
//! registry, the message, and the invocation id when there is one. Internal details are logged,
//! never sent.

use http::{HeaderValue, Response, StatusCode, header};
use nubo_core::api::v1::{ErrorBody, ErrorDetail};
use nubo_core::{Body, ErrorCode, InvocationId, full_body};

/// Header carrying the invocation id on every response that ran (or tried to run) a function.
pub const INVOCATION_ID_HEADER: &str = "nubo-invocation-id";

/// Builds the JSON error response for `code`.
pub fn error_response(
    code: ErrorCode,
    message: impl Into<String>,
    invocation: Option<InvocationId>,
) -> Response<Body> {
    let message = message.into();
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_string(),
            message,
            invocation_id: invocation.map(|i| i.to_string()),
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full_body(bytes));
    *resp.status_mut() =
        StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = invocation
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    resp
}
