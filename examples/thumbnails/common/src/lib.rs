//! What the app's wasi:http functions share: reading a request whole (method, path, headers,
//! body), the CloudEvent a trigger delivers in it, and sending an answer.
//!
//! Nubo delivers each trigger event as `POST /` in CloudEvents binary mode: the attributes
//! are `ce-*` headers, the data is the body. Requests from routes have no `ce-type` header.

use std::io::Read as _;

use serde_json::Value;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Largest request body read: events here carry small JSON documents, never file contents.
pub const MAX_BODY: usize = 64 * 1024;

/// One request, read whole.
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (empty for GET and HEAD).
    pub body: Vec<u8>,
}

impl Request {
    /// Reads `request` whole; a body larger than [`MAX_BODY`] is an error.
    pub fn read(request: IncomingRequest) -> Result<Request, String> {
        let full = request.path_with_query().unwrap_or_else(|| "/".into());
        let path = full.split(['?', '#']).next().unwrap_or("/").to_string();
        let headers = request.headers().entries();
        let method = request.method();
        let mut body = Vec::new();
        if !matches!(method, Method::Get | Method::Head) {
            let incoming = request
                .consume()
                .map_err(|()| "the request body was already taken")?;
            let stream = incoming
                .stream()
                .map_err(|()| "the body stream was already taken")?;
            stream
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| format!("reading the request body failed: {e}"))?;
            if body.len() > MAX_BODY {
                return Err(format!("the request body is larger than {MAX_BODY} bytes"));
            }
        }
        Ok(Request {
            method,
            path,
            headers,
            body,
        })
    }

    /// The first value of header `name` (lowercase), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The CloudEvent this request carries, when a trigger sent it.
    pub fn event(&self) -> Option<Event<'_>> {
        Some(Event {
            kind: self.header("ce-type")?,
            id: self.header("ce-id").unwrap_or_default(),
            subject: self.header("ce-subject"),
            time: self.header("ce-time"),
            data: &self.body,
        })
    }
}

/// A CloudEvent delivered by one of the app's triggers.
pub struct Event<'a> {
    /// `ce-type`, such as `dev.nubo.object.created`.
    pub kind: String,
    /// `ce-id`: the same for every redelivery of this event.
    pub id: String,
    /// `ce-subject`: the object key, MQTT topic or NATS subject.
    pub subject: Option<String>,
    /// `ce-time`: when it happened (RFC 3339, UTC).
    pub time: Option<String>,
    /// The data: the request body.
    pub data: &'a [u8],
}

impl Event<'_> {
    /// The data as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(self.data).map_err(|e| format!("the event data is not JSON: {e}"))
    }
}

/// Sends `value` as a JSON answer with `status`.
pub fn respond_json(out: ResponseOutparam, status: u16, value: &Value) {
    let mut text = value.to_string();
    text.push('\n');
    respond(out, status, "application/json", text.as_bytes());
}

/// Sends a `{"error": message}` answer with `status`.
pub fn respond_error(out: ResponseOutparam, status: u16, message: &str) {
    respond_json(out, status, &serde_json::json!({ "error": message }));
}

/// Sends a whole answer.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
            .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("a valid status code");
    let outgoing = response.body().expect("the response body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body stream is taken once");
    let mut written = Ok(());
    for chunk in body.chunks(4096) {
        written = stream.blocking_write_and_flush(chunk);
        if written.is_err() {
            break;
        }
    }
    drop(stream);
    match written {
        Ok(()) => OutgoingBody::finish(outgoing, None).expect("finishing the response body"),
        Err(e) => eprintln!("writing the response failed: {e:?}"),
    }
}
