//! Outbound `wasi:http` for wasm guests: the function's `allowed_hosts` checked before DNS, every
//! resolved address checked again (SSRF) by the connector that then connects to exactly that
//! address, one pooled keep-alive client per loaded function (HTTP/1.1, TLS with the Mozilla
//! roots), per-invocation request limits and timeouts, and the bytes counted on the invocation.
//!
//! Redirects are not followed: the guest sees the 3xx and, if it follows it, makes a new request
//! that is checked like any other.
//!
//! Each allowed request carries the invocation's trace: a `traceparent` naming a span of its
//! own (the call, from its start to the response head or failure) when the invocation is
//! recorded, else the invocation's context as it came; the guest's own `traceparent` is
//! replaced, as the call's parent is the invocation.

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nubo_core::egress::{Allowlist, ssrf_risk};
use nubo_core::limits::{MAX_OUTBOUND_REQUESTS, OUTBOUND_REQUEST_TIMEOUT_MS};
use nubo_telemetry::{Invocation, Stream, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// How long an idle pooled connection is kept. Long enough that a function called every few
/// seconds reuses its connections; short enough that remote hosts are not held open forever.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per remote host and function. Bounds the sockets one function's pool
/// can hold open between invocations.
const POOL_MAX_IDLE_PER_HOST: usize = 32;

/// What `send_request` returns to wasmtime-wasi-http.
pub(crate) type SendRequestFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// The outbound side of one loaded function: its allowlist and its pooled client, shared by
/// all its instances (so keep-alive connections outlive the invocation that opened them).
pub(crate) struct Egress {
    allowlist: Arc<Allowlist>,
    client: Client<Connector, CountOut>,
}

impl Egress {
    /// The outbound client of a function allowed to reach `allowlist`; `None` when the list is
    /// empty (every request is refused without building anything).
    pub(crate) fn new(allowlist: Allowlist) -> Option<Arc<Egress>> {
        if allowlist.is_empty() {
            return None;
        }
        let allowlist = Arc::new(allowlist);
        let connector = Connector {
            allowlist: Arc::clone(&allowlist),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // wasmtime-wasi-http sets `host` from the authority and guests cannot set it
            // (it is a forbidden header), so the name checked is the name asked for.
            .set_host(false)
            .build(connector);
        Some(Arc::new(Egress { allowlist, client }))
    }
}

/// One invocation's outbound state, held by its store's wasi:http hooks.
pub(crate) struct OutboundCtx {
    egress: Option<Arc<Egress>>,
    invocation: Option<Invocation>,
    /// When the function's time runs out; no request waits past it.
    deadline: Instant,
    requests: u64,
}

impl OutboundCtx {
    /// Outbound state for an invocation of a function with `egress` (none: nothing allowed)
    /// that has `timeout` left to run.
    pub(crate) fn new(
        egress: Option<Arc<Egress>>,
        invocation: Option<&Invocation>,
        timeout: Duration,
    ) -> OutboundCtx {
        OutboundCtx {
            egress,
            invocation: invocation.cloned(),
            deadline: Instant::now() + timeout,
            requests: 0,
        }
    }

    fn log(&self, line: &str) {
        if let Some(invocation) = &self.invocation {
            invocation.write_log(Stream::Stderr, format!("[nubo] {line}\n").as_bytes());
        }
    }

    fn function(&self) -> &str {
        self.invocation
            .as_ref()
            .map_or("NAME", |i| &i.meta().function)
    }

    /// Checks `request` against the policy and, when allowed, sends it through the pool.
    pub(crate) fn send(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> SendRequestFuture {
        self.requests += 1;
        if let Some(invocation) = &self.invocation {
            invocation.add_outbound(1, 0, 0);
        }
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(host) = uri.host().map(str::to_owned) else {
            return denied(HttpError::HttpRequestUriInvalid);
        };
        let default_port = if scheme == "http" { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default_port);
        let target = format!("{scheme}://{host}:{port}");

        if self.requests > MAX_OUTBOUND_REQUESTS {
            self.log(&format!(
                "outbound request to {target} refused: an invocation may make at most \
                 {MAX_OUTBOUND_REQUESTS} outbound requests; make fewer calls per invocation"
            ));
            return denied(HttpError::HttpRequestDenied);
        }
        let egress = match &self.egress {
            Some(e) if e.allowlist.allows(Some(&scheme), &host, port) => Arc::clone(e),
            _ => {
                self.log(&format!(
                    "outbound request to {target} refused: not in allowed_hosts; add {} to \
                     [function.{}] to allow it",
                    Allowlist::suggestion(Some(&scheme), &host, port),
                    self.function()
                ));
                return denied(HttpError::HttpRequestDenied);
            }
        };

        let now = Instant::now();
        let mut wait = Duration::from_millis(OUTBOUND_REQUEST_TIMEOUT_MS)
            .min(self.deadline.saturating_duration_since(now));
        let mut between_bytes = None;
        if let Some(o) = options {
            if let (Some(c), Some(f)) = (o.connect_timeout, o.first_byte_timeout) {
                wait = wait.min(c.saturating_add(f));
            }
            between_bytes = o.between_bytes_timeout;
        }
        let invocation = self.invocation.clone();
        let function = self.function().to_owned();
        let mut request = request;
        let span = invocation.as_ref().and_then(Invocation::outbound_span);
        if let Some(span) = &span {
            let headers = request.headers_mut();
            if let Ok(v) = http::HeaderValue::from_str(&span.traceparent()) {
                headers.insert(TRACEPARENT_HEADER, v);
            }
            headers.remove(TRACESTATE_HEADER);
            if let Some(state) = span.tracestate()
                && let Ok(v) = http::HeaderValue::from_str(state)
            {
                headers.insert(TRACESTATE_HEADER, v);
            }
        }
        let method = request.method().as_str().to_owned();
        let request = request.map(|body| CountOut {
            inner: body,
            invocation: invocation.clone(),
        });
        Box::new(async move {
            let sent = tokio::time::timeout(wait, egress.client.request(request)).await;
            if let (Some(span), Some(invocation)) = (span, &invocation) {
                let status = match &sent {
                    Ok(Ok(response)) => Some(response.status().as_u16()),
                    _ => None,
                };
                invocation.end_outbound(span, &method, &target, status);
            }
            let response = match sent {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    let err = classify(&e);
                    if let Some(line) = refusal_line(&e, &target, &scheme, port, &function)
                        && let Some(invocation) = &invocation
                    {
                        invocation.write_log(Stream::Stderr, line.as_bytes());
                    }
                    return Err(err);
                }
                Err(_) => {
                    if let Some(invocation) = &invocation {
                        let line = format!(
                            "[nubo] outbound request to {target} timed out after {} ms without \
                             an answer (the limit is {OUTBOUND_REQUEST_TIMEOUT_MS} ms, and \
                             never past the function's timeout)\n",
                            wait.as_millis()
                        );
                        invocation.write_log(Stream::Stderr, line.as_bytes());
                    }
                    return Err(HttpError::ConnectionReadTimeout);
                }
            };
            let response = response.map(|incoming| {
                let body = CountIn {
                    inner: incoming,
                    invocation,
                    between_bytes: between_bytes.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
                };
                http_body_util::BodyExt::boxed_unsync(body)
            });
            let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(std::future::ready(Ok(())));
            Ok((response, io))
        })
    }
}

fn denied(err: HttpError) -> SendRequestFuture {
    Box::new(std::future::ready(Err(err)))
}

/// The connector's own error, found again in the client's error chain.
fn find_connect_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// The log line for a request refused after DNS (SSRF), if that is why it failed.
fn refusal_line(
    e: &hyper_util::client::legacy::Error,
    target: &str,
    scheme: &str,
    port: u16,
    function: &str,
) -> Option<String> {
    let Some(ConnectError::Refused { host, refused }) = find_connect_error(e) else {
        return None;
    };
    let list = refused
        .iter()
        .map(|(ip, why)| format!("{ip} ({why})"))
        .collect::<Vec<_>>()
        .join(", ");
    let how = if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        format!("{list} is not a public address")
    } else {
        format!("{host} resolved only to addresses that are not public: {list}")
    };
    let suggestion = refused
        .first()
        .map(|(ip, _)| Allowlist::suggestion(Some(scheme), &ip.to_string(), port))
        .unwrap_or_default();
    Some(format!(
        "[nubo] outbound request to {target} refused (SSRF protection): {how}; such addresses \
         are reached only when allowed_hosts names them: add {suggestion} to \
         [function.{function}] to allow it\n"
    ))
}

/// The wasi:http error a guest sees for a failed request.
fn classify(e: &hyper_util::client::legacy::Error) -> HttpError {
    if let Some(c) = find_connect_error(e) {
        return match c {
            ConnectError::Refused { .. } => HttpError::HttpRequestDenied,
            ConnectError::Dns(_) => HttpError::DnsError {
                rcode: Some("address not found".into()),
                info_code: None,
            },
            ConnectError::Connect(io) => match io.kind() {
                io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                _ => HttpError::DestinationUnavailable,
            },
            ConnectError::ConnectTimeout => HttpError::ConnectionTimeout,
            ConnectError::Tls(io) => {
                let cert = io
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                if cert {
                    HttpError::TlsCertificateError
                } else {
                    HttpError::TlsProtocolError
                }
            }
            ConnectError::BadUri => HttpError::HttpRequestUriInvalid,
        };
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return HttpError::ConnectionTerminated;
            }
            if h.is_timeout() {
                return HttpError::ConnectionReadTimeout;
            }
            break;
        }
        cur = err.source();
    }
    HttpError::HttpProtocolError
}

/// Why the connector did not produce a connection.
#[derive(Debug)]
enum ConnectError {
    /// Every address the host resolved to is one the allowlist does not name (SSRF).
    Refused {
        host: String,
        refused: Vec<(IpAddr, &'static str)>,
    },
    Dns(io::Error),
    Connect(io::Error),
    ConnectTimeout,
    Tls(io::Error),
    BadUri,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Refused { host, .. } => {
                write!(f, "{host} resolves only to addresses outside allowed_hosts")
            }
            ConnectError::Dns(e) => write!(f, "cannot resolve the host: {e}"),
            ConnectError::Connect(e) => write!(f, "cannot connect: {e}"),
            ConnectError::ConnectTimeout => f.write_str("connecting timed out"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::BadUri => f.write_str("the request has no host"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Resolves, checks every address with [`Allowlist::allows_ip`] and connects to the first
/// allowed one: the address checked is the address connected to, so a name that resolves
/// differently a moment later (DNS rebinding) gains nothing.
#[derive(Clone)]
struct Connector {
    allowlist: Arc<Allowlist>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let allowlist = Arc::clone(&self.allowlist);
        Box::pin(async move {
            let timeout = Duration::from_millis(OUTBOUND_REQUEST_TIMEOUT_MS);
            tokio::time::timeout(timeout, connect(&allowlist, &uri))
                .await
                .unwrap_or(Err(ConnectError::ConnectTimeout))
                .map(TokioIo::new)
        })
    }
}

async fn connect(allowlist: &Allowlist, uri: &Uri) -> Result<Conn, ConnectError> {
    let host = uri.host().ok_or(ConnectError::BadUri)?;
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(ConnectError::Dns)?
            .collect(),
    };
    let mut refused = Vec::new();
    let mut last_err = None;
    for addr in addrs {
        if !allowlist.allows_ip(addr.ip(), port) {
            refused.push((addr.ip(), ssrf_risk(addr.ip()).unwrap_or("not allowed")));
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Requests are small and latency-bound; Nagle only delays them.
                let _ = stream.set_nodelay(true);
                if !tls {
                    return Ok(Conn::Plain(stream));
                }
                let name = match bare.parse::<IpAddr>() {
                    Ok(ip) => rustls::pki_types::ServerName::from(ip),
                    Err(_) => rustls::pki_types::ServerName::try_from(bare.to_owned())
                        .map_err(|_| ConnectError::BadUri)?,
                };
                let stream = tokio_rustls::TlsConnector::from(tls_config())
                    .connect(name, stream)
                    .await
                    .map_err(ConnectError::Tls)?;
                return Ok(Conn::Tls(Box::new(stream)));
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(ConnectError::Connect(e)),
        None if refused.is_empty() => Err(ConnectError::Dns(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        ))),
        None => Err(ConnectError::Refused {
            host: host.to_owned(),
            refused,
        }),
    }
}

/// The TLS client configuration: Mozilla's roots (webpki-roots), HTTP/1.1. Built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            // The ring provider supports the default versions; this cannot fail.
            .unwrap_or_else(|e| panic!("rustls rejected its own default versions: {e}"));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }))
}

/// A connection to a remote host, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A guest's request body, its bytes counted on the invocation as they are sent.
struct CountOut {
    inner: WasiBody,
    invocation: Option<Invocation>,
}

impl Body for CountOut {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let (Some(Ok(f)), Some(invocation)) = (&frame, &self.invocation)
            && let Some(data) = f.data_ref()
        {
            invocation.add_outbound(0, data.len() as u64, 0);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A remote host's response body, its bytes counted on the invocation as the guest reads
/// them, with the guest's between-bytes timeout when it asked for one.
struct CountIn {
    inner: hyper::body::Incoming,
    invocation: Option<Invocation>,
    between_bytes: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl Body for CountIn {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((d, sleep)) = &mut this.between_bytes {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                let frame = frame.map(|r| r.map_err(HttpError::from));
                if let (Some(Ok(f)), Some(invocation)) = (&frame, &this.invocation)
                    && let Some(data) = f.data_ref()
                {
                    invocation.add_outbound(0, 0, data.len() as u64);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match &mut this.between_bytes {
                Some((_, sleep)) => {
                    ready!(sleep.as_mut().poll(cx));
                    Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                }
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
