//! Test guest `trap`: fails on every request, so tests can check how Nubo reports a crashed function.
//!
//! By default it panics with the message `boom` (Rust prints the panic to stderr, then aborts).
//! With `?mode=unreachable` it executes the wasm `unreachable` instruction directly.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

wasi::http::proxy::export!(Trap);

impl wasi::exports::http::incoming_handler::Guest for Trap {
    fn handle(request: IncomingRequest, _response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        if query.split('&').any(|pair| pair == "mode=unreachable") {
            core::arch::wasm32::unreachable();
        }
        panic!("boom");
    }
}
