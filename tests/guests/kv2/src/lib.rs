//! Test guest `kv2`: a wasi:http handler using `wasi:keyvalue@0.2.0-draft2`, the release Spin 3
//! components import, so tests can check what that release adds over 0.2.0-draft: string
//! cursors, signed counters and compare-and-swap.
//!
//! The last path segment names the operation; `store=NAME` picks the store (default `carts`).
//! Answers are `text/plain`; a store error answers 403 `access-denied`, 404 `no-such-store` or
//! 500 `other: MESSAGE`.
//! - `GET /get?key=K`: 200 with the value, or 404 `absent`.
//! - `PUT|POST /set?key=K`: stores the request body; 200 `ok`.
//! - `GET /list-all`: every key, one per line, following string cursors (at most 10,000 pages).
//! - `… /incr?key=K&delta=D`: 200 with the new (signed) value.
//! - `POST /append?key=K`: appends the body to the value with compare-and-swap, retrying when
//!   another writer got there first (at most 1,000 tries); 200 `tries N`.
//! - `POST /cas-stale?key=K`: reads the key through `cas.new`, writes it behind the cas's back
//!   with `set`, then swaps: 200 `cas-failed current=VALUE` (the handle returned with the
//!   failure holds what the key holds now) or 200 `swapped` (wrong).
//! - `GET /get-many?keys=A,B`: one line per key, `A=value` or `A=none`.

use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::io::streams::StreamError;

/// Bindings for the vendored `wasi:keyvalue@0.2.0-draft2` WIT.
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Most pages `/list-all` follows.
const MAX_PAGES: usize = 10_000;
/// Most compare-and-swap attempts of one `/append`.
const MAX_TRIES: u32 = 1_000;

struct Kv2;

wasi::http::proxy::export!(Kv2);

impl wasi::exports::http::incoming_handler::Guest for Kv2 {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let route = path.split('?').next().unwrap_or("/").trim_end_matches('/');
        let route = route.rsplit('/').next().unwrap_or("").to_string();
        let name = query(&path, "store").unwrap_or_else(|| "carts".to_string());
        let key = query(&path, "key").unwrap_or_default();
        let is_write = matches!(request.method(), Method::Put | Method::Post);
        let body = if is_write { read_body(request) } else { Vec::new() };
        let (status, text) = match run(&route, &path, &name, &key, body) {
            Ok(answer) => answer,
            Err(e) => match e {
                store::Error::AccessDenied => (403, b"access-denied".to_vec()),
                store::Error::NoSuchStore => (404, b"no-such-store".to_vec()),
                store::Error::Other(m) => (500, format!("other: {m}").into_bytes()),
            },
        };
        respond(response_out, status, &text);
    }
}

fn run(route: &str, path: &str, name: &str, key: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), store::Error> {
    let bucket = store::open(name)?;
    let ok = |text: String| Ok((200, text.into_bytes()));
    match route {
        "get" => match bucket.get(key)? {
            Some(value) => Ok((200, value)),
            None => Ok((404, b"absent".to_vec())),
        },
        "set" => {
            bucket.set(key, &body)?;
            ok("ok".into())
        }
        "list-all" => {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let page = bucket.list_keys(cursor.as_deref())?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return ok(keys.join("\n")),
                }
            }
            Ok((500, b"too many pages".to_vec()))
        }
        "incr" => {
            let delta: i64 = query(path, "delta").and_then(|d| d.parse().ok()).unwrap_or(1);
            ok(atomics::increment(&bucket, key, delta)?.to_string())
        }
        "append" => {
            let mut cas = atomics::Cas::new(&bucket, key)?;
            for tries in 1..=MAX_TRIES {
                let mut value = cas.current()?.unwrap_or_default();
                value.extend_from_slice(&body);
                match atomics::swap(cas, &value) {
                    Ok(()) => return ok(format!("tries {tries}")),
                    Err(atomics::CasError::CasFailed(again)) => cas = again,
                    Err(atomics::CasError::StoreError(e)) => return Err(e),
                }
            }
            Ok((500, b"gave up".to_vec()))
        }
        "cas-stale" => {
            let cas = atomics::Cas::new(&bucket, key)?;
            bucket.set(key, b"written-behind")?;
            match atomics::swap(cas, b"from-stale-cas") {
                Ok(()) => ok("swapped".into()),
                Err(atomics::CasError::CasFailed(again)) => {
                    let current = again.current()?.unwrap_or_default();
                    ok(format!("cas-failed current={}", String::from_utf8_lossy(&current)))
                }
                Err(atomics::CasError::StoreError(e)) => Err(e),
            }
        }
        "get-many" => {
            let keys: Vec<String> = query(path, "keys")
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect();
            let found = batch::get_many(&bucket, &keys)?;
            let lines: Vec<String> = found
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => format!("{k}=none"),
                })
                .collect();
            ok(lines.join("\n"))
        }
        _ => Ok((404, b"unknown route".to_vec())),
    }
}

/// Reads the whole request body.
fn read_body(request: IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else { return body };
    let Ok(input) = incoming.stream() else { return body };
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                eprintln!("kv2: reading the request body failed: {}", e.to_debug_string());
                break;
            }
        }
    }
    drop(input);
    body
}

/// Sends a whole `text/plain` response.
fn respond(response_out: ResponseOutparam, status: u16, bytes: &[u8]) {
    let fields = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).expect("valid headers");
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
        Err(e) => eprintln!("kv2: writing the response failed: {e:?}"),
    }
}

/// The value of `name` in the query string (test keys need no decoding).
fn query(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}
