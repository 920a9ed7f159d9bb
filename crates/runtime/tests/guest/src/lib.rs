//! A wasi:http test component for nubo-runtime: each path exercises one limit or policy.
//!
//! - `/hello`               200 "hello from nubo"
//! - `/env?NAME`            200 with the value of environment variable NAME (or "<unset>")
//! - `/args`                200 with the number of command-line arguments
//! - `/print`               writes a line to stdout and one to stderr, then 200
//! - `/echo`                200 echoing the request body
//! - `/count`               200 with a per-instance counter (always 1 with fresh instances)
//! - `/authority`           200 with the request's scheme and authority
//! - `/loop`                spins forever before answering
//! - `/loop-after-headers`  sends headers and part of the body, then spins forever
//! - `/sleep`               waits 60 s on a host timer before answering
//! - `/memory`              allocates until memory runs out
//! - `/trap`                panics
//! - `/exit`                exits with status 3 before answering
//! - `/no-response`         returns without answering
//! - `/outbound`            tries GET https://example.com/ and answers with what happened
//! - `/file`                tries to read /etc/passwd and answers with what happened

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Guest;

wasi::http::proxy::export!(Guest);

static COUNT: AtomicU32 = AtomicU32::new(0);

impl wasi::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        match route {
            "/hello" => respond(out, 200, "hello from nubo"),
            "/env" => {
                let value = std::env::var(query).unwrap_or_else(|_| "<unset>".into());
                respond(out, 200, &value);
            }
            "/args" => respond(out, 200, &std::env::args().count().to_string()),
            "/print" => {
                println!("to stdout");
                eprintln!("to stderr");
                respond(out, 200, "printed");
            }
            "/echo" => {
                let body = request.consume().expect("body");
                let mut bytes = Vec::new();
                body.stream().expect("stream").read_to_end(&mut bytes).expect("read");
                respond(out, 200, &String::from_utf8_lossy(&bytes));
            }
            "/count" => {
                let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
                respond(out, 200, &n.to_string());
            }
            "/authority" => {
                let scheme = match request.scheme() {
                    Some(Scheme::Http) => "http".to_string(),
                    Some(Scheme::Https) => "https".to_string(),
                    Some(Scheme::Other(s)) => s,
                    None => "none".to_string(),
                };
                let authority = request.authority().unwrap_or_else(|| "none".into());
                respond(out, 200, &format!("{scheme} {authority}"));
            }
            "/loop" => spin(),
            "/loop-after-headers" => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("body");
                ResponseOutparam::set(out, Ok(response));
                let mut stream = body.write().expect("stream");
                stream.write_all(b"partial").expect("write");
                stream.flush().expect("flush");
                spin();
            }
            "/sleep" => {
                wasi::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
                respond(out, 200, "woke up");
            }
            "/memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1024 * 1024];
                    chunk[0] = 1;
                    hoard.push(chunk);
                    std::hint::black_box(&hoard);
                }
            }
            "/trap" => panic!("boom"),
            "/exit" => std::process::exit(3),
            "/no-response" => {}
            "/outbound" => respond(out, 200, &outbound()),
            "/file" => {
                let answer = match std::fs::read("/etc/passwd") {
                    Ok(bytes) => format!("read {} bytes", bytes.len()),
                    Err(e) => format!("error: {e}"),
                };
                respond(out, 200, &answer);
            }
            _ => respond(out, 404, "unknown path"),
        }
    }
}

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn outbound() -> String {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Https)).expect("scheme");
    request.set_authority(Some("example.com")).expect("authority");
    request.set_path_with_query(Some("/")).expect("path");
    match wasi::http::outgoing_handler::handle(request, None) {
        Err(code) => format!("refused: {code:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status {}", response.status()),
                Some(Ok(Err(code))) => format!("failed: {code:?}"),
                other => format!("odd: {other:?}"),
            }
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("status");
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = body.write().expect("stream");
        stream.write_all(text.as_bytes()).expect("write");
        stream.flush().expect("flush");
    }
    OutgoingBody::finish(body, None).expect("finish");
}
