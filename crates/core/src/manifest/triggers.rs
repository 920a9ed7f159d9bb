//! Triggers in `nubo.toml`: `[[trigger.cron]]`, `[[trigger.queue]]`, `[[trigger.object]]`,
//! `[[trigger.mqtt]]` and `[[trigger.nats]]`, each bound to a function of the app.
//!
//! Triggers are part of the app revision: a deploy that changes them switches them together
//! with the code.

use super::{FunctionSpec, ManifestError, Runtime, Src};
use crate::limits;
use crate::units::HumanDuration;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

/// One trigger: an event source bound to a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// Unique within the app: `name` as written, else `{kind}-{function}` (with `-2`, `-3`, …
    /// for further triggers of the same kind on the same function).
    pub name: String,
    /// The function it delivers to.
    pub function: String,
    /// Where its events come from.
    pub source: TriggerSource,
}

/// Where a trigger's events come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerSource {
    /// A schedule.
    Cron(CronSpec),
    /// One of Nubo's durable queues.
    Queue(QueueTriggerSpec),
    /// Changes in a bucket of Nubo's object storage.
    Object(ObjectTriggerSpec),
    /// Messages on an MQTT broker.
    Mqtt(MqttSpec),
    /// Messages on a NATS server, core or JetStream.
    Nats(NatsSpec),
}

impl TriggerSource {
    /// The kind's name as written in the manifest (`cron`, `queue`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            TriggerSource::Cron(_) => "cron",
            TriggerSource::Queue(_) => "queue",
            TriggerSource::Object(_) => "object",
            TriggerSource::Mqtt(_) => "mqtt",
            TriggerSource::Nats(_) => "nats",
        }
    }
}

/// `[[trigger.cron]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSpec {
    /// As written: a 5- or 6-field cron expression, a nickname (`@hourly`, `@daily`, …) or
    /// `@every DURATION`.
    pub schedule: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// What happens to ticks that fell while the server was down.
    pub missed: Missed,
}

impl CronSpec {
    /// The schedule, parsed. Always succeeds for a spec that came out of [`super::parse`].
    pub fn parsed(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.schedule, &self.timezone)
    }
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression in a time zone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    /// A fixed interval, counted from the Unix epoch, so ticks fall at the same instants
    /// whenever the server starts.
    Every(Duration),
}

impl Schedule {
    /// Parses `schedule` in time zone `timezone`.
    pub fn parse(schedule: &str, timezone: &str) -> Result<Schedule, String> {
        let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| {
            format!("unknown time zone {timezone:?}: use an IANA name such as \"UTC\", \"Europe/Paris\" or \"America/New_York\"")
        })?;
        let s = schedule.trim();
        if let Some(every) = s.strip_prefix("@every") {
            let d = crate::units::parse_duration(every.trim())
                .map_err(|e| format!("@every needs a duration such as \"@every 30s\": {e}"))?;
            if d < Duration::from_secs(1) {
                return Err("@every must be at least 1s".into());
            }
            return Ok(Schedule::Every(d));
        }
        let cron = croner::Cron::from_str(s).map_err(|e| {
            format!("{s:?} is not a cron expression ({e}); write 5 fields (minute hour day month weekday), 6 with seconds first, a nickname like \"@hourly\", or \"@every 30s\"")
        })?;
        Ok(Schedule::Cron(Box::new(cron), tz))
    }

    /// The first tick strictly after `after`, if there is one.
    pub fn next_after(&self, after: std::time::SystemTime) -> Option<std::time::SystemTime> {
        use std::time::UNIX_EPOCH;
        match self {
            Schedule::Every(d) => {
                let since = after.duration_since(UNIX_EPOCH).ok()?;
                let step = d.as_millis().max(1);
                let n = since.as_millis() / step + 1;
                let ms = u64::try_from(n * step).ok()?;
                Some(UNIX_EPOCH + Duration::from_millis(ms))
            }
            Schedule::Cron(cron, tz) => {
                let ms = i64::try_from(after.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
                let utc = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)?;
                let local = utc.with_timezone(tz);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                let ms = u64::try_from(next.timestamp_millis()).ok()?;
                Some(UNIX_EPOCH + Duration::from_millis(ms))
            }
        }
    }
}

/// What a cron trigger does with ticks missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire none of them; the trigger's record counts them as skipped.
    #[default]
    Skip,
    /// Fire each of them (at most [`MAX_CATCH_UP`]), oldest first.
    CatchUp,
}

/// Most missed ticks a `catch_up` cron trigger fires after downtime; older ones are skipped
/// and counted.
pub const MAX_CATCH_UP: usize = 1_000;

/// `[[trigger.queue]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTriggerSpec {
    /// The queue (created by the deploy when missing).
    pub queue: String,
    /// Most messages per delivery.
    pub batch_size: u32,
    /// How long to wait for a batch to fill once a message is there (0: deliver at once).
    pub batch_window_ms: u64,
    /// How long messages taken for a delivery stay hidden from other claims, until they are
    /// durably handed to the function's async invocation.
    pub visibility_timeout_ms: u64,
}

/// `[[trigger.object]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectTriggerSpec {
    /// The bucket watched.
    pub bucket: String,
    /// Which changes.
    pub events: Vec<ObjectEventKind>,
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys ending with this.
    pub suffix: String,
}

impl ObjectTriggerSpec {
    /// Whether a change of `kind` at `key` is one this trigger delivers.
    pub fn matches(&self, kind: ObjectEventKind, key: &str) -> bool {
        self.events.contains(&kind) && key.starts_with(&self.prefix) && key.ends_with(&self.suffix)
    }
}

/// A change of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectEventKind {
    /// Written (put, copy, completed multipart upload), new or replaced.
    Created,
    /// Deleted.
    Deleted,
}

impl ObjectEventKind {
    /// The name as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectEventKind::Created => "created",
            ObjectEventKind::Deleted => "deleted",
        }
    }
}

/// A password or token: text in the manifest, or the name of one of the app's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// Written in the manifest (and so stored with the revision).
    Text(String),
    /// The app's secret of this name (`nubo secrets set`), read when the trigger connects.
    Secret(String),
}

/// `[[trigger.mqtt]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSpec {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, 8883).
    pub broker: String,
    /// Topic filters subscribed to (`+` and `#` wildcards).
    pub topics: Vec<String>,
    /// 0 (at most once) or 1 (at least once: acknowledged only once stored by Nubo).
    pub qos: u8,
    /// The MQTT client id; with QoS 1 the broker keeps the session under it while Nubo is down.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<Credential>,
}

/// `[[trigger.nats]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsSpec {
    /// `nats://host[:port]` (default port 4222), or `tls://host[:port]`.
    pub server: String,
    /// Subject (core NATS, `*` and `>` wildcards allowed), or the filter subject of the
    /// JetStream consumer.
    pub subject: String,
    /// Core NATS queue group, so several Nubo nodes share the messages.
    pub queue_group: Option<String>,
    /// JetStream stream to consume from; messages are acknowledged once stored by Nubo.
    pub stream: Option<String>,
    /// Durable consumer name (default `nubo-{app}-{trigger}`) when `stream` is set.
    pub consumer: Option<String>,
    /// Token authentication.
    pub token: Option<Credential>,
    /// User name for user/password authentication.
    pub username: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<Credential>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTriggers {
    #[serde(default)]
    cron: Vec<Spanned<RawCron>>,
    #[serde(default)]
    queue: Vec<Spanned<RawQueue>>,
    #[serde(default)]
    object: Vec<Spanned<RawObject>>,
    #[serde(default)]
    mqtt: Vec<Spanned<RawMqtt>>,
    #[serde(default)]
    nats: Vec<Spanned<RawNats>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCron {
    name: Option<Spanned<String>>,
    function: Spanned<String>,
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    missed: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: Option<Spanned<String>>,
    function: Spanned<String>,
    queue: Spanned<String>,
    batch_size: Option<Spanned<i64>>,
    batch_window: Option<Spanned<HumanDuration>>,
    visibility_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    name: Option<Spanned<String>>,
    function: Spanned<String>,
    bucket: Spanned<String>,
    events: Option<Spanned<Vec<String>>>,
    prefix: Option<String>,
    suffix: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCredential {
    Text(String),
    Secret { secret: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    name: Option<Spanned<String>>,
    function: Spanned<String>,
    broker: Spanned<String>,
    topics: Spanned<Vec<String>>,
    qos: Option<Spanned<i64>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password: Option<Spanned<RawCredential>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    name: Option<Spanned<String>>,
    function: Spanned<String>,
    server: Option<Spanned<String>>,
    subject: Spanned<String>,
    queue_group: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    consumer: Option<Spanned<String>>,
    token: Option<Spanned<RawCredential>>,
    username: Option<String>,
    password: Option<Spanned<RawCredential>>,
}

/// Keys accepted in each trigger table, for "did you mean" hints.
pub(super) const CRON_KEYS: &[&str] = &["name", "function", "schedule", "timezone", "missed"];
pub(super) const QUEUE_KEYS: &[&str] = &[
    "name",
    "function",
    "queue",
    "batch_size",
    "batch_window",
    "visibility_timeout",
];
pub(super) const OBJECT_KEYS: &[&str] =
    &["name", "function", "bucket", "events", "prefix", "suffix"];
pub(super) const MQTT_KEYS: &[&str] = &[
    "name",
    "function",
    "broker",
    "topics",
    "qos",
    "client_id",
    "username",
    "password",
];
pub(super) const NATS_KEYS: &[&str] = &[
    "name",
    "function",
    "server",
    "subject",
    "queue_group",
    "stream",
    "consumer",
    "token",
    "username",
    "password",
];
pub(super) const TRIGGER_KINDS: &[&str] = &["cron", "queue", "object", "mqtt", "nats"];

/// The keys of the trigger table `table` (`[[trigger.cron]]`, …), for unknown-key hints.
pub(super) fn keys_of(table: &str) -> Option<&'static [&'static str]> {
    Some(match table {
        "[[trigger.cron]]" => CRON_KEYS,
        "[[trigger.queue]]" => QUEUE_KEYS,
        "[[trigger.object]]" => OBJECT_KEYS,
        "[[trigger.mqtt]]" => MQTT_KEYS,
        "[[trigger.nats]]" => NATS_KEYS,
        "[trigger]" => TRIGGER_KINDS,
        _ => return None,
    })
}

/// Default settings.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
/// Process functions get SQS-style batches of up to this many by default.
const DEFAULT_PROCESS_BATCH: u32 = 10;
/// The NATS server when none is named.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Checks the `[trigger]` tables against the app's functions.
pub(super) fn validate(
    src: &Src<'_>,
    app: &str,
    raw: Option<&RawTriggers>,
    functions: &BTreeMap<String, FunctionSpec>,
    errs: &mut Vec<ManifestError>,
) -> Vec<TriggerSpec> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    // (kind, function, explicit name, line, source)
    let mut found: Vec<(Option<String>, String, usize, TriggerSource, &'static str)> = Vec::new();
    let check_fn = |f: &Spanned<String>, table: &str, errs: &mut Vec<ManifestError>| {
        let name = f.get_ref();
        if functions.contains_key(name) {
            true
        } else {
            let known: Vec<&str> = functions.keys().map(String::as_str).collect();
            errs.push(src.err(
                f,
                format!(
                    "{table} points to unknown function {name:?}: define [function.{name}] or use one of: {}",
                    known.join(", ")
                ),
            ));
            false
        }
    };
    let name_of = |n: &Option<Spanned<String>>, table: &str, errs: &mut Vec<ManifestError>| {
        let n = n.as_ref()?;
        match crate::validate_name("trigger", n.get_ref()) {
            Ok(()) => Some(n.get_ref().clone()),
            Err(e) => {
                errs.push(src.err(n, format!("{table} name: {e}")));
                None
            }
        }
    };

    for c in &raw.cron {
        let t = "[[trigger.cron]]";
        let line = src.line(c.span().start);
        let c = c.get_ref();
        let ok = check_fn(&c.function, t, errs);
        let timezone = c
            .timezone
            .as_ref()
            .map_or_else(|| "UTC".to_string(), |z| z.get_ref().clone());
        if let Err(e) = Schedule::parse(c.schedule.get_ref(), &timezone) {
            let at = if e.starts_with("unknown time zone") {
                c.timezone
                    .as_ref()
                    .map_or_else(|| src.err(&c.schedule, ""), |z| src.err(z, ""))
            } else {
                src.err(&c.schedule, "")
            };
            errs.push(ManifestError {
                line: at.line,
                message: format!("{t} schedule: {e}"),
            });
        }
        let missed = match c.missed.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "skip")) => Missed::Skip,
            Some((_, "catch_up")) => Missed::CatchUp,
            Some((m, other)) => {
                errs.push(src.err(
                    m,
                    format!("{t} missed = {other:?}: use \"skip\" (ticks missed while the server was down are not fired) or \"catch_up\" (each is fired once after start)"),
                ));
                Missed::Skip
            }
        };
        let name = name_of(&c.name, t, errs);
        if ok {
            found.push((
                name,
                c.function.get_ref().clone(),
                line,
                TriggerSource::Cron(CronSpec {
                    schedule: c.schedule.get_ref().trim().to_string(),
                    timezone,
                    missed,
                }),
                "cron",
            ));
        }
    }

    for q in &raw.queue {
        let t = "[[trigger.queue]]";
        let line = src.line(q.span().start);
        let q = q.get_ref();
        let ok = check_fn(&q.function, t, errs);
        if let Err(e) = crate::validate_name("queue", q.queue.get_ref()) {
            errs.push(src.err(&q.queue, format!("{t} queue: {e}")));
        }
        let runtime = functions
            .get(q.function.get_ref())
            .map_or(Runtime::Wasm, |f| f.runtime);
        let batch_size = match &q.batch_size {
            None => match runtime {
                Runtime::Wasm => 1,
                Runtime::Process => DEFAULT_PROCESS_BATCH,
            },
            Some(n) => {
                let v = *n.get_ref();
                if v < 1 || v > i64::from(limits::MAX_QUEUE_BATCH) {
                    errs.push(src.err(
                        n,
                        format!(
                            "{t} batch_size must be between 1 and {}",
                            limits::MAX_QUEUE_BATCH
                        ),
                    ));
                    1
                } else if v > 1 && runtime == Runtime::Wasm {
                    errs.push(src.err(
                        n,
                        format!("{t} batch_size = {v}: a wasm function receives one CloudEvent per message; remove batch_size, or use a process function to receive SQS-style batches"),
                    ));
                    1
                } else {
                    v as u32
                }
            }
        };
        let batch_window = q.batch_window.as_ref().map_or(Duration::ZERO, |w| {
            let d = w.get_ref().0;
            if d > limits::MAX_BATCH_WINDOW {
                errs.push(src.err(
                    w,
                    format!(
                        "{t} batch_window must be at most {}s",
                        limits::MAX_BATCH_WINDOW.as_secs()
                    ),
                ));
            }
            d
        });
        let visibility = q
            .visibility_timeout
            .as_ref()
            .map_or(DEFAULT_VISIBILITY, |v| {
                let d = v.get_ref().0;
                if d < Duration::from_secs(1) || d > Duration::from_secs(12 * 3600) {
                    errs.push(src.err(
                        v,
                        format!("{t} visibility_timeout must be between 1s and 12h"),
                    ));
                }
                d
            });
        let name = name_of(&q.name, t, errs);
        if ok {
            found.push((
                name,
                q.function.get_ref().clone(),
                line,
                TriggerSource::Queue(QueueTriggerSpec {
                    queue: q.queue.get_ref().clone(),
                    batch_size,
                    batch_window_ms: batch_window.as_millis() as u64,
                    visibility_timeout_ms: visibility.as_millis() as u64,
                }),
                "queue",
            ));
        }
    }

    for o in &raw.object {
        let t = "[[trigger.object]]";
        let line = src.line(o.span().start);
        let o = o.get_ref();
        let ok = check_fn(&o.function, t, errs);
        if let Err(e) = crate::validate_bucket_name(o.bucket.get_ref()) {
            errs.push(src.err(&o.bucket, format!("{t} bucket: {e}")));
        }
        let mut events = Vec::new();
        match &o.events {
            None => events.push(ObjectEventKind::Created),
            Some(list) => {
                for e in list.get_ref() {
                    let kind = match e.as_str() {
                        "created" => ObjectEventKind::Created,
                        "deleted" => ObjectEventKind::Deleted,
                        other => {
                            errs.push(src.err(
                                list,
                                format!("{t} events: unknown event {other:?}; use \"created\" and/or \"deleted\""),
                            ));
                            continue;
                        }
                    };
                    if !events.contains(&kind) {
                        events.push(kind);
                    }
                }
                if list.get_ref().is_empty() {
                    errs.push(src.err(
                        list,
                        format!("{t} events is empty: list \"created\" and/or \"deleted\", or leave it out for [\"created\"]"),
                    ));
                }
            }
        }
        events.sort();
        let name = name_of(&o.name, t, errs);
        if ok {
            found.push((
                name,
                o.function.get_ref().clone(),
                line,
                TriggerSource::Object(ObjectTriggerSpec {
                    bucket: o.bucket.get_ref().clone(),
                    events,
                    prefix: o.prefix.clone().unwrap_or_default(),
                    suffix: o.suffix.clone().unwrap_or_default(),
                }),
                "object",
            ));
        }
    }

    for m in &raw.mqtt {
        let t = "[[trigger.mqtt]]";
        let line = src.line(m.span().start);
        let m = m.get_ref();
        let ok = check_fn(&m.function, t, errs);
        let broker = m.broker.get_ref().trim().to_string();
        if let Err(e) = broker_address(&broker, &["mqtt", "mqtts"]) {
            errs.push(src.err(&m.broker, format!("{t} broker: {e}")));
        }
        if m.topics.get_ref().is_empty() {
            errs.push(src.err(
                &m.topics,
                format!("{t} topics is empty: list at least one topic filter, like [\"sensors/+/temperature\"]"),
            ));
        }
        for topic in m.topics.get_ref() {
            if let Err(e) = mqtt_filter(topic) {
                errs.push(src.err(&m.topics, format!("{t} topics: {e}")));
            }
        }
        let qos = match &m.qos {
            None => 1,
            Some(q) => match *q.get_ref() {
                0 => 0,
                1 => 1,
                other => {
                    errs.push(src.err(
                        q,
                        format!("{t} qos = {other}: Nubo subscribes with QoS 0 (at most once) or 1 (at least once)"),
                    ));
                    1
                }
            },
        };
        if let Some(id) = &m.client_id
            && (id.get_ref().is_empty() || id.get_ref().len() > 128)
        {
            errs.push(src.err(id, format!("{t} client_id must be 1 to 128 characters")));
        }
        let password = credential(src, t, "password", m.password.as_ref(), errs);
        let name = name_of(&m.name, t, errs);
        if ok {
            found.push((
                name,
                m.function.get_ref().clone(),
                line,
                TriggerSource::Mqtt(MqttSpec {
                    broker,
                    topics: m.topics.get_ref().clone(),
                    qos,
                    // Filled in below, once the trigger's name is known.
                    client_id: m
                        .client_id
                        .as_ref()
                        .map(|c| c.get_ref().clone())
                        .unwrap_or_default(),
                    username: m.username.clone(),
                    password,
                }),
                "mqtt",
            ));
        }
    }

    for n in &raw.nats {
        let t = "[[trigger.nats]]";
        let line = src.line(n.span().start);
        let n = n.get_ref();
        let ok = check_fn(&n.function, t, errs);
        let server = n.server.as_ref().map_or_else(
            || DEFAULT_NATS.to_string(),
            |s| s.get_ref().trim().to_string(),
        );
        if let Err(e) = broker_address(&server, &["nats", "tls"])
            && let Some(s) = &n.server
        {
            errs.push(src.err(s, format!("{t} server: {e}")));
        }
        let subject = n.subject.get_ref();
        if subject.is_empty()
            || subject.split('.').any(str::is_empty)
            || subject.chars().any(char::is_whitespace)
        {
            errs.push(src.err(
                &n.subject,
                format!("{t} subject {subject:?} is not a NATS subject: use dot-separated tokens without spaces, like \"orders.created\" or \"sensors.>\""),
            ));
        }
        if let (Some(q), Some(_)) = (&n.queue_group, &n.stream) {
            errs.push(src.err(
                q,
                format!("{t} queue_group is for core NATS subscriptions; a JetStream consumer (stream) is already shared by every Nubo node, so remove queue_group"),
            ));
        }
        if let (Some(c), None) = (&n.consumer, &n.stream) {
            errs.push(src.err(
                c,
                format!("{t} consumer needs stream: name the JetStream stream to consume from, or remove consumer for a core NATS subscription"),
            ));
        }
        for (key, v) in [
            ("queue_group", &n.queue_group),
            ("stream", &n.stream),
            ("consumer", &n.consumer),
        ] {
            if let Some(v) = v {
                let s = v.get_ref();
                let valid = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    errs.push(src.err(
                        v,
                        format!("{t} {key} {s:?}: use 1 to 64 letters, digits, '-' and '_'"),
                    ));
                }
            }
        }
        let token = credential(src, t, "token", n.token.as_ref(), errs);
        let password = credential(src, t, "password", n.password.as_ref(), errs);
        let name = name_of(&n.name, t, errs);
        if ok {
            found.push((
                name,
                n.function.get_ref().clone(),
                line,
                TriggerSource::Nats(NatsSpec {
                    server,
                    subject: subject.clone(),
                    queue_group: n.queue_group.as_ref().map(|q| q.get_ref().clone()),
                    stream: n.stream.as_ref().map(|s| s.get_ref().clone()),
                    consumer: n.consumer.as_ref().map(|c| c.get_ref().clone()),
                    token,
                    username: n.username.clone(),
                    password,
                }),
                "nats",
            ));
        }
    }

    if found.len() > limits::MAX_TRIGGERS_PER_APP {
        errs.push(ManifestError {
            line: None,
            message: format!(
                "the app declares {} triggers; an app may have at most {}",
                found.len(),
                limits::MAX_TRIGGERS_PER_APP
            ),
        });
    }

    // Names: explicit ones as written, the rest `{kind}-{function}[-n]`, all unique.
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for (name, _, line, _, _) in &found {
        if let Some(n) = name
            && !taken.insert(n.clone())
        {
            errs.push(ManifestError {
                line: Some(*line),
                message: format!(
                    "trigger name {n:?} is used twice; give each trigger its own name"
                ),
            });
        }
    }
    for (name, function, _, mut source, kind) in found {
        let name = name.unwrap_or_else(|| {
            let base = format!("{kind}-{function}");
            let mut candidate = base.clone();
            let mut n = 2;
            while taken.contains(&candidate) {
                candidate = format!("{base}-{n}");
                n += 1;
            }
            taken.insert(candidate.clone());
            candidate
        });
        if let TriggerSource::Mqtt(m) = &mut source
            && m.client_id.is_empty()
        {
            m.client_id = format!("nubo-{app}-{name}");
        }
        out.push(TriggerSpec {
            name,
            function,
            source,
        });
    }
    out
}

fn credential(
    src: &Src<'_>,
    table: &str,
    key: &str,
    raw: Option<&Spanned<RawCredential>>,
    errs: &mut Vec<ManifestError>,
) -> Option<Credential> {
    let raw = raw?;
    match raw.get_ref() {
        RawCredential::Text(t) => Some(Credential::Text(t.clone())),
        RawCredential::Secret { secret } => {
            if let Err(e) = crate::validate_name("secret", secret) {
                errs.push(src.err(raw, format!("{table} {key}: {e}")));
            }
            Some(Credential::Secret(secret.clone()))
        }
    }
}

/// Checks `scheme://host[:port]` with one of `schemes`.
fn broker_address(url: &str, schemes: &[&str]) -> Result<(), String> {
    let example = format!("{}://127.0.0.1", schemes[0]);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} needs a scheme: write it like \"{example}\" ({})",
            schemes.join(" or ")
        ));
    };
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{url:?} has scheme {scheme:?}; use {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(format!(
            "{url:?} must be just scheme://host[:port], like \"{example}\"; put credentials in username and password"
        ));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |n| n == 0)
    {
        return Err(format!("{url:?} has the invalid port {p:?}"));
    }
    Ok(())
}

/// Checks an MQTT topic filter.
fn mqtt_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 1024 {
        return Err(format!("{topic:?} must be 1 to 1024 bytes"));
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "{topic:?}: '#' must be a whole level and the last one, like \"sensors/#\""
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "{topic:?}: '+' must be a whole level, like \"sensors/+/temperature\""
            ));
        }
    }
    Ok(())
}

impl super::Manifest {
    /// Every queue the app names: queue triggers, `queues` bindings and `queue:` destinations.
    /// A deploy creates those missing.
    pub fn queues(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for t in &self.triggers {
            if let TriggerSource::Queue(q) = &t.source {
                out.insert(q.queue.clone());
            }
        }
        for f in self.functions.values() {
            out.extend(f.queues.iter().cloned());
            for d in [&f.destinations.on_success, &f.destinations.on_failure]
                .into_iter()
                .flatten()
            {
                if let Some(q) = d.strip_prefix(super::QUEUE_DESTINATION) {
                    out.insert(q.to_string());
                }
            }
        }
        out
    }

    /// The buckets the app's object triggers watch.
    pub fn watched_buckets(&self) -> BTreeSet<String> {
        self.triggers
            .iter()
            .filter_map(|t| match &t.source {
                TriggerSource::Object(o) => Some(o.bucket.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn every_ticks_fall_on_multiples_of_the_interval() {
        let s = Schedule::parse("@every 30s", "UTC").unwrap();
        assert_eq!(s.next_after(at(0)), Some(at(30_000)));
        assert_eq!(s.next_after(at(29_999)), Some(at(30_000)));
        assert_eq!(s.next_after(at(30_000)), Some(at(60_000)));
        assert!(Schedule::parse("@every 10ms", "UTC").is_err());
        assert!(Schedule::parse("@every soon", "UTC").is_err());
    }

    #[test]
    fn cron_expressions_are_read_in_their_time_zone() {
        // 2026-01-01T00:00:00Z
        let new_year = at(1_767_225_600_000);
        let utc = Schedule::parse("0 9 * * *", "UTC").unwrap();
        assert_eq!(
            utc.next_after(new_year),
            Some(at(1_767_225_600_000 + 9 * 3_600_000))
        );
        // 09:00 in Paris (UTC+1 in January) is 08:00 UTC.
        let paris = Schedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next_after(new_year),
            Some(at(1_767_225_600_000 + 8 * 3_600_000))
        );
        let secs = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(secs.next_after(new_year), Some(at(1_767_225_610_000)));
        assert!(Schedule::parse("@hourly", "UTC").is_ok());
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert!(Schedule::parse("* * * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn broker_addresses_are_checked() {
        assert!(broker_address("mqtt://127.0.0.1:1883", &["mqtt", "mqtts"]).is_ok());
        assert!(broker_address("mqtts://broker.example.com", &["mqtt", "mqtts"]).is_ok());
        assert!(broker_address("127.0.0.1:1883", &["mqtt", "mqtts"]).is_err());
        assert!(broker_address("http://x", &["mqtt", "mqtts"]).is_err());
        assert!(broker_address("mqtt://u:p@x", &["mqtt", "mqtts"]).is_err());
        assert!(broker_address("mqtt://x:99999", &["mqtt", "mqtts"]).is_err());
    }

    #[test]
    fn mqtt_filters_are_checked() {
        assert!(mqtt_filter("sensors/+/temp").is_ok());
        assert!(mqtt_filter("sensors/#").is_ok());
        assert!(mqtt_filter("#").is_ok());
        assert!(mqtt_filter("sensors/#/x").is_err());
        assert!(mqtt_filter("sensors/a+").is_err());
        assert!(mqtt_filter("").is_err());
    }
}
