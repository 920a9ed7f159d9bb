//! Nubo example function `thumbnail`: runs on object events from bucket `uploads`. For each
//! created image (binary PGM or PPM) it writes a copy 4 times smaller on each side to bucket
//! `thumbnails` under the same key; for each deleted one it deletes that copy.
//!
//! Answers: 200 with what it did; 422 when the upload is not an image it reads (the delivery
//! fails, so Nubo retries it and then moves it to the app's dead-letter queue, where
//! `nubo dlq thumbnails` shows it); 500 when storage fails (retried like any failure).

use common::{respond_error, respond_json, Request};
use serde_json::json;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

/// Bindings for Nubo's `nubo:objects@0.1.0` WIT (in `wit/nubo-objects/` of the Nubo repository).
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-objects",
        world: "nubo:objects/imports",
    });
}

use bindings::nubo::objects::objects;

/// Where thumbnails go (bound in nubo.toml with `buckets = [...]`).
const THUMBNAILS: &str = "thumbnails";

/// How much smaller a thumbnail is on each side.
const FACTOR: u32 = 4;

struct Thumbnail;

wasi::http::proxy::export!(Thumbnail);

impl wasi::exports::http::incoming_handler::Guest for Thumbnail {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let request = match Request::read(request) {
            Ok(r) => r,
            Err(e) => return respond_error(out, 400, &e),
        };
        let Some(event) = request.event() else {
            return respond_error(
                out,
                400,
                "this function runs on object events: upload an image to bucket uploads under images/",
            );
        };
        let data = match event.json() {
            Ok(d) => d,
            Err(e) => return respond_error(out, 400, &e),
        };
        let (Some(bucket), Some(key)) = (data["bucket"].as_str(), data["key"].as_str()) else {
            return respond_error(out, 400, "the event data has no bucket or key");
        };
        let (status, answer) = match event.kind.as_str() {
            "dev.nubo.object.created" => created(bucket, key),
            "dev.nubo.object.deleted" => deleted(key),
            other => (
                400,
                json!({ "error": format!("unexpected event type {other}") }),
            ),
        };
        respond_json(out, status, &answer);
    }
}

/// Makes the thumbnail of `bucket`/`key`.
fn created(bucket: &str, key: &str) -> (u16, serde_json::Value) {
    let image = match objects::get(bucket, key, None) {
        Ok(Some(image)) => image,
        // Deleted again before this ran: its delete event follows, nothing to do.
        Ok(None) => {
            return (
                200,
                json!({ "skipped": key, "reason": "the upload is gone" }),
            )
        }
        Err(objects::Error::TooLarge(m)) => return rejected(key, &m),
        Err(e) => return storage_failed("reading", bucket, key, &e),
    };
    let thumb = match netpbm::downsample(&image, FACTOR) {
        Ok(t) => t,
        Err(e) => return rejected(key, &e.to_string()),
    };
    let content_type = thumb.header.format.content_type();
    if let Err(e) = objects::put(THUMBNAILS, key, &thumb.bytes, Some(content_type)) {
        return storage_failed("writing", THUMBNAILS, key, &e);
    }
    let (width, height) = image_size(&image);
    println!(
        "thumbnail {key}: {width}x{height} -> {}x{}",
        thumb.header.width, thumb.header.height
    );
    (
        200,
        json!({
            "key": key,
            "width": thumb.header.width,
            "height": thumb.header.height,
            "bytes": thumb.bytes.len(),
        }),
    )
}

/// Removes the thumbnail of a deleted upload.
fn deleted(key: &str) -> (u16, serde_json::Value) {
    match objects::delete(THUMBNAILS, key) {
        Ok(existed) => (200, json!({ "deleted": key, "existed": existed })),
        Err(e) => storage_failed("deleting", THUMBNAILS, key, &e),
    }
}

/// The source image's size, for the log line (it parsed already, so this cannot fail).
fn image_size(image: &[u8]) -> (u32, u32) {
    netpbm::parse_header(image).map_or((0, 0), |h| (h.width, h.height))
}

/// An upload that cannot become a thumbnail: logged, and answered 422 so the delivery fails.
fn rejected(key: &str, why: &str) -> (u16, serde_json::Value) {
    eprintln!("thumbnail {key}: rejected: {why}");
    (422, json!({ "error": format!("{key}: {why}") }))
}

/// A storage call that failed: answered 500, so Nubo retries the delivery.
fn storage_failed(
    doing: &str,
    bucket: &str,
    key: &str,
    e: &objects::Error,
) -> (u16, serde_json::Value) {
    let message = format!("{doing} {bucket}/{key} failed: {e:?}");
    eprintln!("thumbnail: {message}");
    (500, json!({ "error": message }))
}
