//! Queue triggers: one task per trigger claims a batch of messages under a lease, hands it
//! to the function as one async invocation, and removes the messages once that is stored.
//! Several triggers on one queue compete: each claim hides what it took from the others.

use crate::deliver::{Backoff, Ctx, Live, Stop};
use crate::event::{self, Target};
use nubo_core::limits::MAX_QUEUE_BATCH;
use nubo_core::manifest::{QueueTriggerSpec, Runtime};
use nubo_store::QueueMessage;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often an idle trigger looks for new messages.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How often a filling batch claims again during its window.
const WINDOW_POLL: Duration = Duration::from_millis(50);

/// Margin added to the lease over the batch window, so claimed messages stay hidden while the
/// batch fills and its delivery is stored.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Most messages per delivery for this trigger: one for a wasm function (one CloudEvent
/// each), the configured batch size (within the limit) for a process function.
pub(crate) fn batch_size(runtime: Runtime, spec: &QueueTriggerSpec) -> usize {
    match runtime {
        Runtime::Wasm => 1,
        Runtime::Process => spec.batch_size.clamp(1, MAX_QUEUE_BATCH) as usize,
    }
}

/// Runs one queue trigger until told to stop.
pub(crate) async fn run(
    ctx: Ctx,
    target: Target,
    spec: QueueTriggerSpec,
    live: Arc<Live>,
    mut stop: Stop,
) {
    let max = batch_size(target.runtime, &spec);
    let window = Duration::from_millis(spec.batch_window_ms);
    let lease = Duration::from_millis(spec.visibility_timeout_ms).max(window + LEASE_MARGIN);
    let queue = spec.queue.clone();
    let mut backoff = Backoff::new();
    let mut last_error: Option<String> = None;
    live.set_state("running");
    while !stop.is_set() {
        let mut batch = match claim(&ctx, &queue, max, lease).await {
            Ok(b) => b,
            Err(e) => {
                live.set_state("failed");
                // The same error over and over is counted once, until it changes or clears.
                if last_error.as_deref() != Some(e.as_str()) {
                    ctx.failed(&target, &e).await;
                    last_error = Some(e);
                }
                if stop.sleep(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        if last_error.take().is_some() {
            live.set_state("running");
        }
        backoff.reset();
        if batch.is_empty() {
            if stop.sleep(idle_wait(&ctx, &queue).await).await {
                return;
            }
            continue;
        }
        if batch.len() < max && !window.is_zero() {
            let until = Instant::now() + window;
            loop {
                let now = Instant::now();
                if batch.len() >= max || now >= until {
                    break;
                }
                if stop.sleep(WINDOW_POLL.min(until - now)).await {
                    release(&ctx, &queue, &batch, SystemTime::now()).await;
                    return;
                }
                match claim(&ctx, &queue, max - batch.len(), lease).await {
                    Ok(more) => batch.extend(more),
                    // Deliver what is there; the next claim reports the error.
                    Err(_) => break,
                }
            }
        }
        if stop.is_set() {
            release(&ctx, &queue, &batch, SystemTime::now()).await;
            return;
        }
        let delivery = event::queue(&target, &queue, &batch, SystemTime::now());
        let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
        match ctx.deliver(&target, delivery).await {
            Ok(_) => {
                let q = queue.clone();
                if let Some(Err(e)) = ctx.blocking(move |s| s.queues().ack(&q, &ids)).await {
                    // The delivery is stored; the messages come back after their lease and
                    // their repeat is recognised by its idempotency key.
                    tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "removing delivered queue messages failed");
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                ctx.failed(
                    &target,
                    &format!(
                        "a batch of {} message(s) from queue {queue:?} was not stored and stays in the queue: {e}",
                        batch.len()
                    ),
                )
                .await;
                release(&ctx, &queue, &batch, SystemTime::now() + delay).await;
                if stop.sleep(delay).await {
                    return;
                }
            }
        }
    }
}

async fn claim(
    ctx: &Ctx,
    queue: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<QueueMessage>, String> {
    let q = queue.to_string();
    match ctx
        .blocking(move |s| s.queues().claim(&q, max, lease))
        .await
    {
        Some(Ok(msgs)) => Ok(msgs),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("claiming from queue {queue:?} failed")),
    }
}

/// Makes claimed messages visible again at `at`, so they are not held for a whole lease.
async fn release(ctx: &Ctx, queue: &str, batch: &[QueueMessage], at: SystemTime) {
    let q = queue.to_string();
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    if let Some(Err(e)) = ctx
        .blocking(move |s| s.queues().release(&q, &ids, at))
        .await
    {
        tracing::warn!(queue, error = %e, "releasing queue messages failed; they come back when their lease ends");
    }
}

/// How long an idle trigger sleeps: the poll interval, or less when a leased message comes
/// back sooner.
async fn idle_wait(ctx: &Ctx, queue: &str) -> Duration {
    let q = queue.to_string();
    match ctx.blocking(move |s| s.queues().next_visible_at(&q)).await {
        Some(Ok(Some(at))) => at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .clamp(Duration::from_millis(10), IDLE_POLL),
        _ => IDLE_POLL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch_size: u32) -> QueueTriggerSpec {
        QueueTriggerSpec {
            queue: "orders".into(),
            batch_size,
            batch_window_ms: 0,
            visibility_timeout_ms: 30_000,
        }
    }

    #[test]
    fn wasm_functions_get_one_message_per_delivery() {
        assert_eq!(batch_size(Runtime::Wasm, &spec(10)), 1);
        assert_eq!(batch_size(Runtime::Process, &spec(10)), 10);
        assert_eq!(batch_size(Runtime::Process, &spec(0)), 1);
        assert_eq!(
            batch_size(Runtime::Process, &spec(100_000)),
            MAX_QUEUE_BATCH as usize
        );
    }
}
