//! Nubo's event sources: cron schedules, the built-in queues, object changes, MQTT brokers
//! and NATS servers. Each event becomes an async invocation handed to a [`Sink`] (the binary
//! implements it over the gateway's async machinery), shaped as a CloudEvent for a wasm
//! function or as a Lambda event for a process function.
//!
//! [`Triggers::apply`] puts an app's triggers in force as declared by its serving revision:
//! one task per cron, queue, MQTT and NATS trigger, and one shared drainer for object events.
//! A source is acknowledged only after the sink has stored the delivery.

mod cron;
mod deliver;
mod event;
mod mqtt;
mod nats;
mod object;
mod queue;

use deliver::{Ctx, Live, Stop};
use event::Target;
use nubo_core::manifest::{Manifest, TriggerSource, TriggerSpec};
use nubo_store::{Accepted, NewEvent, Store, SubmitError};
use object::{ObjectTarget, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stopping trigger task may take to finish the delivery it is in before it is
/// aborted.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Where deliveries go: the async-invocation machinery. Implemented by the binary over the
/// gateway.
pub trait Sink: Send + Sync + 'static {
    /// Stores the event durably (Ok once committed, replay = true when its idempotency key
    /// was seen).
    fn submit(
        &self,
        event: NewEvent,
    ) -> Pin<Box<dyn Future<Output = Result<Accepted, SubmitError>> + Send + '_>>;
}

/// What [`Triggers::apply`] needs about an app's serving revision.
#[derive(Debug, Clone)]
pub struct AppTriggers {
    /// The revision whose triggers are put in force.
    pub revision: u64,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

/// One trigger in force, as `nubo triggers` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TriggerStatus {
    /// The trigger's name within the app.
    pub name: String,
    /// `cron`, `queue`, `object`, `mqtt` or `nats`.
    pub kind: String,
    /// The function it delivers to.
    pub function: String,
    /// The revision it was put in force by.
    pub revision: u64,
    /// What it listens to: the schedule (and zone), `queue NAME`,
    /// `bucket/prefix*suffix (created, deleted)`, `broker topics`, `server subject [stream]`.
    pub source: String,
    /// "running" | "connecting" | "disconnected" | "failed"
    pub state: String,
    /// When it last started an invocation.
    pub last_fire: Option<SystemTime>,
    /// For cron: the next tick.
    pub next_fire: Option<SystemTime>,
    /// Messages waiting (queue: held messages; JetStream: consumer's pending).
    pub backlog: Option<u64>,
    /// Age of the oldest waiting message (queue), ms.
    pub lag_ms: Option<u64>,
    /// Invocations it started in all.
    pub fires: u64,
    /// Failures in all.
    pub errors: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Chains it stopped as loops.
    pub loops_stopped: u64,
    /// Cron ticks passed over.
    pub skipped: u64,
}

/// The trigger tasks of every app; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Triggers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

struct Inner {
    ctx: Ctx,
    /// Apps' triggers in force; the lock also serializes `apply` and `shutdown`.
    apps: tokio::sync::Mutex<BTreeMap<String, AppEntry>>,
    /// Object triggers in force, read by the drainer.
    objects: Registry,
    /// The object-event drainer.
    drainer: std::sync::Mutex<Option<Task>>,
}

struct AppEntry {
    revision: u64,
    triggers: Vec<Running>,
}

/// A trigger in force.
struct Running {
    spec: TriggerSpec,
    target: Target,
    live: Arc<Live>,
    /// Its task; `None` for object triggers, served by the shared drainer.
    task: Option<Task>,
}

/// A spawned task and its stop signal.
struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Stops tasks: all are told at once, then each is awaited (aborted after [`STOP_WAIT`]).
async fn stop_tasks(tasks: Vec<Task>) {
    for t in &tasks {
        let _ = t.stop.send(true);
    }
    for mut t in tasks {
        if tokio::time::timeout(STOP_WAIT, &mut t.handle)
            .await
            .is_err()
        {
            tracing::warn!("a trigger task did not stop in time and was aborted");
            t.handle.abort();
            let _ = t.handle.await;
        }
    }
}

/// The delivery target of `spec` in `manifest`; `None` when its function is missing (a
/// manifest that passed validation always has it).
fn target_of(manifest: &Manifest, spec: &TriggerSpec) -> Option<Target> {
    let f = manifest.functions.get(&spec.function)?;
    Some(Target {
        app: manifest.app.clone(),
        trigger: spec.name.clone(),
        kind: spec.source.kind(),
        function: spec.function.clone(),
        runtime: f.runtime,
        retry: f.retry,
    })
}

/// Which running triggers keep running under a new set: same name, function, spec, and the
/// same delivery settings of the function (runtime and retry). Returns, for each old trigger,
/// the index of its equal in `new`, if any.
fn unchanged(old: &[(TriggerSpec, Target)], new: &[(TriggerSpec, Target)]) -> Vec<Option<usize>> {
    old.iter()
        .map(|o| new.iter().position(|n| n == o))
        .collect()
}

/// What a trigger listens to, in a line.
fn source_line(source: &TriggerSource) -> String {
    match source {
        TriggerSource::Cron(c) => format!("{} ({})", c.schedule, c.timezone),
        TriggerSource::Queue(q) => format!("queue {}", q.queue),
        TriggerSource::Object(o) => {
            let events: Vec<&str> = o.events.iter().map(|e| e.as_str()).collect();
            format!(
                "{}/{}*{} ({})",
                o.bucket,
                o.prefix,
                o.suffix,
                events.join(", ")
            )
        }
        TriggerSource::Mqtt(m) => format!("{} {}", m.broker, m.topics.join(", ")),
        TriggerSource::Nats(n) => match &n.stream {
            Some(s) => format!("{} {} [{s}]", n.server, n.subject),
            None => format!("{} {}", n.server, n.subject),
        },
    }
}

impl Triggers {
    /// Starts the object-event drainer; trigger tasks start with [`Triggers::apply`]. Must be
    /// called within a Tokio runtime.
    pub fn start(store: Arc<Store>, sink: Arc<dyn Sink>) -> Triggers {
        let ctx = Ctx { store, sink };
        let objects: Registry = Arc::default();
        let (stop, rx) = Stop::new();
        let handle = tokio::spawn(object::drain(ctx.clone(), objects.clone(), rx));
        Triggers {
            inner: Arc::new(Inner {
                ctx,
                apps: tokio::sync::Mutex::new(BTreeMap::new()),
                objects,
                drainer: std::sync::Mutex::new(Some(Task { stop, handle })),
            }),
        }
    }

    /// Puts the triggers of `app` as declared in `set` in force (`None`: the app was
    /// removed). Unchanged triggers (same name, function, spec) keep running; removed ones
    /// stop before this returns (no delivery from them starts afterwards); new ones start.
    /// Also updates the watched buckets (union over all apps) and forgets the stored state of
    /// triggers the app no longer has.
    pub async fn apply(&self, app: &str, set: Option<AppTriggers>) {
        let mut apps = self.inner.apps.lock().await;
        let old = apps.remove(app);
        let revision = set.as_ref().map_or(0, |s| s.revision);
        let wanted: Vec<(TriggerSpec, Target)> = set
            .as_ref()
            .map(|s| {
                s.manifest
                    .triggers
                    .iter()
                    .filter_map(|t| match target_of(&s.manifest, t) {
                        Some(target) => Some((t.clone(), target)),
                        None => {
                            tracing::warn!(app, trigger = %t.name, function = %t.function, "a trigger names a function the revision does not have; it is not started");
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();

        // Stop what changed or went away; keep the rest by its place in the new list.
        let mut kept: Vec<Option<Running>> = (0..wanted.len()).map(|_| None).collect();
        let mut stopping = Vec::new();
        if let Some(old) = old {
            let keys: Vec<(TriggerSpec, Target)> = old
                .triggers
                .iter()
                .map(|r| (r.spec.clone(), r.target.clone()))
                .collect();
            let places = unchanged(&keys, &wanted);
            for (running, place) in old.triggers.into_iter().zip(places) {
                match place {
                    Some(i) if kept[i].is_none() => kept[i] = Some(running),
                    _ => stopping.extend(running.task),
                }
            }
        }
        stop_tasks(stopping).await;

        let mut triggers = Vec::with_capacity(wanted.len());
        for ((spec, target), kept) in wanted.into_iter().zip(kept) {
            if let Some(r) = kept {
                triggers.push(r);
                continue;
            }
            triggers.push(self.spawn(spec, target));
        }

        // Object triggers: the write lock waits for a batch being delivered, so no delivery
        // of a removed trigger starts after this.
        let object_targets: Vec<ObjectTarget> = triggers
            .iter()
            .filter_map(|r| match &r.spec.source {
                TriggerSource::Object(o) => Some(ObjectTarget {
                    target: r.target.clone(),
                    spec: o.clone(),
                }),
                _ => None,
            })
            .collect();
        let watched: BTreeSet<String> = {
            let mut reg = self.inner.objects.write().await;
            if object_targets.is_empty() {
                reg.remove(app);
            } else {
                reg.insert(app.to_string(), object_targets);
            }
            reg.values()
                .flatten()
                .map(|t| t.spec.bucket.clone())
                .collect()
        };
        self.inner.ctx.store.objects().watch_buckets(watched);

        let keep: Vec<String> = triggers.iter().map(|r| r.spec.name.clone()).collect();
        let name = app.to_string();
        if let Some(Err(e)) = self
            .inner
            .ctx
            .blocking(move |s| s.forget_triggers(&name, &keep))
            .await
        {
            tracing::warn!(app, error = %e, "forgetting removed triggers' state failed");
        }
        if set.is_some() {
            apps.insert(app.to_string(), AppEntry { revision, triggers });
        }
    }

    /// Starts the task of one trigger (object triggers have none: the drainer serves them).
    fn spawn(&self, spec: TriggerSpec, target: Target) -> Running {
        let ctx = self.inner.ctx.clone();
        let live = Arc::new(Live::new("connecting"));
        let (stop, rx) = Stop::new();
        let handle = match &spec.source {
            TriggerSource::Cron(c) => Some(tokio::spawn(cron::run(
                ctx,
                target.clone(),
                c.clone(),
                live.clone(),
                rx,
            ))),
            TriggerSource::Queue(q) => Some(tokio::spawn(queue::run(
                ctx,
                target.clone(),
                q.clone(),
                live.clone(),
                rx,
            ))),
            TriggerSource::Mqtt(m) => Some(tokio::spawn(mqtt::run(
                ctx,
                target.clone(),
                m.clone(),
                live.clone(),
                rx,
            ))),
            TriggerSource::Nats(n) => Some(tokio::spawn(nats::run(
                ctx,
                target.clone(),
                n.clone(),
                live.clone(),
                rx,
            ))),
            TriggerSource::Object(_) => {
                live.set_state("running");
                None
            }
        };
        Running {
            spec,
            target,
            live,
            task: handle.map(|handle| Task { stop, handle }),
        }
    }

    /// Every trigger of `app` in force, with live and stored figures.
    pub async fn status(&self, app: &str) -> Vec<TriggerStatus> {
        // The queue each queue trigger reads, by trigger name.
        let mut queue_of: BTreeMap<String, String> = BTreeMap::new();
        let mut out: Vec<TriggerStatus> = {
            let apps = self.inner.apps.lock().await;
            let Some(entry) = apps.get(app) else {
                return Vec::new();
            };
            entry
                .triggers
                .iter()
                .map(|r| {
                    if let TriggerSource::Queue(q) = &r.spec.source {
                        queue_of.insert(r.spec.name.clone(), q.queue.clone());
                    }
                    let live = r.live.get();
                    TriggerStatus {
                        name: r.spec.name.clone(),
                        kind: r.spec.source.kind().to_string(),
                        function: r.spec.function.clone(),
                        revision: entry.revision,
                        source: source_line(&r.spec.source),
                        state: live.state.to_string(),
                        last_fire: None,
                        next_fire: live.next_fire,
                        backlog: live.backlog,
                        lag_ms: None,
                        fires: 0,
                        errors: 0,
                        last_error: None,
                        loops_stopped: 0,
                        skipped: 0,
                    }
                })
                .collect()
        };
        let name = app.to_string();
        let queues: BTreeSet<String> = queue_of.values().cloned().collect();
        let stored = self
            .inner
            .ctx
            .blocking(move |s| {
                let states = s.trigger_states(&name).unwrap_or_default();
                let infos: BTreeMap<String, nubo_store::QueueInfo> = queues
                    .into_iter()
                    .filter_map(|q| Some((q.clone(), s.queues().info(&q).ok()??)))
                    .collect();
                (states, infos)
            })
            .await;
        let Some((states, infos)) = stored else {
            return out;
        };
        let now = SystemTime::now();
        for st in &mut out {
            if let Some(s) = states.iter().find(|s| s.trigger == st.name) {
                st.last_fire = s.last_fire;
                st.fires = s.fires;
                st.errors = s.errors;
                st.last_error.clone_from(&s.last_error);
                st.loops_stopped = s.loops_stopped;
                st.skipped = s.skipped;
            }
            if let Some(info) = queue_of.get(&st.name).and_then(|q| infos.get(q)) {
                st.backlog = Some(info.messages);
                st.lag_ms = info.oldest_enqueued_at.map(|t| {
                    u64::try_from(now.duration_since(t).unwrap_or_default().as_millis())
                        .unwrap_or(u64::MAX)
                });
            }
        }
        out
    }

    /// Stops every trigger task (server shutdown): MQTT and NATS disconnect cleanly.
    pub async fn shutdown(&self) {
        let mut apps = self.inner.apps.lock().await;
        let tasks: Vec<Task> = std::mem::take(&mut *apps)
            .into_values()
            .flat_map(|e| e.triggers)
            .filter_map(|r| r.task)
            .collect();
        let drainer = self
            .inner
            .drainer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        stop_tasks(tasks.into_iter().chain(drainer).collect()).await;
        self.inner.objects.write().await.clear();
    }
}

#[cfg(test)]
mod tests;
