//! MQTT triggers (rumqttc): one connection per trigger, subscribed to its topics on every
//! connect. With QoS 1 the session is persistent and a message is acknowledged (`PUBACK`)
//! only once its delivery is stored; a delivery that cannot be stored drops the connection,
//! so the broker sends the message again after the reconnect.

use crate::deliver::{Backoff, Ctx, Live, Stop};
use crate::event::{self, MqttMessage, Target};
use nubo_core::manifest::{Credential, MqttSpec};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, Transport,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Keep-alive interval of the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Requests (acks, subscriptions) that may wait for the event loop. Acks are sent with
/// `try_ack`, so a full channel drops the connection instead of blocking the loop.
const REQUEST_CAPACITY: usize = 1024;

/// Longest wait for a clean disconnect at stop.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Why a session ended.
enum End {
    /// Told to stop.
    Stopped,
    /// The connection failed or was dropped on purpose; reconnect after a backoff.
    Lost(String),
}

/// Splits `mqtt://host[:port]` / `mqtts://host[:port]` into (host, port, tls).
pub(crate) fn broker_address(url: &str) -> Result<(String, u16, bool), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("broker {url:?} needs a scheme (mqtt:// or mqtts://)"))?;
    let tls = match scheme {
        "mqtt" => false,
        "mqtts" => true,
        _ => return Err(format!("broker {url:?}: use mqtt:// or mqtts://")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("broker {url:?} has the invalid port {p:?}"))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("broker {url:?} names no host"));
    }
    Ok((host.to_string(), port, tls))
}

/// Reads a credential: text as written, or the app's secret of that name.
pub(crate) fn credential(ctx: &Ctx, app: &str, c: &Credential) -> Result<String, String> {
    match c {
        Credential::Text(t) => Ok(t.clone()),
        Credential::Secret(name) => {
            let secrets = ctx
                .store
                .secrets()
                .map_err(|e| format!("reading secret {name:?}: {e}"))?;
            let value = secrets.get(app, name).ok_or_else(|| {
                format!("secret {name:?} of app {app:?} is not set; set it with `nubo secrets set {app} {name}`")
            })?;
            String::from_utf8(value.to_vec())
                .map_err(|_| format!("secret {name:?} of app {app:?} is not UTF-8 text; set it again with `nubo secrets set {app} {name}`"))
        }
    }
}

/// TLS for `mqtts://`: rustls with the ring provider and Mozilla's roots (webpki-roots).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("setting up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn qos(n: u8) -> QoS {
    if n == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The connection options of a trigger.
fn options(ctx: &Ctx, target: &Target, spec: &MqttSpec) -> Result<MqttOptions, String> {
    let (host, port, tls) = broker_address(&spec.broker)?;
    let mut o = MqttOptions::new(spec.client_id.clone(), host, port);
    o.set_keep_alive(KEEP_ALIVE);
    // A persistent session with QoS 1: the broker keeps what was not acknowledged while
    // Nubo is away.
    o.set_clean_session(spec.qos == 0);
    o.set_manual_acks(true);
    o.set_request_channel_capacity(REQUEST_CAPACITY);
    if tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config()?)),
        ));
    }
    match (&spec.username, &spec.password) {
        (Some(user), password) => {
            let password = match password {
                Some(c) => credential(ctx, &target.app, c)?,
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        (None, Some(c)) => {
            let password = credential(ctx, &target.app, c)?;
            o.set_credentials(String::new(), password);
        }
        (None, None) => {}
    }
    Ok(o)
}

/// Runs one MQTT trigger until told to stop.
pub(crate) async fn run(ctx: Ctx, target: Target, spec: MqttSpec, live: Arc<Live>, mut stop: Stop) {
    let mut backoff = Backoff::new();
    loop {
        if stop.is_set() {
            return;
        }
        live.set_state("connecting");
        let opts = {
            let (ctx, target, spec) = (ctx.clone(), target.clone(), spec.clone());
            // Reading a secret may open the secrets database: off the async threads.
            tokio::task::spawn_blocking(move || options(&ctx, &target, &spec))
                .await
                .unwrap_or_else(|_| Err("reading the connection settings failed".into()))
        };
        let opts = match opts {
            Ok(o) => o,
            Err(e) => {
                live.set_state("failed");
                ctx.failed(&target, &e).await;
                if stop.sleep(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        let (client, mut events) = AsyncClient::new(opts, REQUEST_CAPACITY);
        let end = session(
            &ctx,
            &target,
            &spec,
            &live,
            &client,
            &mut events,
            &mut stop,
            &mut backoff,
        )
        .await;
        match end {
            End::Stopped => {
                disconnect(&client, &mut events).await;
                return;
            }
            End::Lost(e) => {
                live.set_state("disconnected");
                ctx.failed(&target, &format!("broker {}: {e}", spec.broker))
                    .await;
                // Dropping the client and its event loop closes the connection.
                drop(events);
                if stop.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

/// Says goodbye to the broker, waiting a little for the DISCONNECT to go out.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// One connection: connect, subscribe, deliver messages until the connection ends or the
/// trigger is told to stop.
#[allow(
    clippy::too_many_arguments,
    reason = "the pieces of one connection, kept apart for borrowing"
)]
async fn session(
    ctx: &Ctx,
    target: &Target,
    spec: &MqttSpec,
    live: &Live,
    client: &AsyncClient,
    events: &mut EventLoop,
    stop: &mut Stop,
    backoff: &mut Backoff,
) -> End {
    loop {
        let polled = tokio::select! {
            biased;
            () = stop.wait() => return End::Stopped,
            polled = events.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let topics = spec
                    .topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), qos(spec.qos)));
                if let Err(e) = client.try_subscribe_many(topics) {
                    return End::Lost(format!("subscribing failed: {e}"));
                }
                live.set_state("running");
                backoff.reset();
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    ctx.failed(
                        target,
                        &format!(
                            "broker {} refused a subscription to {}: check the broker's ACL for client {:?}",
                            spec.broker,
                            spec.topics.join(", "),
                            spec.client_id
                        ),
                    )
                    .await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if stop.is_set() {
                    return End::Stopped;
                }
                let msg = MqttMessage {
                    broker: &spec.broker,
                    topic: &p.topic,
                    qos: p.qos as u8,
                    retain: p.retain,
                    payload: &p.payload,
                };
                let delivery = event::mqtt(target, &msg, SystemTime::now());
                match ctx.deliver(target, delivery).await {
                    Ok(_) => {
                        if let Err(e) = client.try_ack(&p) {
                            return End::Lost(format!("acknowledging a message failed: {e}"));
                        }
                    }
                    Err(e) if p.qos == QoS::AtMostOnce => {
                        // QoS 0 is at most once: the broker would not send it again.
                        ctx.failed(
                            target,
                            &format!(
                                "a QoS 0 message on {:?} was not stored and is lost: {e}",
                                p.topic
                            ),
                        )
                        .await;
                    }
                    Err(e) => {
                        return End::Lost(format!(
                            "a message on {:?} was not stored ({e}); reconnecting so the broker sends it again",
                            p.topic
                        ));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => return End::Lost(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_give_host_port_and_tls() {
        assert_eq!(
            broker_address("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            broker_address("mqtts://broker.example.com").unwrap(),
            ("broker.example.com".into(), 8883, true)
        );
        assert_eq!(
            broker_address("mqtt://[::1]:1884").unwrap(),
            ("::1".into(), 1884, false)
        );
        assert!(broker_address("tcp://x").is_err());
        assert!(broker_address("mqtt://x:notaport").is_err());
    }

    #[test]
    fn tls_config_builds_with_the_ring_provider() {
        assert!(tls_config().is_ok());
    }
}
