//! Test guest `kv`: a wasi:http handler whose routes call every function of
//! `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`), so tests can drive a function's
//! key-value stores from outside.
//!
//! The last path segment names the operation (`/kv/get`, `/get` alike). Every route takes
//! `store=NAME` in the query (default `carts`). Answers are `text/plain`;
//! a store error answers 403 `access-denied` (the store is not bound), 404 `no-such-store`, or
//! 500 `other: MESSAGE`.
//! - `GET /get?key=K`: 200 with the value, or 404 `absent`.
//! - `PUT|POST /set?key=K`: stores the request body as the value; 200 `ok`.
//! - `… /delete?key=K`: 200 `ok`.
//! - `GET /exists?key=K`: 200 `true` or `false`.
//! - `GET /list[?cursor=N]`: one page of keys, one per line; header `x-cursor` holds the cursor
//!   of the next page when there is one.
//! - `GET /list-all`: every key, one per line, following cursors (at most 10,000 pages).
//! - `… /incr?key=K&delta=D`: 200 with the new value.
//! - `POST /batch?prefix=P&n=N`: `set-many` of `P0`…`P{N-1}` = `value-0`…, `get-many` of those
//!   plus `P-missing`, `delete-many` of `P0` and `P1`, `get-many` again; answers one line per
//!   step: `get P0=value-0 … P-missing=none`, then `after delete P0=none P1=none P2=value-2 …`.
//! - `GET /get-many?keys=A,B,…`: `get-many` of those keys; 200 `found N bytes M` (N keys
//!   present, M value bytes in all).
//! - `GET /open`: opens the store and answers 200 `opened` (or the error as above).

use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::io::streams::StreamError;

/// Bindings for the vendored `wasi:keyvalue@0.2.0-draft` WIT.
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Largest read from the request body at a time.
const READ_CHUNK: u64 = 64 * 1024;

/// Most pages `/list-all` follows, so a host that keeps returning cursors cannot loop it forever.
const MAX_PAGES: usize = 10_000;

struct Kv;

wasi::http::proxy::export!(Kv);

impl wasi::exports::http::incoming_handler::Guest for Kv {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        // The last path segment names the operation, so the guest works under any route prefix.
        let route = path.split('?').next().unwrap_or("/").trim_end_matches('/');
        let route = route.rsplit('/').next().unwrap_or("").to_string();
        let name = query(&path, "store").unwrap_or_else(|| "carts".to_string());
        let key = query(&path, "key").unwrap_or_default();
        let is_write = matches!(request.method(), Method::Put | Method::Post);
        let body = if is_write { read_body(request) } else { Vec::new() };

        let (status, headers, text) = match run(&route, &path, &name, &key, body) {
            Ok(answer) => answer,
            Err(e) => (error_status(&e), Vec::new(), describe(&e).into_bytes()),
        };
        respond(response_out, status, headers, &text);
    }
}

type Answer = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

fn run(route: &str, path: &str, name: &str, key: &str, body: Vec<u8>) -> Result<Answer, store::Error> {
    let bucket = store::open(name)?;
    let ok = |text: &str| Ok((200, Vec::new(), text.as_bytes().to_vec()));
    match route {
        "open" => ok("opened"),
        "get" => match bucket.get(key)? {
            Some(value) => Ok((200, Vec::new(), value)),
            None => Ok((404, Vec::new(), b"absent".to_vec())),
        },
        "set" => {
            bucket.set(key, &body)?;
            ok("ok")
        }
        "delete" => {
            bucket.delete(key)?;
            ok("ok")
        }
        "exists" => ok(if bucket.exists(key)? { "true" } else { "false" }),
        "list" => {
            let cursor = query(path, "cursor").and_then(|c| c.parse::<u64>().ok());
            let page = bucket.list_keys(cursor)?;
            let headers = match page.cursor {
                Some(c) => vec![("x-cursor".to_string(), c.to_string().into_bytes())],
                None => Vec::new(),
            };
            Ok((200, headers, lines(&page.keys)))
        }
        "list-all" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            for _ in 0..MAX_PAGES {
                let page = bucket.list_keys(cursor)?;
                keys.extend(page.keys);
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            Ok((200, Vec::new(), lines(&keys)))
        }
        "incr" => {
            let delta = query(path, "delta").and_then(|d| d.parse::<u64>().ok()).unwrap_or(1);
            let value = atomics::increment(&bucket, key, delta)?;
            ok(&value.to_string())
        }
        "batch" => {
            let prefix = query(path, "prefix").unwrap_or_else(|| "b".to_string());
            let n = query(path, "n").and_then(|n| n.parse::<usize>().ok()).unwrap_or(3);
            let items: Vec<(String, Vec<u8>)> =
                (0..n).map(|i| (format!("{prefix}{i}"), format!("value-{i}").into_bytes())).collect();
            batch::set_many(&bucket, &items)?;
            let mut keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
            keys.push(format!("{prefix}-missing"));
            let mut text = format!("get {}\n", pairs(&keys, &batch::get_many(&bucket, &keys)?));
            let doomed: Vec<String> = keys.iter().take(2.min(n)).cloned().collect();
            batch::delete_many(&bucket, &doomed)?;
            text.push_str(&format!("after delete {}\n", pairs(&keys, &batch::get_many(&bucket, &keys)?)));
            ok(&text)
        }
        "get-many" => {
            let keys: Vec<String> = query(path, "keys")
                .unwrap_or_default()
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            let found = batch::get_many(&bucket, &keys)?;
            let present = found.iter().flatten().count();
            let bytes: usize = found.iter().flatten().map(|(_, v)| v.len()).sum();
            ok(&format!("found {present} bytes {bytes}"))
        }
        _ => Ok((404, Vec::new(), format!("no route {route}").into_bytes())),
    }
}

/// `k=value` for each key, `k=none` where get-many found nothing, space-separated.
fn pairs(keys: &[String], found: &[Option<(String, Vec<u8>)>]) -> String {
    keys.iter()
        .zip(found)
        .map(|(key, entry)| match entry {
            Some((k, v)) => format!("{k}={}", String::from_utf8_lossy(v)),
            None => format!("{key}=none"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn lines(keys: &[String]) -> Vec<u8> {
    keys.iter().map(|k| format!("{k}\n")).collect::<String>().into_bytes()
}

fn error_status(error: &store::Error) -> u16 {
    match error {
        store::Error::AccessDenied => 403,
        store::Error::NoSuchStore => 404,
        store::Error::Other(_) => 500,
    }
}

fn describe(error: &store::Error) -> String {
    match error {
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::Other(message) => format!("other: {message}"),
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
                eprintln!("kv: reading the request body failed: {}", e.to_debug_string());
                break;
            }
        }
    }
    drop(input);
    body
}

/// Sends a whole `text/plain` response.
fn respond(response_out: ResponseOutparam, status: u16, mut headers: Vec<(String, Vec<u8>)>, bytes: &[u8]) {
    headers.push(("content-type".into(), b"text/plain".to_vec()));
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
        Err(e) => eprintln!("kv: writing the response failed: {e:?}"),
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
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
