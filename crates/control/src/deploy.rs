//! Deploying and removing apps, and loading stored revisions into the engine.

use crate::Control;
use crate::bundle::{Bundle, BundleError};
use crate::live::{AppState, LiveApp, LiveRevision};
use nubo_core::api::v1::{
    DeployResponse, DeployedFunction, DeployedTrigger, RouteInfo, TrafficState, WeightedRevision,
};
use nubo_core::engine::{Artifact, CodeError, Engine, LoadFunction};
use nubo_core::manifest::{self, Manifest, ManifestErrors, Runtime};
use nubo_core::{ErrorCode, RouteError};
use nubo_store::{
    FunctionCode, NewRevision, RevisionRecord, Store, StoreError, TrafficInstruction, canary_split,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// How a deploy treats traffic (`POST /apps?traffic=P&expected_generation=G`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    /// Percent the new revision takes: `None` or 100 = all (a plain deploy), 1..=99 = canary,
    /// 0 = none (reachable only by pinning). The first deploy of an app must take all.
    pub traffic: Option<u8>,
    /// Commit only if the app is still at this generation ([`DeployError::Conflict`]).
    pub expected_generation: Option<u64>,
}

/// Why a deploy (or another control operation) failed. Nothing that serves traffic changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The upload is malformed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(#[from] ManifestErrors),
    /// A function in the manifest has no component in the upload.
    #[error(
        "function {0:?} has no code in the upload: check its `source` and run `nubo deploy` again"
    )]
    MissingComponent(String),
    /// The upload has code for a function the manifest does not declare.
    #[error("the upload has code for function {0:?}, which nubo.toml does not declare")]
    UnexpectedComponent(String),
    /// A component was refused.
    #[error("{0}")]
    Code(#[from] CodeError),
    /// The app's routes clash with another app's.
    #[error("{0}")]
    Routes(#[from] RouteError),
    /// No such app.
    #[error("app {0:?} is not deployed; `nubo ls` lists the deployed apps")]
    AppNotFound(String),
    /// No such function.
    #[error("app {app:?} has no function {function:?}; its functions are: {}", known.join(", "))]
    FunctionNotFound {
        /// App.
        app: String,
        /// Requested function.
        function: String,
        /// Its functions.
        known: Vec<String>,
    },
    /// The app has no retained revision with that number.
    #[error(
        "app {app:?} has no retained revision {revision}; `nubo revisions {app}` lists the ones that can take traffic or be pinned"
    )]
    RevisionNotFound {
        /// App.
        app: String,
        /// The revision asked for.
        revision: u64,
    },
    /// A traffic split, canary percent or rollback is invalid.
    #[error("invalid traffic for app {app:?}: {reason}")]
    InvalidTraffic {
        /// App.
        app: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The app moved past the generation the request expected; nothing changed.
    #[error(
        "app {app:?} is at generation {current}, not {expected}: another change came first; read the current state and retry with its generation"
    )]
    Conflict {
        /// App.
        app: String,
        /// The generation the request expected.
        expected: u64,
        /// The generation now.
        current: u64,
        /// The app's traffic state now (the body of the 409 answer).
        state: Option<Box<TrafficState>>,
    },
    /// A rollout of the app runs, so another cannot start.
    #[error(
        "app {app:?} is rolling out revision {to} (now at {percent}%); wait for it to end, or stop it with `nubo rollout {app} --abort`"
    )]
    RolloutInProgress {
        /// App.
        app: String,
        /// The revision being rolled out.
        to: u64,
        /// Its share now.
        percent: u8,
    },
    /// The app has no rollout running (or none at all).
    #[error("{message}")]
    RolloutNotFound {
        /// App.
        app: String,
        /// What there is instead and what to do.
        message: String,
    },
    /// A function's env names a secret the app does not have.
    #[error(
        "secret {secret:?} of app {app:?} is not set: run `nubo secrets set {app} {secret}` first"
    )]
    SecretNotSet {
        /// App.
        app: String,
        /// The secret's name.
        secret: String,
    },
    /// The store failed.
    #[error("storage error: {0}")]
    Store(StoreError),
    /// Something else inside Nubo failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DeployError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            DeployError::Bundle(_)
            | DeployError::MissingComponent(_)
            | DeployError::UnexpectedComponent(_) => ErrorCode::BadRequest,
            DeployError::Manifest(_) | DeployError::Routes(_) => ErrorCode::InvalidManifest,
            DeployError::Code(c) => c.code,
            DeployError::AppNotFound(_) => ErrorCode::AppNotFound,
            DeployError::FunctionNotFound { .. } => ErrorCode::FunctionNotFound,
            DeployError::RevisionNotFound { .. } => ErrorCode::RevisionNotFound,
            DeployError::InvalidTraffic { .. } => ErrorCode::InvalidTraffic,
            DeployError::Conflict { .. } => ErrorCode::Conflict,
            DeployError::RolloutInProgress { .. } => ErrorCode::RolloutInProgress,
            DeployError::RolloutNotFound { .. } => ErrorCode::RolloutNotFound,
            DeployError::SecretNotSet { .. } => ErrorCode::SecretNotSet,
            DeployError::Store(_) | DeployError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict {
                app,
                expected,
                current,
            } => DeployError::Conflict {
                app,
                expected,
                current,
                state: None,
            },
            StoreError::InvalidTraffic { app, reason } => {
                DeployError::InvalidTraffic { app, reason }
            }
            StoreError::RevisionNotFound { app, revision } => {
                DeployError::RevisionNotFound { app, revision }
            }
            StoreError::AppNotDeployed(app) => DeployError::AppNotFound(app),
            StoreError::RolloutRunning { app, to, percent } => {
                DeployError::RolloutInProgress { app, to, percent }
            }
            StoreError::RolloutNotRunning(app) => DeployError::RolloutNotFound {
                message: format!(
                    "app {app:?} has no running rollout; `nubo rollout {app}` shows the last one"
                ),
                app,
            },
            other => DeployError::Store(other),
        }
    }
}

pub(crate) fn join_err(e: tokio::task::JoinError) -> DeployError {
    DeployError::Internal(format!("background task failed: {e}"))
}

impl Control {
    /// Deploys an app from an uploaded bundle as its next revision, taking all traffic.
    pub async fn deploy(&self, body: &[u8]) -> Result<DeployResponse, DeployError> {
        self.deploy_with(body, DeployOptions::default()).await
    }

    /// Deploys an app from an uploaded bundle as its next revision, with a traffic
    /// instruction. The code is validated, compiled and loaded before anything is committed;
    /// the revision, the app's new split and its generation bump commit together, then the
    /// live state swaps atomically.
    ///
    /// Errors: the bundle or manifest is invalid; a route clashes with another app's;
    /// [`DeployError::InvalidTraffic`] for a percent over 100 or a first deploy that is a
    /// canary or takes no traffic; [`DeployError::Conflict`] when `expected_generation` is
    /// stale; code that fails validation or compilation.
    pub async fn deploy_with(
        &self,
        body: &[u8],
        opts: DeployOptions,
    ) -> Result<DeployResponse, DeployError> {
        let bundle = Bundle::parse(body)?;
        let manifest = manifest::parse(&bundle.manifest)?;
        for name in manifest.functions.keys() {
            if !bundle.components.contains_key(name) {
                return Err(DeployError::MissingComponent(name.clone()));
            }
        }
        if let Some(extra) = bundle
            .components
            .keys()
            .find(|k| !manifest.functions.contains_key(*k))
        {
            return Err(DeployError::UnexpectedComponent(extra.clone()));
        }
        // Every secret the functions' env names is set (a snapshot read: no IO). Values are
        // read at each invocation, so a secret changed later needs no redeploy.
        let secrets = self
            .store
            .secrets()
            .map_err(|e| DeployError::Internal(format!("opening the secrets: {e}")))?;
        if let Some(secret) = manifest
            .functions
            .values()
            .flat_map(|f| f.secret_env.values())
            .find(|s| !secrets.is_set(&manifest.app, s))
        {
            return Err(DeployError::SecretNotSet {
                app: manifest.app.clone(),
                secret: secret.clone(),
            });
        }
        let app: Arc<str> = manifest.app.as_str().into();
        let percent = opts.traffic.unwrap_or(100);
        if percent > 100 {
            return Err(DeployError::InvalidTraffic {
                app: app.to_string(),
                reason: format!(
                    "the new revision cannot take {percent} percent; use 1 to 99 for a canary, 100 for all or 0 for none"
                ),
            });
        }
        let instruction = TrafficInstruction::from_percent(percent);

        let lock = self.app_lock(&app);
        let _serial = lock.lock().await;
        let slot = self.app(&app);
        let current = slot.as_ref().map(|s| s.state_full());
        if current.is_none() && instruction != TrafficInstruction::All {
            return Err(DeployError::InvalidTraffic {
                app: app.to_string(),
                reason: "the first deploy of an app takes all traffic; deploy it without --canary or --no-traffic first".into(),
            });
        }

        // Cheap checks first: the generation, then the routes against other apps.
        let store = self.store.clone();
        let app_name = app.to_string();
        let (revision, generation) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((
                store.next_revision(&app_name)?,
                store.generation(&app_name)?,
            ))
        })
        .await
        .map_err(join_err)??;
        if let Some(expected) = opts.expected_generation
            && expected != generation
        {
            return Err(self.conflict(&app, expected, generation));
        }
        let candidate = Arc::new(LiveRevision::new(
            app.clone(),
            revision,
            std::time::SystemTime::now(),
            manifest.clone(),
            BTreeMap::new(),
        )?);
        let weighted = predicted_split(current.as_deref(), &candidate, instruction);
        self.check_global_routes(&app, &weighted)?;

        // Store and compile the code (bounded by the engine), outside any lock but the app's.
        let mut functions = Vec::new();
        let mut loads = Vec::new();
        let mut digests = BTreeMap::new();
        let mut components = bundle.components;
        for (name, spec) in &manifest.functions {
            let code = components.remove(name).unwrap_or_default();
            let size = code.len() as u64;
            let store = self.store.clone();
            let engine = self.engine.clone();
            let fname = name.clone();
            let runtime = spec.runtime;
            let (digest, artifact, cached, compile_ms) = tokio::task::spawn_blocking(move || {
                let digest = store.put_blob(&code)?;
                let (artifact, compile_ms) =
                    cached_artifact(&store, &*engine, &fname, runtime, &digest, || Ok(code))?;
                Ok::<_, DeployError>((
                    digest,
                    artifact,
                    compile_ms.is_none(),
                    compile_ms.unwrap_or(0),
                ))
            })
            .await
            .map_err(join_err)??;
            let target = candidate
                .target(name)
                .ok_or_else(|| DeployError::Internal("function vanished".into()))?;
            loads.push(LoadFunction {
                target,
                spec: spec.clone(),
                artifact,
            });
            digests.insert(name.clone(), digest.clone());
            functions.push(DeployedFunction {
                name: name.clone(),
                digest,
                size,
                cached,
                compile_ms,
                runtime: spec.runtime.as_str().to_string(),
            });
        }

        // Load (pre-instantiate) the new revision next to the serving ones.
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.load(loads))
            .await
            .map_err(join_err)??;

        let live = Arc::new(LiveRevision::new(
            app.clone(),
            revision,
            candidate.deployed_at,
            manifest.clone(),
            digests,
        )?);
        let weighted = predicted_split(current.as_deref(), &live, instruction);
        let slot = slot.unwrap_or_else(|| {
            let state = AppState::new(0, weighted.clone(), BTreeMap::new());
            Arc::new(LiveApp::new(app.clone(), state))
        });
        let new = NewRevision {
            app: app.to_string(),
            manifest: manifest.clone(),
            functions: functions
                .iter()
                .map(|f| FunctionCode {
                    name: f.name.clone(),
                    digest: f.digest.clone(),
                    size: f.size,
                })
                .collect(),
            deployed_by: None,
        };
        // The key-value stores the functions bind exist before the revision can serve. A deploy
        // that fails after this leaves them empty, which serves nothing.
        let kv = self.store.kv();
        let bound: Vec<String> = manifest
            .functions
            .values()
            .flat_map(|f| f.kv.clone())
            .collect();
        tokio::task::spawn_blocking(move || bound.iter().try_for_each(|s| kv.ensure_store(s)))
            .await
            .map_err(join_err)?
            .map_err(|e| DeployError::Internal(format!("creating key-value stores: {e}")))?;
        // Bound buckets and those object triggers watch likewise; an existing bucket and its
        // objects are left as they are.
        let objects = self.store.objects();
        let mut buckets: Vec<String> = manifest
            .functions
            .values()
            .flat_map(|f| f.buckets.clone())
            .chain(manifest.watched_buckets())
            .collect();
        buckets.sort();
        buckets.dedup();
        tokio::task::spawn_blocking(move || {
            buckets
                .iter()
                .try_for_each(|b| objects.create_bucket(b).map(drop))
        })
        .await
        .map_err(join_err)?
        .map_err(|e| DeployError::Internal(format!("creating buckets: {e}")))?;
        // The queues the app names (triggers, bindings, destinations) likewise; existing ones
        // keep their messages.
        let queues = self.store.queues();
        let named = manifest.queues();
        tokio::task::spawn_blocking(move || {
            named.iter().try_for_each(|q| queues.create(q).map(drop))
        })
        .await
        .map_err(join_err)?
        .map_err(|e| DeployError::Internal(format!("creating queues: {e}")))?;
        let store = self.store.clone();
        let expected = opts.expected_generation;
        let mut available: Vec<Arc<LiveRevision>> = current
            .as_deref()
            .map(|s| {
                s.split
                    .iter()
                    .map(|(r, _)| r.clone())
                    .chain(s.staged.values().cloned())
                    .collect()
            })
            .unwrap_or_default();
        available.push(live.clone());
        let result = self
            .commit_and_publish(
                &slot,
                &weighted,
                move || store.commit_revision_with(new, instruction, expected),
                |(rec, split): &(RevisionRecord, nubo_store::TrafficSplit)| {
                    if rec.revision != revision {
                        return Err(DeployError::Internal(format!(
                            "revision number changed during deploy ({} != {revision})",
                            rec.revision
                        )));
                    }
                    next_state(
                        current.as_deref(),
                        split.generation,
                        &split.split,
                        &available,
                    )
                },
            )
            .await;
        if let Err(e) = result {
            // Drop what was loaded for the refused revision; the serving ones stay.
            let keep = current.map(|s| s.loaded_numbers()).unwrap_or_default();
            self.engine.retain(&app, &keep);
            return Err(self.fill_conflict(e));
        }
        tracing::info!(app = %app, revision, traffic = percent, "deployed");
        // A deploy that took traffic ends a running rollout (in the same transaction).
        self.reload_rollout(&app).await;
        self.prune(&slot).await;
        self.tidy(&slot);
        Ok(DeployResponse {
            app: app.to_string(),
            revision,
            functions,
            routes: route_infos(&manifest),
            traffic: Some(self.traffic_state_of(&slot)),
            triggers: manifest
                .triggers
                .iter()
                .map(|t| DeployedTrigger {
                    name: t.name.clone(),
                    kind: t.source.kind().to_string(),
                    function: t.function.clone(),
                })
                .collect(),
        })
    }

    /// Removes an app: its routes stop serving at once; its revisions stay in history.
    pub async fn remove(&self, app: &str) -> Result<u64, DeployError> {
        let lock = self.app_lock(app);
        let _serial = lock.lock().await;
        let slot = self
            .app(app)
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        let primary = slot.state().primary().map_or(0, |r| r.revision);
        let _commit = self.commit_lock.lock().await;
        let store = self.store.clone();
        let name = app.to_string();
        tokio::task::spawn_blocking(move || store.delete_app(&name))
            .await
            .map_err(join_err)??;
        let mut apps = (**self.apps.load()).clone();
        apps.remove(app);
        let routes = crate::global_routes(&apps, None)?;
        self.apps.store(Arc::new(apps));
        self.routes.store(Arc::new(routes));
        self.engine.retain(app, &[]);
        self.changed();
        self.reload_rollout(app).await;
        tracing::info!(app, revision = primary, "removed");
        Ok(primary)
    }

    /// Loads one stored revision into the engine, from the compiled-artifact cache when it is
    /// there (compiling again only when it is not). Returns it and how many functions had to
    /// be compiled.
    pub(crate) async fn load_revision(
        &self,
        rec: RevisionRecord,
    ) -> Result<(LiveRevision, usize), DeployError> {
        let store = self.store.clone();
        let engine = self.engine.clone();
        let live = LiveRevision::new(
            rec.app.as_str().into(),
            rec.revision,
            rec.created_at,
            rec.manifest.clone(),
            rec.functions
                .iter()
                .map(|f| (f.name.clone(), f.digest.clone()))
                .collect(),
        )?;
        let manifest = live.manifest.clone();
        let digests = live.digests.clone();
        let app = live.app.clone();
        let revision = live.revision;
        let recompiled = tokio::task::spawn_blocking(move || {
            let mut loads = Vec::new();
            let mut recompiled = 0;
            for (name, spec) in &manifest.functions {
                let digest = digests.get(name).ok_or_else(|| {
                    DeployError::Internal(format!("revision has no code for {name}"))
                })?;
                // Missing when compiled by another engine version or the cache was cleared.
                let (artifact, compiled) =
                    cached_artifact(&store, &*engine, name, spec.runtime, digest, || {
                        Ok(store.get_blob(digest)?)
                    })?;
                recompiled += usize::from(compiled.is_some());
                loads.push(LoadFunction {
                    target: nubo_core::FunctionTarget {
                        app: app.clone(),
                        function: name.as_str().into(),
                        revision,
                    },
                    spec: spec.clone(),
                    artifact,
                });
            }
            engine.load(loads)?;
            Ok::<_, DeployError>(recompiled)
        })
        .await
        .map_err(join_err)??;
        Ok((live, recompiled))
    }
}

/// The weighted revisions a deploy will produce (the store computes the same split).
fn predicted_split(
    current: Option<&AppState>,
    new: &Arc<LiveRevision>,
    instruction: TrafficInstruction,
) -> Vec<(Arc<LiveRevision>, u8)> {
    let Some(current) = current else {
        return vec![(new.clone(), 100)];
    };
    let weights: Vec<WeightedRevision> = current
        .split
        .iter()
        .map(|(r, w)| WeightedRevision {
            revision: r.revision,
            weight: *w,
        })
        .collect();
    let split = match instruction {
        TrafficInstruction::All => vec![WeightedRevision {
            revision: new.revision,
            weight: 100,
        }],
        TrafficInstruction::Canary(p) => canary_split(&weights, new.revision, p),
        TrafficInstruction::None => weights,
    };
    split
        .iter()
        .filter_map(|w| {
            let r = if w.revision == new.revision {
                Some(new.clone())
            } else {
                current.loaded(w.revision).cloned()
            };
            r.map(|r| (r, w.weight))
        })
        .collect()
}

/// The state after a committed change: `split` (from the store) over the revisions in
/// `available`; revisions that lose their traffic, and loaded ones that never had any, stay
/// loaded as staged.
pub(crate) fn next_state(
    current: Option<&AppState>,
    generation: u64,
    split: &[WeightedRevision],
    available: &[Arc<LiveRevision>],
) -> Result<AppState, DeployError> {
    let find = |n: u64| available.iter().find(|r| r.revision == n).cloned();
    let mut weighted = Vec::with_capacity(split.len());
    for w in split {
        let r = find(w.revision).ok_or_else(|| {
            DeployError::Internal(format!(
                "revision {} takes traffic but is not loaded",
                w.revision
            ))
        })?;
        weighted.push((r, w.weight));
    }
    let mut staged = current.map(|s| s.staged.clone()).unwrap_or_default();
    if let Some(s) = current {
        for (r, _) in &s.split {
            if !split.iter().any(|w| w.revision == r.revision) {
                r.touch();
                staged.insert(r.revision, r.clone());
            }
        }
    }
    for r in available {
        if !split.iter().any(|w| w.revision == r.revision) {
            staged.entry(r.revision).or_insert_with(|| r.clone());
        }
    }
    for w in split {
        staged.remove(&w.revision);
    }
    Ok(AppState::new(generation, weighted, staged))
}

/// Artifact cache key of checked process archives.
const PROCESS_ARTIFACT_KEY: &str = "process-1";

/// The compiled artifact of the code `digest`: from the cache, or compiled from `code()` and
/// cached. The second value is the compile time in milliseconds when it was compiled now.
/// Blocking.
fn cached_artifact(
    store: &Store,
    engine: &dyn Engine,
    function: &str,
    runtime: Runtime,
    digest: &str,
    code: impl FnOnce() -> Result<Vec<u8>, DeployError>,
) -> Result<(Artifact, Option<u64>), DeployError> {
    // A process archive's checked form does not depend on the wasm engine; bump the suffix
    // when the archive checks change so archives cached under older rules are checked again.
    let key = match runtime {
        Runtime::Wasm => engine.artifact_key(),
        Runtime::Process => PROCESS_ARTIFACT_KEY,
    };
    if store.has_artifact(digest, key) {
        return Ok((Artifact::File(store.artifact_path(digest, key)), None));
    }
    let started = Instant::now();
    let compiled = engine.compile(function, runtime, &code()?)?;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(function, digest, compile_ms = ms, "compiled function");
    let path = store.put_artifact(digest, key, &compiled)?;
    Ok((Artifact::File(path), Some(ms)))
}

/// The routes of a manifest as wire types.
pub fn route_infos(m: &Manifest) -> Vec<RouteInfo> {
    m.routes
        .iter()
        .map(|r| RouteInfo {
            methods: r.methods.clone(),
            path: r.path.clone(),
            function: r.function.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_core::engine::CodeError;

    /// An engine that "compiles" by copying the code and loads anything.
    struct CopyEngine;

    impl Engine for CopyEngine {
        fn artifact_key(&self) -> &str {
            "copy-engine-1"
        }

        fn compile(
            &self,
            _function: &str,
            _runtime: Runtime,
            code: &[u8],
        ) -> Result<Vec<u8>, CodeError> {
            Ok(code.to_vec())
        }

        fn load(&self, _functions: Vec<LoadFunction>) -> Result<(), CodeError> {
            Ok(())
        }

        fn retain(&self, _app: &str, _keep: &[u64]) {}
    }

    fn bundle(manifest: &str) -> Vec<u8> {
        let mut w = crate::BundleWriter::new();
        w.part("nubo.toml", manifest.as_bytes());
        w.part("function/api", b"code");
        w.finish()
    }

    #[tokio::test]
    async fn a_deploy_creates_the_queues_its_app_names_and_every_change_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let c = Control::new(store.clone(), Arc::new(CopyEngine));
        let mut changes = c.subscribe_changes();
        assert!(!changes.has_changed().unwrap());

        let manifest = "[app]\nname = \"shop\"\n\
            [function.api]\nsource = \"api.wasm\"\nqueues = [\"outbox\"]\n\
            on_failure = \"queue:failures\"\n\
            [[route]]\npath = \"/shop\"\nfunction = \"api\"\n\
            [[trigger.queue]]\nqueue = \"orders\"\nfunction = \"api\"\n";
        c.deploy(&bundle(manifest)).await.unwrap();
        assert!(changes.has_changed().unwrap(), "a deploy is announced");
        changes.mark_unchanged();
        let mut names: Vec<String> = store
            .queues()
            .list()
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        names.sort();
        assert_eq!(names, ["failures", "orders", "outbox"]);

        // A failed deploy changes nothing, so announces nothing.
        assert!(c.deploy(b"not a bundle").await.is_err());
        assert!(!changes.has_changed().unwrap());

        c.remove("shop").await.unwrap();
        assert!(changes.has_changed().unwrap(), "a removal is announced");
        changes.mark_unchanged();
        c.restore().await;
        assert!(changes.has_changed().unwrap(), "a restore is announced");
    }
}
