//! How a trigger event becomes an async invocation: a binary-mode CloudEvent for a wasm
//! function, a Lambda event (EventBridge, SQS, S3 or Nubo's own MQTT/NATS shape) for a
//! process function, with the trigger headers, the hop count and the idempotency key.
//!
//! Everything here is pure: the tasks gather what happened, these functions shape it.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::{
    S3Bucket, S3Entity, S3Event, S3EventRecord, S3Object, S3UserIdentity,
};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use nubo_core::InvocationId;
use nubo_core::limits::MAX_TRIGGER_HOPS;
use nubo_core::manifest::{CronSpec, RetrySpec, Runtime};
use nubo_store::objects::{ObjectEvent, ObjectEventKind};
use nubo_store::{NewEvent, QueueMessage};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a delivery's idempotency key names it: a delivery repeated within a day (a crash
/// between storing and acknowledging the source) is stored once.
pub(crate) const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The account and region in the ARNs of Lambda events: Nubo is one local "account".
const ACCOUNT: &str = "000000000000";
const REGION: &str = "local";

/// Who a trigger delivers to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The app.
    pub app: String,
    /// The trigger's name within the app.
    pub trigger: String,
    /// `cron`, `queue`, `object`, `mqtt` or `nats`.
    pub kind: &'static str,
    /// The function.
    pub function: String,
    /// Which shape the function gets.
    pub runtime: Runtime,
    /// The function's retry settings, carried into each delivery.
    pub retry: RetrySpec,
}

/// The attributes and data of a CloudEvent.
struct CloudEvent {
    ty: String,
    source: String,
    id: String,
    subject: Option<String>,
    time: SystemTime,
    content_type: String,
    data: Vec<u8>,
}

impl Target {
    /// The async invocation carrying `headers` and `body`.
    fn event(
        &self,
        hop: u32,
        idempotency_key: Option<String>,
        mut headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    ) -> NewEvent {
        headers.push(("nubo-trigger".into(), self.kind.as_bytes().to_vec()));
        headers.push(("nubo-trigger-name".into(), self.trigger.as_bytes().to_vec()));
        headers.push(("nubo-hop".into(), hop.to_string().into_bytes()));
        NewEvent {
            id: InvocationId::new().to_string(),
            app: self.app.clone(),
            function: self.function.clone(),
            method: "POST".into(),
            path: "/".into(),
            headers,
            body,
            max_attempts: self.retry.max_attempts,
            max_age: Duration::from_millis(self.retry.max_age_ms),
            idempotency_key,
            dedup_window: DEDUP_WINDOW,
        }
    }

    /// A binary-mode CloudEvent: attributes as `ce-*` headers, the data as the body.
    fn cloud_event(&self, hop: u32, key: Option<String>, ce: CloudEvent) -> NewEvent {
        let mut headers = vec![
            ("ce-specversion".to_string(), b"1.0".to_vec()),
            ("ce-id".to_string(), ce.id.into_bytes()),
            ("ce-source".to_string(), ce.source.into_bytes()),
            ("ce-type".to_string(), ce.ty.into_bytes()),
            (
                "ce-time".to_string(),
                nubo_core::rfc3339(ce.time).into_bytes(),
            ),
        ];
        if let Some(subject) = ce.subject {
            headers.push(("ce-subject".into(), subject.into_bytes()));
        }
        headers.push(("content-type".into(), ce.content_type.into_bytes()));
        self.event(hop, key, headers, ce.data)
    }

    /// A Lambda event for the process runtime, which passes the body on unchanged.
    fn lambda_event(
        &self,
        hop: u32,
        key: Option<String>,
        event: &impl serde::Serialize,
    ) -> NewEvent {
        let headers = vec![
            ("nubo-entry".to_string(), b"invoke".to_vec()),
            ("content-type".to_string(), b"application/json".to_vec()),
        ];
        // Serializing these shapes cannot fail: maps with string keys, no custom serializers
        // that error.
        let body = serde_json::to_vec(event).unwrap_or_default();
        self.event(hop, key, headers, body)
    }
}

/// A delivery and the hop it would be.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The invocation to submit.
    pub event: NewEvent,
    /// Its place in the chain of trigger deliveries.
    pub hop: u32,
}

impl Delivery {
    /// Whether the chain went past [`MAX_TRIGGER_HOPS`], so it must not run.
    pub fn loops(&self) -> bool {
        self.hop > MAX_TRIGGER_HOPS
    }
}

/// The error stored with a delivery stopped as a loop.
pub(crate) fn loop_error(target: &Target, hop: u32) -> String {
    format!(
        "trigger chain stopped: trigger {:?} ({}) would start hop {hop}, past the limit of {MAX_TRIGGER_HOPS}; \
         a function probably writes to the bucket or publishes to the queue that triggers it: \
         fix it, then `nubo dlq {} --redrive` if these events should still run",
        target.trigger, target.kind, target.app
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn chrono_time(t: SystemTime) -> chrono::DateTime<chrono::Utc> {
    let ms = i64::try_from(unix_ms(t)).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The delivery of cron tick `tick`.
pub(crate) fn cron(target: &Target, spec: &CronSpec, tick: SystemTime) -> Delivery {
    let ms = unix_ms(tick);
    let key = Some(format!("cron:{}:{ms}", target.trigger));
    let hop = 1;
    let event = match target.runtime {
        Runtime::Wasm => {
            let data = json!({
                "trigger": target.trigger,
                "schedule": spec.schedule,
                "timezone": spec.timezone,
                "scheduledTime": nubo_core::rfc3339(tick),
            });
            target.cloud_event(
                hop,
                key,
                CloudEvent {
                    ty: "dev.nubo.cron.tick".into(),
                    source: format!("/apps/{}/triggers/{}", target.app, target.trigger),
                    id: format!("{}-{ms}", target.trigger),
                    subject: None,
                    time: tick,
                    content_type: "application/json".into(),
                    data: data.to_string().into_bytes(),
                },
            )
        }
        Runtime::Process => {
            let mut ev: EventBridgeEvent<Value> = EventBridgeEvent::default();
            ev.version = Some("0".into());
            ev.id = Some(uuid_shaped(&format!(
                "{}:{}:{ms}",
                target.app, target.trigger
            )));
            ev.detail_type = "Scheduled Event".into();
            ev.source = "aws.events".into();
            ev.account = Some(ACCOUNT.into());
            ev.time = Some(chrono_time(tick));
            ev.region = Some(REGION.into());
            ev.resources = Some(vec![format!(
                "arn:aws:events:{REGION}:{ACCOUNT}:rule/{}-{}",
                target.app, target.trigger
            )]);
            ev.detail = json!({});
            target.lambda_event(hop, key, &ev)
        }
    };
    Delivery { event, hop }
}

/// A UUID-shaped id derived from `seed`, so a repeated tick carries the same id.
fn uuid_shaped(seed: &str) -> String {
    let d = Md5::digest(seed.as_bytes());
    let h: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The idempotency key of a queue batch: its first message, and for a batch of several also
/// its last message and size, so a batch that grew after a crash is not taken for the one
/// stored before it (its extra messages would be acknowledged without being delivered).
pub(crate) fn queue_key(queue: &str, msgs: &[QueueMessage]) -> Option<String> {
    let first = msgs.first()?;
    let last = msgs.last()?;
    Some(if msgs.len() == 1 {
        format!("queue:{queue}:{}", first.id)
    } else {
        format!("queue:{queue}:{}:{}:{}", first.id, last.id, msgs.len())
    })
}

/// The delivery of claimed queue messages: a wasm function gets the first one (its batches
/// hold one message), a process function an SQS event with all of them.
pub(crate) fn queue(
    target: &Target,
    queue: &str,
    msgs: &[QueueMessage],
    now: SystemTime,
) -> Delivery {
    let hop = msgs
        .iter()
        .map(|m| m.hop)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let key = queue_key(queue, msgs);
    let event = match (target.runtime, msgs.first()) {
        (Runtime::Wasm, Some(m)) => target.cloud_event(
            hop,
            key,
            CloudEvent {
                ty: "dev.nubo.queue.message".into(),
                source: format!("/queues/{queue}"),
                id: m.id.clone(),
                subject: None,
                time: m.enqueued_at,
                content_type: m
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
                data: m.body.clone(),
            },
        ),
        _ => {
            let mut ev = SqsEvent::default();
            ev.records = msgs.iter().map(|m| sqs_record(queue, m, now)).collect();
            target.lambda_event(hop, key, &ev)
        }
    };
    // A batch continues the trace of its first traced message (the delivery is one invocation).
    let traced = msgs.iter().find_map(|m| m.traceparent.as_deref());
    Delivery {
        event: with_trace(event, traced),
        hop,
    }
}

/// The delivery carrying `traceparent` (of the invocation whose work caused it), so its
/// invocation continues that trace.
fn with_trace(mut event: NewEvent, traceparent: Option<&str>) -> NewEvent {
    if let Some(t) = traceparent {
        event
            .headers
            .push(("traceparent".into(), t.as_bytes().to_vec()));
    }
    event
}

fn sqs_record(queue: &str, m: &QueueMessage, now: SystemTime) -> SqsMessage {
    let mut r = SqsMessage::default();
    let body = match std::str::from_utf8(&m.body) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let mut attr = SqsMessageAttribute::default();
            attr.string_value = Some("base64".into());
            attr.data_type = Some("String".into());
            r.message_attributes
                .insert("nubo-body-encoding".into(), attr);
            base64::engine::general_purpose::STANDARD.encode(&m.body)
        }
    };
    r.message_id = Some(m.id.clone());
    r.receipt_handle = Some(m.id.clone());
    r.md5_of_body = Some(md5_hex(body.as_bytes()));
    r.body = Some(body);
    r.attributes = HashMap::from([
        (
            "ApproximateReceiveCount".to_string(),
            m.receive_count.to_string(),
        ),
        (
            "SentTimestamp".to_string(),
            unix_ms(m.enqueued_at).to_string(),
        ),
        (
            "ApproximateFirstReceiveTimestamp".to_string(),
            unix_ms(now).to_string(),
        ),
        ("SenderId".to_string(), "nubo".to_string()),
    ]);
    r.event_source = Some("aws:sqs".into());
    r.event_source_arn = Some(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"));
    r.aws_region = Some(REGION.into());
    r
}

/// Encodes an object key as S3 does in event notifications: form encoding, so a space is
/// `+`; `/` and the unreserved characters stay as they are.
pub(crate) fn s3_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The delivery of one object change.
pub(crate) fn object(target: &Target, ev: &ObjectEvent) -> Delivery {
    let hop = ev.hop.saturating_add(1);
    // The trigger is part of the key: two triggers of one function on one bucket each deliver
    // the change, and idempotency keys are per function.
    let key = Some(format!("object:{}:{}", target.trigger, ev.seq));
    let event = match target.runtime {
        Runtime::Wasm => {
            let mut data = json!({
                "bucket": ev.bucket,
                "key": ev.key,
                "contentType": ev.content_type,
            });
            if ev.kind == ObjectEventKind::Created {
                data["size"] = json!(ev.size);
                data["etag"] = json!(ev.etag);
            }
            target.cloud_event(
                hop,
                key,
                CloudEvent {
                    ty: format!("dev.nubo.object.{}", ev.kind.as_str()),
                    source: format!("/buckets/{}", ev.bucket),
                    id: format!("{}-{}", ev.bucket, ev.seq),
                    subject: Some(ev.key.clone()),
                    time: ev.at,
                    content_type: "application/json".into(),
                    data: data.to_string().into_bytes(),
                },
            )
        }
        Runtime::Process => {
            let mut bucket = S3Bucket::default();
            bucket.name = Some(ev.bucket.clone());
            bucket.arn = Some(format!("arn:aws:s3:::{}", ev.bucket));
            let mut owner = S3UserIdentity::default();
            owner.principal_id = Some("nubo".into());
            bucket.owner_identity = Some(owner.clone());
            let mut object = S3Object::default();
            object.key = Some(s3_key(&ev.key));
            object.size = ev.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
            object.e_tag.clone_from(&ev.etag);
            object.sequencer = Some(format!("{:016X}", ev.seq));
            let mut s3 = S3Entity::default();
            s3.schema_version = Some("1.0".into());
            s3.configuration_id = Some(target.trigger.clone());
            s3.bucket = bucket;
            s3.object = object;
            let mut record = S3EventRecord::default();
            record.event_version = Some("2.1".into());
            record.event_source = Some("aws:s3".into());
            record.aws_region = Some(REGION.into());
            record.event_time = chrono_time(ev.at);
            record.event_name = Some(
                match ev.kind {
                    ObjectEventKind::Created => "ObjectCreated:Put",
                    ObjectEventKind::Deleted => "ObjectRemoved:Delete",
                }
                .into(),
            );
            record.principal_id = owner;
            record.s3 = s3;
            let mut s3_event = S3Event::default();
            s3_event.records = vec![record];
            target.lambda_event(hop, key, &s3_event)
        }
    };
    Delivery {
        event: with_trace(event, ev.traceparent.as_deref()),
        hop,
    }
}

/// A message payload as the JSON events show it: `(payload, content type)`. The payload is
/// the JSON value when it parses as JSON, else the UTF-8 text, else `null`.
fn payload_view(payload: &[u8]) -> (Value, &'static str) {
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        return (v, "application/json");
    }
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.into()), "application/octet-stream"),
        Err(_) => (Value::Null, "application/octet-stream"),
    }
}

/// One MQTT message as delivered.
#[derive(Debug, Clone)]
pub(crate) struct MqttMessage<'a> {
    /// The broker as written in the manifest.
    pub broker: &'a str,
    /// The topic it was published to.
    pub topic: &'a str,
    /// The QoS it arrived with.
    pub qos: u8,
    /// Whether the broker kept it as the topic's retained message.
    pub retain: bool,
    /// The payload.
    pub payload: &'a [u8],
}

/// The delivery of an MQTT message (hop 1: it comes from outside Nubo).
pub(crate) fn mqtt(target: &Target, msg: &MqttMessage<'_>, now: SystemTime) -> Delivery {
    let hop = 1;
    let (payload, content_type) = payload_view(msg.payload);
    let event = match target.runtime {
        Runtime::Wasm => target.cloud_event(
            hop,
            None,
            CloudEvent {
                ty: "dev.nubo.mqtt.message".into(),
                source: msg.broker.into(),
                id: InvocationId::new().to_string(),
                subject: Some(msg.topic.into()),
                time: now,
                content_type: content_type.into(),
                data: msg.payload.to_vec(),
            },
        ),
        Runtime::Process => {
            let ev = json!({
                "source": "nubo:mqtt",
                "trigger": target.trigger,
                "broker": msg.broker,
                "topic": msg.topic,
                "qos": msg.qos,
                "retain": msg.retain,
                "payload": payload,
                "payloadBase64": base64::engine::general_purpose::STANDARD.encode(msg.payload),
            });
            target.lambda_event(hop, None, &ev)
        }
    };
    Delivery { event, hop }
}

/// One NATS message as delivered.
#[derive(Debug, Clone)]
pub(crate) struct NatsMessage<'a> {
    /// The server as written in the manifest.
    pub server: &'a str,
    /// The subject it was published to.
    pub subject: &'a str,
    /// For JetStream: the stream and the message's sequence in it.
    pub stream: Option<(&'a str, u64)>,
    /// Its NATS headers (a name sent several times has its values joined with `,`).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: &'a [u8],
}

/// The delivery of a NATS message (hop 1: it comes from outside Nubo).
pub(crate) fn nats(target: &Target, msg: &NatsMessage<'_>, now: SystemTime) -> Delivery {
    let hop = 1;
    let (payload, guessed) = payload_view(msg.payload);
    let mut headers = serde_json::Map::new();
    for (name, value) in &msg.headers {
        let joined = match headers.get(name).and_then(Value::as_str) {
            Some(before) => format!("{before},{value}"),
            None => value.clone(),
        };
        headers.insert(name.clone(), Value::String(joined));
    }
    let key = msg
        .stream
        .map(|(stream, seq)| format!("nats:{stream}:{seq}"));
    let event = match target.runtime {
        Runtime::Wasm => {
            let content_type = msg
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map_or_else(|| guessed.to_string(), |(_, v)| v.clone());
            let (source, id) = match msg.stream {
                Some((stream, seq)) => (
                    format!("{}/streams/{stream}", msg.server),
                    format!("{stream}-{seq}"),
                ),
                None => (msg.server.to_string(), InvocationId::new().to_string()),
            };
            target.cloud_event(
                hop,
                key,
                CloudEvent {
                    ty: "dev.nubo.nats.message".into(),
                    source,
                    id,
                    subject: Some(msg.subject.into()),
                    time: now,
                    content_type,
                    data: msg.payload.to_vec(),
                },
            )
        }
        Runtime::Process => {
            let ev = json!({
                "source": "nubo:nats",
                "trigger": target.trigger,
                "server": msg.server,
                "subject": msg.subject,
                "stream": msg.stream.map(|(s, _)| s),
                "sequence": msg.stream.map(|(_, n)| n),
                "headers": headers,
                "payload": payload,
                "payloadBase64": base64::engine::general_purpose::STANDARD.encode(msg.payload),
            });
            target.lambda_event(hop, key, &ev)
        }
    };
    // A publisher that traces its messages (W3C `traceparent` in the NATS headers) has its
    // trace continued; the gateway checks the header like any caller's.
    let traced = msg
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.as_str());
    Delivery {
        event: with_trace(event, traced),
        hop,
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
