//! App traffic: route lookup, request limits, invocation bookkeeping and dispatch.

use crate::body::{LimitedBody, MeteredBody};
use crate::rescue::{INVOCATION_ID_HEADER, error_response};
use crate::server::Gateway;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nubo_core::{Body, BoxError, ErrorCode, FunctionTarget, InvocationId};
use nubo_telemetry::{Invocation, InvocationMeta};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Prefix of the headers carrying route parameters to the function (`nubo-param-id: 42`).
pub const PARAM_HEADER_PREFIX: &str = "nubo-param-";
/// Header carrying the part of the path matched by a trailing `/...` wildcard.
pub const PATH_INFO_HEADER: &str = "nubo-path-info";
/// Header carrying the app revision that served the response.
pub const REVISION_HEADER: &str = "nubo-revision";

pub(crate) async fn route(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let routes = gw.control.routes();
    let (target, params, rest) = match routes.table.lookup(req.method().as_str(), req.uri().path())
    {
        Ok(m) => {
            let params: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect();
            (m.target.clone(), params, m.rest.map(str::to_string))
        }
        Err(path_matched) => {
            let (code, msg) = if path_matched {
                (
                    ErrorCode::MethodNotAllowed,
                    format!("no route accepts {} for {}", req.method(), req.uri().path()),
                )
            } else {
                (
                    ErrorCode::RouteNotFound,
                    format!("no route matches {} {}", req.method(), req.uri().path()),
                )
            };
            return error_response(code, msg, None);
        }
    };
    drop(routes);
    let (mut parts, body) = req.into_parts();
    // Clients must not be able to forge what the router decided.
    let forged: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(PARAM_HEADER_PREFIX) || k.as_str() == PATH_INFO_HEADER)
        .cloned()
        .collect();
    for k in forged {
        parts.headers.remove(k);
    }
    for (name, value) in params {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(format!("{PARAM_HEADER_PREFIX}{name}").as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            parts.headers.insert(n, v);
        }
    }
    if let Some(rest) = rest
        && let Ok(v) = HeaderValue::from_str(&rest)
    {
        parts.headers.insert(PATH_INFO_HEADER, v);
    }
    gw.invoke(&target.target, target.max_request_body, parts, body, "http")
        .await
}

impl Gateway {
    /// Runs one invocation of `target` and builds the response, whatever happens.
    pub(crate) async fn invoke<B>(
        &self,
        target: &FunctionTarget,
        max_body: u64,
        parts: http::request::Parts,
        body: B,
        trigger: &'static str,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if self.is_draining() {
            return error_response(
                ErrorCode::ShuttingDown,
                "the server is shutting down; retry on another node or later",
                None,
            );
        }
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_body) {
            return error_response(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than this function's limit of {max_body} bytes (max_request_body)"
                ),
                None,
            );
        }
        let id = InvocationId::new();
        let inv = Invocation::start(
            InvocationMeta {
                id,
                app: target.app.clone(),
                function: target.function.clone(),
                revision: target.revision,
                trigger,
            },
            &self.sink,
        );
        let exceeded = Arc::new(AtomicBool::new(false));
        let body =
            LimitedBody::new(body, max_body, exceeded.clone(), Some(inv.clone())).boxed_unsync();
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(inv.clone());

        let result = self.dispatch.invoke(target, req).await;
        let mut resp = match result {
            Ok(_) if exceeded.load(Ordering::Relaxed) => {
                inv.set_status(413);
                return with_ids(
                    error_response(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the request body is larger than this function's limit of {max_body} bytes (max_request_body)"
                        ),
                        Some(id),
                    ),
                    target,
                );
            }
            Ok(resp) => {
                inv.set_status(resp.status().as_u16());
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, MeteredBody::new(body, inv).boxed_unsync())
            }
            Err(e) => {
                let code = if exceeded.load(Ordering::Relaxed) {
                    ErrorCode::PayloadTooLarge
                } else {
                    e.code()
                };
                inv.finish(e.outcome(), Some(code.status()));
                tracing::debug!(invocation = %id, app = %target.app, function = %target.function, error = %e, "invocation failed");
                let mut r = error_response(code, e.to_string(), Some(id));
                if let nubo_core::InvokeError::Throttled { retry_after_secs } = e
                    && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
                {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
        }
        with_ids(resp, target)
    }
}

fn with_ids(mut resp: Response<Body>, target: &FunctionTarget) -> Response<Body> {
    resp.headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(target.revision));
    resp
}
