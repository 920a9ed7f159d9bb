//! The control plane: what is deployed. It validates deploys, stores code and revisions, drives
//! the engine to compile and load code, keeps each app's traffic split over its loaded
//! revisions, and compiles the route tables that the gateway reads on every request.
//!
//! Invariants:
//! - A deploy either fully succeeds or changes nothing that serves traffic: code is checked,
//!   compiled and loaded, and routes are checked against every other app, before the revision
//!   is committed (with its traffic split and generation) and the live state swapped (atomic
//!   pointer stores). A revision whose code failed is never committed, so never selectable.
//! - Deploys and traffic changes of one app are serialized (linearizable per app); the final
//!   commit-and-swap step is serialized across apps, because the route table is shared.
//! - A revision that loses its traffic stays loaded for [`STAGED_TTL`] after its last use, so
//!   a request that chose it just before a change still finds its code.
//! - A rollout's step and the split it puts in force commit together; anything else that changes
//!   the split (a traffic change, a rollback, a deploy taking traffic, removal) ends a running
//!   rollout in the same transaction. Rollout moves go through the same per-app lock.
//! - This crate knows nothing of wasmtime: it talks to code through [`nubo_core::engine::Engine`].

mod bundle;
mod deploy;
mod live;
mod rollout;
mod stats;
mod traffic;

pub use bundle::{
    Bundle, BundleError, BundleWriter, FUNCTION_PART_PREFIX, MAGIC as BUNDLE_MAGIC, MANIFEST_PART,
};
pub use deploy::{DeployError, DeployOptions, route_infos};
pub use live::{AppState, LiveApp, LiveRevision, RouteTarget, Routes};
/// The key-value stores, for the gateway's admin endpoints (reached through [`Control::store`]).
pub use nubo_store::kv;
/// The object storage buckets, for the gateway's admin and S3 endpoints (reached through
/// [`Control::store`]).
pub use nubo_store::objects;
/// The apps' secrets, for the gateway's admin endpoints (reached through [`Control::store`]).
pub use nubo_store::secrets;
/// Durable async invocations are stored by the store; the gateway accepts and delivers them
/// through these (it does not depend on the store itself).
pub use nubo_store::{
    Accepted, Attempt, AttemptResult, Event, EventState, EventWriter, MAX_FINISHED_EVENTS,
    NewEvent, Next, SubmitError,
};
/// The durable queues, for the gateway's admin endpoints and queue destinations (reached
/// through [`Control::store`]).
pub use nubo_store::{MAX_MESSAGE_BYTES, NewMessage, QueueError, QueueInfo, Queues};
pub use rollout::{
    DEFAULT_ERROR_RATIO, DEFAULT_MIN_ERROR_RATE, EARLY_TRIP_REQUESTS, MAX_INTERVAL, MIN_INTERVAL,
};
pub use stats::{BUCKET_SECS, BUCKETS, RequestWindow};
pub use traffic::STAGED_TTL;

use arc_swap::ArcSwap;
use deploy::join_err;
use nubo_core::FunctionTarget;
use nubo_core::engine::Engine;
use nubo_core::manifest::Manifest;
use nubo_store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many revisions of an app are kept by default (`--keep-revisions`); older ones without
/// traffic are pruned after each deploy.
pub const DEFAULT_KEEP_REVISIONS: usize = 100;

/// The control plane of one node.
pub struct Control {
    store: Arc<Store>,
    engine: Arc<dyn Engine>,
    routes: ArcSwap<Routes>,
    apps: ArcSwap<BTreeMap<String, Arc<LiveApp>>>,
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    commit_lock: tokio::sync::Mutex<()>,
    keep_revisions: usize,
    /// Each app's running rollout, or the last one that ended (see [`rollout`]).
    rollouts: Mutex<HashMap<String, rollout::Run>>,
    /// Bumped after every change of what serves (see [`Control::subscribe_changes`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("apps", &self.apps.load().len())
            .field("keep_revisions", &self.keep_revisions)
            .finish()
    }
}

/// What [`Control::restore`] did at startup.
#[derive(Debug, Clone, Copy)]
pub struct RestoreReport {
    /// Apps serving again.
    pub apps: usize,
    /// Functions loaded (over every revision that takes traffic).
    pub functions: usize,
    /// Functions whose compiled artifact was missing and had to be compiled again.
    pub recompiled: usize,
    /// Apps that could not be loaded (logged with the reason).
    pub failed: usize,
    /// Wall time taken.
    pub elapsed: Duration,
}

impl Control {
    /// A control plane with nothing loaded yet, keeping [`DEFAULT_KEEP_REVISIONS`] revisions
    /// per app; call [`Control::restore`] next.
    pub fn new(store: Arc<Store>, engine: Arc<dyn Engine>) -> Self {
        Self::with_retention(store, engine, DEFAULT_KEEP_REVISIONS)
    }

    /// A control plane that keeps the `keep_revisions` newest revisions of each app (at least
    /// 1; revisions with traffic are always kept).
    pub fn with_retention(
        store: Arc<Store>,
        engine: Arc<dyn Engine>,
        keep_revisions: usize,
    ) -> Self {
        Control {
            store,
            engine,
            routes: ArcSwap::from_pointee(Routes::default()),
            apps: ArcSwap::from_pointee(BTreeMap::new()),
            app_locks: Mutex::new(HashMap::new()),
            commit_lock: tokio::sync::Mutex::new(()),
            keep_revisions: keep_revisions.max(1),
            rollouts: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver whose value is bumped after every change of what serves: a restore, deploy,
    /// removal, traffic change, rollback, rollout step or abort. Whoever follows the apps'
    /// serving revisions (the triggers) reads [`Control::apps`] again when it changes; a burst
    /// of changes may be seen as one.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells the subscribers that what serves changed.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The global route table (finds a request's app). Lock-free; the snapshot stays valid
    /// while held.
    pub fn routes(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.routes.load()
    }

    /// The live app named `name`.
    pub fn app(&self, name: &str) -> Option<Arc<LiveApp>> {
        self.apps.load().get(name).cloned()
    }

    /// Every live app, by name.
    pub fn apps(&self) -> Vec<Arc<LiveApp>> {
        self.apps.load().values().cloned().collect()
    }

    /// The store (for records and logs queries).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The target for `app/function` in the app's highest-weight revision.
    pub fn target(
        &self,
        app: &str,
        function: &str,
    ) -> Result<(FunctionTarget, Arc<LiveRevision>), DeployError> {
        let live = self
            .app(app)
            .and_then(|a| a.state().primary().cloned())
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        let target = live
            .target(function)
            .ok_or_else(|| DeployError::FunctionNotFound {
                app: app.to_string(),
                function: function.to_string(),
                known: live.manifest.functions.keys().cloned().collect(),
            })?;
        Ok((target, live))
    }

    /// Loads every revision that takes traffic, for every app, from the store: from the
    /// compiled-artifact cache when it is there, compiling again only when it is not. An app
    /// any of whose weighted revisions fails to load is logged and skipped, so one broken app
    /// cannot keep the others down.
    pub async fn restore(&self) -> RestoreReport {
        let start = Instant::now();
        let mut report = RestoreReport {
            apps: 0,
            functions: 0,
            recompiled: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        };
        let store = self.store.clone();
        let splits = match tokio::task::spawn_blocking(move || store.all_traffic()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read deployed apps from the store");
                return report;
            }
            Err(e) => {
                tracing::error!(error = %e, "restore task failed");
                return report;
            }
        };
        let mut apps = BTreeMap::new();
        for split in splits {
            let name = split.app.clone();
            match self.restore_app(&split).await {
                Ok((state, functions, recompiled)) => {
                    report.apps += 1;
                    report.functions += functions;
                    report.recompiled += recompiled;
                    apps.insert(
                        name.clone(),
                        Arc::new(LiveApp::new(name.as_str().into(), state)),
                    );
                }
                Err(e) => {
                    report.failed += 1;
                    self.engine.retain(&name, &[]);
                    tracing::error!(app = %name, error = %e, "cannot load app; it will not serve until redeployed");
                }
            }
        }
        match global_routes(&apps, None) {
            Ok(routes) => {
                self.routes.store(Arc::new(routes));
                self.apps.store(Arc::new(apps));
            }
            Err(e) => {
                tracing::error!(error = %e, "stored apps have conflicting routes; serving none");
            }
        }
        self.resume_rollouts().await;
        self.changed();
        report.elapsed = start.elapsed();
        report
    }

    async fn restore_app(
        &self,
        split: &nubo_store::TrafficSplit,
    ) -> Result<(AppState, usize, usize), DeployError> {
        let mut weighted = Vec::new();
        let (mut functions, mut recompiled) = (0, 0);
        for w in &split.split {
            let store = self.store.clone();
            let (app, n) = (split.app.clone(), w.revision);
            let rec = tokio::task::spawn_blocking(move || store.revision(&app, n))
                .await
                .map_err(join_err)??
                .ok_or_else(|| DeployError::RevisionNotFound {
                    app: split.app.clone(),
                    revision: n,
                })?;
            let (live, r) = self.load_revision(rec).await?;
            functions += live.manifest.functions.len();
            recompiled += r;
            weighted.push((Arc::new(live), w.weight));
        }
        Ok((
            AppState::new(split.generation, weighted, BTreeMap::new()),
            functions,
            recompiled,
        ))
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.app_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app.to_string()).or_default().clone()
    }

    /// Checks that `app` serving `weighted` would not clash with any other app's routes.
    fn check_global_routes(
        &self,
        app: &str,
        weighted: &[(Arc<LiveRevision>, u8)],
    ) -> Result<(), DeployError> {
        let apps = self.apps.load();
        let revs: Vec<Arc<LiveRevision>> = weighted.iter().map(|(r, _)| r.clone()).collect();
        let mut with = (**apps).clone();
        if !with.contains_key(app) {
            // A first deploy: a stand-in slot, only for the check.
            let state = AppState::new(0, weighted.to_vec(), BTreeMap::new());
            with.insert(app.to_string(), Arc::new(LiveApp::new(app.into(), state)));
        }
        global_routes(&with, Some((app, &revs)))?;
        Ok(())
    }

    /// The commit step of every change of an app (caller holds the app's lock): under the
    /// commit lock, checks the global routes with `slot` serving `weighted`, runs `commit` (the
    /// durable store write), builds the new state from its result, and publishes the state,
    /// the app map and the route table (each one pointer store).
    async fn commit_and_publish<T: Send + 'static>(
        &self,
        slot: &Arc<LiveApp>,
        weighted: &[(Arc<LiveRevision>, u8)],
        commit: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
        state: impl FnOnce(&T) -> Result<AppState, DeployError>,
    ) -> Result<T, DeployError> {
        let _commit = self.commit_lock.lock().await;
        let mut apps = (**self.apps.load()).clone();
        apps.insert(slot.name.to_string(), slot.clone());
        let revs: Vec<Arc<LiveRevision>> = weighted.iter().map(|(r, _)| r.clone()).collect();
        let routes = global_routes(&apps, Some((&slot.name, &revs)))?;
        let out = tokio::task::spawn_blocking(commit)
            .await
            .map_err(join_err)??;
        let next = state(&out)?;
        // The commit is durable: publish. The new state first, so a request that found the
        // app through the old table already sees the new split.
        slot.set_state(next);
        self.apps.store(Arc::new(apps));
        self.routes.store(Arc::new(routes));
        self.changed();
        Ok(out)
    }

    /// A conflict error carrying the app's current traffic state.
    fn conflict(&self, app: &str, expected: u64, current: u64) -> DeployError {
        self.fill_conflict(DeployError::Conflict {
            app: app.to_string(),
            expected,
            current,
            state: None,
        })
    }

    /// Fills the current state into a conflict error (the 409 body needs it).
    fn fill_conflict(&self, e: DeployError) -> DeployError {
        match e {
            DeployError::Conflict {
                app,
                expected,
                current,
                state: None,
            } => {
                let state = self
                    .app(&app)
                    .map(|slot| Box::new(self.traffic_state_of(&slot)));
                let state = state.unwrap_or_else(|| {
                    Box::new(nubo_core::api::v1::TrafficState {
                        app: app.clone(),
                        generation: current,
                        split: Vec::new(),
                        rollout: None,
                    })
                });
                DeployError::Conflict {
                    app,
                    expected,
                    current,
                    state: Some(state),
                }
            }
            other => other,
        }
    }

    /// Prunes revisions beyond the retention of `slot`'s app (caller holds the app's lock).
    /// Failure is logged, not returned: the change it follows is already committed.
    async fn prune(&self, slot: &Arc<LiveApp>) {
        let store = self.store.clone();
        let app = slot.name.to_string();
        let keep = self.keep_revisions;
        let pruned =
            match tokio::task::spawn_blocking(move || store.prune_revisions(&app, keep)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(app = %slot.name, error = %e, "cannot prune old revisions");
                    return;
                }
                Err(e) => {
                    tracing::warn!(app = %slot.name, error = %e, "prune task failed");
                    return;
                }
            };
        if pruned.is_empty() {
            return;
        }
        tracing::info!(app = %slot.name, pruned = ?pruned, "pruned old revisions");
        let s = slot.state_full();
        if pruned.iter().any(|n| s.staged.contains_key(n)) {
            let mut staged = s.staged.clone();
            staged.retain(|n, _| !pruned.contains(n));
            slot.set_state(AppState::new(s.generation, s.split.clone(), staged));
        }
    }

    /// Unloads staged revisions idle longer than [`STAGED_TTL`] and tells the engine to keep
    /// only what is loaded (caller holds the app's lock).
    fn tidy(&self, slot: &LiveApp) {
        let s = slot.state_full();
        let expired: Vec<u64> = s
            .staged
            .values()
            .filter(|r| r.idle_secs() > STAGED_TTL.as_secs())
            .map(|r| r.revision)
            .collect();
        let state = if expired.is_empty() {
            s
        } else {
            let mut staged = s.staged.clone();
            staged.retain(|n, _| !expired.contains(n));
            slot.set_state(AppState::new(s.generation, s.split.clone(), staged));
            slot.state_full()
        };
        self.engine.retain(&slot.name, &state.loaded_numbers());
    }
}

/// Compiles the global route table of `apps`, with `replace` (an app and the revisions it
/// will serve) standing in for that app's current split.
pub(crate) fn global_routes(
    apps: &BTreeMap<String, Arc<LiveApp>>,
    replace: Option<(&str, &[Arc<LiveRevision>])>,
) -> Result<Routes, nubo_core::RouteError> {
    let states: Vec<(Arc<LiveApp>, Arc<AppState>)> =
        apps.values().map(|a| (a.clone(), a.state_full())).collect();
    let entries = states.iter().map(|(a, s)| {
        let manifests: Vec<&Manifest> = match replace {
            Some((name, revs)) if *a.name == *name => revs.iter().map(|r| &r.manifest).collect(),
            _ => s.split.iter().map(|(r, _)| &r.manifest).collect(),
        };
        (a.clone(), manifests)
    });
    live::compile_global(entries)
}

/// Record and log queries, forwarded to the store so the gateway needs no storage types.
impl Control {
    /// Recent invocations of an app, newest first.
    pub async fn invocations(
        &self,
        app: String,
        function: Option<String>,
        limit: usize,
    ) -> Result<Vec<nubo_core::api::v1::InvocationRecord>, DeployError> {
        let store = self.store.clone();
        Ok(
            tokio::task::spawn_blocking(move || {
                store.invocations(&app, function.as_deref(), limit)
            })
            .await
            .map_err(|e| DeployError::Internal(e.to_string()))??,
        )
    }

    /// One invocation with its log lines.
    pub async fn invocation(
        &self,
        id: String,
    ) -> Result<
        Option<(
            nubo_core::api::v1::InvocationRecord,
            Vec<nubo_core::api::v1::LogLine>,
        )>,
        DeployError,
    > {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.invocation(&id))
            .await
            .map_err(|e| DeployError::Internal(e.to_string()))??)
    }

    /// Log lines of an app that pass `filter` (function, invocation, text, minimum level),
    /// since a time and after a cursor, oldest first, each with its cursor.
    pub async fn logs(
        &self,
        app: String,
        filter: nubo_core::api::v1::LogFilter,
        since: std::time::SystemTime,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, nubo_core::api::v1::LogLine)>, DeployError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || {
            store.search_logs(&app, &filter, since, after, limit)
        })
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))??)
    }
}
