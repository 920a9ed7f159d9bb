//! The host side of `nubo:queues/publisher@0.1.0` (WIT in `wit/nubo-queues/` at the repository
//! root): wasm functions publish messages to the queues they bind (`queues = [...]` in the
//! manifest), backed by `nubo_store::Queues`.
//!
//! A queue the function does not bind is refused with `not-bound` and a line in the
//! invocation's log naming the manifest fix. Every message carries the hop count of the
//! invocation that published it, so a queue trigger's delivery runs one hop further and a
//! chain of functions feeding each other is stopped after `MAX_TRIGGER_HOPS`. A publish is
//! durable (fsync'd) when it returns, so it blocks: it runs on tokio's blocking pool while the
//! guest waits.

use crate::bound::{Bound, BoundCtx, Kind, Refused};
use nubo_core::ErrorCode;
use nubo_store::{MAX_MESSAGE_BYTES, NewMessage, QueueError, Queues};
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/nubo-queues",
        world: "nubo:queues/imports",
        imports: { default: async | trappable },
    });
}

use bindings::nubo::queues::publisher;

/// What a loaded function may reach: the server's queues and the names it binds.
pub(crate) type QueueBindings = Bound<Queues>;

/// Per-invocation queue state: the bindings, the trigger hop count, the log.
pub(crate) type QueueCtx = BoundCtx<Queues>;

/// How queues are named in refusals.
const QUEUES: Kind = Kind {
    what: "queue",
    key: "queues",
    missing: "this server has no queues: start it with a data directory",
};

/// The queues, when the function binds `queue`; a refusal is logged with the fix.
fn reach(ctx: &QueueCtx, queue: &str) -> Result<Queues, publisher::Error> {
    ctx.reach(&QUEUES, queue).map_err(|r| match r {
        Refused::NotBound(m) => publisher::Error::NotBound(m),
        Refused::NoService(m) => publisher::Error::Other(m),
    })
}

struct HasQueues;

impl HasData for HasQueues {
    type Data<'a> = &'a mut QueueCtx;
}

/// Adds the `nubo:queues/publisher` interface to `linker`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut QueueCtx,
) -> wasmtime::Result<()> {
    publisher::add_to_linker::<_, HasQueues>(linker, view)
}

/// The WIT error for a store error; messages name the limit or the fix.
#[expect(
    clippy::needless_pass_by_value,
    reason = "taken by value to be passed to map_err as a function"
)]
fn wit_error(error: QueueError) -> publisher::Error {
    match &error {
        QueueError::NoSuchQueue(_) => return publisher::Error::NoSuchQueue(error.to_string()),
        QueueError::Full { .. } => return publisher::Error::Full(error.to_string()),
        QueueError::TooLarge { .. } => return publisher::Error::TooLarge(error.to_string()),
        _ => {}
    }
    if error.code() == ErrorCode::Internal {
        tracing::warn!(error = %error, "queue publish failed");
        return publisher::Error::Other(
            "the queue publish failed; the server log has details".into(),
        );
    }
    publisher::Error::Other(error.to_string())
}

impl publisher::Host for QueueCtx {
    async fn publish(
        &mut self,
        queue: String,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> wasmtime::Result<Result<String, publisher::Error>> {
        let queues = match reach(self, &queue) {
            Ok(queues) => queues,
            Err(e) => return Ok(Err(e)),
        };
        if body.len() > MAX_MESSAGE_BYTES {
            // Refused before the copy crosses to the blocking pool.
            return Ok(Err(wit_error(QueueError::TooLarge {
                size: body.len(),
                limit: MAX_MESSAGE_BYTES,
            })));
        }
        let message = NewMessage {
            body,
            content_type,
            hop: self.hop,
        };
        let traceparent = self.traceparent();
        tokio::task::spawn_blocking(move || {
            let ids = queues
                .publish_traced(&queue, vec![message], traceparent.as_deref())
                .map_err(wit_error)?;
            ids.into_iter().next().ok_or_else(|| {
                publisher::Error::Other("the queue stored no message; publish it again".into())
            })
        })
        .await
        .map_err(|e| wasmtime::Error::msg(format!("a queue publish failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher::Host as _;
    use std::sync::Arc;

    fn ctx(store: &nubo_store::Store, names: &[&str], hop: u32) -> QueueCtx {
        let bound: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        QueueCtx::new(
            Some(Arc::new(QueueBindings::new(Some(store.queues()), &bound))),
            hop,
            None,
        )
    }

    #[tokio::test]
    async fn a_bound_queue_takes_messages_at_the_invocations_hop() {
        let dir = tempfile::tempdir().unwrap();
        let store = nubo_store::Store::open(dir.path()).unwrap();
        store.queues().create("orders").unwrap();
        let mut c = ctx(&store, &["orders"], 3);
        let id = c
            .publish(
                "orders".into(),
                b"{\"n\":1}".to_vec(),
                Some("application/json".into()),
            )
            .await
            .unwrap()
            .unwrap();
        let claimed = store
            .queues()
            .claim("orders", 10, std::time::Duration::from_secs(30))
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, id);
        assert_eq!(claimed[0].body, b"{\"n\":1}");
        assert_eq!(claimed[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(claimed[0].hop, 3);
    }

    #[tokio::test]
    async fn unbound_missing_and_oversized_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = nubo_store::Store::open(dir.path()).unwrap();
        store.queues().create("orders").unwrap();
        store.queues().create("private").unwrap();
        let mut c = ctx(&store, &["orders", "gone"], 0);
        match c
            .publish("private".into(), b"x".to_vec(), None)
            .await
            .unwrap()
        {
            Err(publisher::Error::NotBound(message)) => {
                assert!(message.contains("queues = [\"private\"]"), "{message}");
            }
            other => panic!("expected not-bound, got {other:?}"),
        }
        assert!(store.queues().info("private").unwrap().unwrap().messages == 0);
        assert!(matches!(
            c.publish("gone".into(), b"x".to_vec(), None).await.unwrap(),
            Err(publisher::Error::NoSuchQueue(_))
        ));
        assert!(matches!(
            c.publish("orders".into(), vec![0; MAX_MESSAGE_BYTES + 1], None)
                .await
                .unwrap(),
            Err(publisher::Error::TooLarge(_))
        ));
        let mut none = QueueCtx::new(None, 0, None);
        assert!(matches!(
            none.publish("orders".into(), b"x".to_vec(), None)
                .await
                .unwrap(),
            Err(publisher::Error::NotBound(_))
        ));
    }
}
