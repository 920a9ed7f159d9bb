//! Admin endpoints of the durable queues: list them with their figures, create, inspect,
//! delete and purge one, and publish a message (answered only once it is durable).

use crate::admin::{ApiError, Gw, gw};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use nubo_control::{MAX_MESSAGE_BYTES, NewMessage, QueueError, QueueInfo, Queues};
use nubo_core::api::v1::{QueueList, QueuePublished, QueuePurged, QueueSummary};
use nubo_core::{ErrorCode, rfc3339};

/// Seconds a client is asked to wait before publishing to a full queue again.
const FULL_RETRY_AFTER_SECS: &str = "1";

fn queue_error(e: QueueError) -> ApiError {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "queue admin request failed");
        return ApiError::Plain(
            code,
            "Nubo failed while handling the request; the server log has details".into(),
        );
    }
    ApiError::Plain(code, e.to_string())
}

/// A queue error as a response; a full queue also says when to retry.
fn queue_error_response(e: QueueError) -> Response {
    let full = matches!(e, QueueError::Full { .. });
    let mut resp = queue_error(e).into_response();
    if full {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(FULL_RETRY_AFTER_SECS),
        );
    }
    resp
}

/// Runs a blocking queue call off the async threads.
async fn blocking<T: Send + 'static>(
    w: &Gw,
    f: impl FnOnce(Queues) -> Result<T, QueueError> + Send + 'static,
) -> Result<Result<T, QueueError>, ApiError> {
    let queues = gw(w)?.control.store().queues();
    tokio::task::spawn_blocking(move || f(queues))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "queue admin request panicked");
            ApiError::Plain(
                ErrorCode::Internal,
                "Nubo failed while handling the request; the server log has details".into(),
            )
        })
}

fn to_wire(q: QueueInfo) -> QueueSummary {
    QueueSummary {
        name: q.name,
        messages: q.messages,
        in_flight: q.in_flight,
        published: q.published,
        oldest_enqueued_at: q.oldest_enqueued_at.map(rfc3339),
        created_at: rfc3339(q.created_at),
    }
}

fn no_such_queue(queue: &str) -> ApiError {
    queue_error(QueueError::NoSuchQueue(queue.to_string()))
}

/// `GET /queues`: every queue with its figures.
pub(crate) async fn list(State(w): State<Gw>) -> Result<impl IntoResponse, ApiError> {
    let queues = blocking(&w, |q| q.list()).await?.map_err(queue_error)?;
    Ok(axum::Json(QueueList {
        queues: queues.into_iter().map(to_wire).collect(),
    }))
}

/// `PUT /queues/{queue}`: creates the queue (201), or leaves an existing one as it is (200);
/// answers its figures.
pub(crate) async fn create(
    State(w): State<Gw>,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = queue.clone();
    let (created, info) = blocking(&w, move |q| {
        let created = q.create(&name)?;
        Ok((created, q.info(&name)?))
    })
    .await?
    .map_err(queue_error)?;
    // Deleted again in between: report it as missing rather than invent figures.
    let info = info.ok_or_else(|| no_such_queue(&queue))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(to_wire(info))))
}

/// `GET /queues/{queue}`: the queue's figures.
pub(crate) async fn get(
    State(w): State<Gw>,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = queue.clone();
    let info = blocking(&w, move |q| q.info(&name))
        .await?
        .map_err(queue_error)?;
    let info = info.ok_or_else(|| no_such_queue(&queue))?;
    Ok(axum::Json(to_wire(info)))
}

/// `DELETE /queues/{queue}`: deletes the queue and every message it holds (204).
pub(crate) async fn delete(
    State(w): State<Gw>,
    Path(queue): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = queue.clone();
    let existed = blocking(&w, move |q| q.delete(&name))
        .await?
        .map_err(queue_error)?;
    if !existed {
        return Err(no_such_queue(&queue));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /queues/{queue}/purge`: deletes every message of the queue; answers how many.
pub(crate) async fn purge(
    State(w): State<Gw>,
    Path(queue): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = queue.clone();
    let purged = blocking(&w, move |q| q.purge(&name))
        .await?
        .map_err(queue_error)?;
    Ok(axum::Json(QueuePurged { queue, purged }))
}

/// `POST /queues/{queue}/messages`: publishes the request body as one message with the
/// request's content type. Answers 201 with the message id once the message is durable; 413
/// over [`MAX_MESSAGE_BYTES`], 429 with Retry-After when the queue is full.
pub(crate) async fn publish(
    State(w): State<Gw>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Read one byte past the limit so a body over it is refused without reading it all.
    let bytes = match Limited::new(body, MAX_MESSAGE_BYTES + 1).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::Plain(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the message is larger than the limit of {MAX_MESSAGE_BYTES} bytes; store the payload in a bucket and publish its key"
                ),
            )
            .into_response();
        }
        Err(e) => {
            return ApiError::Plain(
                ErrorCode::BadRequest,
                format!("reading the message body failed: {e}"),
            )
            .into_response();
        }
    };
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(ct)) => Some(ct.to_string()),
        Some(Err(_)) => {
            return ApiError::Plain(
                ErrorCode::BadRequest,
                "the content-type header must be visible ASCII".into(),
            )
            .into_response();
        }
    };
    let message = NewMessage {
        body: bytes.to_vec(),
        content_type,
        // Published from outside any function: a chain starts here.
        hop: 0,
    };
    let name = queue.clone();
    let published = match blocking(&w, move |q| q.publish(&name, vec![message])).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match published {
        Ok(ids) => match ids.into_iter().next() {
            Some(id) => (
                StatusCode::CREATED,
                axum::Json(QueuePublished { id, queue }),
            )
                .into_response(),
            None => {
                tracing::error!(queue = %queue, "a publish of one message returned no id");
                ApiError::Plain(
                    ErrorCode::Internal,
                    "Nubo failed while handling the request; the server log has details".into(),
                )
                .into_response()
            }
        },
        Err(e) => queue_error_response(e),
    }
}
