//! Queue, object and cron triggers against a real store, delivering into a recording sink.

mod common;

use common::{Harness, header, manifest};
use nubo_store::objects::PutOptions;
use nubo_store::{EventState, NewMessage};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn publish(h: &Harness, queue: &str, bodies: &[&str], hop: u32) {
    let msgs = bodies
        .iter()
        .map(|b| NewMessage {
            body: b.as_bytes().to_vec(),
            content_type: Some("text/plain".into()),
            hop,
        })
        .collect();
    h.store.queues().publish(queue, msgs).unwrap();
}

fn held(h: &Harness, queue: &str) -> u64 {
    h.store.queues().info(queue).unwrap().unwrap().messages
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_messages_are_delivered_as_one_sqs_batch_then_removed() {
    let h = Harness::new();
    h.store.queues().create("orders").unwrap();
    publish(&h, "orders", &["a", "b", "c"], 0);
    h.apply(
        1,
        manifest(
            "[[trigger.queue]]\nfunction = \"work\"\nqueue = \"orders\"\nbatch_size = 10\nbatch_window = \"200ms\"\n",
        ),
    )
    .await;
    let events = h.wait_events(1).await;
    let ev = &events[0];
    assert_eq!(header(ev, "nubo-trigger"), Some("queue"));
    assert_eq!(header(ev, "nubo-trigger-name"), Some("queue-work"));
    assert_eq!(header(ev, "nubo-hop"), Some("1"));
    let sqs: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_slice(&ev.body).unwrap();
    let bodies: Vec<&str> = sqs
        .records
        .iter()
        .map(|r| r.body.as_deref().unwrap())
        .collect();
    assert_eq!(bodies, ["a", "b", "c"]);
    wait_until("the batch to be removed from the queue", || {
        held(&h, "orders") == 0
    })
    .await;

    let status = h.triggers.status("shop").await;
    assert_eq!(status.len(), 1);
    let s = &status[0];
    assert_eq!((s.kind.as_str(), s.state.as_str()), ("queue", "running"));
    assert_eq!(s.source, "queue orders");
    assert_eq!(s.revision, 1);
    assert_eq!(s.fires, 1);
    assert_eq!(s.backlog, Some(0));
    assert!(s.last_fire.is_some());

    // Removed: the trigger stops before apply returns, and takes nothing afterwards.
    h.triggers.apply("shop", None).await;
    assert!(h.triggers.status("shop").await.is_empty());
    publish(&h, "orders", &["late"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.sink.events().len(), 1);
    assert_eq!(held(&h, "orders"), 1);
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_functions_get_one_cloud_event_per_message() {
    let h = Harness::new();
    h.store.queues().create("jobs").unwrap();
    publish(&h, "jobs", &["one", "two"], 2);
    h.apply(
        1,
        manifest("[[trigger.queue]]\nfunction = \"hook\"\nqueue = \"jobs\"\n"),
    )
    .await;
    let events = h.wait_events(2).await;
    let bodies: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
    assert_eq!(bodies, [b"one".as_slice(), b"two".as_slice()]);
    assert_eq!(
        header(&events[0], "ce-type"),
        Some("dev.nubo.queue.message")
    );
    assert_eq!(header(&events[0], "content-type"), Some("text/plain"));
    assert_eq!(header(&events[0], "nubo-hop"), Some("3"));
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_chain_is_dead_lettered_instead_of_delivered() {
    let h = Harness::new();
    h.store.queues().create("loop").unwrap();
    publish(&h, "loop", &["again"], nubo_core::limits::MAX_TRIGGER_HOPS);
    h.apply(
        1,
        manifest("[[trigger.queue]]\nfunction = \"hook\"\nqueue = \"loop\"\n"),
    )
    .await;
    wait_until("the message to leave the queue", || held(&h, "loop") == 0).await;
    assert!(h.sink.events().is_empty(), "a loop must not be submitted");
    let dead = h
        .store
        .events("shop", Some("hook"), Some(EventState::Failed), 10)
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"again");
    let error = dead[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("16"), "{error}");
    let status = h.triggers.status("shop").await;
    assert_eq!(status[0].loops_stopped, 1);
    assert_eq!(status[0].fires, 0);
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_stays_in_the_queue_and_is_delivered_later() {
    let h = Harness::new();
    h.sink.refuse.store(2, Ordering::SeqCst);
    h.store.queues().create("orders").unwrap();
    publish(&h, "orders", &["x"], 0);
    h.apply(
        1,
        manifest("[[trigger.queue]]\nfunction = \"hook\"\nqueue = \"orders\"\n"),
    )
    .await;
    let events = h.wait_events(1).await;
    assert_eq!(events[0].body, b"x");
    assert_eq!(h.sink.refused.load(Ordering::SeqCst), 2);
    wait_until("the message to be removed", || held(&h, "orders") == 0).await;
    let status = h.triggers.status("shop").await;
    assert_eq!(status[0].errors, 2);
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("stays in the queue")
    );
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_changes_reach_matching_triggers_and_the_outbox_is_acked() {
    let h = Harness::new();
    let objects = h.store.objects();
    objects.create_bucket("uploads").unwrap();
    h.apply(
        1,
        manifest(
            "[[trigger.object]]\nfunction = \"hook\"\nbucket = \"uploads\"\nprefix = \"images/\"\nevents = [\"created\", \"deleted\"]\n\
             [[trigger.object]]\nfunction = \"work\"\nbucket = \"uploads\"\nsuffix = \".txt\"\n",
        ),
    )
    .await;
    let put = |key: &str| {
        objects
            .put(
                "uploads",
                key,
                &mut &b"hello"[..],
                PutOptions {
                    content_type: Some("text/plain".into()),
                    ..PutOptions::default()
                },
            )
            .unwrap();
    };
    put("images/a.png");
    put("docs/readme.txt");
    put("other/skip.bin");
    objects.delete("uploads", "images/a.png").unwrap();
    let events = h.wait_events(3).await;
    let summary: Vec<(String, Option<&str>)> = events
        .iter()
        .map(|e| (e.function.clone(), header(e, "ce-type")))
        .collect();
    assert_eq!(
        summary,
        [
            ("hook".to_string(), Some("dev.nubo.object.created")),
            ("work".to_string(), None),
            ("hook".to_string(), Some("dev.nubo.object.deleted")),
        ]
    );
    let s3: aws_lambda_events::event::s3::S3Event =
        serde_json::from_slice(&events[1].body).unwrap();
    assert_eq!(
        s3.records[0].s3.object.key.as_deref(),
        Some("docs/readme.txt")
    );
    wait_until("the outbox to be acknowledged", || {
        objects.object_events(10).unwrap().is_empty()
    })
    .await;

    // Without object triggers the bucket is not watched any more.
    h.apply(2, manifest("")).await;
    put("images/b.png");
    assert!(objects.object_events(10).unwrap().is_empty());
    h.triggers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_each_tick_once_and_records_it() {
    let h = Harness::new();
    h.apply(
        1,
        manifest(
            "[[trigger.cron]]\nname = \"beat\"\nfunction = \"hook\"\nschedule = \"@every 1s\"\n",
        ),
    )
    .await;
    let events = h.wait_events(2).await;
    let ids: Vec<&str> = events.iter().map(|e| header(e, "ce-id").unwrap()).collect();
    assert_ne!(ids[0], ids[1]);
    for e in &events {
        assert!(
            e.idempotency_key
                .as_deref()
                .unwrap()
                .starts_with("cron:beat:")
        );
        assert_eq!(header(e, "ce-type"), Some("dev.nubo.cron.tick"));
    }
    let status = h.wait_fires(2).await;
    assert_eq!(status[0].source, "@every 1s (UTC)");
    assert!(status[0].next_fire.is_some());
    // The stored last tick is one that fired.
    h.triggers.shutdown().await;
    let last = h.store.cron_last_tick("shop", "beat").unwrap().unwrap();
    let last_ms = last
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let fired: Vec<String> = h
        .sink
        .events()
        .iter()
        .map(|e| header(e, "ce-id").unwrap().to_string())
        .collect();
    assert!(
        fired.contains(&format!("beat-{last_ms}")),
        "{fired:?} {last_ms}"
    );

    // A restarted trigger does not fire the ticks it already handled.
    let n = h.sink.events().len();
    let again = nubo_triggers::Triggers::start(h.store.clone(), h.sink.clone());
    again
        .apply(
            "shop",
            Some(nubo_triggers::AppTriggers {
                revision: 1,
                manifest: std::sync::Arc::new(manifest(
                    "[[trigger.cron]]\nname = \"beat\"\nfunction = \"hook\"\nschedule = \"@every 1s\"\n",
                )),
            }),
        )
        .await;
    let events = h.wait_events(n + 1).await;
    let ids: std::collections::BTreeSet<&str> =
        events.iter().map(|e| header(e, "ce-id").unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "a tick fired twice");
    again.shutdown().await;
}
