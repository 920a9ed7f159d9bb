//! The queue publish API of process functions: `POST /nubo/v1/queues/{queue}/messages` served
//! on a worker's own Runtime API listener (so only that worker reaches it), scoped to the queues
//! its function binds in the manifest (`queues = ["orders"]`).
//!
//! The request body is the message (at most `MAX_MESSAGE_BYTES`), its `content-type` is kept
//! for the consumer, and the answer is `201 {"id": "<message id>"}` once the message is
//! durable. The message carries the hop count of the worker's invocation in flight, so the
//! queue trigger's delivery runs one hop further. Errors are Nubo's JSON errors
//! `{"error":{"code","message"}}`: 403 not bound, 404 no such queue, 413 too large, 429 full.

use super::kv::{Failure, decode, json_response};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use nubo_core::ErrorCode;
use nubo_store::{MAX_MESSAGE_BYTES, NewMessage, QueueError, Queues};

/// Where the API is served on the worker's Runtime API listener.
pub(crate) const PREFIX: &str = "/nubo/v1/queues";

/// The queues one function's workers may publish to: the server's queues and the names the
/// function binds.
pub(crate) struct QueueScope {
    /// `None` on a runtime built without a store (unit tests of other parts).
    queues: Option<Queues>,
    /// The function's name in the manifest, for the fix in a "not bound" error.
    function: String,
    /// The queues its `queues` list names.
    bound: Vec<String>,
}

impl QueueScope {
    /// The scope of `function`, which binds the queues `bound`.
    pub(crate) fn new(queues: Option<Queues>, function: &str, bound: Vec<String>) -> QueueScope {
        QueueScope {
            queues,
            function: function.to_owned(),
            bound,
        }
    }

    /// A scope that reaches no queue.
    pub(crate) fn none() -> QueueScope {
        QueueScope::new(None, "", Vec::new())
    }
}

/// Serves one request whose path starts with [`PREFIX`]; messages it publishes carry `hop`
/// and the invocation's `traceparent`.
pub(crate) async fn handle(
    scope: &QueueScope,
    hop: u32,
    traceparent: Option<String>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match serve(scope, hop, traceparent, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    scope: &QueueScope,
    hop: u32,
    traceparent: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Failure> {
    let queue = parse(req.method(), req.uri().path())?;
    if !scope.bound.contains(&queue) {
        return Err(not_bound(scope, &queue));
    }
    let Some(queues) = scope.queues.clone() else {
        return Err(Failure::new(
            ErrorCode::Internal,
            "this server runs without queues; start it with its data directory (nubo server) \
             to publish messages",
        ));
    };
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(Failure::bad(
            "the publish endpoint takes no query parameters; send the message as the body",
        ));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                Failure::bad("the content-type header is not visible ASCII text; send it as text")
            })
        })
        .transpose()?;
    let body = read_message(req.into_body()).await?;
    let message = NewMessage {
        body: body.to_vec(),
        content_type,
        hop,
    };
    let published = tokio::task::spawn_blocking(move || {
        queues.publish_traced(&queue, vec![message], traceparent.as_deref())
    })
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "a queue publish did not finish");
        Failure::new(
            ErrorCode::Internal,
            "the queue publish did not finish; the server log has details",
        )
    })?;
    let id = published
        .map_err(failure)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::Internal,
                "the queue stored no message; publish it again",
            )
        })?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({ "id": id }),
    ))
}

/// The message body, refused past [`MAX_MESSAGE_BYTES`] without reading further.
async fn read_message(body: Incoming) -> Result<Bytes, Failure> {
    match Limited::new(body, MAX_MESSAGE_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(failure(QueueError::TooLarge {
                // At least one byte past the limit; the exact size was not read.
                size: MAX_MESSAGE_BYTES + 1,
                limit: MAX_MESSAGE_BYTES,
            }))
        }
        Err(_) => Err(Failure::bad(
            "the request body could not be read to its end; nothing was published, send it again",
        )),
    }
}

/// The public error for a store error; internal failures are logged, not shown.
#[expect(
    clippy::needless_pass_by_value,
    reason = "taken by value to be passed to map_err as a function"
)]
fn failure(e: QueueError) -> Failure {
    let code = e.code();
    if code == ErrorCode::Internal {
        tracing::warn!(error = %e, "queue publish failed");
        return Failure::new(code, "the queue publish failed; the server log has details");
    }
    Failure::new(code, e.to_string())
}

/// The queue a request publishes to.
fn parse(method: &Method, path: &str) -> Result<String, Failure> {
    let not_found = || {
        Failure::new(
            ErrorCode::NotFound,
            format!("{path} is not a queue API path; use POST /nubo/v1/queues/{{queue}}/messages"),
        )
    };
    let rest = path
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let Some((queue, "messages")) = rest.split_once('/') else {
        return Err(not_found());
    };
    let queue = decode(queue, "queue name")?;
    if queue.is_empty() {
        return Err(not_found());
    }
    if method != Method::POST {
        return Err(Failure::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}; use POST to publish a message"),
        ));
    }
    Ok(queue)
}

fn not_bound(scope: &QueueScope, queue: &str) -> Failure {
    // 403, as for unbound stores and buckets; the code says the call is not permitted.
    Failure::new(
        ErrorCode::Forbidden,
        format!(
            "function \"{}\" does not bind the queue \"{queue}\"; add queues = [\"{queue}\"] \
             to [function.{}] in nubo.toml and deploy again",
            scope.function, scope.function
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(method: &Method, path: &str) -> Result<String, ErrorCode> {
        parse(method, path).map_err(|f| f.code)
    }

    #[test]
    fn paths_name_one_queue() {
        let post = &Method::POST;
        assert_eq!(
            queue(post, "/nubo/v1/queues/orders/messages"),
            Ok("orders".into())
        );
        assert_eq!(
            queue(post, "/nubo/v1/queues/a%2Db/messages"),
            Ok("a-b".into())
        );
        for bad in [
            "/nubo/v1/queues",
            "/nubo/v1/queues/",
            "/nubo/v1/queues/orders",
            "/nubo/v1/queues/orders/",
            "/nubo/v1/queues//messages",
            "/nubo/v1/queues/orders/messages/x",
            "/nubo/v1/queuesx/orders/messages",
        ] {
            assert_eq!(queue(post, bad), Err(ErrorCode::NotFound), "{bad}");
        }
        assert_eq!(
            queue(&Method::GET, "/nubo/v1/queues/orders/messages"),
            Err(ErrorCode::MethodNotAllowed)
        );
    }

    #[test]
    fn unbound_queues_name_the_fix() {
        let scope = QueueScope::new(None, "api", vec!["orders".into()]);
        let f = not_bound(&scope, "private");
        assert_eq!(f.code.status(), 403);
        assert!(
            f.message
                .contains("add queues = [\"private\"] to [function.api]"),
            "{}",
            f.message
        );
    }

    /// The API served by a real worker Runtime API server over loopback, on a real store.
    mod served {
        use crate::process::api::{self, Channel, Job};
        use bytes::Bytes;
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        use tokio::net::TcpListener;

        struct Served {
            addr: std::net::SocketAddr,
            server: tokio::task::JoinHandle<()>,
            store: nubo_store::Store,
            jobs: tokio::sync::mpsc::Sender<Job>,
            _dir: tempfile::TempDir,
        }

        impl Drop for Served {
            fn drop(&mut self) {
                self.server.abort();
            }
        }

        async fn served(bound: &[&str]) -> Served {
            let dir = tempfile::tempdir().unwrap();
            let store = nubo_store::Store::open(dir.path()).unwrap();
            store.queues().create("orders").unwrap();
            store.queues().create("private").unwrap();
            let scope = super::QueueScope::new(
                Some(store.queues()),
                "api",
                bound.iter().map(|s| (*s).to_owned()).collect(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (jobs, receiver) = tokio::sync::mpsc::channel(1);
            let channel =
                Arc::new(Channel::new(receiver, Instant::now()).with_queues(Arc::new(scope)));
            let server = tokio::spawn(api::serve(listener, channel));
            Served {
                addr,
                server,
                store,
                jobs,
                _dir: dir,
            }
        }

        /// One request to the worker-side API; the body as JSON (null when it is not).
        async fn call(
            addr: std::net::SocketAddr,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Vec<u8>,
        ) -> (u16, serde_json::Value) {
            let (status, _, body) =
                crate::process::objects::tests::served::call(addr, method, path, headers, body)
                    .await;
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (status, json)
        }

        #[tokio::test]
        async fn a_bound_queue_takes_the_message_and_its_content_type() {
            let s = served(&["orders"]).await;
            let (status, body) = call(
                s.addr,
                "POST",
                "/nubo/v1/queues/orders/messages",
                &[("content-type", "application/json")],
                br#"{"n":1}"#.to_vec(),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            let id = body["id"].as_str().unwrap().to_owned();
            let claimed = s
                .store
                .queues()
                .claim("orders", 10, Duration::from_secs(30))
                .unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!(claimed[0].id, id);
            assert_eq!(claimed[0].body, br#"{"n":1}"#);
            assert_eq!(claimed[0].content_type.as_deref(), Some("application/json"));
            // No invocation in flight: hop 0.
            assert_eq!(claimed[0].hop, 0);
        }

        /// Publishes one message to `orders` while an invocation with `trace_id` and `hop` is
        /// in flight on the worker; returns the message as the queue holds it.
        async fn published_during(trace_id: String, hop: u32) -> nubo_store::QueueMessage {
            let s = served(&["orders"]).await;
            let (reply, _replied) = tokio::sync::oneshot::channel();
            let job = Job {
                request_id: "r1".into(),
                deadline_ms: 1_700_000_000_000,
                arn: "arn:aws:lambda:local:000000000000:function:a-f:1".into(),
                trace_id,
                payload: Bytes::from_static(b"{}"),
                hop,
                reply,
            };
            s.jobs.send(job).await.unwrap();
            let (status, _) = call(
                s.addr,
                "GET",
                "/2018-06-01/runtime/invocation/next",
                &[],
                vec![],
            )
            .await;
            assert_eq!(status, 200);
            let (status, body) = call(
                s.addr,
                "POST",
                "/nubo/v1/queues/orders/messages",
                &[],
                b"x".to_vec(),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            let mut claimed = s
                .store
                .queues()
                .claim("orders", 10, Duration::from_secs(30))
                .unwrap();
            assert_eq!(claimed.len(), 1);
            claimed.remove(0)
        }

        #[tokio::test]
        async fn messages_carry_the_hop_of_the_invocation_in_flight() {
            let m = published_during("Root=1-00000000-000000000000000000000000".into(), 4).await;
            assert_eq!(m.hop, 4);
            assert_eq!(m.content_type, None);
            // The stand-in trace id is no trace to continue.
            assert_eq!(m.traceparent, None);
        }

        #[tokio::test]
        async fn messages_carry_the_trace_of_the_invocation_in_flight() {
            let trace = nubo_telemetry::TraceContext::root(true);
            let m = published_during(trace.xray(), 0).await;
            assert_eq!(m.traceparent.as_deref(), Some(trace.traceparent().as_str()));
        }

        #[tokio::test]
        async fn refusals_answer_their_status() {
            let s = served(&["orders", "gone"]).await;
            let a = s.addr;
            let (status, body) = call(
                a,
                "POST",
                "/nubo/v1/queues/private/messages",
                &[],
                b"x".to_vec(),
            )
            .await;
            assert_eq!(status, 403);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(r#"add queues = ["private"] to [function.api]"#),
                "{body}"
            );
            assert_eq!(
                s.store.queues().info("private").unwrap().unwrap().messages,
                0
            );
            let (status, _) = call(
                a,
                "POST",
                "/nubo/v1/queues/gone/messages",
                &[],
                b"x".to_vec(),
            )
            .await;
            assert_eq!(status, 404);
            let big = vec![b'x'; nubo_store::MAX_MESSAGE_BYTES + 1];
            let (status, _) = call(a, "POST", "/nubo/v1/queues/orders/messages", &[], big).await;
            assert_eq!(status, 413);
            let (status, _) = call(a, "GET", "/nubo/v1/queues/orders/messages", &[], vec![]).await;
            assert_eq!(status, 405);
            assert_eq!(
                s.store.queues().info("orders").unwrap().unwrap().messages,
                0
            );
        }
    }
}
