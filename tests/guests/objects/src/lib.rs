//! Test guest `objects`: a wasi:http handler whose routes call every function of Nubo's
//! `nubo:objects/objects@0.1.0` (WIT in `wit/nubo-objects/` at the repository root), so tests
//! can drive a function's buckets from outside.
//!
//! The last path segment names the operation (`/obj/get`, `/get` alike). Every route takes
//! `bucket=NAME` in the query (default `uploads`) and most take `key=K`. Answers are
//! `text/plain`; an error answers 403 `not-bound: MESSAGE`, 404 `no-such-bucket: MESSAGE`,
//! 416 `range-not-satisfiable`, 413 `too-large: MESSAGE`, 400 `invalid: MESSAGE` or
//! 500 `other: MESSAGE`.
//! - `GET /get?key=K[&first=F&last=L]`: 200 with the object's bytes (or the range), 404 `absent`.
//! - `PUT|POST /put?key=K[&type=T]`: stores the request body; 200 `ETAG SIZE`.
//! - `GET /head?key=K`: 200 `SIZE ETAG CONTENT-TYPE` (`-` when none), 404 `absent`.
//! - `DELETE|POST /delete?key=K`: 200 `true` when there was an object, else `false`.
//! - `GET /list[?prefix=P&after=A&limit=N]`: keys of one page, one per line; header `x-next`
//!   holds `after` for the next page when there is one.

use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::io::streams::StreamError;

/// Bindings for Nubo's `nubo:objects@0.1.0` WIT.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-objects",
        world: "nubo:objects/imports",
    });
}

use bindings::nubo::objects::objects;

/// Largest read from the request body at a time.
const READ_CHUNK: u64 = 64 * 1024;

struct Guest;

wasi::http::proxy::export!(Guest);

impl wasi::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        // The last path segment names the operation, so the guest works under any route prefix.
        let route = path.split('?').next().unwrap_or("/").trim_end_matches('/');
        let route = route.rsplit('/').next().unwrap_or("").to_string();
        let bucket = query(&path, "bucket").unwrap_or_else(|| "uploads".to_string());
        let key = query(&path, "key").unwrap_or_default();
        let is_write = matches!(request.method(), Method::Put | Method::Post);
        let body = if is_write { read_body(request) } else { Vec::new() };

        let (status, headers, bytes) = match run(&route, &path, &bucket, &key, body) {
            Ok(answer) => answer,
            Err(e) => {
                let (status, text) = describe(&e);
                (status, Vec::new(), text.into_bytes())
            }
        };
        respond(response_out, status, headers, &bytes);
    }
}

type Answer = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

fn run(route: &str, path: &str, bucket: &str, key: &str, body: Vec<u8>) -> Result<Answer, objects::Error> {
    let ok = |text: String| Ok((200, Vec::new(), text.into_bytes()));
    let absent = || Ok((404, Vec::new(), b"absent".to_vec()));
    match route {
        "get" => {
            let first = query(path, "first").and_then(|v| v.parse::<u64>().ok());
            let last = query(path, "last").and_then(|v| v.parse::<u64>().ok());
            let range = first.map(|f| (f, last.unwrap_or(u64::MAX)));
            match objects::get(bucket, key, range)? {
                Some(data) => Ok((200, Vec::new(), data)),
                None => absent(),
            }
        }
        "put" => {
            let content_type = query(path, "type");
            let info = objects::put(bucket, key, &body, content_type.as_deref())?;
            ok(format!("{} {}", info.etag, info.size))
        }
        "head" => match objects::head(bucket, key)? {
            Some(info) => ok(format!(
                "{} {} {}",
                info.size,
                info.etag,
                info.content_type.as_deref().unwrap_or("-")
            )),
            None => absent(),
        },
        "delete" => ok(objects::delete(bucket, key)?.to_string()),
        "list" => {
            let prefix = query(path, "prefix");
            let after = query(path, "after");
            let limit = query(path, "limit").and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
            let page = objects::list(bucket, prefix.as_deref(), after.as_deref(), limit)?;
            let headers = match page.next {
                Some(next) => vec![("x-next".to_string(), next.into_bytes())],
                None => Vec::new(),
            };
            let text: String = page.objects.iter().map(|o| format!("{}\n", o.key)).collect();
            Ok((200, headers, text.into_bytes()))
        }
        _ => Ok((404, Vec::new(), format!("no route {route}").into_bytes())),
    }
}

fn describe(error: &objects::Error) -> (u16, String) {
    match error {
        objects::Error::NotBound(m) => (403, format!("not-bound: {m}")),
        objects::Error::NoSuchBucket(m) => (404, format!("no-such-bucket: {m}")),
        objects::Error::RangeNotSatisfiable => (416, "range-not-satisfiable".to_string()),
        objects::Error::TooLarge(m) => (413, format!("too-large: {m}")),
        objects::Error::Invalid(m) => (400, format!("invalid: {m}")),
        objects::Error::Other(m) => (500, format!("other: {m}")),
    }
}

/// The whole request body.
fn read_body(request: IncomingRequest) -> Vec<u8> {
    let incoming = request.consume().expect("the request body is taken once");
    let input = incoming.stream().expect("the body stream is taken once");
    let mut body = Vec::new();
    // Ends when the host closes the stream, after at most the (host-capped) body size.
    loop {
        match input.blocking_read(READ_CHUNK) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                eprintln!("objects: reading the request body failed: {}", e.to_debug_string());
                break;
            }
        }
    }
    drop(input);
    body
}

/// Sends a whole response (`application/octet-stream`).
fn respond(response_out: ResponseOutparam, status: u16, mut headers: Vec<(String, Vec<u8>)>, bytes: &[u8]) {
    headers.push(("content-type".into(), b"application/octet-stream".to_vec()));
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let out = body.write().expect("the stream is taken once");
    let mut result = Ok(());
    for chunk in bytes.chunks(4096) {
        result = out.blocking_write_and_flush(chunk);
        if result.is_err() {
            break;
        }
    }
    drop(out);
    match result {
        Ok(()) => OutgoingBody::finish(body, None).expect("finish the body"),
        Err(e) => eprintln!("objects: writing the response failed: {e:?}"),
    }
}

/// The percent-decoded value of `name` in the query string.
fn query(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
