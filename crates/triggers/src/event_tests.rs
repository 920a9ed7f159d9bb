//! The delivery shapes, read back the way functions read them: CloudEvent headers for wasm,
//! `aws_lambda_events` types for process functions.

use super::*;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use nubo_core::manifest::Missed;

fn target(kind: &'static str, runtime: Runtime) -> Target {
    Target {
        app: "shop".into(),
        trigger: format!("{kind}-work"),
        kind,
        function: "work".into(),
        runtime,
        retry: RetrySpec {
            max_attempts: 5,
            max_age_ms: 60_000,
            backoff_ms: 100,
        },
    }
}

fn header<'a>(ev: &'a NewEvent, name: &str) -> Option<&'a str> {
    ev.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// 2026-01-01T00:00:00Z
const NEW_YEAR: u64 = 1_767_225_600_000;

fn message(id: &str, body: &[u8], hop: u32) -> QueueMessage {
    QueueMessage {
        queue: "orders".into(),
        id: id.into(),
        seq: 1,
        body: body.to_vec(),
        content_type: None,
        hop,
        traceparent: None,
        enqueued_at: at_ms(NEW_YEAR),
        receive_count: 2,
    }
}

fn assert_common(ev: &NewEvent, t: &Target, hop: u32) {
    assert_eq!(ev.method, "POST");
    assert_eq!(ev.path, "/");
    assert_eq!(ev.app, "shop");
    assert_eq!(ev.function, "work");
    assert_eq!(ev.max_attempts, 5);
    assert_eq!(ev.max_age, Duration::from_secs(60));
    assert_eq!(ev.dedup_window, DEDUP_WINDOW);
    assert!(InvocationId::parse(&ev.id).is_some(), "{}", ev.id);
    assert_eq!(header(ev, "nubo-trigger"), Some(t.kind));
    assert_eq!(header(ev, "nubo-trigger-name"), Some(t.trigger.as_str()));
    assert_eq!(header(ev, "nubo-hop"), Some(hop.to_string().as_str()));
}

fn assert_process(ev: &NewEvent) {
    assert_eq!(header(ev, "nubo-entry"), Some("invoke"));
    assert_eq!(header(ev, "content-type"), Some("application/json"));
    assert_eq!(header(ev, "ce-id"), None);
}

fn cron_spec() -> CronSpec {
    CronSpec {
        schedule: "0 7 * * *".into(),
        timezone: "Europe/Paris".into(),
        missed: Missed::Skip,
    }
}

#[test]
fn cron_ticks_reach_wasm_as_cloud_events() {
    let t = target("cron", Runtime::Wasm);
    let d = cron(&t, &cron_spec(), at_ms(NEW_YEAR + 21_600_000));
    assert_eq!(d.hop, 1);
    let ev = &d.event;
    assert_common(ev, &t, 1);
    assert_eq!(header(ev, "ce-specversion"), Some("1.0"));
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.cron.tick"));
    assert_eq!(
        header(ev, "ce-source"),
        Some("/apps/shop/triggers/cron-work")
    );
    assert_eq!(header(ev, "ce-id"), Some("cron-work-1767247200000"));
    assert_eq!(header(ev, "ce-time"), Some("2026-01-01T06:00:00.000Z"));
    assert_eq!(header(ev, "ce-subject"), None);
    assert_eq!(header(ev, "content-type"), Some("application/json"));
    assert_eq!(
        ev.idempotency_key.as_deref(),
        Some("cron:cron-work:1767247200000")
    );
    let data: Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(
        data,
        json!({
            "trigger": "cron-work",
            "schedule": "0 7 * * *",
            "timezone": "Europe/Paris",
            "scheduledTime": "2026-01-01T06:00:00.000Z",
        })
    );
}

#[test]
fn cron_ticks_reach_process_functions_as_eventbridge_scheduled_events() {
    let t = target("cron", Runtime::Process);
    let tick = at_ms(NEW_YEAR + 21_600_000);
    let d = cron(&t, &cron_spec(), tick);
    assert_common(&d.event, &t, 1);
    assert_process(&d.event);
    let ev: EventBridgeEvent<Value> = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(ev.version.as_deref(), Some("0"));
    assert_eq!(ev.detail_type, "Scheduled Event");
    assert_eq!(ev.source, "aws.events");
    assert_eq!(ev.account.as_deref(), Some("000000000000"));
    assert_eq!(ev.region.as_deref(), Some("local"));
    assert_eq!(
        ev.time.unwrap().timestamp_millis(),
        1_767_247_200_000,
        "time is the tick"
    );
    assert_eq!(
        ev.resources.unwrap(),
        vec!["arn:aws:events:local:000000000000:rule/shop-cron-work".to_string()]
    );
    assert_eq!(ev.detail, json!({}));
    let id = ev.id.unwrap();
    let parts: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
    // The same tick has the same id, another tick another.
    let again: EventBridgeEvent<Value> =
        serde_json::from_slice(&cron(&t, &cron_spec(), tick).event.body).unwrap();
    assert_eq!(again.id.as_deref(), Some(id.as_str()));
    let later = cron(&t, &cron_spec(), at_ms(NEW_YEAR + 108_000_000));
    let later: EventBridgeEvent<Value> = serde_json::from_slice(&later.event.body).unwrap();
    assert_ne!(later.id.as_deref(), Some(id.as_str()));
}

#[test]
fn a_queue_message_reaches_wasm_with_its_body_and_content_type() {
    let t = target("queue", Runtime::Wasm);
    let mut m = message("01JQ0000000000000000000001", br#"{"order":42}"#, 3);
    m.content_type = Some("application/json".into());
    let d = queue(&t, "orders", std::slice::from_ref(&m), SystemTime::now());
    assert_eq!(d.hop, 4, "a message's hop plus one");
    assert_common(&d.event, &t, 4);
    let ev = &d.event;
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.queue.message"));
    assert_eq!(header(ev, "ce-source"), Some("/queues/orders"));
    assert_eq!(header(ev, "ce-id"), Some("01JQ0000000000000000000001"));
    assert_eq!(header(ev, "ce-time"), Some("2026-01-01T00:00:00.000Z"));
    assert_eq!(header(ev, "content-type"), Some("application/json"));
    assert_eq!(ev.body, br#"{"order":42}"#);
    assert_eq!(
        ev.idempotency_key.as_deref(),
        Some("queue:orders:01JQ0000000000000000000001")
    );
    // Without a content type: octet-stream.
    let plain = queue(&t, "orders", &[message("a", b"x", 0)], SystemTime::now());
    assert_eq!(
        header(&plain.event, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(plain.hop, 1);
}

#[test]
fn a_queue_batch_reaches_process_functions_as_an_sqs_event() {
    let t = target("queue", Runtime::Process);
    let msgs = [
        message("m1", b"hello", 0),
        message("m2", &[0xff, 0x00, 0xfe], 5),
    ];
    let now = at_ms(NEW_YEAR + 1_000);
    let d = queue(&t, "orders", &msgs, now);
    assert_eq!(d.hop, 6, "the highest hop of the batch plus one");
    assert_common(&d.event, &t, 6);
    assert_process(&d.event);
    assert_eq!(
        d.event.idempotency_key.as_deref(),
        Some("queue:orders:m1:m2:2")
    );
    let ev: SqsEvent = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(ev.records.len(), 2);
    let r = &ev.records[0];
    assert_eq!(r.message_id.as_deref(), Some("m1"));
    assert_eq!(r.receipt_handle.as_deref(), Some("m1"));
    assert_eq!(r.body.as_deref(), Some("hello"));
    assert_eq!(
        r.md5_of_body.as_deref(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    assert_eq!(r.event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(
        r.event_source_arn.as_deref(),
        Some("arn:aws:sqs:local:000000000000:orders")
    );
    assert_eq!(r.aws_region.as_deref(), Some("local"));
    assert_eq!(r.attributes["ApproximateReceiveCount"], "2");
    assert_eq!(r.attributes["SentTimestamp"], "1767225600000");
    assert_eq!(
        r.attributes["ApproximateFirstReceiveTimestamp"],
        "1767225601000"
    );
    assert_eq!(r.attributes["SenderId"], "nubo");
    assert!(r.message_attributes.is_empty());
    // A body that is not UTF-8 travels as base64 and says so.
    let r = &ev.records[1];
    assert_eq!(r.body.as_deref(), Some("/wD+"));
    assert_eq!(
        r.message_attributes["nubo-body-encoding"]
            .string_value
            .as_deref(),
        Some("base64")
    );
    assert_eq!(r.md5_of_body.as_deref(), Some(md5_hex(b"/wD+").as_str()));
}

#[test]
fn queue_keys_tell_a_grown_batch_from_the_stored_one() {
    let one = [message("a", b"", 0)];
    let two = [message("a", b"", 0), message("b", b"", 0)];
    let three = [
        message("a", b"", 0),
        message("b", b"", 0),
        message("c", b"", 0),
    ];
    assert_eq!(queue_key("q", &one).as_deref(), Some("queue:q:a"));
    assert_ne!(queue_key("q", &two), queue_key("q", &three));
    assert_eq!(queue_key("q", &two), queue_key("q", &two.clone()));
    assert_eq!(queue_key("q", &[]), None);
}

fn object_event(kind: ObjectEventKind, key: &str, hop: u32) -> ObjectEvent {
    let created = kind == ObjectEventKind::Created;
    ObjectEvent {
        seq: 42,
        bucket: "uploads".into(),
        key: key.into(),
        kind,
        size: created.then_some(1234),
        etag: created.then(|| "9b2cf535f27731c974343645a3985328".to_string()),
        content_type: created.then(|| "image/jpeg".to_string()),
        hop,
        traceparent: None,
        at: at_ms(NEW_YEAR + 5),
    }
}

#[test]
fn deliveries_continue_the_trace_of_the_work_that_caused_them() {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traces = |ev: &NewEvent| -> Vec<Vec<u8>> {
        ev.headers
            .iter()
            .filter(|(k, _)| k == "traceparent")
            .map(|(_, v)| v.clone())
            .collect()
    };
    for runtime in [Runtime::Wasm, Runtime::Process] {
        let t = target("queue", runtime);
        let untraced = message("m1", b"a", 0);
        let mut traced = message("m2", b"b", 0);
        traced.traceparent = Some(PARENT.into());
        let d = queue(&t, "orders", &[untraced], at_ms(NEW_YEAR));
        assert!(traces(&d.event).is_empty());
        let d = queue(&t, "orders", &[traced], at_ms(NEW_YEAR));
        assert_eq!(traces(&d.event), [PARENT.as_bytes()]);

        let t = target("object", runtime);
        let mut ev = object_event(ObjectEventKind::Created, "a.png", 1);
        assert!(traces(&object(&t, &ev).event).is_empty());
        ev.traceparent = Some(PARENT.into());
        assert_eq!(traces(&object(&t, &ev).event), [PARENT.as_bytes()]);

        let t = target("nats", runtime);
        let mut msg = NatsMessage {
            server: "nats://127.0.0.1:4222",
            subject: "orders.created",
            stream: None,
            headers: vec![],
            payload: b"x",
        };
        assert!(traces(&nats(&t, &msg, at_ms(NEW_YEAR)).event).is_empty());
        msg.headers = vec![("Traceparent".into(), PARENT.into())];
        assert_eq!(
            traces(&nats(&t, &msg, at_ms(NEW_YEAR)).event),
            [PARENT.as_bytes()]
        );
    }
}

#[test]
fn object_changes_reach_wasm_as_cloud_events() {
    let t = target("object", Runtime::Wasm);
    let d = object(
        &t,
        &object_event(ObjectEventKind::Created, "images/a b.jpg", 2),
    );
    assert_eq!(d.hop, 3);
    assert_common(&d.event, &t, 3);
    let ev = &d.event;
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.object.created"));
    assert_eq!(header(ev, "ce-source"), Some("/buckets/uploads"));
    assert_eq!(header(ev, "ce-id"), Some("uploads-42"));
    assert_eq!(header(ev, "ce-subject"), Some("images/a b.jpg"));
    assert_eq!(header(ev, "ce-time"), Some("2026-01-01T00:00:00.005Z"));
    assert_eq!(header(ev, "content-type"), Some("application/json"));
    assert_eq!(ev.idempotency_key.as_deref(), Some("object:object-work:42"));
    let data: Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(
        data,
        json!({
            "bucket": "uploads",
            "key": "images/a b.jpg",
            "size": 1234,
            "etag": "9b2cf535f27731c974343645a3985328",
            "contentType": "image/jpeg",
        })
    );
    let d = object(
        &t,
        &object_event(ObjectEventKind::Deleted, "images/a.jpg", 0),
    );
    assert_eq!(d.hop, 1);
    assert_eq!(header(&d.event, "ce-type"), Some("dev.nubo.object.deleted"));
    let data: Value = serde_json::from_slice(&d.event.body).unwrap();
    assert!(
        data.get("size").is_none() && data.get("etag").is_none(),
        "{data}"
    );
    assert_eq!(data["key"], "images/a.jpg");
}

#[test]
fn object_changes_reach_process_functions_as_s3_notifications() {
    let t = target("object", Runtime::Process);
    let d = object(
        &t,
        &object_event(ObjectEventKind::Created, "images/a b+c.jpg", 0),
    );
    assert_common(&d.event, &t, 1);
    assert_process(&d.event);
    let ev: S3Event = serde_json::from_slice(&d.event.body).unwrap();
    let r = &ev.records[0];
    assert_eq!(r.event_version.as_deref(), Some("2.1"));
    assert_eq!(r.event_source.as_deref(), Some("aws:s3"));
    assert_eq!(r.aws_region.as_deref(), Some("local"));
    assert_eq!(r.event_name.as_deref(), Some("ObjectCreated:Put"));
    assert_eq!(r.event_time.timestamp_millis(), 1_767_225_600_005);
    assert_eq!(r.s3.schema_version.as_deref(), Some("1.0"));
    assert_eq!(r.s3.configuration_id.as_deref(), Some("object-work"));
    assert_eq!(r.s3.bucket.name.as_deref(), Some("uploads"));
    assert_eq!(r.s3.bucket.arn.as_deref(), Some("arn:aws:s3:::uploads"));
    assert_eq!(r.s3.object.key.as_deref(), Some("images/a+b%2Bc.jpg"));
    assert_eq!(r.s3.object.size, Some(1234));
    assert_eq!(
        r.s3.object.e_tag.as_deref(),
        Some("9b2cf535f27731c974343645a3985328")
    );
    assert_eq!(r.s3.object.sequencer.as_deref(), Some("000000000000002A"));
    // The raw JSON has S3's field names.
    let raw: Value = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(raw["Records"][0]["s3"]["s3SchemaVersion"], "1.0");
    assert_eq!(
        raw["Records"][0]["s3"]["object"]["eTag"],
        "9b2cf535f27731c974343645a3985328"
    );

    let d = object(&t, &object_event(ObjectEventKind::Deleted, "x", 0));
    let ev: S3Event = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(
        ev.records[0].event_name.as_deref(),
        Some("ObjectRemoved:Delete")
    );
    assert_eq!(ev.records[0].s3.object.size, None);
}

#[test]
fn s3_keys_are_form_encoded() {
    assert_eq!(s3_key("a/b c.txt"), "a/b+c.txt");
    assert_eq!(s3_key("é&=?"), "%C3%A9%26%3D%3F");
    assert_eq!(s3_key("A-z_0.9~"), "A-z_0.9~");
}

#[test]
fn mqtt_messages_reach_wasm_with_their_topic_and_a_guessed_content_type() {
    let t = target("mqtt", Runtime::Wasm);
    let msg = MqttMessage {
        broker: "mqtt://127.0.0.1:1883",
        topic: "sensors/1/temp",
        qos: 1,
        retain: false,
        payload: br#"{"c":21.5}"#,
    };
    let d = mqtt(&t, &msg, at_ms(NEW_YEAR));
    assert_common(&d.event, &t, 1);
    let ev = &d.event;
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.mqtt.message"));
    assert_eq!(header(ev, "ce-source"), Some("mqtt://127.0.0.1:1883"));
    assert_eq!(header(ev, "ce-subject"), Some("sensors/1/temp"));
    assert!(InvocationId::parse(header(ev, "ce-id").unwrap()).is_some());
    assert_eq!(header(ev, "content-type"), Some("application/json"));
    assert_eq!(ev.body, br#"{"c":21.5}"#);
    assert_eq!(ev.idempotency_key, None);
    let text = MqttMessage {
        payload: b"on",
        ..msg
    };
    assert_eq!(
        header(&mqtt(&t, &text, at_ms(0)).event, "content-type"),
        Some("application/octet-stream")
    );
}

#[test]
fn mqtt_messages_reach_process_functions_as_json() {
    let t = target("mqtt", Runtime::Process);
    let base = MqttMessage {
        broker: "mqtt://127.0.0.1:1883",
        topic: "a/b",
        qos: 1,
        retain: true,
        payload: br#"[1,2]"#,
    };
    let ev: Value = serde_json::from_slice(&mqtt(&t, &base, at_ms(0)).event.body).unwrap();
    assert_eq!(
        ev,
        json!({
            "source": "nubo:mqtt",
            "trigger": "mqtt-work",
            "broker": "mqtt://127.0.0.1:1883",
            "topic": "a/b",
            "qos": 1,
            "retain": true,
            "payload": [1, 2],
            "payloadBase64": "WzEsMl0=",
        })
    );
    let text = MqttMessage {
        payload: b"hi there",
        ..base.clone()
    };
    let ev: Value = serde_json::from_slice(&mqtt(&t, &text, at_ms(0)).event.body).unwrap();
    assert_eq!(ev["payload"], "hi there");
    let binary = MqttMessage {
        payload: &[0xff, 0xfe],
        ..base
    };
    let d = mqtt(&t, &binary, at_ms(0));
    assert_process(&d.event);
    let ev: Value = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(ev["payload"], Value::Null);
    assert_eq!(ev["payloadBase64"], "//4=");
}

#[test]
fn jetstream_messages_carry_their_stream_sequence() {
    let t = target("nats", Runtime::Wasm);
    let msg = NatsMessage {
        server: "nats://127.0.0.1:4222",
        subject: "orders.created",
        stream: Some(("ORDERS", 7)),
        headers: vec![("Content-Type".into(), "text/csv".into())],
        payload: b"a,b",
    };
    let d = nats(&t, &msg, at_ms(NEW_YEAR));
    assert_common(&d.event, &t, 1);
    let ev = &d.event;
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.nats.message"));
    assert_eq!(
        header(ev, "ce-source"),
        Some("nats://127.0.0.1:4222/streams/ORDERS")
    );
    assert_eq!(header(ev, "ce-id"), Some("ORDERS-7"));
    assert_eq!(header(ev, "ce-subject"), Some("orders.created"));
    assert_eq!(header(ev, "content-type"), Some("text/csv"));
    assert_eq!(ev.idempotency_key.as_deref(), Some("nats:ORDERS:7"));
}

#[test]
fn core_nats_messages_have_fresh_ids_and_no_key() {
    let t = target("nats", Runtime::Wasm);
    let msg = NatsMessage {
        server: "nats://127.0.0.1:4222",
        subject: "orders.created",
        stream: None,
        headers: vec![],
        payload: b"{}",
    };
    let d = nats(&t, &msg, at_ms(NEW_YEAR));
    assert_eq!(header(&d.event, "ce-source"), Some("nats://127.0.0.1:4222"));
    assert!(InvocationId::parse(header(&d.event, "ce-id").unwrap()).is_some());
    assert_eq!(header(&d.event, "content-type"), Some("application/json"));
    assert_eq!(d.event.idempotency_key, None);
}

#[test]
fn nats_messages_reach_process_functions_as_json() {
    let t = target("nats", Runtime::Process);
    let msg = NatsMessage {
        server: "nats://127.0.0.1:4222",
        subject: "orders.created",
        stream: Some(("ORDERS", 9)),
        headers: vec![("X-Tag".into(), "a".into()), ("X-Tag".into(), "b".into())],
        payload: b"plain",
    };
    let d = nats(&t, &msg, at_ms(0));
    assert_process(&d.event);
    let ev: Value = serde_json::from_slice(&d.event.body).unwrap();
    assert_eq!(
        ev,
        json!({
            "source": "nubo:nats",
            "trigger": "nats-work",
            "server": "nats://127.0.0.1:4222",
            "subject": "orders.created",
            "stream": "ORDERS",
            "sequence": 9,
            "headers": {"X-Tag": "a,b"},
            "payload": "plain",
            "payloadBase64": "cGxhaW4=",
        })
    );
}

#[test]
fn chains_past_the_hop_limit_are_loops() {
    let t = target("queue", Runtime::Wasm);
    let ok = queue(
        &t,
        "q",
        &[message("a", b"", MAX_TRIGGER_HOPS - 1)],
        at_ms(0),
    );
    assert_eq!(ok.hop, MAX_TRIGGER_HOPS);
    assert!(!ok.loops());
    let looping = queue(&t, "q", &[message("a", b"", MAX_TRIGGER_HOPS)], at_ms(0));
    assert!(looping.loops());
    let o = object(
        &target("object", Runtime::Wasm),
        &object_event(ObjectEventKind::Created, "k", MAX_TRIGGER_HOPS),
    );
    assert!(o.loops());
    let e = loop_error(&t, 17);
    assert!(
        e.contains("16") && e.contains("queue-work") && e.contains("nubo dlq shop"),
        "{e}"
    );
}
