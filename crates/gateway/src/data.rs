//! App traffic: finding the app, choosing its revision (pin, affinity cookie, weighted pick),
//! route lookup in that revision, request limits, invocation bookkeeping and dispatch.

use crate::affinity;
use crate::body::{LimitedBody, MeteredBody};
use crate::rescue::{INVOCATION_ID_HEADER, error_response};
use crate::server::Gateway;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nubo_control::LiveApp;
use nubo_core::{Body, BoxError, Entry, ErrorCode, FunctionTarget, InvocationId};
use nubo_telemetry::{
    Invocation, InvocationMeta, TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceContext,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Prefix of the headers carrying route parameters to the function (`nubo-param-id: 42`).
pub const PARAM_HEADER_PREFIX: &str = "nubo-param-";
/// Header carrying the part of the path matched by a trailing `/...` wildcard.
pub const PATH_INFO_HEADER: &str = "nubo-path-info";
/// Header carrying the app revision that served the response; on a request, it pins the
/// revision that serves it (and is removed before the function sees the request).
pub const REVISION_HEADER: &str = "nubo-revision";

/// Removes the headers only Nubo may set (how an invocation entered, its trigger and its hop
/// count) from a client's request, so no client can pose as a trigger delivery or reset a
/// chain's hop count.
pub(crate) fn strip_internal_headers(headers: &mut http::HeaderMap) {
    for name in crate::events::INTERNAL_HEADERS {
        headers.remove(name);
    }
}

pub(crate) async fn route(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    // A pin: the path prefix first, else the header (never passed on to the function).
    let mut pin = None;
    if let Some(prefixed) = affinity::strip_rev_prefix(parts.uri.path()) {
        match prefixed {
            Ok((n, rest)) => {
                let pq = match parts.uri.query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_string(),
                };
                match http::uri::PathAndQuery::try_from(pq) {
                    Ok(pq) => {
                        let mut uri = std::mem::take(&mut parts.uri).into_parts();
                        uri.path_and_query = Some(pq);
                        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
                    }
                    Err(_) => {
                        return error_response(
                            ErrorCode::BadRequest,
                            "the path after the /_rev/N prefix is not a valid request path",
                            None,
                        );
                    }
                }
                pin = Some(n);
            }
            Err(msg) => return error_response(ErrorCode::BadRequest, msg, None),
        }
    }
    if let Some(v) = parts.headers.remove(REVISION_HEADER)
        && pin.is_none()
    {
        match affinity::parse_pin_header(v.as_bytes()) {
            Ok(n) => pin = Some(n),
            Err(msg) => return error_response(ErrorCode::BadRequest, msg, None),
        }
    }

    let method = parts.method.as_str();
    let path = parts.uri.path();
    let found = gw
        .control
        .routes()
        .table
        .lookup(method, path)
        .map(|m| m.target.clone());
    let app = match (found, pin) {
        (Ok(app), _) => app,
        // A path only a pinned revision without traffic serves is not in the global table.
        (Err(path_matched), Some(n)) => match pinned_app(gw, n, method, path) {
            Some(app) => app,
            None => return no_route(path_matched, method, path),
        },
        (Err(path_matched), None) => return no_route(path_matched, method, path),
    };

    let mut set_cookie = None;
    let revision = match pin {
        Some(n) => {
            let loaded = app.state().loaded(n).cloned();
            match loaded {
                Some(r) => {
                    r.touch();
                    r
                }
                None => match gw.control.pinned(&app, n).await {
                    Ok(r) => r,
                    Err(e) => return error_response(e.code(), e.to_string(), None),
                },
            }
        }
        None => {
            let state = app.state();
            let chosen = if state.is_split() {
                let cookie = affinity::affinity_value(&parts.headers);
                let kept = cookie
                    .and_then(|v| affinity::affinity_for(v, &app.name))
                    .and_then(|n| state.weighted(n));
                match kept {
                    Some(r) => Some(r.clone()),
                    None => {
                        let r = state.pick(fastrand::u8(0..100)).cloned();
                        if let Some(r) = &r {
                            set_cookie =
                                Some(affinity::set_affinity_cookie(cookie, &app.name, r.revision));
                        }
                        r
                    }
                }
            } else {
                state.primary().cloned()
            };
            match chosen {
                Some(r) => r,
                None => {
                    return error_response(
                        ErrorCode::FunctionUnavailable,
                        format!("app {:?} has no revision taking traffic", &*app.name),
                        None,
                    );
                }
            }
        }
    };

    let path = parts.uri.path();
    let (target, params, rest) = match revision.routes.lookup(parts.method.as_str(), path) {
        Ok(m) => {
            let params: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect();
            (m.target.clone(), params, m.rest.map(str::to_string))
        }
        Err(path_matched) => {
            let mut resp = no_route(path_matched, parts.method.as_str(), path);
            resp.headers_mut()
                .insert(REVISION_HEADER, HeaderValue::from(revision.revision));
            return resp;
        }
    };
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
    if crate::events::is_async(&parts.headers) {
        if let Some(n) = pin {
            return error_response(
                ErrorCode::BadRequest,
                format!(
                    "an async invocation cannot be pinned to revision {n}: it runs on the revision that takes traffic when its attempt starts; send it without nubo-revision and /_rev/"
                ),
                None,
            );
        }
        let retry = revision
            .manifest
            .functions
            .get(&*target.target.function)
            .map(|f| f.retry)
            .unwrap_or_default();
        return gw
            .submit_event(&target.target, retry, target.max_request_body, parts, body)
            .await;
    }
    let mut resp = gw
        .invoke(&target.target, target.max_request_body, parts, body, "http")
        .await;
    revision.stats.record(resp.status().is_server_error());
    if let Some(c) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// The 404 or 405 answer when no route matches.
fn no_route(path_matched: bool, method: &str, path: &str) -> Response<Body> {
    if path_matched {
        error_response(
            ErrorCode::MethodNotAllowed,
            format!("no route accepts {method} for {path}"),
            None,
        )
    } else {
        error_response(
            ErrorCode::RouteNotFound,
            format!("no route matches {method} {path}"),
            None,
        )
    }
}

/// The app whose loaded revision `revision` has a route for `path` (only for pinned requests
/// the global table does not know; scans the loaded apps).
fn pinned_app(gw: &Gateway, revision: u64, method: &str, path: &str) -> Option<Arc<LiveApp>> {
    gw.control.apps().into_iter().find(|a| {
        a.state()
            .loaded(revision)
            .is_some_and(|r| r.routes.lookup(method, path).is_ok())
    })
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
        let mut parts = parts;
        let trace = invocation_trace(&mut parts.headers, self.sink.tracing());
        let inv = Invocation::start_traced(
            InvocationMeta {
                id,
                app: target.app.clone(),
                function: target.function.clone(),
                revision: target.revision,
                trigger,
            },
            &self.sink,
            trace,
        );
        let exceeded = Arc::new(AtomicBool::new(false));
        let body =
            LimitedBody::new(body, max_body, exceeded.clone(), Some(inv.clone())).boxed_unsync();
        let stored_invoke = parts
            .headers
            .remove(crate::events::ENTRY_HEADER)
            .is_some_and(|v| v == "invoke");
        let entry = if trigger == "invoke" || stored_invoke {
            Entry::Invoke
        } else {
            Entry::Route
        };
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(inv.clone());
        req.extensions_mut().insert(entry);

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
                inv.response_done();
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

/// The trace an invocation runs in, from the caller's `traceparent` and `tracestate` (see
/// [`TraceContext::for_invocation`]). The headers the function sees are rewritten to name the
/// invocation's span as the parent, so what the function calls joins the same trace.
fn invocation_trace(headers: &mut http::HeaderMap, recording: bool) -> Option<TraceContext> {
    // W3C: a request with more than one traceparent has none that can be trusted.
    let mut parents = headers.get_all(TRACEPARENT_HEADER).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(one), None) => Some(one.as_bytes()),
        _ => None,
    };
    // Several tracestate headers are one list.
    let state: Option<Vec<u8>> = {
        let mut values = headers
            .get_all(TRACESTATE_HEADER)
            .iter()
            .map(|v| v.as_bytes());
        values.next().map(|first| {
            let mut joined = first.to_vec();
            for more in values {
                joined.push(b',');
                joined.extend_from_slice(more);
            }
            joined
        })
    };
    let trace = TraceContext::for_invocation(parent, state.as_deref(), recording)?;
    headers.remove(TRACEPARENT_HEADER);
    headers.remove(TRACESTATE_HEADER);
    if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
        headers.insert(TRACEPARENT_HEADER, v);
    }
    if let Some(state) = &trace.tracestate
        && let Ok(v) = HeaderValue::from_str(state)
    {
        headers.insert(TRACESTATE_HEADER, v);
    }
    Some(trace)
}

fn with_ids(mut resp: Response<Body>, target: &FunctionTarget) -> Response<Body> {
    resp.headers_mut()
        .insert(REVISION_HEADER, HeaderValue::from(target.revision));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_sees_its_invocation_span_as_the_parent() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT_HEADER, HeaderValue::from_static(caller));
        h.append(TRACESTATE_HEADER, HeaderValue::from_static("a=1"));
        h.append(TRACESTATE_HEADER, HeaderValue::from_static("b=2"));
        let trace = invocation_trace(&mut h, true).unwrap();
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h[TRACEPARENT_HEADER], trace.traceparent().as_str());
        assert_ne!(h[TRACEPARENT_HEADER], caller);
        assert_eq!(h[TRACESTATE_HEADER], "a=1,b=2");

        // Not exporting: the caller's context passes through as it came.
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT_HEADER, HeaderValue::from_static(caller));
        assert!(invocation_trace(&mut h, false).is_some());
        assert_eq!(h[TRACEPARENT_HEADER], caller);

        // Two traceparents: neither is trusted, a new trace starts.
        let mut h = http::HeaderMap::new();
        h.append(TRACEPARENT_HEADER, HeaderValue::from_static(caller));
        h.append(TRACEPARENT_HEADER, HeaderValue::from_static(caller));
        let fresh = invocation_trace(&mut h, true).unwrap();
        assert_eq!(fresh.parent_span_id, None);
        assert_eq!(h.get_all(TRACEPARENT_HEADER).iter().count(), 1);

        let mut h = http::HeaderMap::new();
        assert!(invocation_trace(&mut h, false).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn headers_only_nubo_sets_are_removed_from_client_requests() {
        let mut h = http::HeaderMap::new();
        for name in [
            "nubo-hop",
            "Nubo-Trigger",
            "nubo-trigger-name",
            "nubo-entry",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.append("nubo-hop", HeaderValue::from_static("2"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("nubo-invocation-type", HeaderValue::from_static("event"));
        strip_internal_headers(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key("content-type") && h.contains_key("nubo-invocation-type"));
    }
}
