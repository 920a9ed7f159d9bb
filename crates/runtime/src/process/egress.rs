//! The egress proxy of a process worker: an HTTP forward proxy Nubo serves on the worker's
//! proxy listener (`127.0.0.1:9002` inside the sandbox, the worker's only way out), enforcing
//! the function's `allowed_hosts` with the same rules as wasm guests' outbound `wasi:http`.
//!
//! Plain-HTTP requests in absolute form (`GET http://host:port/path`) are forwarded;
//! `CONNECT host:port` opens a tunnel (HTTPS goes through it end to end). Both are checked
//! against the allowlist before DNS ([`Allowlist::allows`]), and every resolved address is
//! checked again ([`Allowlist::allows_ip`]): only addresses that pass are connected to, so a
//! name that resolves to loopback, a private range or cloud metadata reaches nothing unless
//! the manifest names that address. A refusal is a 403 whose body names the host and the
//! manifest line that would allow it. Requests and body bytes are counted on the invocation
//! the worker is serving when they happen.
//!
//! A forwarded plain-HTTP request carries that invocation's trace: its `traceparent` is
//! replaced by one naming a span for the call (or the invocation's context when it is not
//! recorded). What goes through a CONNECT tunnel is encrypted end to end and cannot be changed,
//! so HTTPS calls carry whatever the program sent and get no span.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nubo_core::FunctionTarget;
use nubo_core::egress::{Allowlist, ssrf_risk};
use nubo_core::limits::{MAX_OUTBOUND_REQUESTS, OUTBOUND_REQUEST_TIMEOUT_MS};
use nubo_telemetry::{Invocation, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Connections one worker may hold open through its proxy at once: bounds the descriptors and
/// tasks a single worker can make the server spend. Further connections wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long resolving a host may take: a slow or hostile DNS server must not hold a
/// connection (and its worker) forever.
pub(crate) const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to one resolved address may take before the next is tried: a
/// blackholed destination must not hold a connection forever.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers that concern one hop only and are not forwarded (RFC 9110 §7.6.1), plus
/// the proxy's own credentials.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// The body of every answer the proxy gives.
type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Finds the invocation the worker is serving right now, if any.
pub(crate) type CurrentInvocation = Arc<dyn Fn() -> Option<Invocation> + Send + Sync>;

/// One worker's egress policy and where its outbound calls are counted.
pub(crate) struct Egress {
    allowlist: Arc<Allowlist>,
    app: Arc<str>,
    function: Arc<str>,
    current: CurrentInvocation,
}

impl Egress {
    /// The proxy of a worker of `target`, which may reach what `allowlist` allows; outbound
    /// calls are counted on whatever `current` returns when they happen.
    pub(crate) fn new(
        allowlist: Arc<Allowlist>,
        target: &FunctionTarget,
        current: CurrentInvocation,
    ) -> Egress {
        Egress {
            allowlist,
            app: Arc::clone(&target.app),
            function: Arc::clone(&target.function),
            current,
        }
    }

    /// Counts on the invocation in flight; calls made between invocations count nowhere.
    fn count(&self, requests: u64, bytes_out: u64, bytes_in: u64) {
        count_on(&self.current, requests, bytes_out, bytes_in);
    }

    /// Checks `scheme://host:port` before and after DNS; the addresses that may be connected
    /// to, in resolver order.
    async fn resolve(
        &self,
        scheme: Option<&str>,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowlist.allows(scheme, bare, port) {
            return Err(Refusal::NotAllowed {
                target: display_target(scheme, bare, port),
                suggestion: Allowlist::suggestion(scheme, bare, port),
            });
        }
        let resolved: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((bare, port))).await
                {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(e)) => {
                        return Err(Refusal::Unresolved {
                            host: bare.to_owned(),
                            reason: e.to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(Refusal::Unresolved {
                            host: bare.to_owned(),
                            reason: format!("no answer within {DNS_TIMEOUT:?}"),
                        });
                    }
                }
            }
        };
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
            .into_iter()
            .partition(|addr| self.allowlist.allows_ip(addr.ip(), port));
        match (allowed.is_empty(), refused.first()) {
            (false, _) => Ok(allowed),
            (true, Some(first)) => Err(Refusal::Address {
                host: bare.to_owned(),
                ip: first.ip(),
                reason: ssrf_risk(first.ip()).unwrap_or("refused address"),
                suggestion: Allowlist::suggestion(scheme, &first.ip().to_string(), port),
            }),
            (true, None) => Err(Refusal::Unresolved {
                host: bare.to_owned(),
                reason: "no addresses".into(),
            }),
        }
    }

    /// Answers a refusal, and notes it in the invocation's log (as wasm guests' refusals are)
    /// and the server log (an audit trail of what functions tried to reach).
    fn refuse(&self, refusal: &Refusal) -> Response<ProxyBody> {
        let message = refusal.message(&self.function);
        if let Some(invocation) = (self.current)() {
            let text = message.strip_prefix("nubo egress: ").unwrap_or(&message);
            let line = format!("[nubo] egress proxy: {}\n", text.trim_end());
            invocation.write_log(nubo_telemetry::Stream::Stderr, line.as_bytes());
        }
        tracing::info!(
            app = %self.app,
            function = %self.function,
            refusal = %message,
            "egress refused"
        );
        text(refusal.status(), message)
    }
}

/// Why the proxy did not connect.
#[derive(Debug)]
enum Refusal {
    /// The allowlist does not name the destination.
    NotAllowed { target: String, suggestion: String },
    /// The name resolved only to addresses functions may not reach.
    Address {
        host: String,
        ip: IpAddr,
        reason: &'static str,
        suggestion: String,
    },
    /// The name did not resolve.
    Unresolved { host: String, reason: String },
    /// No resolved address accepted the connection.
    Unreachable { host: String, reason: String },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotAllowed { .. } | Refusal::Address { .. } => StatusCode::FORBIDDEN,
            Refusal::Unresolved { .. } | Refusal::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn message(&self, function: &str) -> String {
        match self {
            Refusal::NotAllowed { target, suggestion } => format!(
                "nubo egress: function {function:?} may not connect to {target}; to allow it, add \
                 the host to the function's table in nubo.toml: {suggestion}\n"
            ),
            Refusal::Address {
                host,
                ip,
                reason,
                suggestion,
            } => format!(
                "nubo egress: {host} resolves to {ip}, a {reason}, which function {function:?} \
                 may not reach unless allowed_hosts names that address; to allow it: \
                 {suggestion}\n"
            ),
            Refusal::Unresolved { host, reason } => {
                format!("nubo egress: cannot resolve {host}: {reason}; check the host name\n")
            }
            Refusal::Unreachable { host, reason } => format!(
                "nubo egress: cannot connect to {host}: {reason}; check that the host is up\n"
            ),
        }
    }
}

/// `http://host:port` or, for a tunnel, `host:port` (IPv6 in brackets).
fn display_target(scheme: Option<&str>, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{host}:{port}"),
        None => format!("{host}:{port}"),
    }
}

fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves the proxy on `listener` until the task is aborted (when the worker ends). Every
/// connection, and any tunnel it became, lives in a `JoinSet`, so aborting this task closes
/// them all.
pub(crate) async fn serve(listener: TcpListener, egress: Arc<Egress>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&egress)));
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::debug!(error = %e, "egress proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A tunnel agreed on by a `CONNECT`: run once the 200 has gone out and hyper hands the
/// client connection back.
struct Tunnel {
    upgrade: hyper::upgrade::OnUpgrade,
    upstream: TcpStream,
}

/// One client connection: HTTP requests until it closes, or a tunnel after a `CONNECT`.
async fn connection(stream: TcpStream, egress: Arc<Egress>) {
    let (tunnels, mut tunnel) = mpsc::channel::<Tunnel>(1);
    let service = {
        let egress = Arc::clone(&egress);
        hyper::service::service_fn(move |req| {
            let egress = Arc::clone(&egress);
            let tunnels = tunnels.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&egress, tunnels, req).await) }
        })
    };
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Ok(Tunnel { upgrade, upstream }) = tunnel.try_recv() {
        let Ok(upgraded) = upgrade.await else { return };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = Counted {
            inner: upstream,
            egress,
        };
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

async fn handle(
    egress: &Egress,
    tunnels: mpsc::Sender<Tunnel>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    // Every request counts, refused ones too: the record shows what the function tried, and
    // the per-invocation cap applies alike to wasm guests and process functions.
    if let Some(invocation) = (egress.current)() {
        invocation.add_outbound(1, 0, 0);
        if invocation.outbound_requests() > MAX_OUTBOUND_REQUESTS {
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "nubo egress: this invocation made more than {MAX_OUTBOUND_REQUESTS} outbound                      requests, the most one invocation may make; make fewer calls per invocation
"
                ),
            );
        }
    }
    if req.method() == Method::CONNECT {
        tunnel(egress, &tunnels, req).await
    } else {
        forward(egress, req).await
    }
}

/// `CONNECT host:port`: checks, connects, answers 200 and leaves the splicing to
/// [`connection`].
async fn tunnel(
    egress: &Egress,
    tunnels: &mpsc::Sender<Tunnel>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "nubo egress: CONNECT needs a host and a port, as in CONNECT example.com:443\n".into(),
        );
    };
    let upstream = match connect_checked(egress, None, &host, port).await {
        Ok(upstream) => upstream,
        Err(refusal) => return egress.refuse(&refusal),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    // The channel holds one tunnel and a connection has at most one CONNECT answered 200
    // (hyper stops reading requests after it), so this never finds it full.
    let _ = tunnels.try_send(Tunnel { upgrade, upstream });
    Response::new(Empty::new().map_err(|never| match never {}).boxed())
}

/// A plain-HTTP request in absolute form: checks, connects, forwards it in origin form and
/// streams the answer back.
async fn forward(egress: &Egress, req: Request<Incoming>) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "nubo egress: this is an HTTP proxy: send requests with absolute URIs \
             (GET http://host/path) or CONNECT host:port; set HTTP_PROXY rather than \
             connecting to it directly\n"
                .into(),
        );
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "nubo egress: {scheme}:// URLs go through CONNECT (set HTTPS_PROXY); only \
                 http:// requests are forwarded as they are\n"
            ),
        );
    }
    let port = uri.port_u16().unwrap_or(80);
    let upstream = match connect_checked(egress, Some("http"), host, port).await {
        Ok(upstream) => upstream,
        Err(refusal) => return egress.refuse(&refusal),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => {
                return egress.refuse(&Refusal::Unreachable {
                    host: host.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
    // Ends when the answer's body has been read or dropped.
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The Host the destination sees is the one that was checked, never a header the program
    // chose (a Host unlike the URL could reach a virtual host the allowlist does not name).
    let host_header = match uri.port() {
        Some(port) => format!("{host}:{}", port.as_str()),
        None => host.to_owned(),
    };
    match HeaderValue::from_str(&host_header) {
        Ok(value) => {
            parts.headers.insert(header::HOST, value);
        }
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("nubo egress: {host_header:?} is not a valid host\n"),
            );
        }
    }
    parts.uri = match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let invocation = (egress.current)();
    let span = invocation.as_ref().and_then(Invocation::outbound_span);
    if let Some(span) = &span {
        if let Ok(v) = HeaderValue::from_str(&span.traceparent()) {
            parts.headers.insert(TRACEPARENT_HEADER, v);
        }
        parts.headers.remove(TRACESTATE_HEADER);
        if let Some(state) = span.tracestate()
            && let Ok(v) = HeaderValue::from_str(state)
        {
            parts.headers.insert(TRACESTATE_HEADER, v);
        }
    }
    let method = parts.method.as_str().to_owned();
    let counter = Arc::clone(&egress.current);
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                count_on(&counter, 0, data.len() as u64, 0);
            }
            frame
        })
        .boxed();
    let answer = tokio::time::timeout(
        Duration::from_millis(OUTBOUND_REQUEST_TIMEOUT_MS),
        sender.send_request(Request::from_parts(parts, body)),
    );
    let answered = answer.await;
    if let (Some(span), Some(invocation)) = (span, &invocation) {
        let status = match &answered {
            Ok(Ok(response)) => Some(response.status().as_u16()),
            _ => None,
        };
        invocation.end_outbound(span, &method, &format!("http://{host}:{port}"), status);
    }
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return egress.refuse(&Refusal::Unreachable {
                host: host.to_owned(),
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return egress.refuse(&Refusal::Unreachable {
                host: host.to_owned(),
                reason: format!("no answer within {OUTBOUND_REQUEST_TIMEOUT_MS} ms"),
            });
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let counter = Arc::clone(&egress.current);
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                count_on(&counter, 0, 0, data.len() as u64);
            }
            frame
        })
        .boxed();
    Response::from_parts(parts, body)
}

/// Counts on the invocation `current` finds, if any.
fn count_on(current: &CurrentInvocation, requests: u64, bytes_out: u64, bytes_in: u64) {
    if let Some(invocation) = current() {
        invocation.add_outbound(requests, bytes_out, bytes_in);
    }
}

/// Resolves and checks `host`, then connects to the first allowed address that answers.
async fn connect_checked(
    egress: &Egress,
    scheme: Option<&str>,
    host: &str,
    port: u16,
) -> Result<TcpStream, Refusal> {
    let addrs = egress.resolve(scheme, host, port).await?;
    let mut last = String::from("no addresses");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(Refusal::Unreachable {
        host: host.to_owned(),
        reason: last,
    })
}

/// Removes hop-by-hop headers, those the `Connection` header lists included.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The upstream side of a tunnel: counts bytes sent (`bytes_out`) and received (`bytes_in`).
struct Counted {
    inner: TcpStream,
    egress: Arc<Egress>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            self.egress.count(0, 0, read as u64);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.egress.count(0, written as u64, 0);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_core::InvocationId;
    use nubo_telemetry::{FinishedInvocation, InvocationMeta, record_channel};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bounds every network step of these tests.
    const STEP: Duration = Duration::from_secs(10);

    /// An upstream that answers each request with `hello` and sends the request head it got.
    async fn upstream() -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Reads the head, then a body of Content-Length bytes.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if got.len() >= end + 4 + length {
                                let _ = heads.send(text);
                                break;
                            }
                        }
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                        )
                        .await;
                });
            }
        });
        (port, seen)
    }

    struct Proxy {
        port: u16,
        invocation: Option<Invocation>,
        /// What the proxy sees as the invocation in flight.
        slot: Arc<std::sync::Mutex<Option<Invocation>>>,
        records: std::sync::mpsc::Receiver<FinishedInvocation>,
    }

    impl Proxy {
        /// The invocation's record, once this test's last handle on it is dropped.
        fn record(mut self) -> FinishedInvocation {
            drop(self.invocation.take());
            self.slot.lock().unwrap().take();
            self.records.recv_timeout(STEP).unwrap()
        }
    }

    /// A proxy for `allowed`, counting on one invocation in flight.
    async fn proxy(allowed: &[String]) -> Proxy {
        proxy_traced(allowed, None).await
    }

    /// [`proxy`] with the invocation in flight running in `trace`.
    async fn proxy_traced(
        allowed: &[String],
        trace: Option<nubo_telemetry::TraceContext>,
    ) -> Proxy {
        let allowlist = Arc::new(Allowlist::parse(allowed).unwrap());
        let (sink, records) = record_channel(4);
        let target = FunctionTarget {
            app: "shop".into(),
            function: "api".into(),
            revision: 1,
        };
        let invocation = Invocation::start_traced(
            InvocationMeta {
                id: InvocationId::new(),
                app: Arc::clone(&target.app),
                function: Arc::clone(&target.function),
                revision: 1,
                trigger: "invoke",
            },
            &sink,
            trace,
        );
        let slot = Arc::new(std::sync::Mutex::new(Some(invocation.clone())));
        let held = Arc::clone(&slot);
        let current: CurrentInvocation = Arc::new(move || held.lock().unwrap().clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            serve(listener, Arc::new(Egress::new(allowlist, &target, current))).await;
        });
        Proxy {
            port,
            invocation: Some(invocation),
            slot,
            records,
        }
    }

    /// Sends `raw` to the proxy and reads until it closes.
    async fn exchange(port: u16, raw: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(STEP, stream.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(url: &str) -> String {
        format!("GET {url} HTTP/1.1\r\nHost: ignored.example\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn a_forwarded_request_carries_the_invocations_trace() {
        let (port, mut seen) = upstream().await;
        let trace = nubo_telemetry::TraceContext::root(true);
        let p = proxy_traced(&[format!("http://127.0.0.1:{port}")], Some(trace.clone())).await;
        let answer = exchange(
            p.port,
            &format!(
                "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\
                 traceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let head = seen.recv().await.unwrap().to_ascii_lowercase();
        // The server exports no traces here, so the call carries the invocation's own context
        // in place of what the program sent.
        assert!(
            head.contains(&format!("traceparent: {}\r\n", trace.traceparent())),
            "{head}"
        );
        assert_eq!(head.matches("traceparent").count(), 1, "{head}");
    }

    #[tokio::test]
    async fn forwards_allowed_requests_with_the_checked_host_and_counts_them() {
        let (port, mut seen) = upstream().await;
        let p = proxy(&[format!("http://127.0.0.1:{port}")]).await;
        let answer = exchange(
            p.port,
            &format!(
                "POST http://127.0.0.1:{port}/path?q=1 HTTP/1.1\r\nHost: admin.internal\r\n\
                 Proxy-Authorization: Basic eA==\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        let head = seen.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /path?q=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(!head.contains("admin.internal"), "{head}");
        assert!(!head.contains("proxy-authorization"), "{head}");
        assert!(head.ends_with("\r\n\r\nabc"), "{head}");
        let record = p.record();
        assert_eq!(
            (
                record.outbound_requests,
                record.outbound_bytes_out,
                record.outbound_bytes_in
            ),
            (1, 3, 5)
        );
    }

    #[tokio::test]
    async fn refuses_unlisted_hosts_with_the_manifest_fix() {
        let (port, _seen) = upstream().await;
        let p = proxy(&[format!("http://127.0.0.1:{port}")]).await;
        let other = port.wrapping_add(1).max(1);
        let answer = exchange(p.port, &get(&format!("http://127.0.0.1:{other}/"))).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains(&format!(
                "may not connect to http://127.0.0.1:{other}; to allow it, add the host to the \
                 function's table in nubo.toml: allowed_hosts = [\"http://127.0.0.1:{other}\"]"
            )),
            "{answer}"
        );
        // A tunnel is checked too, whatever scheme it would carry.
        let answer = exchange(
            p.port,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains("allowed_hosts = [\"example.com:443\"]"),
            "{answer}"
        );
        // Https in absolute form must use CONNECT; a direct request is not a proxy request.
        let answer = exchange(p.port, &get(&format!("https://127.0.0.1:{port}/"))).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let answer = exchange(p.port, &get("/relative")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let record = p.record();
        assert_eq!(record.outbound_requests, 4);
        let refusals: Vec<&str> = record
            .logs
            .iter()
            .map(|l| l.line.as_str())
            .filter(|l| l.starts_with("[nubo] egress proxy: function \"api\" may not connect"))
            .collect();
        assert_eq!(refusals.len(), 2, "{:?}", record.logs);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_the_address_is_listed() {
        let (port, _seen) = upstream().await;
        let p = proxy(&[format!("http://localhost:{port}")]).await;
        let answer = exchange(p.port, &get(&format!("http://localhost:{port}/"))).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains("localhost resolves to ")
                && answer.contains("a loopback address")
                && answer.contains("allowed_hosts = [\"http://"),
            "{answer}"
        );
        let p = proxy(&[
            format!("http://localhost:{port}"),
            format!("127.0.0.1:{port}"),
        ])
        .await;
        let answer = exchange(p.port, &get(&format!("http://localhost:{port}/"))).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn connect_tunnels_to_allowed_hosts_and_counts_the_bytes() {
        let (port, mut seen) = upstream().await;
        let p = proxy(&[format!("127.0.0.1:{port}")]).await;
        let mut stream = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        stream
            .write_all(
                format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        // The answer's head, read a byte at a time so nothing of the tunnel is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(
                head.len() < 1024,
                "no end of the CONNECT answer in {head:?}"
            );
            let mut byte = [0u8; 1];
            tokio::time::timeout(STEP, stream.read_exact(&mut byte))
                .await
                .unwrap()
                .unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "{head:?}");
        let inner = "GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n";
        stream.write_all(inner.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(STEP, stream.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(out.ends_with("hello"), "{out}");
        assert_eq!(seen.recv().await.unwrap(), inner);
        let record = p.record();
        assert_eq!(
            (
                record.outbound_requests,
                record.outbound_bytes_out,
                record.outbound_bytes_in
            ),
            (1, inner.len() as u64, out.len() as u64)
        );
    }
}
