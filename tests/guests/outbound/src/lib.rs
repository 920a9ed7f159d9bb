//! Test guest `outbound`: makes one outbound HTTP GET through `wasi:http/outgoing-handler` and reports what happened.
//!
//! The target is `http://example.com/` unless the request has `?url=<url>` (an `http://` or
//! `https://` URL, percent-encoded or not). With `&body=<text>` it POSTs that text instead of
//! GETting; with `&n=<count>` (at most 500) it makes that many requests one after the other. The
//! answer is always `200 text/plain`, one part per request, each one of:
//! - `outbound failed: <ErrorCode as Debug>`, e.g. `outbound failed: ErrorCode::HttpRequestDenied`
//! - `outbound ok <status>\n<first 4 KiB of the response body>`

use std::io::{Read as _, Write as _};

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

const DEFAULT_URL: &str = "http://example.com/";

struct Outbound;

wasi::http::proxy::export!(Outbound);

impl wasi::exports::http::incoming_handler::Guest for Outbound {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let url = query_param(&path, "url").map(|v| percent_decode(&v)).unwrap_or_else(|| DEFAULT_URL.to_string());
        let body = query_param(&path, "body").map(|v| percent_decode(&v));
        let count = query_param(&path, "n").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1).clamp(1, 500);
        let mut text = String::new();
        for _ in 0..count {
            text.push_str(&match fetch(&url, body.as_deref()) {
                Ok((status, body)) => format!("outbound ok {status}\n{body}"),
                Err(Failure::Http(code)) => format!("outbound failed: {code:?}\n"),
                Err(Failure::Other(message)) => format!("outbound failed: {message}\n"),
            });
        }
        println!("outbound {url}: {}", text.lines().next().unwrap_or(""));
        respond(response_out, &text);
    }
}

enum Failure {
    Http(ErrorCode),
    Other(String),
}

/// GETs `url` (or POSTs `body` to it) and returns the status and the start of the body.
fn fetch(url: &str, body: Option<&str>) -> Result<(u16, String), Failure> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(Failure::Other(format!("unsupported url {url:?}: use http:// or https://")));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };

    let outgoing = OutgoingRequest::new(Fields::new());
    let bad = |what: &str| Failure::Other(format!("the host rejected the request's {what}"));
    let method = if body.is_some() { Method::Post } else { Method::Get };
    outgoing.set_method(&method).map_err(|()| bad("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    // The body is taken before the request is handed over and written after: the host starts
    // sending as the guest writes, so nothing waits on a buffer no one drains.
    let out = match body {
        Some(_) => Some(outgoing.body().map_err(|()| bad("body"))?),
        None => None,
    };
    let future = outgoing_handler::handle(outgoing, None).map_err(Failure::Http)?;
    if let (Some(text), Some(out)) = (body, out) {
        {
            let mut stream = out.write().map_err(|()| bad("body stream"))?;
            stream.write_all(text.as_bytes()).map_err(|e| Failure::Other(format!("writing the request body failed: {e}")))?;
            stream.flush().map_err(|e| Failure::Other(format!("flushing the request body failed: {e}")))?;
        }
        OutgoingBody::finish(out, None).map_err(Failure::Http)?;
    }
    let response = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return Err(Failure::Http(code)),
            Some(Err(())) => return Err(Failure::Other("the response was already taken".into())),
            None => future.subscribe().block(),
        }
    };
    let status = response.status();
    let body = response.consume().map_err(|()| Failure::Other("the response body was already taken".into()))?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| Failure::Other("the body stream was already taken".into()))?;
        stream
            .take(4096)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::Other(format!("reading the response body failed: {e}")))?;
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The value of `name` in the query string of `path_with_query`.
fn query_param(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(response_out: ResponseOutparam, text: &str) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())]).expect("valid headers");
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut out = body.write().expect("the stream is taken once");
        out.write_all(text.as_bytes()).expect("write the body");
        out.flush().expect("flush the body");
    }
    OutgoingBody::finish(body, None).expect("finish the body");
}
