//! What a wasm function may reach of a named host service (object buckets, queues): the
//! server's handle on the service and the names the function binds in its manifest, plus the
//! per-invocation state the host calls need (trigger hop count, trace context, where refusals
//! are logged).

use nubo_telemetry::{Invocation, Stream};
use std::sync::Arc;

/// A loaded function's bindings to one service: the service (`None` when the server runs
/// without it) and the names its manifest lists.
pub(crate) struct Bound<S> {
    service: Option<S>,
    names: Box<[String]>,
}

impl<S: Clone> Bound<S> {
    /// The bindings of a function that names `names`, against `service`.
    pub(crate) fn new(service: Option<S>, names: &[String]) -> Bound<S> {
        Bound {
            service,
            names: names.into(),
        }
    }
}

/// Why a name cannot be reached; the message names the fix.
pub(crate) enum Refused {
    /// The function does not bind the name.
    NotBound(String),
    /// The server runs without the service.
    NoService(String),
}

/// One kind of bound name, for messages: what it is and the manifest key that binds it.
pub(crate) struct Kind {
    /// "bucket", "queue".
    pub(crate) what: &'static str,
    /// "buckets", "queues".
    pub(crate) key: &'static str,
    /// Said when the server has no such service.
    pub(crate) missing: &'static str,
}

/// Per-invocation state: the function's bindings, the invocation's trigger hop count and
/// where refusals are logged.
pub(crate) struct BoundCtx<S> {
    bindings: Option<Arc<Bound<S>>>,
    /// The trigger hop count of the invocation (0 when no trigger started it).
    pub(crate) hop: u32,
    invocation: Option<Invocation>,
}

impl<S: Clone> BoundCtx<S> {
    /// State for one invocation at trigger hop `hop`; `bindings` is `None` for a function that
    /// binds no name of this service.
    pub(crate) fn new(
        bindings: Option<Arc<Bound<S>>>,
        hop: u32,
        invocation: Option<&Invocation>,
    ) -> BoundCtx<S> {
        BoundCtx {
            bindings,
            hop,
            invocation: invocation.cloned(),
        }
    }

    /// The `traceparent` naming the invocation's span, for the work it hands on (a queue
    /// message, an object event), so the deliveries it causes continue its trace.
    pub(crate) fn traceparent(&self) -> Option<String> {
        self.invocation
            .as_ref()
            .and_then(Invocation::trace)
            .map(nubo_telemetry::TraceContext::traceparent)
    }

    /// The service, when the function binds `name`; a refusal is logged with the fix.
    pub(crate) fn reach(&self, kind: &Kind, name: &str) -> Result<S, Refused> {
        let bound = self
            .bindings
            .as_ref()
            .filter(|b| b.names.iter().any(|n| n == name));
        let Some(bindings) = bound else {
            let fix = format!(
                "{} \"{name}\" is not bound to this function: add it to the function in \
                 nubo.toml ({} = [\"{name}\"]) and redeploy",
                kind.what, kind.key
            );
            if let Some(invocation) = &self.invocation {
                invocation.write_log(Stream::Stderr, format!("[nubo] {fix}\n").as_bytes());
            }
            return Err(Refused::NotBound(fix));
        };
        bindings
            .service
            .clone()
            .ok_or_else(|| Refused::NoService(kind.missing.to_owned()))
    }
}
