//! Nubo example: a users API showing path parameters (`GET /users/:id`) and JSON bodies (`POST /users`).

use std::io::{Read as _, Write as _};

use serde_json::{json, Value};
use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The largest request body this function reads. Nubo also enforces the manifest's `max_request_body`.
const MAX_BODY: usize = 64 * 1024;

struct Users;

wasi::http::proxy::export!(Users);

impl wasi::exports::http::incoming_handler::Guest for Users {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, body) = route(&request);
        send_json(response_out, status, &body);
    }
}

/// Picks the handler from the method and path.
fn route(request: &IncomingRequest) -> (u16, Value) {
    let full = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let path = full.split(['?', '#']).next().unwrap_or("/");
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = request.method();
    match (&method, segments.as_slice()) {
        (Method::Get, ["users", id]) if !id.is_empty() => get_user(&percent_decode(id)),
        (Method::Post, ["users"]) => create_user(request),
        (_, ["users", _]) | (_, ["users"]) => error(405, "method not allowed on this path"),
        _ => {
            // Outside Nubo's router (e.g. under `wasmtime serve`) any path can arrive here.
            // Under Nubo, the router's `nubo-param-id` header carries the `:id` segment.
            match (&method, header(request, "nubo-param-id")) {
                (Method::Get, Some(id)) if !id.is_empty() => get_user(&id),
                _ => error(404, "no such route: try GET /users/:id or POST /users"),
            }
        }
    }
}

/// `GET /users/:id`: a made-up user for any id.
fn get_user(id: &str) -> (u16, Value) {
    (200, json!({ "id": id, "name": format!("user {id}") }))
}

/// `POST /users` with `{"name": "..."}`: answers 201 with the new user and a fresh id.
fn create_user(request: &IncomingRequest) -> (u16, Value) {
    let bytes = match read_body(request) {
        Ok(bytes) => bytes,
        Err((status, message)) => return error(status, &message),
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(400, &format!("the body is not valid JSON: {e}")),
    };
    let name = match parsed.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        Some(_) => return error(400, "\"name\" must be a non-empty string"),
        None => return error(400, "the body must be a JSON object with a \"name\" string, like {\"name\":\"Ada\"}"),
    };
    (201, json!({ "id": new_id(), "name": name }))
}

/// Reads the whole request body, refusing anything larger than `MAX_BODY`.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
    let body = request.consume().map_err(|()| (500, "the request body was already taken".to_string()))?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| (500, "the body stream was already taken".to_string()))?;
        let mut limited = stream.take(MAX_BODY as u64 + 1);
        limited.read_to_end(&mut bytes).map_err(|e| (400, format!("reading the body failed: {e}")))?;
    }
    if bytes.len() > MAX_BODY {
        return Err((413, format!("the body is larger than {MAX_BODY} bytes")));
    }
    Ok(bytes)
}

/// A random 16-hex-digit id from `wasi:random`.
fn new_id() -> String {
    format!("{:016x}", wasi::random::random::get_random_u64())
}

/// The first value of a request header, if it is UTF-8.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values.into_iter().next().and_then(|v| String::from_utf8(v).ok())
}

/// Decodes `%XX` escapes in a path segment; invalid escapes are kept as they are.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
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

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (status, json!({ "error": message }))
}

/// Sends `body` as the JSON response with `status`.
fn send_json(response_out: ResponseOutparam, status: u16, body: &Value) {
    let mut text = body.to_string();
    text.push('\n');
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"application/json".to_vec()),
        ("content-length".to_string(), text.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status code");
    let out_body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut out = out_body.write().expect("the stream is taken once");
        out.write_all(text.as_bytes()).expect("write the body");
        out.flush().expect("flush the body");
    }
    OutgoingBody::finish(out_body, None).expect("finish the body");
}
