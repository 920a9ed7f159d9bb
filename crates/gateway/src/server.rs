//! The listener: accepts connections, serves HTTP/1.1 with header timeouts, splits `/_nubo/`
//! (admin and ops) from app traffic, and drains in-flight requests on shutdown.

use crate::admin;
use crate::events::Events;
use crate::rescue::error_response;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use nubo_control::{Control, EventWriter};
use nubo_core::{Body, ClientAddr, Dispatch, ErrorCode};
use nubo_telemetry::RecordSink;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Who may use the admin API.
#[derive(Debug, Clone)]
pub enum AdminAuth {
    /// Only clients on loopback (the default: no key configured).
    LoopbackOnly,
    /// Any client presenting `Authorization: Bearer <key>`.
    Key(String),
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Admin API access.
    pub admin: AdminAuth,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a client may take to send request headers (slowloris bound).
    pub header_read_timeout: Duration,
    /// Most async invocations waiting or running; past it, async submissions get 429.
    pub max_async_queue: u64,
    /// The S3 endpoint, when it runs (reported by `GET /_nubo/api/v1/s3/credentials`).
    pub s3: Option<crate::s3::S3Endpoint>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            admin: AdminAuth::LoopbackOnly,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_async_queue: crate::events::DEFAULT_MAX_PENDING,
            s3: None,
        }
    }
}

/// Why serving stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Accepting connections failed persistently.
    #[error("accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// The gateway of one node.
pub struct Gateway {
    pub(crate) control: Arc<Control>,
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) sink: RecordSink,
    pub(crate) config: GatewayConfig,
    pub(crate) draining: AtomicBool,
    /// Async invocations (absent when the server takes none).
    pub(crate) events: Option<Events>,
    /// Reads the apps' trigger status (set once by the server, after the triggers start).
    pub(crate) triggers: std::sync::OnceLock<Arc<dyn crate::TriggerStatuses>>,
    /// The registry `/_nubo/metrics` renders (set once by the server).
    pub(crate) metrics: std::sync::OnceLock<Arc<nubo_telemetry::Metrics>>,
    admin: axum::Router,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish()
    }
}

impl Gateway {
    /// Builds the gateway. With `events` (the store's async writer and how many async
    /// invocations are already waiting), it takes async invocations; call
    /// [`Gateway::start_deliverer`] to run them.
    pub fn new(
        control: Arc<Control>,
        dispatch: Arc<dyn Dispatch>,
        sink: RecordSink,
        config: GatewayConfig,
        events: Option<(EventWriter, u64)>,
    ) -> Arc<Self> {
        let max_pending = config.max_async_queue;
        Arc::new_cyclic(|weak| Gateway {
            control,
            dispatch,
            sink,
            config,
            draining: AtomicBool::new(false),
            events: events.map(|(w, pending)| Events::new(w, pending, max_pending)),
            triggers: std::sync::OnceLock::new(),
            metrics: std::sync::OnceLock::new(),
            admin: admin::router(weak.clone()),
        })
    }

    /// Lets `GET /_nubo/api/v1/apps/{app}/triggers` read the triggers' status through
    /// `statuses`. Only the first call counts; until then the endpoint lists no triggers.
    pub fn set_trigger_statuses(&self, statuses: Arc<dyn crate::TriggerStatuses>) {
        if self.triggers.set(statuses).is_err() {
            tracing::warn!("the trigger status reader was set twice; keeping the first");
        }
    }

    /// Makes `/_nubo/metrics` render `metrics`. Only the first call counts; until then the
    /// endpoint answers 404.
    pub fn set_metrics(&self, metrics: Arc<nubo_telemetry::Metrics>) {
        if self.metrics.set(metrics).is_err() {
            tracing::warn!("the metrics registry was set twice; keeping the first");
        }
    }

    /// Starts delivering async invocations (a task that ends when the gateway is dropped or
    /// drains).
    pub fn start_deliverer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        crate::events::spawn_deliverer(Arc::downgrade(self))
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting and
    /// waits up to the drain timeout for in-flight requests.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let graceful = GracefulShutdown::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .keep_alive(true);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let gw = self.clone();
                    let svc = service_fn(move |req| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(gw.handle(req, remote).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(self.config.drain_timeout) => {
                tracing::warn!(timeout_s = self.config.drain_timeout.as_secs(), "drain deadline passed; closing remaining connections");
            }
        }
        Ok(())
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Body> {
        // Only Nubo marks how an invocation entered and where it stands in a trigger chain.
        crate::data::strip_internal_headers(req.headers_mut());
        let path = req.uri().path();
        if path == "/_nubo" || path.starts_with("/_nubo/") {
            return self.admin(req, remote).await;
        }
        req.extensions_mut().insert(ClientAddr(remote));
        crate::data::route(&self, req).await
    }

    async fn admin(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let path = req.uri().path();
        let open = path == "/_nubo/health" || path == "/_nubo/ready";
        if !open && let Err(why) = self.authorize(&req, remote) {
            return error_response(ErrorCode::Forbidden, why, None);
        }
        match self.admin.clone().oneshot(req).await {
            Ok(resp) => resp.map(|b| b.map_err(nubo_core::BoxError::from).boxed_unsync()),
            Err(never) => match never {},
        }
    }

    /// Checks admin access; the error is the message for the client.
    fn authorize<B>(&self, req: &Request<B>, remote: SocketAddr) -> Result<(), &'static str> {
        match &self.config.admin {
            AdminAuth::LoopbackOnly => {
                let ip = match remote.ip() {
                    std::net::IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map(std::net::IpAddr::V4)
                        .unwrap_or(std::net::IpAddr::V6(v6)),
                    v4 => v4,
                };
                if ip.is_loopback() {
                    Ok(())
                } else {
                    Err(
                        "the admin API accepts only loopback clients when no admin key is configured; start the server with NUBO_ADMIN_KEY set",
                    )
                }
            }
            AdminAuth::Key(key) => {
                let presented = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes())) {
                    Ok(())
                } else {
                    Err(
                        "missing or wrong admin key: send `Authorization: Bearer <key>` (the CLI reads NUBO_TOKEN)",
                    )
                }
            }
        }
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
