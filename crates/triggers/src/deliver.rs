//! What every trigger task shares: submitting a delivery (or dead-lettering a loop),
//! recording what happened, the live figures `status` reads, and the stop signal.

use crate::Sink;
use crate::event::{Delivery, Target, loop_error};
use nubo_store::{Store, SubmitError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The store and the sink, shared by every task.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub sink: Arc<dyn Sink>,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Stored as a new async invocation.
    Stored,
    /// Its idempotency key was seen: stored before.
    Replay,
    /// Its chain passed the hop limit: stored in the dead-letter queue instead.
    LoopStopped,
}

impl Ctx {
    /// Runs a blocking store call off the async threads. `None` when the call panicked (the
    /// panic is logged; trigger tasks never bring the server down).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "a trigger's store call panicked");
                None
            }
        }
    }

    /// Submits `delivery`, or dead-letters it when its chain loops; records the fire or the
    /// stopped loop. A failed submission is returned for the caller to handle (and record with
    /// [`Ctx::failed`]), since what it means depends on the source.
    pub async fn deliver(
        &self,
        target: &Target,
        delivery: Delivery,
    ) -> Result<Delivered, SubmitError> {
        if delivery.loops() {
            let error = loop_error(target, delivery.hop);
            let t = target.clone();
            let event = delivery.event;
            self.blocking(move |s| {
                s.dead_letter_event(&event, &error)?;
                s.trigger_loop_stopped(&t.app, &t.trigger, t.kind)
            })
            .await
            .ok_or(SubmitError::Stopped)??;
            tracing::warn!(
                app = %target.app,
                trigger = %target.trigger,
                kind = target.kind,
                hop = delivery.hop,
                limit = nubo_core::limits::MAX_TRIGGER_HOPS,
                "trigger chain stopped as a loop; the delivery went to the dead-letter queue"
            );
            return Ok(Delivered::LoopStopped);
        }
        let accepted = self.sink.submit(delivery.event).await?;
        if accepted.replay {
            return Ok(Delivered::Replay);
        }
        let t = target.clone();
        let now = SystemTime::now();
        if let Some(Err(e)) = self
            .blocking(move |s| s.trigger_fired(&t.app, &t.trigger, t.kind, 1, now))
            .await
        {
            tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "recording a trigger fire failed");
        }
        Ok(Delivered::Stored)
    }

    /// Records a failure of the trigger (counted, last error kept) and logs it at warn.
    pub async fn failed(&self, target: &Target, error: &str) {
        tracing::warn!(
            app = %target.app,
            trigger = %target.trigger,
            kind = target.kind,
            error,
            "trigger failed"
        );
        let t = target.clone();
        let error = error.to_string();
        if let Some(Err(e)) = self
            .blocking(move |s| s.trigger_failed(&t.app, &t.trigger, t.kind, &error))
            .await
        {
            tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "recording a trigger failure failed");
        }
    }
}

/// What a trigger's task knows right now, for `status`.
#[derive(Debug, Default)]
pub(crate) struct Live(Mutex<LiveFigures>);

/// The figures in [`Live`].
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveFigures {
    /// `running`, `connecting`, `disconnected` or `failed`.
    pub state: &'static str,
    /// For cron: the next tick.
    pub next_fire: Option<SystemTime>,
    /// For JetStream: the consumer's pending messages.
    pub backlog: Option<u64>,
}

impl Live {
    /// A fresh record in `state`.
    pub fn new(state: &'static str) -> Live {
        Live(Mutex::new(LiveFigures {
            state,
            ..LiveFigures::default()
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveFigures> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the figures.
    pub fn get(&self) -> LiveFigures {
        self.lock().clone()
    }

    /// Sets the state.
    pub fn set_state(&self, state: &'static str) {
        self.lock().state = state;
    }

    /// Sets the next cron tick.
    pub fn set_next_fire(&self, at: Option<SystemTime>) {
        self.lock().next_fire = at;
    }

    /// Sets the backlog.
    pub fn set_backlog(&self, n: Option<u64>) {
        self.lock().backlog = n;
    }
}

/// The receiving end of a task's stop signal.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal and its sender; sending `true` (or dropping the sender) stops the task.
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Whether the task was told to stop.
    pub fn is_set(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once the task is told to stop.
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which stops the task as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `d`; true when told to stop meanwhile.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = self.wait() => true,
            () = tokio::time::sleep(d) => self.is_set(),
        }
    }
}

/// Reconnection backoff: 0.5 s doubling to 30 s, back to the start once connected.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    /// At the first step.
    pub fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    /// The delay to wait now; the next one is twice as long, up to 30 s.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn stop_is_seen_by_waiters_and_sleepers() {
        let (tx, mut stop) = Stop::new();
        assert!(!stop.is_set());
        tx.send(true).unwrap();
        assert!(stop.is_set());
        assert!(stop.sleep(Duration::from_secs(3600)).await);
        let (tx, stop) = Stop::new();
        drop(tx);
        assert!(stop.is_set());
    }
}
