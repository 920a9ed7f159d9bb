//! Control-plane traffic tests against a counting engine: deploy instructions, traffic changes,
//! rollback without compiling, conflicts, failed deploys, restore, and timed rollouts.

use nubo_control::{BundleWriter, Control, DeployError, DeployOptions, EARLY_TRIP_REQUESTS};
use nubo_core::api::v1::{RollbackRequest, RolloutRequest, TrafficUpdate, WeightedRevision};
use nubo_core::engine::{CodeError, Engine, LoadFunction};
use nubo_core::{ErrorCode, FunctionTarget};
use nubo_store::Store;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An engine that "compiles" by copying the code, refuses code starting with `bad`, and keeps
/// the set of loaded (app, revision) pairs so tests can see loads and unloads.
#[derive(Default)]
struct CountingEngine {
    compiles: AtomicUsize,
    loaded: Mutex<BTreeSet<(String, u64)>>,
}

impl Engine for CountingEngine {
    fn artifact_key(&self) -> &str {
        "test-engine-1"
    }

    fn compile(
        &self,
        function: &str,
        _runtime: nubo_core::manifest::Runtime,
        code: &[u8],
    ) -> Result<Vec<u8>, CodeError> {
        if code.starts_with(b"bad") {
            return Err(CodeError {
                function: function.to_string(),
                code: ErrorCode::InvalidComponent,
                message: "not a component".into(),
            });
        }
        self.compiles.fetch_add(1, Ordering::SeqCst);
        Ok(code.to_vec())
    }

    fn load(&self, functions: Vec<LoadFunction>) -> Result<(), CodeError> {
        let mut loaded = self.loaded.lock().unwrap();
        for f in functions {
            let FunctionTarget { app, revision, .. } = f.target;
            loaded.insert((app.to_string(), revision));
        }
        Ok(())
    }

    fn retain(&self, app: &str, keep: &[u64]) {
        self.loaded
            .lock()
            .unwrap()
            .retain(|(a, r)| a != app || keep.contains(r));
    }
}

impl CountingEngine {
    fn compiles(&self) -> usize {
        self.compiles.load(Ordering::SeqCst)
    }

    fn loaded(&self, app: &str) -> Vec<u64> {
        let loaded = self.loaded.lock().unwrap();
        loaded
            .iter()
            .filter(|(a, _)| a == app)
            .map(|(_, r)| *r)
            .collect()
    }
}

fn bundle(app: &str, code: &str, route: &str) -> Vec<u8> {
    let manifest = format!(
        "[app]\nname = \"{app}\"\n[function.api]\nsource = \"api.wasm\"\n[[route]]\npath = \"{route}\"\nfunction = \"api\"\n"
    );
    let mut w = BundleWriter::new();
    w.part("nubo.toml", manifest.as_bytes());
    w.part("function/api", code.as_bytes());
    w.finish()
}

fn split(pairs: &[(u64, u8)]) -> Vec<WeightedRevision> {
    pairs
        .iter()
        .map(|&(revision, weight)| WeightedRevision { revision, weight })
        .collect()
}

fn weights(c: &Control, app: &str) -> Vec<(u64, u8)> {
    c.traffic(app)
        .unwrap()
        .split
        .iter()
        .map(|e| (e.revision, e.weight))
        .collect()
}

async fn deploy(c: &Control, code: &str, traffic: Option<u8>) -> Result<u64, DeployError> {
    let opts = DeployOptions {
        traffic,
        expected_generation: None,
    };
    c.deploy_with(&bundle("shop", code, "/shop/..."), opts)
        .await
        .map(|r| r.revision)
}

#[tokio::test]
async fn canary_traffic_and_rollback_load_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let engine = Arc::new(CountingEngine::default());
    let c = Control::with_retention(store.clone(), engine.clone(), 100);

    let first = deploy(&c, "v1", Some(10)).await.unwrap_err();
    assert_eq!(first.code(), ErrorCode::InvalidTraffic, "{first}");
    assert_eq!(deploy(&c, "v1", None).await.unwrap(), 1);
    assert_eq!(deploy(&c, "v2", Some(10)).await.unwrap(), 2);
    assert_eq!(weights(&c, "shop"), vec![(1, 90), (2, 10)]);
    assert_eq!(deploy(&c, "v3", Some(0)).await.unwrap(), 3);
    assert_eq!(weights(&c, "shop"), vec![(1, 90), (2, 10)]);
    assert_eq!(engine.compiles(), 3);
    assert_eq!(
        engine.loaded("shop"),
        vec![1, 2, 3],
        "no-traffic revision stays loaded"
    );

    // A failed deploy commits nothing and leaves the loaded set alone.
    let bad = deploy(&c, "bad code", None).await.unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidComponent, "{bad}");
    assert_eq!(c.traffic("shop").unwrap().generation, 3);
    assert_eq!(store.revisions("shop").unwrap().len(), 3);

    let state = c
        .set_traffic(
            "shop",
            TrafficUpdate {
                split: split(&[(3, 100)]),
                expected_generation: Some(3),
            },
        )
        .await
        .unwrap();
    assert_eq!(state.generation, 4);
    let stale = c
        .set_traffic(
            "shop",
            TrafficUpdate {
                split: split(&[(1, 100)]),
                expected_generation: Some(3),
            },
        )
        .await
        .unwrap_err();
    match &stale {
        DeployError::Conflict {
            current: 4,
            state: Some(s),
            ..
        } => assert_eq!(s.split[0].revision, 3),
        other => panic!("expected a conflict with the state, got {other:?}"),
    }

    let back = c
        .rollback("shop", RollbackRequest::default())
        .await
        .unwrap();
    assert_eq!(
        back.split[0].revision, 1,
        "the top revision before the last change"
    );
    assert_eq!(engine.compiles(), 3, "rollback compiles nothing");

    // A fresh control plane on the same store serves the same split with no compile.
    let engine2 = Arc::new(CountingEngine::default());
    let c2 = Control::with_retention(store.clone(), engine2.clone(), 100);
    let report = c2.restore().await;
    assert_eq!((report.apps, report.recompiled, report.failed), (1, 0, 0));
    assert_eq!(weights(&c2, "shop"), vec![(1, 100)]);
    assert_eq!(engine2.loaded("shop"), vec![1]);
    // Pinning a retained revision that is not loaded loads it from the cache.
    let slot = c2.app("shop").unwrap();
    let pinned = c2.pinned(&slot, 2).await.unwrap();
    assert_eq!(pinned.revision, 2);
    assert_eq!(engine2.loaded("shop"), vec![1, 2]);
    let gone = c2.pinned(&slot, 9).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::RevisionNotFound, "{gone}");
    // Moving traffic to it needs no compile either.
    c2.set_traffic(
        "shop",
        TrafficUpdate {
            split: split(&[(2, 50), (3, 50)]),
            expected_generation: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(engine2.compiles(), 0);
    assert_eq!(weights(&c2, "shop"), vec![(3, 50), (2, 50)]);
}

#[tokio::test]
async fn a_traffic_change_that_would_clash_with_another_app_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let engine = Arc::new(CountingEngine::default());
    let c = Control::new(store, engine.clone());
    c.deploy(&bundle("shop", "s1", "/shop/...")).await.unwrap();
    // Revision 2 of shop claims /blog/..., staged without traffic.
    c.deploy_with(
        &bundle("shop", "s2", "/blog/..."),
        DeployOptions {
            traffic: Some(0),
            expected_generation: None,
        },
    )
    .await
    .unwrap();
    c.deploy(&bundle("blog", "b1", "/blog/...")).await.unwrap();
    let err = c
        .set_traffic(
            "shop",
            TrafficUpdate {
                split: split(&[(1, 50), (2, 50)]),
                expected_generation: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManifest, "{err}");
    assert!(err.to_string().contains("\"blog\""), "{err}");
    assert_eq!(weights(&c, "shop"), vec![(1, 100)]);
    assert_eq!(c.traffic("shop").unwrap().generation, 2);
    let routes = c.routes();
    assert!(routes.table.lookup("GET", "/blog/x").is_ok());
}

fn rollout_to(to: u64, steps: &[u8], interval_ms: u64) -> RolloutRequest {
    RolloutRequest {
        to,
        steps: steps.to_vec(),
        interval_ms,
        error_ratio: None,
        min_error_rate: None,
        expected_generation: None,
    }
}

/// Counts `requests` answers of `revision` of the shop, `errors` of them failed, as the
/// gateway does for every request.
fn answer(c: &Control, revision: u64, requests: u64, errors: u64) {
    let slot = c.app("shop").unwrap();
    let state = slot.state_full();
    let r = state.loaded(revision).expect("revision is loaded");
    for i in 0..requests {
        r.stats.record(i < errors);
    }
}

/// Drives the app's rollout until it leaves `step` (or `limit` passes).
async fn drive_past(c: &Control, step: usize, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        c.drive_rollouts().await;
        let r = c.rollout("shop").unwrap();
        if r.step != step || r.state != "running" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the rollout stayed at step {step} for {limit:?}");
}

#[tokio::test]
async fn a_rollout_steps_to_completion_across_a_restart_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let engine = Arc::new(CountingEngine::default());
    let c = Control::with_retention(store.clone(), engine.clone(), 100);
    deploy(&c, "v1", None).await.unwrap();
    deploy(&c, "v2", Some(0)).await.unwrap();
    let compiles = engine.compiles();

    let state = c
        .start_rollout("shop", rollout_to(2, &[10, 50, 100], 1_000))
        .await
        .unwrap();
    let r = state.rollout.expect("the state carries the rollout");
    assert_eq!(
        (r.to, r.from, r.step, r.state.as_str()),
        (2, 1, 0, "running")
    );
    assert_eq!(weights(&c, "shop"), vec![(1, 90), (2, 10)]);
    // A second rollout waits for this one.
    let err = c
        .start_rollout("shop", rollout_to(2, &[50, 100], 1_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RolloutInProgress, "{err}");

    answer(&c, 2, 30, 1);
    answer(&c, 1, 200, 0);
    drive_past(&c, 0, std::time::Duration::from_secs(10)).await;
    assert_eq!(weights(&c, "shop"), vec![(2, 50), (1, 50)]);

    // A new server on the same data picks the rollout up at its step.
    drop(c);
    let engine2 = Arc::new(CountingEngine::default());
    let c2 = Control::with_retention(store.clone(), engine2.clone(), 100);
    c2.restore().await;
    let r = c2.rollout("shop").unwrap();
    assert_eq!((r.step, r.state.as_str()), (1, "running"));
    assert_eq!(weights(&c2, "shop"), vec![(2, 50), (1, 50)]);
    drive_past(&c2, 1, std::time::Duration::from_secs(10)).await;
    let r = c2.rollout("shop").unwrap();
    assert_eq!((r.step, r.state.as_str()), (2, "completed"));
    assert!(r.ended_at.is_some());
    assert_eq!(weights(&c2, "shop"), vec![(2, 100)]);
    assert_eq!(engine.compiles() + engine2.compiles(), compiles);
}

#[tokio::test]
async fn a_failing_revision_is_rolled_back_before_its_step_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let engine = Arc::new(CountingEngine::default());
    let c = Control::with_retention(store, engine, 100);
    deploy(&c, "v1", None).await.unwrap();
    deploy(&c, "v2", Some(0)).await.unwrap();
    // A step of an hour: only the error rate can end it within the test.
    c.start_rollout("shop", rollout_to(2, &[10, 50, 100], 3_600_000))
        .await
        .unwrap();
    answer(&c, 1, 100, 1);
    answer(&c, 2, EARLY_TRIP_REQUESTS - 1, 5);
    c.drive_rollouts().await;
    assert_eq!(
        c.rollout("shop").unwrap().state,
        "running",
        "too few requests yet"
    );
    answer(&c, 2, 1, 1);
    c.drive_rollouts().await;
    let r = c.rollout("shop").unwrap();
    assert_eq!(r.state, "rolled_back");
    let why = r.reason.unwrap();
    assert!(
        why.contains("revision 2 failed 6 of 20 requests (30.0%)"),
        "{why}"
    );
    assert_eq!(weights(&c, "shop"), vec![(1, 100)]);
}

#[tokio::test]
async fn a_change_by_hand_or_an_abort_ends_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let engine = Arc::new(CountingEngine::default());
    let c = Control::with_retention(store, engine, 100);
    deploy(&c, "v1", None).await.unwrap();
    deploy(&c, "v2", Some(0)).await.unwrap();
    let none = c.rollout("shop").unwrap_err();
    assert_eq!(none.code(), ErrorCode::RolloutNotFound, "{none}");

    c.start_rollout("shop", rollout_to(2, &[10, 100], 3_600_000))
        .await
        .unwrap();
    c.set_traffic(
        "shop",
        TrafficUpdate {
            split: split(&[(1, 70), (2, 30)]),
            expected_generation: None,
        },
    )
    .await
    .unwrap();
    let r = c.rollout("shop").unwrap();
    assert_eq!(r.state, "aborted");
    assert_eq!(r.reason.as_deref(), Some("the traffic was changed by hand"));
    assert_eq!(weights(&c, "shop"), vec![(1, 70), (2, 30)]);
    let err = c.abort_rollout("shop").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RolloutNotFound, "{err}");

    // From the revision with the most traffic; the others drop out.
    c.start_rollout("shop", rollout_to(2, &[40, 100], 3_600_000))
        .await
        .unwrap();
    assert_eq!(weights(&c, "shop"), vec![(1, 60), (2, 40)]);
    let state = c.abort_rollout("shop").await.unwrap();
    assert_eq!(state.rollout.unwrap().state, "aborted");
    assert_eq!(weights(&c, "shop"), vec![(1, 100)]);

    let bad = c
        .start_rollout("shop", rollout_to(1, &[10, 100], 60_000))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidTraffic, "{bad}");
    assert!(
        bad.to_string().contains("already takes all traffic"),
        "{bad}"
    );
}
