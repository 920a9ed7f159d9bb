//! Table-driven tests of broken manifests: each must be refused with the key, its line and a fix.

use super::*;

const GOOD: &str = r#"
[app]
name = "shop"

[function.api]
source = "api.wasm"
build = "cargo build --target wasm32-wasip2 --release"
memory = "64MiB"
timeout = "5s"
env = { GREETING = "hi" }

[[route]]
path = "/api/..."
function = "api"

[[route]]
path = "/users/:id"
methods = ["GET"]
function = "api"
"#;

#[test]
fn good_manifest_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.app, "shop");
    let api = &m.functions["api"];
    assert_eq!(api.memory, 64 << 20);
    assert_eq!(api.timeout_ms, 5000);
    assert_eq!(api.env["GREETING"], "hi");
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.routes[1].methods, vec!["GET"]);
}

#[test]
fn defaults_apply() {
    let m = parse("[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\n").unwrap();
    let f = &m.functions["f"];
    assert_eq!(f.memory, limits::DEFAULT_FUNCTION_MEMORY);
    assert_eq!(f.timeout_ms, limits::DEFAULT_FUNCTION_TIMEOUT_MS);
    assert_eq!(f.concurrency, ConcurrencySpec::default());
    assert_eq!(f.concurrency.max_concurrency, 100);
    assert!(!f.concurrency.reserve);
    assert_eq!(f.concurrency.queue_depth, 100);
    assert_eq!(f.concurrency.queue_timeout(), Duration::from_secs(10));
    assert!(m.routes.is_empty());
}

#[test]
fn concurrency_settings_parse() {
    let m = parse(
        "[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\nmax_concurrency = 5\nreserve = true\nqueue_depth = 0\nqueue_timeout = \"250ms\"\n",
    )
    .unwrap();
    assert_eq!(
        m.functions["f"].concurrency,
        ConcurrencySpec {
            max_concurrency: 5,
            reserve: true,
            queue_depth: 0,
            queue_timeout_ms: 250,
        }
    );
}

#[test]
fn retry_settings_parse_inline_or_as_a_table() {
    let m = parse(
        "[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\nretry = { max_attempts = 5, max_age = \"1h\", backoff = \"100ms\" }\n[function.g]\nsource = \"g.wasm\"\n[function.g.retry]\nmax_attempts = 1\n",
    )
    .unwrap();
    assert_eq!(
        m.functions["f"].retry,
        RetrySpec {
            max_attempts: 5,
            max_age_ms: 3_600_000,
            backoff_ms: 100,
        }
    );
    assert_eq!(m.functions["g"].retry.max_attempts, 1);
    assert_eq!(
        m.functions["g"].retry.backoff_ms,
        limits::DEFAULT_RETRY_BACKOFF_MS
    );
}

#[test]
fn destinations_name_other_functions() {
    let m = parse(
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\non_success = \"function:audit\"\non_failure = \"alert\"\n[function.audit]\nsource = \"b.wasm\"\n[function.alert]\nsource = \"c.wasm\"\n",
    )
    .unwrap();
    assert_eq!(
        m.functions["api"].destinations,
        DestinationSpec {
            on_success: Some("audit".into()),
            on_failure: Some("alert".into()),
        }
    );
    assert_eq!(
        m.functions["audit"].destinations,
        DestinationSpec::default()
    );
}

#[test]
fn specs_stored_before_concurrency_settings_read_as_defaults() {
    let json = r#"{"runtime":"wasm","source":"f.wasm","build":null,"workdir":null,"memory":1,"timeout_ms":1,"max_request_body":1,"env":{}}"#;
    let spec: FunctionSpec = serde_json::from_str(json).unwrap();
    assert_eq!(spec.concurrency, ConcurrencySpec::default());
    assert_eq!(spec.retry, RetrySpec::default());
}

/// (case, manifest, expected line, fragments the message must contain)
const BROKEN: &[(&str, &str, usize, &[&str])] = &[
    (
        "unknown key",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemroy = \"1MiB\"\n",
        5,
        &[
            "unknown key \"memroy\"",
            "[function.api]",
            "line 5",
            "did you mean \"memory\"",
        ],
    ),
    (
        "unknown top-level table",
        "[app]\nname = \"a\"\n[functions.api]\nsource = \"a.wasm\"\n",
        3,
        &["unknown key \"functions\"", "did you mean \"function\""],
    ),
    (
        "wrong type",
        "[app]\nname = \"a\"\n[function.api]\nsource = 42\n",
        4,
        &["invalid type", "string"],
    ),
    (
        "missing source",
        "[app]\nname = \"a\"\n[function.api]\nmemory = \"1MiB\"\n",
        3,
        &[
            "[function.api] is missing `source`",
            "source = \"target/wasm32-wasip2/release/api.wasm\"",
        ],
    ),
    (
        "duplicate function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[function.api]\nsource = \"b.wasm\"\n",
        5,
        &["duplicate", "defined only once"],
    ),
    (
        "ambiguous routes",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"/u/:id\"\nfunction = \"api\"\n[[route]]\npath = \"/u/:name\"\nfunction = \"api\"\n",
        9,
        &["ambiguous", "/u/:id", "/u/:name", "line 6"],
    ),
    (
        "bad size",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemory = \"12 parsecs\"\n",
        5,
        &["invalid size", "128MiB"],
    ),
    (
        "size out of range",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemory = \"64GiB\"\n",
        5,
        &["memory 64GiB is out of range", "4GiB"],
    ),
    (
        "bad duration",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\ntimeout = \"10\"\n",
        5,
        &["no unit", "\"10s\""],
    ),
    (
        "route to unknown function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"/x\"\nfunction = \"apu\"\n",
        7,
        &["unknown function \"apu\"", "[function.apu]", "api"],
    ),
    (
        "bad route path",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"x\"\nfunction = \"api\"\n",
        6,
        &["must start with '/'"],
    ),
    (
        "bad app name",
        "[app]\nname = \"My App\"\n[function.api]\nsource = \"a.wasm\"\n",
        2,
        &["invalid app name", "lowercase"],
    ),
    (
        "unknown runtime",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nruntime = \"docker\"\n",
        5,
        &["unknown runtime \"docker\"", "\"process\""],
    ),
    (
        "process keys on a wasm function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmin_instances = 2\n",
        5,
        &["min_instances applies only to runtime \"process\""],
    ),
    (
        "empty command",
        "[app]\nname = \"a\"\n[function.api]\nruntime = \"process\"\nsource = \"f\"\ncommand = []\n",
        6,
        &["command is empty", "./bootstrap"],
    ),
    (
        "unknown network",
        "[app]\nname = \"a\"\n[function.api]\nruntime = \"process\"\nsource = \"f\"\nnetwork = \"bridge\"\n",
        6,
        &["network \"bridge\"", "--allow-host-network"],
    ),
    (
        "min_instances over max_concurrency",
        "[app]\nname = \"a\"\n[function.api]\nruntime = \"process\"\nsource = \"f\"\nmax_concurrency = 2\nmin_instances = 3\n",
        7,
        &["min_instances 3 is out of range", "max_concurrency (2)"],
    ),
    (
        "bad kv store name",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nkv = [\"Carts\"]\n",
        5,
        &["kv: invalid key-value store name \"Carts\""],
    ),
    (
        "bad secret reference",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nenv = { DB = { secret = \"DB URL\" } }\n",
        5,
        &["env DB: invalid secret name \"DB URL\""],
    ),
    (
        "process memory too small",
        "[app]\nname = \"a\"\n[function.api]\nruntime = \"process\"\nsource = \"f\"\nmemory = \"1MiB\"\n",
        6,
        &["32MiB to 10GiB"],
    ),
    (
        "bad env key",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nenv = { \"1X\" = \"y\" }\n",
        5,
        &["env key \"1X\""],
    ),
    (
        "concurrency typo",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmax_concurency = 5\n",
        5,
        &[
            "unknown key \"max_concurency\"",
            "did you mean \"max_concurrency\"",
        ],
    ),
    (
        "zero max_concurrency",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmax_concurrency = 0\n",
        5,
        &[
            "[function.api] max_concurrency 0 is out of range",
            "from 1 to 100000",
        ],
    ),
    (
        "max_concurrency as a string",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmax_concurrency = \"5\"\n",
        5,
        &["invalid type", "[function.api]"],
    ),
    (
        "reserve not a bool",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nreserve = \"yes\"\n",
        5,
        &["invalid type", "boolean"],
    ),
    (
        "negative queue_depth",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nqueue_depth = -1\n",
        5,
        &["queue_depth -1 is out of range", "0 (no waiting) to 10000"],
    ),
    (
        "queue_timeout too long",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nqueue_timeout = \"2m\"\n",
        5,
        &["queue_timeout 2m is out of range", "60s"],
    ),
    (
        "retry attempts zero",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nretry = { max_attempts = 0 }\n",
        5,
        &[
            "retry.max_attempts 0 is out of range",
            "1 (no retries) to 100",
        ],
    ),
    (
        "retry backoff too long",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[function.api.retry]\nbackoff = \"2h\"\n",
        6,
        &["retry.backoff 2h is out of range", "1h"],
    ),
    (
        "retry unknown key",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[function.api.retry]\nmax_atempts = 2\n",
        6,
        &[
            "unknown key \"max_atempts\"",
            "did you mean \"max_attempts\"",
        ],
    ),
    (
        "destination names an unknown function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\non_failure = \"alert\"\n[function.notify]\nsource = \"n.wasm\"\n",
        5,
        &[
            "[function.api] on_failure points to unknown function \"alert\"",
            "notify",
        ],
    ),
    (
        "destination is the function itself",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\non_success = \"function:api\"\n",
        5,
        &["names the function itself"],
    ),
    (
        "queue destination with a bad name",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\non_failure = \"queue:Bad Name\"\n",
        5,
        &["on_failure", "queue"],
    ),
    (
        "cron with a bad schedule",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.cron]]\nfunction = \"api\"\nschedule = \"every minute\"\n",
        7,
        &["[[trigger.cron]] schedule", "5 fields", "@every 30s"],
    ),
    (
        "cron in an unknown time zone",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.cron]]\nfunction = \"api\"\nschedule = \"@hourly\"\ntimezone = \"Mars/Base\"\n",
        8,
        &["unknown time zone", "Europe/Paris"],
    ),
    (
        "trigger for an unknown function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.queue]]\nfunction = \"apy\"\nqueue = \"orders\"\n",
        6,
        &["unknown function \"apy\"", "api"],
    ),
    (
        "unknown key in a trigger",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.object]]\nfunction = \"api\"\nbucket = \"uploads\"\nprefx = \"img/\"\n",
        8,
        &["unknown key \"prefx\" in [[trigger.object]]", "prefix"],
    ),
    (
        "unknown trigger kind",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.kafka]]\nfunction = \"api\"\n",
        5,
        &["kafka", "cron, queue, object, mqtt, nats"],
    ),
    (
        "batch size on a wasm function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.queue]]\nfunction = \"api\"\nqueue = \"q\"\nbatch_size = 5\n",
        8,
        &["one CloudEvent per message", "process"],
    ),
    (
        "mqtt broker without a scheme",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.mqtt]]\nfunction = \"api\"\nbroker = \"127.0.0.1:1883\"\ntopics = [\"a/#\"]\n",
        7,
        &["needs a scheme", "mqtt://127.0.0.1"],
    ),
    (
        "mqtt qos 2",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.mqtt]]\nfunction = \"api\"\nbroker = \"mqtt://127.0.0.1\"\ntopics = [\"a/#\"]\nqos = 2\n",
        9,
        &["QoS 0", "or 1"],
    ),
    (
        "nats consumer without a stream",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.nats]]\nfunction = \"api\"\nsubject = \"orders.>\"\nconsumer = \"c1\"\n",
        8,
        &["consumer needs stream"],
    ),
    (
        "object events misspelt",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.object]]\nfunction = \"api\"\nbucket = \"uploads\"\nevents = [\"create\"]\n",
        8,
        &["unknown event \"create\"", "\"created\""],
    ),
    (
        "two triggers with one name",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[trigger.cron]]\nname = \"t\"\nfunction = \"api\"\nschedule = \"@hourly\"\n[[trigger.cron]]\nname = \"t\"\nfunction = \"api\"\nschedule = \"@daily\"\n",
        9,
        &["\"t\" is used twice"],
    ),
    (
        "queue_timeout without unit",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nqueue_timeout = \"5\"\n",
        5,
        &["no unit", "\"5s\""],
    ),
];

#[test]
fn broken_manifests_are_explained() {
    for (case, text, line, fragments) in BROKEN {
        let errs = match parse(text) {
            Ok(_) => panic!("{case}: accepted"),
            Err(e) => e,
        };
        let first = &errs.0[0];
        let shown = errs.to_string();
        assert_eq!(first.line, Some(*line), "{case}: wrong line in {shown}");
        for frag in *fragments {
            assert!(shown.contains(frag), "{case}: {frag:?} not in {shown:?}");
        }
    }
}

#[test]
fn missing_app_table() {
    let e = parse("[function.api]\nsource = \"a.wasm\"\n").unwrap_err();
    assert!(e.to_string().contains("missing [app] table"), "{e}");
}

#[test]
fn env_values_are_text_or_secret_references() {
    let m = parse(
        "[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\nenv = { MODE = \"prod\", DB_URL = { secret = \"db_url\" } }\nkv = [\"carts\", \"carts\"]\nbuckets = [\"uploads\"]\n",
    )
    .unwrap();
    let f = &m.functions["f"];
    assert_eq!(f.env.get("MODE").map(String::as_str), Some("prod"));
    assert!(
        !f.env.contains_key("DB_URL"),
        "a secret is not a plain value"
    );
    assert_eq!(
        f.secret_env.get("DB_URL").map(String::as_str),
        Some("db_url")
    );
    assert_eq!(f.kv, ["carts"]);
    assert_eq!(f.buckets, ["uploads"]);
}

#[test]
fn a_bad_env_value_says_what_is_allowed() {
    let e = parse("[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\nenv = { A = 5 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("a string or { secret = \"NAME\" }"), "{e}");
}

#[test]
fn triggers_parse_with_defaults_and_names() {
    let m = parse(
        r#"
[app]
name = "media"

[function.thumb]
source = "t.wasm"
queues = ["jobs"]
on_failure = "queue:failed"

[function.batch]
runtime = "process"
source = "batch/"

[[trigger.cron]]
function = "thumb"
schedule = "*/5 * * * *"

[[trigger.cron]]
function = "thumb"
schedule = "@every 30s"
timezone = "Europe/Paris"
missed = "catch_up"

[[trigger.queue]]
function = "batch"
queue = "jobs"
batch_window = "2s"

[[trigger.object]]
function = "thumb"
bucket = "uploads"
prefix = "images/"
events = ["deleted", "created"]

[[trigger.mqtt]]
name = "readings"
function = "batch"
broker = "mqtt://127.0.0.1:1883"
topics = ["sensors/+/temp"]
password = { secret = "mqtt_pw" }

[[trigger.nats]]
function = "batch"
subject = "orders.>"
stream = "ORDERS"
"#,
    )
    .unwrap();
    let names: Vec<&str> = m.triggers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cron-thumb",
            "cron-thumb-2",
            "queue-batch",
            "object-thumb",
            "readings",
            "nats-batch"
        ]
    );
    match &m.triggers[1].source {
        TriggerSource::Cron(c) => {
            assert_eq!(c.timezone, "Europe/Paris");
            assert_eq!(c.missed, Missed::CatchUp);
        }
        other => panic!("{other:?}"),
    }
    match &m.triggers[2].source {
        TriggerSource::Queue(q) => {
            assert_eq!(q.batch_size, 10, "process functions get batches of 10");
            assert_eq!(q.batch_window_ms, 2000);
            assert_eq!(q.visibility_timeout_ms, 30_000);
        }
        other => panic!("{other:?}"),
    }
    match &m.triggers[3].source {
        TriggerSource::Object(o) => {
            assert_eq!(
                o.events,
                [ObjectEventKind::Created, ObjectEventKind::Deleted]
            );
            assert!(o.matches(ObjectEventKind::Created, "images/a.png"));
            assert!(!o.matches(ObjectEventKind::Created, "docs/a.png"));
        }
        other => panic!("{other:?}"),
    }
    match &m.triggers[4].source {
        TriggerSource::Mqtt(q) => {
            assert_eq!(q.qos, 1);
            assert_eq!(q.client_id, "nubo-media-readings");
            assert_eq!(q.password, Some(Credential::Secret("mqtt_pw".into())));
        }
        other => panic!("{other:?}"),
    }
    match &m.triggers[5].source {
        TriggerSource::Nats(n) => {
            assert_eq!(n.server, "nats://127.0.0.1:4222");
            assert_eq!(n.stream.as_deref(), Some("ORDERS"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.queues().into_iter().collect::<Vec<_>>(),
        ["failed", "jobs"]
    );
    assert_eq!(
        m.watched_buckets().into_iter().collect::<Vec<_>>(),
        ["uploads"]
    );
    assert_eq!(
        m.functions["thumb"].destinations.on_failure.as_deref(),
        Some("queue:failed")
    );
    // A manifest stored before triggers existed still reads.
    let json = serde_json::to_value(&m).unwrap();
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("triggers");
    let back: Manifest = serde_json::from_value(old).unwrap();
    assert!(back.triggers.is_empty());
    let again: Manifest = serde_json::from_value(json).unwrap();
    assert_eq!(again, m);
}
