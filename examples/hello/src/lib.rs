//! Nubo's first example: a wasi:http component that greets the caller with `$GREETING`.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());

        // Anything written to stdout or stderr ends up in the function's log.
        println!("handled {method} {path}");

        let text = format!("{greeting}! You sent {method} {path}\n");
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".to_string(), text.len().to_string().into_bytes()),
        ])
        .expect("valid headers");
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
}

/// The method as it appears on the wire, such as `GET`.
fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => return other.clone(),
    }
    .to_string()
}
