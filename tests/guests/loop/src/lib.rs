//! Test guest `loop`: spins forever on every request, so tests can check that Nubo enforces a function's timeout.
//!
//! `GET /?ms=N` instead busy-waits for about N milliseconds of wall time and then answers
//! `200 done N`, so a test can also check that a function under its limit is not cut off.

use std::hint::black_box;
use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Loop;

wasi::http::proxy::export!(Loop);

impl wasi::exports::http::incoming_handler::Guest for Loop {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match query_param(&path, "ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => {
                let start = wasi::clocks::monotonic_clock::now();
                let mut spins = 0u64;
                while wasi::clocks::monotonic_clock::now().saturating_sub(start) < ms * 1_000_000 {
                    spins = black_box(spins.wrapping_add(1));
                }
                respond(response_out, &format!("done {ms}\n"));
            }
            None => spin_forever(),
        }
    }
}

/// Burns CPU until the host stops the instance. `black_box` keeps the loop from being optimised away.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
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
