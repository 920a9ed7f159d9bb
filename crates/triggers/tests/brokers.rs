//! MQTT and NATS triggers against the brokers on loopback (Mosquitto on 1883, NATS with
//! JetStream on 4222). Each test returns early, saying so, when its broker is not running.

mod common;

use common::{Harness, header, manifest, port_open};
use std::time::Duration;

/// A name no other run of these tests uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

async fn wait_state(h: &Harness, state: &str) {
    for _ in 0..200 {
        let s = h.triggers.status("shop").await;
        if s.first().is_some_and(|s| s.state == state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the trigger never got {state:?}: {:?}",
        h.triggers.status("shop").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_are_delivered_and_acknowledged() {
    if !port_open(1883) {
        eprintln!("skipped: no MQTT broker on 127.0.0.1:1883");
        return;
    }
    let h = Harness::new();
    let topic = unique("nubo-test/");
    h.apply(
        1,
        manifest(&format!(
            "[[trigger.mqtt]]\nfunction = \"work\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [\"{topic}/#\"]\nclient_id = \"{}\"\n",
            unique("nubo-test-")
        )),
    )
    .await;
    wait_state(&h, "running").await;
    // The subscription goes out right after CONNACK; give the broker a moment to take it,
    // then publish until the first message arrives (bounded).
    let mut opts = rumqttc::MqttOptions::new(unique("pub-"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 16);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let mut events = Vec::new();
    for _ in 0..40 {
        client
            .publish(
                format!("{topic}/temp"),
                rumqttc::QoS::AtLeastOnce,
                false,
                br#"{"c":21}"#.to_vec(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        events = h.sink.events();
        if !events.is_empty() {
            break;
        }
    }
    assert!(!events.is_empty(), "no MQTT delivery arrived");
    // A message whose delivery is refused is not acknowledged: after the reconnect the
    // broker sends it again, and it is delivered.
    h.sink.refuse.store(1, std::sync::atomic::Ordering::SeqCst);
    client
        .publish(
            format!("{topic}/again"),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"second".to_vec(),
        )
        .await
        .unwrap();
    let mut redelivered = false;
    for _ in 0..400 {
        if h.sink.events().iter().any(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.body).unwrap()["payload"] == "second"
        }) {
            redelivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pump.abort();
    assert!(redelivered, "the refused message was not sent again");
    assert_eq!(h.sink.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    let ev = &events[0];
    assert_eq!(header(ev, "nubo-trigger"), Some("mqtt"));
    let body: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(body["source"], "nubo:mqtt");
    assert_eq!(body["topic"], format!("{topic}/temp"));
    assert_eq!(body["qos"], 1);
    assert_eq!(body["payload"], serde_json::json!({"c": 21}));
    h.wait_fires(1).await;
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_password_secret_that_is_missing_is_reported() {
    if !port_open(1883) {
        eprintln!("skipped: no MQTT broker on 127.0.0.1:1883");
        return;
    }
    let h = Harness::new();
    h.store
        .secrets_with_key(Some(&"ab".repeat(32)))
        .expect("secrets open");
    h.apply(
        1,
        manifest(
            "[[trigger.mqtt]]\nfunction = \"work\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [\"x/#\"]\nusername = \"u\"\npassword = { secret = \"mqtt_pw\" }\n",
        ),
    )
    .await;
    for _ in 0..200 {
        let s = h.triggers.status("shop").await;
        if let Some(e) = s[0].last_error.as_deref() {
            assert!(e.contains("nubo secrets set shop mqtt_pw"), "{e}");
            assert_eq!(s[0].state, "failed");
            h.triggers.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the missing secret was not reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_messages_are_delivered() {
    if !port_open(4222) {
        eprintln!("skipped: no NATS server on 127.0.0.1:4222");
        return;
    }
    let h = Harness::new();
    let subject = unique("nubo.test.");
    h.apply(
        1,
        manifest(&format!(
            "[[trigger.nats]]\nfunction = \"hook\"\nsubject = \"{subject}.>\"\n"
        )),
    )
    .await;
    wait_state(&h, "running").await;
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let mut events = Vec::new();
    for _ in 0..40 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "text/plain");
        client
            .publish_with_headers(format!("{subject}.a"), headers, "hi".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        events = h.sink.events();
        if !events.is_empty() {
            break;
        }
    }
    assert!(!events.is_empty(), "no NATS delivery arrived");
    let ev = &events[0];
    assert_eq!(header(ev, "ce-type"), Some("dev.nubo.nats.message"));
    assert_eq!(
        header(ev, "ce-subject"),
        Some(format!("{subject}.a").as_str())
    );
    assert_eq!(header(ev, "content-type"), Some("text/plain"));
    assert_eq!(ev.body, b"hi");
    assert_eq!(ev.idempotency_key, None);
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_are_delivered_with_keys_and_acked() {
    if !port_open(4222) {
        eprintln!("skipped: no NATS server on 127.0.0.1:4222");
        return;
    }
    let h = Harness::new();
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = unique("NUBO_TEST_").to_uppercase();
    let subject = format!("{}.orders", stream.to_lowercase());
    if let Err(e) = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
    {
        eprintln!("skipped: the NATS server has no JetStream ({e})");
        return;
    }
    // Published before the trigger exists: a durable consumer reads the stream from the start.
    js.publish(format!("{subject}.new"), r#"{"id":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    h.apply(
        1,
        manifest(&format!(
            "[[trigger.nats]]\nfunction = \"work\"\nsubject = \"{subject}.>\"\nstream = \"{stream}\"\n"
        )),
    )
    .await;
    let events = h.wait_events(1).await;
    let ev = &events[0];
    assert_eq!(
        ev.idempotency_key.as_deref(),
        Some(format!("nats:{stream}:1").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(body["stream"], stream.as_str());
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["payload"], serde_json::json!({"id": 1}));
    // Acknowledged: the consumer has nothing pending or waiting for an ack.
    let mut acked = false;
    for _ in 0..100 {
        let mut c: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("nubo-shop-nats-work", stream.clone())
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(acked, "the JetStream message was not acknowledged");
    h.triggers.shutdown().await;
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_jetstream_stream_is_reported_with_the_fix() {
    if !port_open(4222) {
        eprintln!("skipped: no NATS server on 127.0.0.1:4222");
        return;
    }
    let h = Harness::new();
    let stream = unique("NUBO_MISSING_").to_uppercase();
    h.apply(
        1,
        manifest(&format!(
            "[[trigger.nats]]\nfunction = \"work\"\nsubject = \"x.>\"\nstream = \"{stream}\"\n"
        )),
    )
    .await;
    for _ in 0..200 {
        let s = h.triggers.status("shop").await;
        if let Some(e) = s[0].last_error.as_deref() {
            assert!(
                e.contains(&format!("JetStream stream {stream} does not exist"))
                    && e.contains("nats stream add"),
                "{e}"
            );
            h.triggers.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the missing stream was not reported");
}
