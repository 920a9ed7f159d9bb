//! Deploying and removing apps.

use crate::Control;
use crate::bundle::{Bundle, BundleError};
use crate::live::{LiveApp, compile_routes};
use nubo_core::api::v1::{DeployResponse, DeployedFunction, RouteInfo};
use nubo_core::engine::{Artifact, CodeError, Engine, LoadFunction};
use nubo_core::manifest::{self, Manifest, ManifestErrors};
use nubo_core::{ErrorCode, RouteError};
use nubo_store::{FunctionCode, NewRevision, RevisionRecord, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

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
    /// The store failed.
    #[error("storage error: {0}")]
    Store(#[from] nubo_store::StoreError),
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
            DeployError::Store(_) | DeployError::Internal(_) => ErrorCode::Internal,
        }
    }
}

fn join_err(e: tokio::task::JoinError) -> DeployError {
    DeployError::Internal(format!("background task failed: {e}"))
}

impl Control {
    /// Deploys an app from an uploaded bundle, creating its next revision.
    pub async fn deploy(&self, body: &[u8]) -> Result<DeployResponse, DeployError> {
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

        let lock = self.app_lock(&manifest.app);
        let _serial = lock.lock().await;

        // Cheap checks first: the new routes must not clash with other apps' live routes.
        let store = self.store.clone();
        let app_name = manifest.app.clone();
        let revision = tokio::task::spawn_blocking(move || store.next_revision(&app_name))
            .await
            .map_err(join_err)??;
        let candidate = LiveApp {
            name: manifest.app.as_str().into(),
            revision,
            deployed_at: std::time::SystemTime::now(),
            manifest: manifest.clone(),
            digests: BTreeMap::new(),
        };
        self.check_routes_with(&candidate)?;

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
            let (digest, artifact, cached, compile_ms) = tokio::task::spawn_blocking(move || {
                let digest = store.put_blob(&code)?;
                let (artifact, compile_ms) =
                    cached_artifact(&store, &*engine, &fname, &digest, || Ok(code))?;
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
            });
        }

        // Load (pre-instantiate) the new revision next to the serving one.
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.load(loads))
            .await
            .map_err(join_err)??;

        let live = LiveApp {
            digests,
            ..candidate
        };
        let result = self.commit(live, &functions).await;
        if result.is_err() {
            // Drop what was loaded for the refused revision; the serving one stays.
            let keep: Vec<u64> = self
                .app(&manifest.app)
                .map(|a| vec![a.revision])
                .unwrap_or_default();
            self.engine.retain(&manifest.app, &keep);
        }
        result
    }

    fn check_routes_with(&self, candidate: &LiveApp) -> Result<(), DeployError> {
        let apps = self.apps.load();
        let others = apps
            .values()
            .filter(|a| a.name != candidate.name)
            .map(|a| &**a);
        compile_routes(others.chain(std::iter::once(candidate)))?;
        Ok(())
    }

    async fn commit(
        &self,
        live: LiveApp,
        functions: &[DeployedFunction],
    ) -> Result<DeployResponse, DeployError> {
        let _commit = self.commit_lock.lock().await;
        // Other apps may have been deployed since the early check: check again under the lock.
        let mut apps = (**self.apps.load()).clone();
        apps.insert(live.name.to_string(), Arc::new(live.clone()));
        let routes = compile_routes(apps.values().map(|a| &**a))?;

        let store = self.store.clone();
        let new = NewRevision {
            app: live.name.to_string(),
            manifest: live.manifest.clone(),
            functions: functions
                .iter()
                .map(|f| FunctionCode {
                    name: f.name.clone(),
                    digest: f.digest.clone(),
                    size: f.size,
                })
                .collect(),
        };
        let rec: RevisionRecord = tokio::task::spawn_blocking(move || store.commit_revision(new))
            .await
            .map_err(join_err)??;
        if rec.revision != live.revision {
            return Err(DeployError::Internal(format!(
                "revision number changed during deploy ({} != {})",
                rec.revision, live.revision
            )));
        }
        // The commit is durable: publish. Both swaps are single pointer stores.
        self.apps.store(Arc::new(apps));
        self.routes.store(Arc::new(routes));
        self.engine.retain(&live.name, &[live.revision]);
        tracing::info!(app = %live.name, revision = live.revision, "deployed");
        Ok(DeployResponse {
            app: live.name.to_string(),
            revision: live.revision,
            functions: functions.to_vec(),
            routes: route_infos(&live.manifest),
        })
    }

    /// Removes an app: its routes stop serving at once; its revisions stay in history.
    pub async fn remove(&self, app: &str) -> Result<u64, DeployError> {
        let lock = self.app_lock(app);
        let _serial = lock.lock().await;
        let live = self
            .app(app)
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        let _commit = self.commit_lock.lock().await;
        let store = self.store.clone();
        let name = app.to_string();
        tokio::task::spawn_blocking(move || store.delete_app(&name))
            .await
            .map_err(join_err)??;
        let mut apps = (**self.apps.load()).clone();
        apps.remove(app);
        let routes = compile_routes(apps.values().map(|a| &**a))?;
        self.apps.store(Arc::new(apps));
        self.routes.store(Arc::new(routes));
        self.engine.retain(app, &[]);
        tracing::info!(app, revision = live.revision, "removed");
        Ok(live.revision)
    }

    /// Loads one stored revision into the engine (used at startup).
    pub(crate) async fn load_revision(
        &self,
        rec: RevisionRecord,
    ) -> Result<(LiveApp, usize), DeployError> {
        let store = self.store.clone();
        let engine = self.engine.clone();
        let live = LiveApp {
            name: rec.app.as_str().into(),
            revision: rec.revision,
            deployed_at: rec.created_at,
            manifest: rec.manifest.clone(),
            digests: rec
                .functions
                .iter()
                .map(|f| (f.name.clone(), f.digest.clone()))
                .collect(),
        };
        let live2 = live.clone();
        tokio::task::spawn_blocking(move || {
            let mut loads = Vec::new();
            let mut recompiled = 0;
            for (name, spec) in &live2.manifest.functions {
                let digest = live2.digests.get(name).ok_or_else(|| {
                    DeployError::Internal(format!("revision has no code for {name}"))
                })?;
                // Missing when compiled by another engine version or the cache was cleared.
                let (artifact, compiled) = cached_artifact(&store, &*engine, name, digest, || {
                    Ok(store.get_blob(digest)?)
                })?;
                recompiled += usize::from(compiled.is_some());
                let target = live2
                    .target(name)
                    .ok_or_else(|| DeployError::Internal("function vanished".into()))?;
                loads.push(LoadFunction {
                    target,
                    spec: spec.clone(),
                    artifact,
                });
            }
            engine.load(loads)?;
            Ok::<_, DeployError>(recompiled)
        })
        .await
        .map_err(join_err)?
        .map(|recompiled| (live, recompiled))
    }
}

/// The compiled artifact of the code `digest`: from the cache, or compiled from `code()` and
/// cached. The second value is the compile time in milliseconds when it was compiled now.
/// Blocking.
fn cached_artifact(
    store: &Store,
    engine: &dyn Engine,
    function: &str,
    digest: &str,
    code: impl FnOnce() -> Result<Vec<u8>, DeployError>,
) -> Result<(Artifact, Option<u64>), DeployError> {
    let key = engine.artifact_key();
    if store.has_artifact(digest, key) {
        return Ok((Artifact::File(store.artifact_path(digest, key)), None));
    }
    let started = Instant::now();
    let compiled = engine.compile(function, &code()?)?;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
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
