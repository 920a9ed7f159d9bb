//! NATS triggers (async-nats): a core subscription (at most once; optionally in a queue
//! group) or a durable JetStream pull consumer whose messages are acknowledged only once
//! their delivery is stored, and negatively acknowledged (redelivered after a second) when
//! it cannot be.

use crate::deliver::{Backoff, Ctx, Live, Stop};
use crate::event::{self, NatsMessage, Target};
use crate::mqtt::credential;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt as _;
use nubo_core::manifest::NatsSpec;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a JetStream message may stay unacknowledged before the server sends it again.
/// Nubo acknowledges once the delivery is stored (milliseconds), not once it ran, so this only
/// bounds how long messages fetched by a server that died wait for redelivery; a redelivered
/// message that was stored already is recognised by its idempotency key.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long a message whose delivery was not stored waits before the server sends it again.
const NAK_DELAY: Duration = Duration::from_secs(1);

/// How often the consumer's backlog is read for `status`.
const BACKLOG_EVERY: Duration = Duration::from_secs(2);

/// Longest wait for connecting and for a clean close.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended.
enum End {
    Stopped,
    Lost(String),
}

/// The durable consumer's name: as configured, else `nubo-{app}-{trigger}`.
pub(crate) fn consumer_name(target: &Target, spec: &NatsSpec) -> String {
    spec.consumer
        .clone()
        .unwrap_or_else(|| format!("nubo-{}-{}", target.app, target.trigger))
}

/// The connection options: authentication, a name the server shows, and the live state kept
/// up to date as the client reconnects on its own.
fn options(
    ctx: &Ctx,
    target: &Target,
    spec: &NatsSpec,
    live: &Arc<Live>,
) -> Result<async_nats::ConnectOptions, String> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("nubo-{}-{}", target.app, target.trigger))
        .connection_timeout(CONNECT_TIMEOUT);
    if let Some(token) = &spec.token {
        o = o.token(credential(ctx, &target.app, token)?);
    }
    if let Some(user) = &spec.username {
        let password = match &spec.password {
            Some(c) => credential(ctx, &target.app, c)?,
            None => String::new(),
        };
        o = o.user_and_password(user.clone(), password);
    }
    let live = live.clone();
    Ok(o.event_callback(move |ev| {
        let live = live.clone();
        async move {
            match ev {
                async_nats::Event::Connected => live.set_state("running"),
                async_nats::Event::Disconnected => live.set_state("disconnected"),
                _ => {}
            }
        }
    }))
}

/// Runs one NATS trigger until told to stop.
pub(crate) async fn run(ctx: Ctx, target: Target, spec: NatsSpec, live: Arc<Live>, mut stop: Stop) {
    let mut backoff = Backoff::new();
    loop {
        if stop.is_set() {
            return;
        }
        live.set_state("connecting");
        let opts = {
            let (ctx, target, spec, live) =
                (ctx.clone(), target.clone(), spec.clone(), live.clone());
            tokio::task::spawn_blocking(move || options(&ctx, &target, &spec, &live))
                .await
                .unwrap_or_else(|_| Err("reading the connection settings failed".into()))
        };
        let end = match opts {
            Err(e) => {
                live.set_state("failed");
                End::Lost(e)
            }
            Ok(opts) => {
                let connected = tokio::select! {
                    () = stop.wait() => return,
                    c = opts.connect(spec.server.as_str()) => c,
                };
                match connected {
                    Err(e) => {
                        live.set_state("disconnected");
                        End::Lost(format!("connecting to {}: {e}", spec.server))
                    }
                    Ok(client) => {
                        let end = match &spec.stream {
                            Some(stream) => {
                                jetstream_session(
                                    &ctx,
                                    &target,
                                    &spec,
                                    stream,
                                    &client,
                                    &live,
                                    &mut stop,
                                    &mut backoff,
                                )
                                .await
                            }
                            None => {
                                core_session(
                                    &ctx,
                                    &target,
                                    &spec,
                                    &client,
                                    &live,
                                    &mut stop,
                                    &mut backoff,
                                )
                                .await
                            }
                        };
                        // Close cleanly: what was sent is flushed, the subscription ends.
                        let _ = tokio::time::timeout(CONNECT_TIMEOUT, client.drain()).await;
                        end
                    }
                }
            }
        };
        match end {
            End::Stopped => return,
            End::Lost(e) => {
                if live.get().state == "running" {
                    live.set_state("disconnected");
                }
                ctx.failed(&target, &e).await;
                if stop.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

fn headers_of(msg: &async_nats::Message) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            for v in values {
                out.push((name.to_string(), v.to_string()));
            }
        }
    }
    out.sort();
    out
}

/// A core NATS subscription: each message is submitted once (core NATS has no acks).
async fn core_session(
    ctx: &Ctx,
    target: &Target,
    spec: &NatsSpec,
    client: &async_nats::Client,
    live: &Live,
    stop: &mut Stop,
    backoff: &mut Backoff,
) -> End {
    let sub = match &spec.queue_group {
        Some(group) => {
            client
                .queue_subscribe(spec.subject.clone(), group.clone())
                .await
        }
        None => client.subscribe(spec.subject.clone()).await,
    };
    let mut sub = match sub {
        Ok(s) => s,
        Err(e) => return End::Lost(format!("subscribing to {:?}: {e}", spec.subject)),
    };
    live.set_state("running");
    backoff.reset();
    loop {
        let msg = tokio::select! {
            biased;
            () = stop.wait() => {
                let _ = sub.unsubscribe().await;
                return End::Stopped;
            }
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else {
            return End::Lost("the subscription ended".into());
        };
        let m = NatsMessage {
            server: &spec.server,
            subject: msg.subject.as_str(),
            stream: None,
            headers: headers_of(&msg),
            payload: &msg.payload,
        };
        if let Err(e) = ctx
            .deliver(target, event::nats(target, &m, SystemTime::now()))
            .await
        {
            // Nothing to send back: core NATS delivers at most once.
            ctx.failed(
                target,
                &format!(
                    "a message on {:?} was not stored and is lost: {e}",
                    m.subject
                ),
            )
            .await;
        }
    }
}

/// A durable JetStream pull consumer: each message acknowledged once its delivery is stored.
#[allow(
    clippy::too_many_arguments,
    reason = "the pieces of one connection, kept apart for borrowing"
)]
async fn jetstream_session(
    ctx: &Ctx,
    target: &Target,
    spec: &NatsSpec,
    stream_name: &str,
    client: &async_nats::Client,
    live: &Live,
    stop: &mut Stop,
    backoff: &mut Backoff,
) -> End {
    let js = jetstream::new(client.clone());
    let stream = match js.get_stream(stream_name).await {
        Ok(s) => s,
        Err(e) => {
            let missing = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(err)
                    if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            live.set_state("failed");
            return End::Lost(if missing {
                format!(
                    "JetStream stream {stream_name} does not exist; create it (nats stream add {stream_name} --subjects {:?})",
                    spec.subject
                )
            } else {
                format!("reading JetStream stream {stream_name}: {e}")
            });
        }
    };
    let name = consumer_name(target, spec);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: spec.subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        ..Default::default()
    };
    let mut consumer: jetstream::consumer::Consumer<pull::Config> =
        match stream.get_or_create_consumer(&name, config).await {
            Ok(c) => c,
            Err(e) => {
                live.set_state("failed");
                return End::Lost(format!(
                    "creating JetStream consumer {name} on stream {stream_name}: {e}"
                ));
            }
        };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return End::Lost(format!("reading JetStream consumer {name}: {e}")),
    };
    live.set_state("running");
    backoff.reset();
    let mut backlog_tick = tokio::time::interval(BACKLOG_EVERY);
    loop {
        let next = tokio::select! {
            biased;
            () = stop.wait() => return End::Stopped,
            _ = backlog_tick.tick() => {
                if let Ok(info) = consumer.info().await {
                    live.set_backlog(Some(info.num_pending));
                }
                continue;
            }
            next = messages.next() => next,
        };
        let msg = match next {
            None => return End::Lost(format!("JetStream consumer {name} ended")),
            Some(Err(e)) => return End::Lost(format!("reading JetStream consumer {name}: {e}")),
            Some(Ok(m)) => m,
        };
        let seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "a JetStream message without metadata was skipped");
                continue;
            }
        };
        let m = NatsMessage {
            server: &spec.server,
            subject: msg.subject.as_str(),
            stream: Some((stream_name, seq)),
            headers: headers_of(&msg.message),
            payload: &msg.payload,
        };
        match ctx
            .deliver(target, event::nats(target, &m, SystemTime::now()))
            .await
        {
            Ok(_) => {
                if let Err(e) = msg.ack().await {
                    // Stored already; the redelivery is recognised by its idempotency key.
                    tracing::warn!(app = %target.app, trigger = %target.trigger, error = %e, "acknowledging a JetStream message failed");
                }
            }
            Err(e) => {
                ctx.failed(
                    target,
                    &format!(
                        "message {seq} of stream {stream_name} was not stored and comes again: {e}"
                    ),
                )
                .await;
                let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
            }
        }
    }
}
