//! Test guest `membomb`: allocates and touches memory, so tests can check that Nubo enforces a function's memory limit.
//!
//! `GET /?mb=N` allocates N MiB (writing to every byte), then answers `200 ok N`. Without `mb` it
//! keeps allocating 1 MiB chunks until an allocation fails, which aborts the instance (a trap).

use std::hint::black_box;
use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

const MIB: usize = 1 << 20;

struct MemBomb;

wasi::http::proxy::export!(MemBomb);

impl wasi::exports::http::incoming_handler::Guest for MemBomb {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let limit = query_param(&path, "mb").and_then(|v| v.parse::<usize>().ok());
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut allocated = 0usize;
        while limit.is_none_or(|n| allocated < n) {
            // A failed allocation aborts the instance: that is the point of this guest.
            let mut chunk = Vec::with_capacity(MIB);
            chunk.resize(MIB, (allocated % 251) as u8 + 1);
            chunks.push(black_box(chunk));
            allocated += 1;
        }
        // Read every chunk back so none of the writes can be elided.
        let checksum: u64 = chunks.iter().map(|c| u64::from(c[0]) + u64::from(c[MIB - 1])).sum();
        black_box(checksum);
        respond(response_out, &format!("ok {allocated}\n"));
    }
}

/// The value of `name` in the query string of `path_with_query`.
fn query_param(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
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
