//! Object triggers: one task drains the object-event outbox for every app, delivers each
//! change to the object triggers in force that match it, and acknowledges the outbox rows
//! once every delivery is stored. Changes no trigger matches are acknowledged and dropped.

use crate::deliver::{Backoff, Ctx, Stop};
use crate::event::{self, Target};
use nubo_core::manifest::{self, ObjectTriggerSpec};
use nubo_store::objects::{ObjectEvent, ObjectEventKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

/// Outbox rows read at a time.
const BATCH: usize = 256;

/// How often the drainer looks even without a signal.
const POLL: Duration = Duration::from_secs(1);

/// An object trigger in force.
#[derive(Debug, Clone)]
pub(crate) struct ObjectTarget {
    /// Where it delivers.
    pub target: Target,
    /// What it matches.
    pub spec: ObjectTriggerSpec,
}

impl ObjectTarget {
    /// Whether this trigger delivers `ev`.
    pub fn matches(&self, ev: &ObjectEvent) -> bool {
        let kind = match ev.kind {
            ObjectEventKind::Created => manifest::ObjectEventKind::Created,
            ObjectEventKind::Deleted => manifest::ObjectEventKind::Deleted,
        };
        self.spec.bucket == ev.bucket && self.spec.matches(kind, &ev.key)
    }
}

/// The object triggers in force, by app. The drainer holds the read lock while it delivers a
/// batch, so a writer that changes the set knows that no delivery from a removed trigger
/// starts once it holds the lock.
pub(crate) type Registry = Arc<RwLock<BTreeMap<String, Vec<ObjectTarget>>>>;

/// Drains the outbox until told to stop.
pub(crate) async fn drain(ctx: Ctx, registry: Registry, mut stop: Stop) {
    let signal = ctx.store.objects().object_events_signal();
    let mut backoff = Backoff::new();
    loop {
        let events = match ctx.blocking(|s| s.objects().object_events(BATCH)).await {
            Some(Ok(events)) => events,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading object events failed");
                if stop.sleep(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
            None => Vec::new(),
        };
        if events.is_empty() {
            tokio::select! {
                () = stop.wait() => return,
                () = signal.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let full = events.len() == BATCH;
        let (handled, failed) = deliver_batch(&ctx, &registry, &events, &stop).await;
        if let Some(seq) = handled {
            match ctx
                .blocking(move |s| s.objects().ack_object_events(seq))
                .await
            {
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "acknowledging object events failed; they are delivered again and recognised by their idempotency keys");
                }
                _ => backoff.reset(),
            }
        }
        if stop.is_set() {
            return;
        }
        if failed {
            if stop.sleep(backoff.next_delay()).await {
                return;
            }
        } else if !full {
            // Everything read is handled; wait for the next change.
            tokio::select! {
                () = stop.wait() => return,
                () = signal.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// Delivers `events` in order to the triggers that match them. Returns the sequence number
/// up to which every event is handled, and whether a delivery failed (the rest wait).
async fn deliver_batch(
    ctx: &Ctx,
    registry: &Registry,
    events: &[ObjectEvent],
    stop: &Stop,
) -> (Option<i64>, bool) {
    let triggers = registry.read().await;
    let mut handled = None;
    for ev in events {
        if stop.is_set() {
            return (handled, false);
        }
        for t in triggers.values().flatten().filter(|t| t.matches(ev)) {
            if let Err(e) = ctx.deliver(&t.target, event::object(&t.target, ev)).await {
                ctx.failed(
                    &t.target,
                    &format!(
                        "the {} event of {}/{} was not stored and is delivered again later: {e}",
                        ev.kind.as_str(),
                        ev.bucket,
                        ev.key
                    ),
                )
                .await;
                return (handled, true);
            }
        }
        handled = Some(ev.seq);
    }
    (handled, false)
}
