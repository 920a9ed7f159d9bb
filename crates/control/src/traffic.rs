//! Traffic: reading and changing an app's split, rollback, the revision list, and loading a
//! pinned revision on demand.

use crate::deploy::{join_err, next_state, route_infos};
use crate::live::{AppState, LiveApp, LiveRevision};
use crate::{Control, DeployError};
use nubo_core::api::v1::{
    DeployedFunction, RevisionList, RevisionSummary, RollbackRequest, TrafficEntry, TrafficState,
    TrafficUpdate, WeightedRevision,
};
use nubo_core::rfc3339;
use nubo_store::{RevisionRecord, Store, StoreError, TrafficSplit, validate_split};
use std::sync::Arc;
use std::time::Duration;

/// How long a revision without traffic stays loaded after it was last pinned or lost its
/// traffic. Bounds the memory that old revisions hold, while a request that picked a revision
/// just before a traffic change still finds it loaded.
pub const STAGED_TTL: Duration = Duration::from_secs(10 * 60);

impl Control {
    /// The traffic state of a live app, with each weighted revision's figures.
    pub(crate) fn traffic_state_of(&self, slot: &LiveApp) -> TrafficState {
        let mut state = state_to_wire(&slot.name, &slot.state());
        state.rollout = self.rollout_status(&slot.name);
        state
    }

    /// `GET /apps/{app}/traffic`: the app's split, highest weight first, with each revision's
    /// requests and errors over the last five minutes on this server.
    ///
    /// Errors: [`DeployError::AppNotFound`].
    pub fn traffic(&self, app: &str) -> Result<TrafficState, DeployError> {
        let slot = self
            .app(app)
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        Ok(self.traffic_state_of(&slot))
    }

    /// `PUT /apps/{app}/traffic`: sets the app's split. Revisions that are not loaded are
    /// loaded from the compiled-artifact cache (no compile when it is there); then the split
    /// commits (durably, bumping the generation) and the live state swaps atomically.
    ///
    /// Errors: [`DeployError::AppNotFound`]; [`DeployError::InvalidTraffic`] when the weights
    /// do not sum to 100, name a revision twice or exceed 100;
    /// [`DeployError::RevisionNotFound`] for a revision never deployed or pruned;
    /// [`DeployError::Conflict`] (with the current state) when `expected_generation` is
    /// stale; [`DeployError::Routes`] when a revision's routes clash with another app's.
    pub async fn set_traffic(
        &self,
        app: &str,
        update: TrafficUpdate,
    ) -> Result<TrafficState, DeployError> {
        self.change_traffic(
            app,
            &update.split,
            update.expected_generation,
            "traffic changed",
        )
        .await
    }

    /// `POST /apps/{app}/rollback`: moves all traffic to `to`, by default the revision that
    /// had the most traffic before the last traffic change. Needs no compile when the
    /// revision's artifacts are cached.
    ///
    /// Errors: as [`Control::set_traffic`], and [`DeployError::InvalidTraffic`] when there is
    /// no earlier state to go back to.
    pub async fn rollback(
        &self,
        app: &str,
        req: RollbackRequest,
    ) -> Result<TrafficState, DeployError> {
        if self.app(app).is_none() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let to = match req.to {
            Some(to) => to,
            None => {
                let store = self.store.clone();
                let name = app.to_string();
                tokio::task::spawn_blocking(move || store.rollback_target(&name))
                    .await
                    .map_err(join_err)??
                    .ok_or_else(|| DeployError::InvalidTraffic {
                        app: app.to_string(),
                        reason: "there is no earlier traffic state to roll back to; name a revision with --to (`nubo revisions` lists them)".into(),
                    })?
            }
        };
        let split = [WeightedRevision {
            revision: to,
            weight: 100,
        }];
        self.change_traffic(app, &split, req.expected_generation, "rolled back")
            .await
    }

    async fn change_traffic(
        &self,
        app: &str,
        split: &[WeightedRevision],
        expected: Option<u64>,
        what: &'static str,
    ) -> Result<TrafficState, DeployError> {
        let split = validate_split(split).map_err(|reason| DeployError::InvalidTraffic {
            app: app.to_string(),
            reason,
        })?;
        let (slot, _) = self
            .switch_traffic(app, expected, |_| {
                let wire = split.clone();
                let name = app.to_string();
                Ok((split.clone(), move |store: &Store| {
                    store.set_traffic(&name, &wire, expected).map(|t| (t, ()))
                }))
            })
            .await?;
        tracing::info!(app, split = %split_text(&split), "{what}");
        // A change by hand ends a running rollout (in the same transaction).
        self.reload_rollout(app).await;
        Ok(self.traffic_state_of(&slot))
    }

    /// The one way an app's split changes after its first deploy (caller must not hold the
    /// app's lock). Under the app's lock: checks `expected`, asks `plan` for the new split and
    /// the durable commit that makes it, loads revisions of the split that are not loaded
    /// (from the compiled-artifact cache), commits, and swaps the live state. On failure
    /// nothing serving changes and what was loaded for it is unloaded again.
    pub(crate) async fn switch_traffic<P, C, T>(
        &self,
        app: &str,
        expected: Option<u64>,
        plan: P,
    ) -> Result<(Arc<LiveApp>, T), DeployError>
    where
        P: FnOnce(&AppState) -> Result<(Vec<WeightedRevision>, C), DeployError>,
        C: FnOnce(&Store) -> Result<(TrafficSplit, T), StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let lock = self.app_lock(app);
        let _serial = lock.lock().await;
        let slot = self
            .app(app)
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        let current = slot.state_full();
        if let Some(e) = expected
            && e != current.generation
        {
            return Err(self.conflict(app, e, current.generation));
        }
        let (split, commit) = plan(&current)?;
        let mut available: Vec<Arc<LiveRevision>> = current
            .split
            .iter()
            .map(|(r, _)| r.clone())
            .chain(current.staged.values().cloned())
            .collect();
        let mut weighted = Vec::with_capacity(split.len());
        let mut loaded_now = false;
        for w in &split {
            let r = match current.loaded(w.revision) {
                Some(r) => r.clone(),
                None => {
                    let r = match self.load_stored(app, w.revision).await {
                        Ok(r) => r,
                        Err(e) => {
                            if loaded_now {
                                self.engine.retain(app, &current.loaded_numbers());
                            }
                            return Err(e);
                        }
                    };
                    loaded_now = true;
                    available.push(r.clone());
                    r
                }
            };
            weighted.push((r, w.weight));
        }
        let store = self.store.clone();
        let result = self
            .commit_and_publish(
                &slot,
                &weighted,
                move || commit(&store),
                |(t, _): &(TrafficSplit, T)| {
                    next_state(Some(&current), t.generation, &t.split, &available)
                },
            )
            .await;
        let (_, out) = match result {
            Ok(r) => r,
            Err(e) => {
                if loaded_now {
                    self.engine.retain(app, &current.loaded_numbers());
                }
                return Err(self.fill_conflict(e));
            }
        };
        self.tidy(&slot);
        Ok((slot, out))
    }

    /// Reads a retained revision from the store and loads it.
    async fn load_stored(
        &self,
        app: &str,
        revision: u64,
    ) -> Result<Arc<LiveRevision>, DeployError> {
        let store = self.store.clone();
        let name = app.to_string();
        let rec = tokio::task::spawn_blocking(move || store.revision(&name, revision))
            .await
            .map_err(join_err)??
            .ok_or_else(|| DeployError::RevisionNotFound {
                app: app.to_string(),
                revision,
            })?;
        let (live, recompiled) = self.load_revision(rec).await?;
        if recompiled > 0 {
            tracing::warn!(
                app,
                revision,
                recompiled,
                "compiled artifacts were missing; compiled again"
            );
        }
        Ok(Arc::new(live))
    }

    /// A revision of `app` for a pinned request (`nubo-revision: N` or `/_rev/N/...`): the
    /// loaded one, or loaded now from the compiled-artifact cache when it is retained but not
    /// loaded. It stays loaded for [`STAGED_TTL`] after its last pinned request.
    ///
    /// Errors: [`DeployError::RevisionNotFound`] for a revision never deployed or pruned;
    /// [`DeployError::AppNotFound`] when the app was removed meanwhile.
    pub async fn pinned(
        &self,
        app: &Arc<LiveApp>,
        revision: u64,
    ) -> Result<Arc<LiveRevision>, DeployError> {
        if let Some(r) = app.state().loaded(revision) {
            r.touch();
            return Ok(r.clone());
        }
        let lock = self.app_lock(&app.name);
        let _serial = lock.lock().await;
        let slot = self
            .app(&app.name)
            .ok_or_else(|| DeployError::AppNotFound(app.name.to_string()))?;
        let current = slot.state_full();
        if let Some(r) = current.loaded(revision) {
            r.touch();
            return Ok(r.clone());
        }
        let r = self.load_stored(&slot.name, revision).await?;
        let mut staged = current.staged.clone();
        staged.insert(revision, r.clone());
        slot.set_state(AppState::new(
            current.generation,
            current.split.clone(),
            staged,
        ));
        tracing::info!(app = %slot.name, revision, "loaded a pinned revision");
        self.tidy(&slot);
        Ok(r)
    }

    /// `GET /apps/{app}/revisions`: the app's retained revisions, newest first, each with a
    /// one-line summary of what changed against the one before and its weight now.
    ///
    /// Errors: [`DeployError::AppNotFound`] when the app has no retained revision.
    pub async fn revisions(&self, app: &str) -> Result<RevisionList, DeployError> {
        let store = self.store.clone();
        let name = app.to_string();
        let recs = tokio::task::spawn_blocking(move || store.revisions(&name))
            .await
            .map_err(join_err)??;
        if recs.is_empty() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let state = self.app(app).map(|a| a.state_full());
        let mut out = Vec::with_capacity(recs.len());
        for (i, rec) in recs.iter().enumerate() {
            let prev = i.checked_sub(1).and_then(|p| recs.get(p));
            out.push(RevisionSummary {
                revision: rec.revision,
                created_at: rfc3339(rec.created_at),
                deployed_by: rec.deployed_by.clone(),
                functions: rec
                    .functions
                    .iter()
                    .map(|f| DeployedFunction {
                        name: f.name.clone(),
                        digest: f.digest.clone(),
                        size: f.size,
                        cached: true,
                        compile_ms: 0,
                        runtime: rec
                            .manifest
                            .functions
                            .get(&f.name)
                            .map_or("wasm", |spec| spec.runtime.as_str())
                            .to_string(),
                    })
                    .collect(),
                routes: route_infos(&rec.manifest),
                changes: changes(prev, rec),
                weight: state.as_ref().map_or(0, |s| s.weight(rec.revision)),
            });
        }
        out.reverse();
        Ok(RevisionList {
            app: app.to_string(),
            revisions: out,
        })
    }
}

/// The wire form of a state.
fn state_to_wire(app: &str, s: &AppState) -> TrafficState {
    TrafficState {
        app: app.to_string(),
        generation: s.generation,
        split: s
            .split
            .iter()
            .map(|(r, w)| {
                let (requests_5m, errors_5m) = r.stats.totals();
                TrafficEntry {
                    revision: r.revision,
                    weight: *w,
                    requests_5m,
                    errors_5m,
                }
            })
            .collect(),
        rollout: None,
    }
}

/// A split as `12=90 13=10`.
pub(crate) fn split_text(split: &[WeightedRevision]) -> String {
    split
        .iter()
        .map(|w| format!("{}={}", w.revision, w.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line: what `rec` changed against `prev` (the retained revision before it).
pub(crate) fn changes(prev: Option<&RevisionRecord>, rec: &RevisionRecord) -> String {
    let Some(prev) = prev else {
        return if rec.revision == 1 {
            "first revision".into()
        } else {
            "earlier revisions pruned".into()
        };
    };
    let mut parts = Vec::new();
    for (name, spec) in &rec.manifest.functions {
        match prev.manifest.functions.get(name) {
            None => parts.push(format!("+fn {name}")),
            Some(old) if old != spec || prev.digest(name) != rec.digest(name) => {
                parts.push(format!("~fn {name}"));
            }
            Some(_) => {}
        }
    }
    for name in prev.manifest.functions.keys() {
        if !rec.manifest.functions.contains_key(name) {
            parts.push(format!("-fn {name}"));
        }
    }
    if prev.manifest.routes != rec.manifest.routes {
        parts.push("routes changed".into());
    }
    if parts.is_empty() {
        "no changes".into()
    } else {
        parts.join(", ")
    }
}
