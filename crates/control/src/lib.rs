//! The control plane: what is deployed. It validates deploys, stores code and revisions, drives
//! the engine to compile and load code, and compiles the live [`RouteTable`] that the gateway
//! reads on every request.
//!
//! Invariants:
//! - A deploy either fully succeeds or changes nothing that serves traffic: code is checked,
//!   compiled and loaded, and routes are checked against every other app, before the revision
//!   is committed and the route table swapped (one atomic pointer store).
//! - Deploys of one app are serialized; the final commit-and-swap step is serialized across
//!   apps, because the route table is shared.
//! - This crate knows nothing of wasmtime: it talks to code through [`nubo_core::engine::Engine`].

mod bundle;
mod deploy;
mod live;

pub use bundle::{
    Bundle, BundleError, BundleWriter, FUNCTION_PART_PREFIX, MAGIC as BUNDLE_MAGIC, MANIFEST_PART,
};
pub use deploy::{DeployError, route_infos};
pub use live::{LiveApp, RouteTarget, Routes};

use arc_swap::ArcSwap;
use nubo_core::engine::Engine;
use nubo_core::{FunctionTarget, RouteTable};
use nubo_store::Store;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The control plane of one node.
pub struct Control {
    store: Arc<Store>,
    engine: Arc<dyn Engine>,
    routes: ArcSwap<Routes>,
    apps: ArcSwap<BTreeMap<String, Arc<LiveApp>>>,
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    commit_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("apps", &self.apps.load().len())
            .finish()
    }
}

/// What [`Control::restore`] did at startup.
#[derive(Debug, Clone, Copy)]
pub struct RestoreReport {
    /// Apps serving again.
    pub apps: usize,
    /// Functions loaded.
    pub functions: usize,
    /// Functions whose compiled artifact was missing and had to be compiled again.
    pub recompiled: usize,
    /// Apps that could not be loaded (logged with the reason).
    pub failed: usize,
    /// Wall time taken.
    pub elapsed: Duration,
}

impl Control {
    /// A control plane with nothing loaded yet; call [`Control::restore`] next.
    pub fn new(store: Arc<Store>, engine: Arc<dyn Engine>) -> Self {
        Control {
            store,
            engine,
            routes: ArcSwap::from_pointee(Routes::default()),
            apps: ArcSwap::from_pointee(BTreeMap::new()),
            app_locks: Mutex::new(HashMap::new()),
            commit_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The live route table. Lock-free; the snapshot stays valid while held.
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

    /// The live target for `app/function`.
    pub fn target(
        &self,
        app: &str,
        function: &str,
    ) -> Result<(FunctionTarget, Arc<LiveApp>), DeployError> {
        let live = self
            .app(app)
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

    /// Loads every app's live revision from the store: from the compiled-artifact cache when it
    /// is there, compiling again only when it is not. Apps that fail to load are logged and
    /// skipped so one broken app cannot keep the others down.
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
        let revisions = match tokio::task::spawn_blocking(move || store.live_revisions()).await {
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
        for rec in revisions {
            let name = rec.app.clone();
            match self.load_revision(rec).await {
                Ok((live, recompiled)) => {
                    report.apps += 1;
                    report.functions += live.manifest.functions.len();
                    report.recompiled += recompiled;
                    apps.insert(name, Arc::new(live));
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(app = %name, error = %e, "cannot load app; it will not serve until redeployed");
                }
            }
        }
        match live::compile_routes(apps.values().map(|a| &**a)) {
            Ok(routes) => {
                self.routes.store(Arc::new(routes));
                self.apps.store(Arc::new(apps));
            }
            Err(e) => {
                tracing::error!(error = %e, "stored apps have conflicting routes; serving none");
            }
        }
        report.elapsed = start.elapsed();
        report
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.app_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app.to_string()).or_default().clone()
    }
}

/// Builds a route table from apps (used by deploy, rm and restore).
pub fn build_routes<'a>(
    apps: impl Iterator<Item = &'a LiveApp>,
) -> Result<RouteTable<Arc<RouteTarget>>, nubo_core::RouteError> {
    live::compile_routes(apps).map(|r| r.table)
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

    /// Log lines of an app (optionally one function) since a time or after a cursor, oldest
    /// first, each with its cursor.
    pub async fn logs(
        &self,
        app: String,
        function: Option<String>,
        since: std::time::SystemTime,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, nubo_core::api::v1::LogLine)>, DeployError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || {
            store.logs(&app, function.as_deref(), since, after, limit)
        })
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))??)
    }
}
