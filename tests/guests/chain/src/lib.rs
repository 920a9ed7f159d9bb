//! Test guest `chain`: a wasi:http handler for the end-to-end tests of triggers. It logs the
//! CloudEvents it receives, copies and rewrites objects through `nubo:objects@0.1.0` and
//! publishes to queues through `nubo:queues@0.1.0` (WITs in `wit/` at the repository root), so
//! chains of deliveries can be observed from the invocation logs and the buckets.
//!
//! Every request that carries `ce-type` first prints one stdout line
//! `EVENT <ce-type> <ce-id> <ce-subject or -> hop=<nubo-hop or ->`. Then the last path segment
//! picks the route (so the guest works under any route prefix). Trigger deliveries arrive at
//! `/`: for those, the function's environment variable `CHAIN_ROUTE` (a path with a query, e.g.
//! `/copy?to=out`) names the route instead.
//! - `/fail-status?code=N`: answers N (a failed delivery for N >= 300).
//! - `/copy?to=BUCKET`: on `dev.nubo.object.created`, reads the object `ce-subject` from the
//!   bucket of `ce-source` (`/buckets/{bucket}`) and writes it to `BUCKET` under the key with
//!   `.out` appended; 200 `copied KEY.out`. Other events: 200 `ignored`.
//! - `/loop`: on `dev.nubo.object.created`, writes the same key of the same bucket again (its
//!   bytes read back, else the request body): an endless chain Nubo stops at 16 hops.
//! - `/publish?queue=Q`: publishes the request body (with its `content-type`) to queue Q;
//!   200 with the message id.
//! - `/echo`: 200 `application/json` `{"method","path","headers":{name: value},"body":<base64>}`
//!   (repeated headers joined with `, `).
//! - `/dump`: prints that same JSON as one stdout line `REQUEST <json>`; 200 `dumped`.
//! - anything else: 200 `ok`.
//!
//! Errors of the host calls answer 403 (not bound), 404 (no such bucket or queue), 413 (too
//! large), 429 (queue full) or 500, with `KIND: MESSAGE` as the body.

use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::io::streams::StreamError;

/// Bindings for Nubo's `nubo:objects@0.1.0` WIT.
mod objects_wit {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-objects",
        world: "nubo:objects/imports",
    });
}

/// Bindings for Nubo's `nubo:queues@0.1.0` WIT.
mod queues_wit {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-queues",
        world: "nubo:queues/imports",
    });
}

use objects_wit::nubo::objects::objects;
use queues_wit::nubo::queues::publisher;

/// Largest read from the request body at a time.
const READ_CHUNK: u64 = 64 * 1024;

/// The CloudEvent type of an object write.
const OBJECT_CREATED: &str = "dev.nubo.object.created";

struct Guest;

wasi::http::proxy::export!(Guest);

/// A status, a content type and a body.
type Answer = (u16, &'static str, Vec<u8>);

impl wasi::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = request.headers().entries();
        let header = |name: &str| {
            headers
                .iter()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let ce_type = header("ce-type");
        if let Some(kind) = &ce_type {
            println!(
                "EVENT {kind} {} {} hop={}",
                header("ce-id").unwrap_or_else(|| "-".into()),
                header("ce-subject").unwrap_or_else(|| "-".into()),
                header("nubo-hop").unwrap_or_else(|| "-".into()),
            );
        }
        let method = method_name(&request.method());
        let mut path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        if path.split('?').next() == Some("/") {
            if let Ok(route) = std::env::var("CHAIN_ROUTE") {
                path = route;
            }
        }
        let route = path.split('?').next().unwrap_or("/").trim_end_matches('/');
        let route = route.rsplit('/').next().unwrap_or("").to_string();
        let body = read_body(request);
        let event = Event {
            kind: ce_type,
            source: header("ce-source"),
            subject: header("ce-subject"),
        };
        let (status, content_type, bytes) = match route.as_str() {
            "fail-status" => {
                let code = query(&path, "code").and_then(|c| c.parse::<u16>().ok()).unwrap_or(500);
                (code, "text/plain", format!("failing with {code}").into_bytes())
            }
            "copy" => copy(&event, query(&path, "to").as_deref()).unwrap_or_else(|e| object_error(&e)),
            "loop" => rewrite(&event, &body).unwrap_or_else(|e| object_error(&e)),
            "publish" => publish(query(&path, "queue").as_deref(), &body, header("content-type"))
                .unwrap_or_else(|e| queue_error(&e)),
            "echo" => (200, "application/json", echo(&method, &path, &headers, &body).into_bytes()),
            "dump" => {
                println!("REQUEST {}", echo(&method, &path, &headers, &body));
                (200, "text/plain", b"dumped".to_vec())
            }
            _ => (200, "text/plain", b"ok".to_vec()),
        };
        respond(response_out, status, content_type, &bytes);
    }
}

/// What a delivery says about the event.
struct Event {
    kind: Option<String>,
    source: Option<String>,
    subject: Option<String>,
}

impl Event {
    /// The bucket and key of an object-created event.
    fn created_object(&self) -> Option<(String, String)> {
        if self.kind.as_deref() != Some(OBJECT_CREATED) {
            return None;
        }
        let bucket = self.source.as_deref()?.strip_prefix("/buckets/")?.to_string();
        Some((bucket, self.subject.clone()?))
    }
}

fn copy(event: &Event, to: Option<&str>) -> Result<Answer, objects::Error> {
    let Some((bucket, key)) = event.created_object() else {
        return Ok((200, "text/plain", b"ignored".to_vec()));
    };
    let Some(to) = to else {
        return Ok((400, "text/plain", b"copy needs ?to=BUCKET".to_vec()));
    };
    let Some(data) = objects::get(&bucket, &key, None)? else {
        return Ok((200, "text/plain", b"absent".to_vec()));
    };
    let out = format!("{key}.out");
    objects::put(to, &out, &data, None)?;
    Ok((200, "text/plain", format!("copied {out}").into_bytes()))
}

fn rewrite(event: &Event, body: &[u8]) -> Result<Answer, objects::Error> {
    let Some((bucket, key)) = event.created_object() else {
        return Ok((200, "text/plain", b"ignored".to_vec()));
    };
    let data = objects::get(&bucket, &key, None)?.unwrap_or_else(|| body.to_vec());
    objects::put(&bucket, &key, &data, None)?;
    Ok((200, "text/plain", format!("rewrote {key}").into_bytes()))
}

fn publish(queue: Option<&str>, body: &[u8], content_type: Option<String>) -> Result<Answer, publisher::Error> {
    let Some(queue) = queue else {
        return Ok((400, "text/plain", b"publish needs ?queue=NAME".to_vec()));
    };
    let id = publisher::publish(queue, body, content_type.as_deref())?;
    Ok((200, "text/plain", id.into_bytes()))
}

fn object_error(error: &objects::Error) -> Answer {
    let (status, text) = match error {
        objects::Error::NotBound(m) => (403, format!("not-bound: {m}")),
        objects::Error::NoSuchBucket(m) => (404, format!("no-such-bucket: {m}")),
        objects::Error::RangeNotSatisfiable => (416, "range-not-satisfiable".to_string()),
        objects::Error::TooLarge(m) => (413, format!("too-large: {m}")),
        objects::Error::Invalid(m) => (400, format!("invalid: {m}")),
        objects::Error::Other(m) => (500, format!("other: {m}")),
    };
    (status, "text/plain", text.into_bytes())
}

fn queue_error(error: &publisher::Error) -> Answer {
    let (status, text) = match error {
        publisher::Error::NotBound(m) => (403, format!("not-bound: {m}")),
        publisher::Error::NoSuchQueue(m) => (404, format!("no-such-queue: {m}")),
        publisher::Error::Full(m) => (429, format!("full: {m}")),
        publisher::Error::TooLarge(m) => (413, format!("too-large: {m}")),
        publisher::Error::Other(m) => (500, format!("other: {m}")),
    };
    (status, "text/plain", text.into_bytes())
}

/// The request as JSON: method, path, headers and the body in base64.
fn echo(method: &str, path: &str, headers: &[(String, Vec<u8>)], body: &[u8]) -> String {
    let mut joined: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).into_owned();
        match joined.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => joined.push((name, value)),
        }
    }
    let fields: Vec<String> = joined.iter().map(|(n, v)| format!("{}:{}", json_string(n), json_string(v))).collect();
    format!(
        "{{\"method\":{},\"path\":{},\"headers\":{{{}}},\"body\":{}}}",
        json_string(method),
        json_string(path),
        fields.join(","),
        json_string(&base64(body)),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

/// The whole request body.
fn read_body(request: IncomingRequest) -> Vec<u8> {
    let Ok(incoming) = request.consume() else {
        return Vec::new();
    };
    let Ok(input) = incoming.stream() else {
        return Vec::new();
    };
    let mut body = Vec::new();
    // Ends when the host closes the stream, after at most the (host-capped) body size.
    loop {
        match input.blocking_read(READ_CHUNK) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                eprintln!("chain: reading the request body failed: {}", e.to_debug_string());
                break;
            }
        }
    }
    drop(input);
    body
}

/// Sends a whole response.
fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, bytes: &[u8]) {
    let headers = [("content-type".to_string(), content_type.as_bytes().to_vec())];
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    if response.set_status_code(status).is_err() {
        response.set_status_code(500).expect("500 is a valid status");
    }
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
        Err(e) => eprintln!("chain: writing the response failed: {e:?}"),
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
