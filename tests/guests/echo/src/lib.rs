//! Test guest `echo`: streams the request body back and exposes request details, env vars, chunked output and logging to tests.
//!
//! Every response but `/flaky`'s failures is 200 and carries `x-echo-method`, `x-echo-path` (path with query, as the
//! guest saw it) and, when the env var `NUBO_TEST_VAR` is set, `x-env` with its value. The
//! router's `nubo-param-id` and `nubo-path-info` headers come back as `x-param-id` and
//! `x-path-info`.
//! - `GET …/chunks?n=N[&delay_ms=M]`: writes N chunks `chunk 0\n` … `chunk N-1\n`, flushing each
//!   and sleeping M ms (default 0) before each chunk after the first.
//! - `GET …/sleep?ms=N`: waits N ms (a host timer, not a busy loop), then answers `slept N ms`.
//! - `GET …/logs?n=N`: prints `line 0` … `line N-1` to stdout and `stderr line` to stderr, then
//!   answers `logged N`.
//! - `GET …/jsonlog?level=L`: prints `{"level":"L","msg":"json line"}` and `plain line` to
//!   stdout (a structured line with level L, and one without a level), then answers `ok`.
//! - `… …/flaky?fail=N` (any method): prints `flaky attempt A` (A from the `nubo-async-attempt`
//!   header, 0 when absent) and answers 500 `failing attempt A` while A ≤ N, else 200
//!   `succeeded on attempt A`: a function that fails its first N async attempts.
//! - anything else: the request body is read chunk by chunk and each chunk is written back as it
//!   arrives (no buffering of the whole body). The request's `content-type` is copied.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

/// Largest read from the request body at a time.
const READ_CHUNK: u64 = 64 * 1024;

struct Echo;

wasi::http::proxy::export!(Echo);

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = request.method();
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let route = path.split('?').next().unwrap_or("/").trim_end_matches('/');
        let is_get = matches!(method, Method::Get);

        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("x-echo-method".into(), method_name(&method).into_bytes()),
            ("x-echo-path".into(), path.clone().into_bytes()),
        ];
        if let Ok(value) = std::env::var("NUBO_TEST_VAR") {
            headers.push(("x-env".into(), value.into_bytes()));
        }
        for (from, to) in [("nubo-param-id", "x-param-id"), ("nubo-path-info", "x-path-info")] {
            if let Some(v) = request.headers().get(from).into_iter().next() {
                headers.push((to.into(), v));
            }
        }

        if is_get && route.ends_with("/chunks") {
            headers.push(("content-type".into(), b"text/plain".to_vec()));
            let n = query_u64(&path, "n").unwrap_or(3);
            let delay_ms = query_u64(&path, "delay_ms").unwrap_or(0);
            stream_response(response_out, headers, |out| {
                for i in 0..n {
                    if i > 0 && delay_ms > 0 {
                        wasi::clocks::monotonic_clock::subscribe_duration(delay_ms * 1_000_000).block();
                    }
                    write_chunk(out, format!("chunk {i}\n").as_bytes())?;
                }
                Ok(())
            });
        } else if is_get && route.ends_with("/sleep") {
            headers.push(("content-type".into(), b"text/plain".to_vec()));
            let ms = query_u64(&path, "ms").unwrap_or(0);
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            stream_response(response_out, headers, |out| write_chunk(out, format!("slept {ms} ms").as_bytes()));
        } else if route.ends_with("/flaky") {
            headers.push(("content-type".into(), b"text/plain".to_vec()));
            let fail = query_u64(&path, "fail").unwrap_or(0);
            let attempt = request
                .headers()
                .get("nubo-async-attempt")
                .into_iter()
                .next()
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            println!("flaky attempt {attempt}");
            let (status, text) = if attempt <= fail {
                (500, format!("failing attempt {attempt}"))
            } else {
                (200, format!("succeeded on attempt {attempt}"))
            };
            respond_with_status(response_out, headers, status, text.as_bytes());
        } else if is_get && route.ends_with("/jsonlog") {
            headers.push(("content-type".into(), b"text/plain".to_vec()));
            let level: String = query_str(&path, "level")
                .unwrap_or("info")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            println!(r#"{{"level":"{level}","msg":"json line"}}"#);
            println!("plain line");
            let _ = std::io::stdout().flush();
            stream_response(response_out, headers, |out| write_chunk(out, b"ok\n"));
        } else if is_get && route.ends_with("/logs") {
            headers.push(("content-type".into(), b"text/plain".to_vec()));
            let n = query_u64(&path, "n").unwrap_or(1);
            {
                let stdout = std::io::stdout();
                let mut stdout = stdout.lock();
                for i in 0..n {
                    let _ = writeln!(stdout, "line {i}");
                }
                let _ = stdout.flush();
            }
            eprintln!("stderr line");
            stream_response(response_out, headers, |out| write_chunk(out, format!("logged {n}\n").as_bytes()));
        } else {
            if let Some(ct) = request.headers().get("content-type").into_iter().next() {
                headers.push(("content-type".into(), ct));
            }
            let incoming = request.consume().expect("the request body is taken once");
            let input = incoming.stream().expect("the body stream is taken once");
            stream_response(response_out, headers, |out| {
                loop {
                    match input.blocking_read(READ_CHUNK) {
                        Ok(chunk) => write_chunk(out, &chunk)?,
                        Err(StreamError::Closed) => return Ok(()),
                        Err(StreamError::LastOperationFailed(e)) => {
                            return Err(format!("reading the request body failed: {}", e.to_debug_string()))
                        }
                    }
                }
            });
            drop(input);
        }
    }
}

/// Sends a 200 with `headers`, then lets `write` produce the body. A write error ends the body
/// early (the host sees an incomplete response) and is logged to stderr.
fn stream_response(
    response_out: ResponseOutparam,
    headers: Vec<(String, Vec<u8>)>,
    write: impl FnOnce(&mut OutputStream) -> Result<(), String>,
) {
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("the stream is taken once");
    let result = write(&mut out);
    drop(out);
    match result {
        Ok(()) => OutgoingBody::finish(body, None).expect("finish the body"),
        Err(message) => eprintln!("echo: {message}"),
    }
}

/// Sends a whole response with `status`.
fn respond_with_status(response_out: ResponseOutparam, headers: Vec<(String, Vec<u8>)>, status: u16, bytes: &[u8]) {
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("the stream is taken once");
    let result = write_chunk(&mut out, bytes);
    drop(out);
    match result {
        Ok(()) => OutgoingBody::finish(body, None).expect("finish the body"),
        Err(message) => eprintln!("echo: {message}"),
    }
}

/// Writes one chunk and flushes it, so it leaves the instance before the next one is produced.
fn write_chunk(out: &mut OutputStream, bytes: &[u8]) -> Result<(), String> {
    out.write_all(bytes).map_err(|e| format!("writing the response failed: {e}"))?;
    out.flush().map_err(|e| format!("flushing the response failed: {e}"))
}

/// The value of `name` in the query string, as it appears there.
fn query_str<'a>(path_with_query: &'a str, name: &str) -> Option<&'a str> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of `name` in the query string, as a number.
fn query_u64(path_with_query: &str, name: &str) -> Option<u64> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            v.parse().ok()
        } else {
            None
        }
    })
}

/// The method as it appears on the wire, such as `GET`.
fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => return other.clone(),
    }
    .to_string()
}
