//! The physical baseline: the smallest hyper 1 HTTP/1.1 server, answering every request
//! `200 Hello from hyper!` (text/plain) on a keep-alive connection.
//!
//! Usage: `hyper-hello [--listen ADDR]` (default `127.0.0.1:0`). The first stdout line is
//! `listening on http://ADDR`. It runs on one thread (a current-thread tokio runtime): the
//! benchmark pins it to one core anyway.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

const BODY: &[u8] = b"Hello from hyper!";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn parse_listen() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            s if s.starts_with("--listen=") => listen = s["--listen=".len()..].to_string(),
            "-h" | "--help" => {
                return Err("usage: hyper-hello [--listen ADDR] (default 127.0.0.1:0)".into());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{}", listener.local_addr()?)?;
    out.flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the open connections.
                eprintln!("hyper-hello: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort: the latency figures assume Nagle is off, as in most servers.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Connection errors (a client resetting) are not the benchmark's concern.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

fn main() -> ExitCode {
    let addr = match parse_listen() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hyper-hello: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper-hello: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper-hello: {e}");
            ExitCode::FAILURE
        }
    }
}
