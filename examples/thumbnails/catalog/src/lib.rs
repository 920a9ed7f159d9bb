//! Nubo example function `catalog`: keeps a catalog of the thumbnails in key-value store
//! `catalog`, and serves it.
//!
//! - Object events from bucket `thumbnails`: a created thumbnail's header is read (only its
//!   first bytes, by range) and `{"key", "width", "height", "bytes"}` is stored under its key;
//!   a deleted thumbnail's entry is removed.
//! - `GET /thumbnails/catalog` (or any GET): 200 with the JSON list of entries, sorted by key.

use common::{respond_error, respond_json, Request};
use serde_json::{json, Value};
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

/// Bindings for Nubo's `nubo:objects@0.1.0` WIT (in `wit/nubo-objects/` of the Nubo repository).
mod objects_bindings {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-objects",
        world: "nubo:objects/imports",
    });
}

/// Bindings for `wasi:keyvalue@0.2.0-draft` (its WIT is vendored in `../wit/keyvalue/`).
mod kv_bindings {
    wit_bindgen::generate!({
        path: "../wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use kv_bindings::wasi::keyvalue::{batch, store};
use objects_bindings::nubo::objects::objects;

/// The key-value store of entries (bound in nubo.toml with `kv = [...]`).
const STORE: &str = "catalog";

/// Most `list-keys` pages one listing follows (a page holds up to 1,000 keys).
const MAX_PAGES: usize = 1_000;

struct Catalog;

wasi::http::proxy::export!(Catalog);

impl wasi::exports::http::incoming_handler::Guest for Catalog {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let request = match Request::read(request) {
            Ok(r) => r,
            Err(e) => return respond_error(out, 400, &e),
        };
        let (status, answer) = match (request.event(), &request.method) {
            (Some(event), _) => match event.json() {
                Ok(data) => on_event(&event.kind, &data),
                Err(e) => (400, json!({ "error": e })),
            },
            (None, Method::Get) => list(),
            (None, _) => (405, json!({ "error": "use GET to read the catalog" })),
        };
        respond_json(out, status, &answer);
    }
}

/// Records or forgets one thumbnail.
fn on_event(kind: &str, data: &Value) -> (u16, Value) {
    let (Some(bucket), Some(key)) = (data["bucket"].as_str(), data["key"].as_str()) else {
        return (
            400,
            json!({ "error": "the event data has no bucket or key" }),
        );
    };
    let result = match kind {
        "dev.nubo.object.created" => record(bucket, key),
        "dev.nubo.object.deleted" => forget(key),
        other => {
            return (
                400,
                json!({ "error": format!("unexpected event type {other}") }),
            )
        }
    };
    result.unwrap_or_else(|message| {
        eprintln!("catalog {key}: {message}");
        (500, json!({ "error": message }))
    })
}

/// Reads the thumbnail's header and stores its entry.
fn record(bucket: &str, key: &str) -> Result<(u16, Value), String> {
    let last = netpbm::MAX_HEADER_BYTES as u64 - 1;
    let head = match objects::get(bucket, key, Some((0, last))) {
        Ok(Some(head)) => head,
        // Deleted before this ran: its delete event follows.
        Ok(None) => {
            return Ok((
                200,
                json!({ "skipped": key, "reason": "the thumbnail is gone" }),
            ))
        }
        Err(e) => return Err(format!("reading {bucket}/{key} failed: {e:?}")),
    };
    let header = match netpbm::parse_header(&head) {
        Ok(h) => h,
        Err(e) => {
            // Not something a retry fixes.
            eprintln!("catalog {key}: not a thumbnail: {e}");
            return Ok((422, json!({ "error": format!("{key}: {e}") })));
        }
    };
    let bytes = match objects::head(bucket, key) {
        Ok(Some(info)) => info.size,
        Ok(None) => {
            return Ok((
                200,
                json!({ "skipped": key, "reason": "the thumbnail is gone" }),
            ))
        }
        Err(e) => return Err(format!("reading {bucket}/{key} failed: {e:?}")),
    };
    let entry =
        json!({ "key": key, "width": header.width, "height": header.height, "bytes": bytes });
    let kv = store::open(STORE).map_err(|e| format!("opening store {STORE} failed: {e:?}"))?;
    kv.set(key, entry.to_string().as_bytes())
        .map_err(|e| format!("storing the entry failed: {e:?}"))?;
    println!(
        "catalog {key}: {}x{}, {bytes} bytes",
        header.width, header.height
    );
    Ok((200, entry))
}

/// Removes a deleted thumbnail's entry.
fn forget(key: &str) -> Result<(u16, Value), String> {
    let kv = store::open(STORE).map_err(|e| format!("opening store {STORE} failed: {e:?}"))?;
    kv.delete(key)
        .map_err(|e| format!("removing the entry failed: {e:?}"))?;
    Ok((200, json!({ "deleted": key })))
}

/// Every entry, sorted by key.
fn list() -> (u16, Value) {
    let entries = || -> Result<Vec<Value>, store::Error> {
        let kv = store::open(STORE)?;
        let mut entries = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let page = kv.list_keys(cursor)?;
            for (_, value) in batch::get_many(&kv, &page.keys)?.into_iter().flatten() {
                // Entries are written only by this function; skip anything unreadable.
                if let Ok(entry) = serde_json::from_slice::<Value>(&value) {
                    entries.push(entry);
                }
            }
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(entries)
    };
    match entries() {
        Ok(mut entries) => {
            entries.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
            (200, Value::Array(entries))
        }
        Err(e) => (
            500,
            json!({ "error": format!("reading store {STORE} failed: {e:?}") }),
        ),
    }
}
