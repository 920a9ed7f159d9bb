//! Test guest `config`: a wasi:http handler that shows what a function sees of its
//! configuration, through `wasi:config/store` (0.2.0-rc.1) and through its environment.
//!
//! - `GET /config?key=K`: answers `text/plain` lines `config K=V` (or `config K absent`) from
//!   `store.get`, `env K=V` (or `env K absent`) from the environment, then `all N` with the
//!   number of variables `store.get-all` returns and `all K=V` for `K` among them (or
//!   `all K absent`). It also prints `using K=V` to stdout, so tests can see that a value printed
//!   to the log is masked.

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// Bindings for the `wasi:config@0.2.0-rc.1` WIT in `wit/`.
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "wasi:config/imports",
    });
}

use bindings::wasi::config::store;

struct Config;

wasi::http::proxy::export!(Config);

impl wasi::exports::http::incoming_handler::Guest for Config {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let key = query(&path, "key").unwrap_or_else(|| "DB_URL".to_string());
        let mut text = String::new();
        match store::get(&key) {
            Ok(Some(v)) => text.push_str(&format!("config {key}={v}\n")),
            Ok(None) => text.push_str(&format!("config {key} absent\n")),
            Err(e) => text.push_str(&format!("config error {e:?}\n")),
        }
        match std::env::var(&key) {
            Ok(v) => {
                text.push_str(&format!("env {key}={v}\n"));
                println!("using {key}={v}");
            }
            Err(_) => text.push_str(&format!("env {key} absent\n")),
        }
        match store::get_all() {
            Ok(all) => {
                text.push_str(&format!("all {}\n", all.len()));
                match all.iter().find(|(k, _)| *k == key) {
                    Some((k, v)) => text.push_str(&format!("all {k}={v}\n")),
                    None => text.push_str(&format!("all {key} absent\n")),
                }
            }
            Err(e) => text.push_str(&format!("all error {e:?}\n")),
        }

        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
            .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("a response body");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("the body stream");
        out.blocking_write_and_flush(text.as_bytes()).expect("writing the body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finishing the body");
    }
}

/// The value of `name` in the query string of `path`, undecoded.
fn query(path: &str, name: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}
