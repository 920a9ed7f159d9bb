//! Lambda HTTP function built on `lambda_http`: answers with a JSON description of the
//! request it got (method, path, query, cookies, selected headers, body) so that the Nubo
//! end-to-end tests can check the API Gateway event Nubo built, and sets a cookie.
//!
//! `?binary=1` makes it answer with the raw request body as `application/octet-stream`
//! (base64 on the wire to Nubo), so binary bodies are checked in both directions.

use lambda_http::{service_fn, Body, Error, Request, RequestExt, Response};
use serde_json::{json, Map, Value};

async fn handle(request: Request) -> Result<Response<Body>, Error> {
    let body_bytes: Vec<u8> = match request.body() {
        Body::Empty => Vec::new(),
        Body::Text(text) => text.as_bytes().to_vec(),
        Body::Binary(bytes) => bytes.clone(),
        _ => Vec::new(),
    };
    let query = request.query_string_parameters();
    if query.first("binary") == Some("1") {
        return Ok(Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .body(Body::Binary(body_bytes))?);
    }
    let cookies: Vec<String> = request
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(|cookie| cookie.trim().to_string())
        .filter(|cookie| !cookie.is_empty())
        .collect();
    let mut headers = Map::new();
    for name in ["x-test", "content-type", "user-agent"] {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.insert(name.to_string(), Value::String(value.to_string()));
        }
    }
    let description = json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query().unwrap_or(""),
        "cookies": cookies,
        "headers": headers,
        "body": String::from_utf8_lossy(&body_bytes),
        "body_len": body_bytes.len(),
    });
    Ok(Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .header("x-handler", "rust-http")
        .header("set-cookie", "session=rust; Path=/")
        .body(Body::Text(description.to_string()))?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::run(service_fn(handle)).await
}
