//! Lambda HTTP function built on `lambda_http` that streams its response
//! (`Lambda-Runtime-Function-Response-Mode: streaming`): a status and headers first, then the
//! body in chunks sent one after another, so the Nubo end-to-end tests can check that a
//! streamed HTTP response arrives whole, with the status and headers of its prelude.

use lambda_http::lambda_runtime::streaming::{channel, Body};
use lambda_http::{run_with_streaming_response, service_fn, Error, Request, Response};
use std::time::Duration;

/// Chunks the body is sent in.
const CHUNKS: usize = 5;

async fn handle(_request: Request) -> Result<Response<Body>, Error> {
    let (mut sender, body) = channel();
    tokio::spawn(async move {
        for i in 0..CHUNKS {
            if sender
                .send_data(format!("chunk {i}\n").into())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(Response::builder()
        .status(202)
        .header("content-type", "text/plain")
        .header("x-handler", "rust-stream")
        .body(body)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    run_with_streaming_response(service_fn(handle)).await
}
