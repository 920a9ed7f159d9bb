//! Nubo example function `ingest`: runs on MQTT messages from topics
//! `sensors/{sensor}/temperature`. A reading `{"celsius": 21.5}` is checked and published to
//! queue `readings` as `{"sensor", "celsius", "at"}` (`at`: when the broker message arrived).
//!
//! Answers: 200 with the queued reading; 200 with `{"ignored": why}` for a bad reading, which
//! is logged and dropped (a retry would not make it better, so the delivery must not fail);
//! 503 when the queue is full and 500 when publishing fails otherwise: those deliveries fail,
//! and Nubo retries them.

use common::{respond_error, respond_json, Request};
use serde_json::{json, Value};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

/// Bindings for Nubo's `nubo:queues@0.1.0` WIT (in `wit/nubo-queues/` of the Nubo repository).
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/nubo-queues",
        world: "nubo:queues/imports",
    });
}

use bindings::nubo::queues::publisher;

/// Where readings go (bound in nubo.toml with `queues = [...]`).
const QUEUE: &str = "readings";

/// Colder than absolute zero is a broken sensor; hotter than this is one too.
const CELSIUS_RANGE: std::ops::RangeInclusive<f64> = -273.15..=1000.0;

/// Longest sensor name accepted (it becomes a key-value key downstream).
const MAX_SENSOR_CHARS: usize = 64;

struct Ingest;

wasi::http::proxy::export!(Ingest);

impl wasi::exports::http::incoming_handler::Guest for Ingest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let request = match Request::read(request) {
            Ok(r) => r,
            Err(e) => return respond_error(out, 400, &e),
        };
        let Some(event) = request.event() else {
            return respond_error(
                out,
                400,
                "this function runs on MQTT messages: publish to sensors/NAME/temperature",
            );
        };
        let topic = event.subject.clone().unwrap_or_default();
        let at = event.time.clone().unwrap_or_default();
        let reading = match check(&topic, event.data) {
            Ok((sensor, celsius)) => json!({ "sensor": sensor, "celsius": celsius, "at": at }),
            Err(why) => {
                eprintln!(
                    "ingest: ignored a message on {topic:?} (event {}): {why}",
                    event.id
                );
                return respond_json(out, 200, &json!({ "ignored": why }));
            }
        };
        let body = reading.to_string();
        match publisher::publish(QUEUE, body.as_bytes(), Some("application/json")) {
            Ok(id) => respond_json(out, 200, &json!({ "queued": reading, "message": id })),
            Err(publisher::Error::Full(m)) => {
                eprintln!("ingest: queue {QUEUE} is full, the delivery will be retried: {m}");
                respond_error(out, 503, &m);
            }
            Err(e) => {
                eprintln!("ingest: publishing to {QUEUE} failed: {e:?}");
                respond_error(out, 500, &format!("publishing to {QUEUE} failed: {e:?}"));
            }
        }
    }
}

/// The sensor named by `topic` and the temperature in `payload`, or why they are not usable.
fn check(topic: &str, payload: &[u8]) -> Result<(String, f64), String> {
    let sensor = match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["sensors", sensor, "temperature"] if !sensor.is_empty() => sensor.to_string(),
        _ => return Err(format!("topic {topic:?} is not sensors/NAME/temperature")),
    };
    if sensor.chars().count() > MAX_SENSOR_CHARS {
        return Err(format!(
            "the sensor name is longer than {MAX_SENSOR_CHARS} characters"
        ));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the payload is not JSON like {{\"celsius\": 21.5}}: {e}"))?;
    let celsius = value
        .get("celsius")
        .and_then(Value::as_f64)
        .ok_or("the payload has no number \"celsius\", like {\"celsius\": 21.5}")?;
    if !CELSIUS_RANGE.contains(&celsius) {
        return Err(format!(
            "{celsius} °C is outside {} to {} °C",
            CELSIUS_RANGE.start(),
            CELSIUS_RANGE.end()
        ));
    }
    Ok((sensor, celsius))
}
