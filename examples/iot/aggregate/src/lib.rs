//! Nubo example component for two functions of the iot app, both bound to key-value store
//! `sensors`:
//!
//! - `aggregate` runs on queue `readings`, one message `{"sensor", "celsius", "at"}` per
//!   invocation, and folds it into the sensor's entry: count, min, max, mean, the last reading
//!   and when it was taken. Its manifest sets `max_concurrency = 1`, so two updates of one
//!   entry never race (a read-modify-write of a key-value entry is not atomic).
//! - `sensors` serves `GET /iot/sensors`: every sensor's entry, as one JSON object keyed by
//!   sensor name. It is a separate function so reads never wait behind the queue.
//!
//! Delivery is at least once: each entry remembers the ids of its last few messages and skips
//! a message it has already counted, which covers a redelivery after a lost answer.

use common::{respond_error, respond_json, Request};
use serde_json::{json, Map, Value};
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

/// Bindings for `wasi:keyvalue@0.2.0-draft` (its WIT is vendored in `../wit/keyvalue/`).
mod bindings {
    wit_bindgen::generate!({
        path: "../wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{batch, store};

/// The key-value store of entries (bound in nubo.toml with `kv = [...]`).
const STORE: &str = "sensors";

/// Message ids remembered per sensor to skip redeliveries.
const RECENT_IDS: usize = 16;

/// Most `list-keys` pages one listing follows (a page holds up to 1,000 keys).
const MAX_PAGES: usize = 1_000;

struct Aggregate;

wasi::http::proxy::export!(Aggregate);

impl wasi::exports::http::incoming_handler::Guest for Aggregate {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let request = match Request::read(request) {
            Ok(r) => r,
            Err(e) => return respond_error(out, 400, &e),
        };
        let (status, answer) = match (request.event(), &request.method) {
            (Some(event), _) if event.kind == "dev.nubo.queue.message" => match reading(event.data)
            {
                Ok((sensor, celsius, at)) => update(&sensor, celsius, &at, &event.id),
                Err(why) => {
                    // Retrying cannot fix a malformed message: log it and let it go.
                    eprintln!("aggregate: skipped message {}: {why}", event.id);
                    (200, json!({ "ignored": why }))
                }
            },
            (Some(event), _) => (
                400,
                json!({ "error": format!("unexpected event type {}", event.kind) }),
            ),
            (None, Method::Get) => list(),
            (None, _) => (405, json!({ "error": "use GET to read the sensors" })),
        };
        respond_json(out, status, &answer);
    }
}

/// The sensor, temperature and time of a queued reading.
fn reading(body: &[u8]) -> Result<(String, f64, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let sensor = v["sensor"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("no \"sensor\" string")?;
    let celsius = v["celsius"].as_f64().ok_or("no \"celsius\" number")?;
    let at = v["at"].as_str().unwrap_or_default();
    Ok((sensor.to_string(), celsius, at.to_string()))
}

/// Folds one reading into the sensor's entry.
fn update(sensor: &str, celsius: f64, at: &str, message_id: &str) -> (u16, Value) {
    let run = || -> Result<Value, store::Error> {
        let kv = store::open(STORE)?;
        let mut entry = match kv.get(sensor)? {
            Some(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| json!({})),
            None => json!({}),
        };
        let mut recent: Vec<Value> = entry["recent"].as_array().cloned().unwrap_or_default();
        if recent.iter().any(|id| id == message_id) {
            return Ok(json!({ "duplicate": message_id, "sensor": sensor }));
        }
        let count = entry["count"].as_u64().unwrap_or(0) + 1;
        let sum = entry["sum"].as_f64().unwrap_or(0.0) + celsius;
        let min = entry["min"].as_f64().map_or(celsius, |m| m.min(celsius));
        let max = entry["max"].as_f64().map_or(celsius, |m| m.max(celsius));
        recent.push(json!(message_id));
        if recent.len() > RECENT_IDS {
            recent.remove(0);
        }
        entry = json!({
            "sensor": sensor,
            "count": count,
            "sum": sum,
            "min": min,
            "max": max,
            "mean": sum / count as f64,
            "last": celsius,
            "lastAt": at,
            "recent": recent,
        });
        kv.set(sensor, entry.to_string().as_bytes())?;
        Ok(public(entry))
    };
    match run() {
        Ok(entry) => (200, entry),
        Err(e) => {
            // Fail the delivery so Nubo retries it.
            eprintln!("aggregate: updating sensor {sensor} failed: {e:?}");
            (
                500,
                json!({ "error": format!("updating sensor {sensor} failed: {e:?}") }),
            )
        }
    }
}

/// Every sensor's entry, keyed by sensor name.
fn list() -> (u16, Value) {
    let run = || -> Result<Map<String, Value>, store::Error> {
        let kv = store::open(STORE)?;
        let mut sensors = Map::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let page = kv.list_keys(cursor)?;
            for (key, value) in batch::get_many(&kv, &page.keys)?.into_iter().flatten() {
                if let Ok(entry) = serde_json::from_slice::<Value>(&value) {
                    sensors.insert(key, public(entry));
                }
            }
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(sensors)
    };
    match run() {
        Ok(sensors) => (200, Value::Object(sensors)),
        Err(e) => (
            500,
            json!({ "error": format!("reading store {STORE} failed: {e:?}") }),
        ),
    }
}

/// An entry as shown: without the bookkeeping fields.
fn public(mut entry: Value) -> Value {
    if let Some(fields) = entry.as_object_mut() {
        fields.remove("recent");
        fields.remove("sum");
    }
    entry
}
