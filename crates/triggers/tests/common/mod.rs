//! A store in a temporary directory and a sink that records what it is given.

#![allow(dead_code, reason = "each test file uses its own part of the helpers")]

use nubo_core::manifest::{Manifest, parse};
use nubo_store::{Accepted, NewEvent, Store, SubmitError};
use nubo_triggers::{AppTriggers, Sink, Triggers};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records submitted events; refuses the first `refuse` submissions with `Busy`, and answers
/// a repeated idempotency key as a replay like the real writer.
#[derive(Default)]
pub struct FakeSink {
    pub events: Mutex<Vec<NewEvent>>,
    pub refuse: AtomicU32,
    pub refused: AtomicU32,
}

impl FakeSink {
    pub fn events(&self) -> Vec<NewEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl Sink for FakeSink {
    fn submit(
        &self,
        event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = Result<Accepted, SubmitError>> + Send + '_>> {
        Box::pin(async move {
            if self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(SubmitError::Busy);
            }
            let mut events = self.events.lock().unwrap();
            if let Some(key) = &event.idempotency_key
                && let Some(before) = events
                    .iter()
                    .find(|e| e.idempotency_key.as_ref() == Some(key))
            {
                return Ok(Accepted {
                    id: before.id.clone(),
                    replay: true,
                });
            }
            let id = event.id.clone();
            events.push(event);
            Ok(Accepted { id, replay: false })
        })
    }
}

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub sink: Arc<FakeSink>,
    pub triggers: Triggers,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let sink = Arc::new(FakeSink::default());
        let triggers = Triggers::start(store.clone(), sink.clone());
        Harness {
            _dir: dir,
            store,
            sink,
            triggers,
        }
    }

    pub async fn apply(&self, revision: u64, manifest: Manifest) {
        self.triggers
            .apply(
                &manifest.app.clone(),
                Some(AppTriggers {
                    revision,
                    manifest: Arc::new(manifest),
                }),
            )
            .await;
    }

    /// Waits (at most 20 s) until the sink holds `n` events; returns them.
    pub async fn wait_events(&self, n: usize) -> Vec<NewEvent> {
        for _ in 0..400 {
            let events = self.sink.events();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {n} deliveries, got {}: {:?}",
            self.sink.events().len(),
            self.sink.events()
        );
    }
}

impl Harness {
    /// Waits (at most 20 s) until the app's first trigger has counted `n` fires; returns its
    /// status. A fire is counted just after the sink stores it, so the count can trail
    /// [`Harness::wait_events`].
    pub async fn wait_fires(&self, n: u64) -> Vec<nubo_triggers::TriggerStatus> {
        for _ in 0..400 {
            let status = self.triggers.status("shop").await;
            if status.first().is_some_and(|s| s.fires >= n) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {n} fires: {:?}",
            self.triggers.status("shop").await
        );
    }
}

/// A manifest of app `shop` with a process function `work`, a wasm function `hook`, and
/// `triggers`.
pub fn manifest(triggers: &str) -> Manifest {
    parse(&format!(
        "[app]\nname = \"shop\"\n\n[function.work]\nruntime = \"process\"\nsource = \"w/\"\n\n\
         [function.hook]\nsource = \"h.wasm\"\n\n{triggers}"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn header<'a>(ev: &'a NewEvent, name: &str) -> Option<&'a str> {
    ev.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

/// Whether something listens on 127.0.0.1:`port` (the brokers CI starts).
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}
