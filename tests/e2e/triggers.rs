//! Triggers through the real binary: cron ticks, Nubo's queues, object events, MQTT and NATS,
//! delivered as CloudEvents to wasm functions and as Lambda events to process functions, with
//! their guarantees across `kill -9`, loop protection and redeploys.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every log line of `app`, oldest first.
fn log_lines(s: &Server, app: &str) -> Vec<String> {
    let r = http(
        s.addr,
        "GET",
        &format!("/_nubo/api/v1/apps/{app}/logs?limit=1000"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["line"].as_str().map(str::to_string))
        .collect()
}

/// The `EVENT <type> <id> <subject> hop=<n>` lines the chain guest printed, split in fields.
fn events_seen(s: &Server, app: &str) -> Vec<Vec<String>> {
    log_lines(s, app)
        .iter()
        .filter_map(|l| l.strip_prefix("EVENT "))
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// The requests the chain guest dumped (`REQUEST <json>` lines).
fn requests_seen(s: &Server, app: &str) -> Vec<serde_json::Value> {
    log_lines(s, app)
        .iter()
        .filter_map(|l| l.strip_prefix("REQUEST "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

fn b64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// `nubo triggers APP --json`.
fn triggers_json(s: &Server, app: &str) -> serde_json::Value {
    let out = s.ok(&["triggers", app, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn trigger<'a>(all: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    all["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no trigger {name} in {all}"))
}

/// An app of the chain guest: functions `(name, CHAIN_ROUTE, extra keys)` plus trigger tables.
fn chain_app(app: &str, functions: &[(&str, &str, &str)], triggers: &str) -> tempfile::TempDir {
    let wasm = guest("chain");
    let mut m = format!("[app]\nname = \"{app}\"\n");
    for (name, route, extra) in functions {
        m.push_str(&format!(
            "\n[function.{name}]\nsource = \"{}\"\nenv = {{ CHAIN_ROUTE = \"{route}\" }}\nretry = {{ max_attempts = 2, backoff = \"100ms\" }}\n{extra}\n",
            wasm.display()
        ));
    }
    m.push('\n');
    m.push_str(triggers);
    app_dir(&m)
}

/// The Python interpreter with the CloudEvents SDK (the venv scripts/test.sh builds).
fn python_with_cloudevents() -> std::path::PathBuf {
    let venv = std::env::var("NUBO_S3_VENV").map_or_else(
        |_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nubo/venv"),
        std::path::PathBuf::from,
    );
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/test.sh once (it builds the venv with the CloudEvents SDK)",
        py.display()
    );
    py
}

/// Parses a delivered request with the CloudEvents Python SDK; answers its attributes.
fn cloudevents_sdk_reads(request: &serde_json::Value) -> serde_json::Value {
    let script = r#"
import base64, json, sys
from cloudevents.http import from_http
req = json.load(sys.stdin)
event = from_http(req["headers"], base64.b64decode(req["body"]))
attrs = dict(event.get_attributes())
data = event.get_data()
if isinstance(data, bytes):
    data = {"bytes": base64.b64encode(data).decode()}
print(json.dumps({"attributes": attrs, "data": data}, default=str))
"#;
    let mut child = Command::new(python_with_cloudevents())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the CloudEvents SDK refused the delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cron_ticks_arrive_as_cloudevents_the_sdk_reads() {
    let s = Server::start();
    let dir = chain_app(
        "ticker",
        &[("tick", "/dump", "")],
        "[[trigger.cron]]\nname = \"every-second\"\nfunction = \"tick\"\nschedule = \"@every 1s\"\n",
    );
    s.deploy(dir.path());
    let requests = eventually(Duration::from_secs(20), || {
        let r = requests_seen(&s, "ticker");
        (r.len() >= 2).then_some(r)
    });
    let parsed = cloudevents_sdk_reads(&requests[0]);
    let a = &parsed["attributes"];
    assert_eq!(a["specversion"], "1.0", "{parsed}");
    assert_eq!(a["type"], "dev.nubo.cron.tick");
    assert_eq!(a["source"], "/apps/ticker/triggers/every-second");
    let id = a["id"].as_str().unwrap();
    let tick: u64 = id.strip_prefix("every-second-").unwrap().parse().unwrap();
    assert_eq!(
        tick % 1000,
        0,
        "ticks of @every 1s fall on whole seconds: {id}"
    );
    assert!(a["time"].as_str().unwrap().starts_with("20"), "{a}");
    assert_eq!(parsed["data"]["schedule"], "@every 1s", "{parsed}");
    let headers = &requests[0]["headers"];
    assert_eq!(headers["nubo-trigger"], "cron");
    assert_eq!(headers["nubo-hop"], "1");
    assert_eq!(requests[0]["method"], "POST");

    // The invocation records name the trigger kind.
    let records = s.api("/_nubo/api/v1/apps/ticker/invocations?limit=100");
    let kinds: BTreeSet<String> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["cron".to_string()]), "{records}");

    // `nubo triggers` shows it running with figures and the next tick.
    let table = s.ok(&["triggers", "ticker"]);
    assert!(table.contains("every-second"), "{table}");
    assert!(table.contains("cron"), "{table}");
    assert!(table.contains("running"), "{table}");
    let all = triggers_json(&s, "ticker");
    let t = trigger(&all, "every-second");
    assert_eq!(t["kind"], "cron");
    assert_eq!(t["function"], "tick");
    assert!(t["fires"].as_u64().unwrap() >= 2, "{t}");
    assert!(t["next_fire"].is_string(), "{t}");
}

#[test]
fn cron_ticks_fire_once_across_kill9_and_missed_ticks_are_caught_up() {
    let s = Server::start();
    let dir = chain_app(
        "clock",
        &[("tick", "/", "")],
        "[[trigger.cron]]\nname = \"sec\"\nfunction = \"tick\"\nschedule = \"@every 1s\"\nmissed = \"catch_up\"\n",
    );
    s.deploy(dir.path());
    let mut s = s;
    // Three rounds: run a little, kill -9 (sometimes right at a tick), stay down, restart.
    for round in 0..3 {
        eventually(Duration::from_secs(15), || {
            (events_seen(&s, "clock").len() >= 2 * (round + 1)).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300 + 350 * round as u64));
        let data = s.kill9();
        std::thread::sleep(Duration::from_millis(2200));
        s = Server::start_in(&data, &[]);
    }
    // Let the caught-up ticks and a few live ones run.
    std::thread::sleep(Duration::from_secs(3));
    let events = s.api("/_nubo/api/v1/apps/clock/async?limit=1000");
    let keys: Vec<String> = events["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "a tick was stored twice: {keys:?}"
    );
    let mut ticks: Vec<u64> = keys
        .iter()
        .map(|k| k.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    ticks.sort_unstable();
    // catch_up: no tick between the first and the last is missing, downtime included.
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "ticks missing between {pair:?}: {ticks:?}"
        );
    }
    assert!(ticks.len() >= 12, "{ticks:?}");
    // Every stored tick ran (at least once).
    let seen: BTreeSet<String> = events_seen(&s, "clock")
        .iter()
        .map(|e| e[1].clone())
        .collect();
    let ran = eventually(Duration::from_secs(15), || {
        let seen: BTreeSet<String> = events_seen(&s, "clock")
            .iter()
            .map(|e| e[1].clone())
            .collect();
        ticks
            .iter()
            .all(|t| seen.contains(&format!("sec-{t}")))
            .then_some(seen)
    });
    assert!(ran.len() >= seen.len());
}

#[test]
fn missed_ticks_are_skipped_and_counted_by_default() {
    let s = Server::start();
    let dir = chain_app(
        "skipper",
        &[("tick", "/", "")],
        "[[trigger.cron]]\nname = \"sec\"\nfunction = \"tick\"\nschedule = \"@every 1s\"\n",
    );
    s.deploy(dir.path());
    eventually(Duration::from_secs(15), || {
        (!events_seen(&s, "skipper").is_empty()).then_some(())
    });
    let data = s.kill9();
    std::thread::sleep(Duration::from_millis(3500));
    let s = Server::start_in(&data, &[]);
    let t = eventually(Duration::from_secs(15), || {
        let all = triggers_json(&s, "skipper");
        let t = trigger(&all, "sec").clone();
        (t["skipped"].as_u64().unwrap_or(0) >= 2).then_some(t)
    });
    assert!(t["skipped"].as_u64().unwrap() <= 5, "{t}");
}

#[test]
fn queue_messages_reach_a_function_in_order_and_bad_input_is_refused() {
    let s = Server::start();
    let dir = chain_app(
        "orders",
        &[("work", "/", "max_concurrency = 1")],
        "[[trigger.queue]]\nfunction = \"work\"\nqueue = \"incoming\"\n",
    );
    s.deploy(dir.path());
    // The deploy created the queue.
    let list = s.ok(&["queue", "ls"]);
    assert!(list.contains("incoming"), "{list}");

    let mut ids = Vec::new();
    for i in 0..5 {
        let r = http(
            s.addr,
            "POST",
            "/_nubo/api/v1/queues/incoming/messages",
            &[("content-type", "application/json")],
            format!("{{\"n\": {i}}}").as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let out = s.ok(&["queue", "publish", "incoming", "-d", "from the CLI"]);
    let cli_id = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(cli_id.len(), 26, "the CLI prints the message id: {out}");
    ids.push(cli_id);

    let seen = eventually(Duration::from_secs(20), || {
        let e = events_seen(&s, "orders");
        (e.len() >= ids.len()).then_some(e)
    });
    let order: Vec<&str> = seen.iter().map(|e| e[1].as_str()).collect();
    assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(seen.iter().all(|e| e[0] == "dev.nubo.queue.message"));
    assert!(seen.iter().all(|e| e[3] == "hop=1"), "{seen:?}");
    // Handed over messages leave the queue.
    eventually(Duration::from_secs(10), || {
        let q = s.api("/_nubo/api/v1/queues/incoming");
        (q["messages"] == 0).then_some(())
    });

    // Bad input: an unknown queue, a message too large; nothing is stored for either.
    let r = http(
        s.addr,
        "POST",
        "/_nubo/api/v1/queues/nope/messages",
        &[],
        b"x",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("nubo queue create"), "{}", r.text());
    let big = vec![b'x'; 256 * 1024 + 1];
    let r = http(
        s.addr,
        "POST",
        "/_nubo/api/v1/queues/incoming/messages",
        &[],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    let q = s.api("/_nubo/api/v1/queues/incoming");
    assert_eq!(q["messages"], 0, "{q}");
}

#[test]
fn a_function_publishes_to_its_bound_queue_and_only_there() {
    let s = Server::start();
    let dir = chain_app(
        "relay",
        &[
            ("front", "/publish?queue=jobs", "queues = [\"jobs\"]"),
            ("back", "/", ""),
        ],
        "[[trigger.queue]]\nfunction = \"back\"\nqueue = \"jobs\"\n\n[[route]]\npath = \"/relay/...\"\nfunction = \"front\"\n",
    );
    s.deploy(dir.path());
    let r = http(s.addr, "POST", "/relay/publish?queue=jobs", &[], b"job 1");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.text().trim().to_string();
    let seen = eventually(Duration::from_secs(20), || {
        events_seen(&s, "relay").into_iter().find(|e| e[1] == id)
    });
    // The message was published by an invocation at hop 0, so its delivery is hop 1.
    assert_eq!(seen[3], "hop=1", "{seen:?}");
    let r = http(s.addr, "POST", "/relay/publish?queue=other", &[], b"x");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("queues"), "{}", r.text());
}

#[test]
fn object_writes_trigger_a_chain_of_functions() {
    let s = Server::start();
    let dir = chain_app(
        "media",
        &[
            (
                "copier",
                "/copy?to=derived",
                "buckets = [\"uploads\", \"derived\"]",
            ),
            ("indexer", "/dump", ""),
        ],
        "[[trigger.object]]\nfunction = \"copier\"\nbucket = \"uploads\"\nprefix = \"img/\"\n\n\
         [[trigger.object]]\nfunction = \"indexer\"\nbucket = \"derived\"\nevents = [\"created\", \"deleted\"]\n",
    );
    s.deploy(dir.path());
    // A key outside the prefix is ignored; one inside goes through both functions.
    for (key, body) in [("doc/skip.txt", "no"), ("img/cat.pgm", "meow")] {
        let r = http(
            s.addr,
            "PUT",
            &format!("/_nubo/api/v1/buckets/uploads/objects/{key}"),
            &[("content-type", "text/plain")],
            body.as_bytes(),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    let dumped = eventually(Duration::from_secs(20), || {
        requests_seen(&s, "media").into_iter().next()
    });
    let parsed = cloudevents_sdk_reads(&dumped);
    let a = &parsed["attributes"];
    assert_eq!(a["type"], "dev.nubo.object.created", "{parsed}");
    assert_eq!(a["source"], "/buckets/derived");
    assert_eq!(a["subject"], "img/cat.pgm.out");
    assert_eq!(parsed["data"]["key"], "img/cat.pgm.out");
    assert_eq!(parsed["data"]["size"], 4);
    // The copier ran at hop 1 (an upload from outside); its write reached the indexer at hop 2.
    assert_eq!(dumped["headers"]["nubo-hop"], "2", "{dumped}");
    let hops: Vec<String> = events_seen(&s, "media")
        .iter()
        .map(|e| format!("{} {}", e[2], e[3]))
        .collect();
    assert!(hops.contains(&"img/cat.pgm hop=1".to_string()), "{hops:?}");
    assert!(!hops.iter().any(|h| h.starts_with("doc/")), "{hops:?}");

    // A delete in the derived bucket is an event too.
    let r = http(
        s.addr,
        "DELETE",
        "/_nubo/api/v1/buckets/derived/objects/img/cat.pgm.out",
        &[],
        b"",
    );
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    eventually(Duration::from_secs(20), || {
        events_seen(&s, "media")
            .iter()
            .any(|e| e[0] == "dev.nubo.object.deleted" && e[2] == "img/cat.pgm.out")
            .then_some(())
    });
}

#[test]
fn a_function_that_retriggers_itself_is_stopped_at_16_hops() {
    let s = Server::start();
    let dir = chain_app(
        "spin",
        &[("looper", "/loop", "buckets = [\"spin\"]")],
        "[[trigger.object]]\nfunction = \"looper\"\nbucket = \"spin\"\n",
    );
    s.deploy(dir.path());
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/spin/objects/again",
        &[],
        b"round and round",
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let t = eventually(Duration::from_secs(60), || {
        let all = triggers_json(&s, "spin");
        let t = trigger(&all, "object-looper").clone();
        (t["loops_stopped"].as_u64().unwrap_or(0) >= 1).then_some(t)
    });
    assert_eq!(t["loops_stopped"], 1, "{t}");
    // It ran at hops 1 to 16, once each, and the 17th went to the dead-letter queue (the
    // 16th run's log lines may still be on their way to the store).
    let hops: Vec<String> = eventually(Duration::from_secs(10), || {
        let hops: Vec<String> = events_seen(&s, "spin")
            .iter()
            .map(|e| e[3].clone())
            .collect();
        (hops.len() >= 16).then_some(hops)
    });
    assert_eq!(hops.len(), 16, "{hops:?}");
    assert_eq!(hops.last().unwrap(), "hop=16");
    let dlq = s.ok(&["dlq", "spin"]);
    assert!(dlq.contains("looper"), "{dlq}");
    let failed = s.api("/_nubo/api/v1/apps/spin/async?state=failed");
    let err = failed["invocations"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("16"), "{err}");
    // Nothing more runs.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(events_seen(&s, "spin").len(), 16);
}

#[test]
fn sqs_batches_reach_a_python_handler_and_failed_items_are_retried_alone() {
    let code = process_fn("python/events", "awslambdaric/__init__.py");
    let s = Server::start_with(&["--sandbox", "off"]);
    let m = format!(
        "[app]\nname = \"sqs\"\n\n[function.batch]\nruntime = \"process\"\nsource = \"{}\"\n\
         command = [\"/usr/bin/python3\", \"-m\", \"awslambdaric\", \"app.handler\"]\n\
         retry = {{ max_attempts = 2, backoff = \"100ms\" }}\n\n\
         [[trigger.queue]]\nfunction = \"batch\"\nqueue = \"work\"\nbatch_size = 5\nbatch_window = \"1s\"\n",
        code.display()
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());
    for body in ["one", "two bad", "three"] {
        let r = http(
            s.addr,
            "POST",
            "/_nubo/api/v1/queues/work/messages",
            &[],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let events: Vec<serde_json::Value> = eventually(Duration::from_secs(30), || {
        let e: Vec<serde_json::Value> = log_lines(&s, "sqs")
            .iter()
            .filter_map(|l| l.strip_prefix("LAMBDA-EVENT "))
            .map(|j| serde_json::from_str(j).unwrap())
            .collect();
        (e.len() >= 2).then_some(e)
    });
    // The batch window gathered all three into one SQS event.
    let first = &events[0];
    let records = first["Records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{first}");
    let typed: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(first.clone()).unwrap();
    assert_eq!(typed.records[1].body.as_deref(), Some("two bad"));
    assert_eq!(typed.records[0].event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(
        typed.records[0].event_source_arn.as_deref(),
        Some("arn:aws:sqs:local:000000000000:work")
    );
    // Its retry (max_attempts = 2) holds only the failed record, which then ends in the
    // dead-letter queue alone.
    for retry in &events[1..2] {
        let bodies: Vec<&str> = retry["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["two bad"], "{retry}");
    }
    let failed = eventually(Duration::from_secs(20), || {
        let f = s.api("/_nubo/api/v1/apps/sqs/async?state=failed");
        (f["invocations"].as_array().unwrap().len() == 1).then_some(f)
    });
    let id = failed["invocations"][0]["id"].as_str().unwrap();
    let detail = s.api(&format!("/_nubo/api/v1/invocations/{id}"));
    let body = detail["async"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        body.contains("two bad") && !body.contains("three"),
        "{detail}"
    );
    let records = s.api("/_nubo/api/v1/apps/sqs/invocations?limit=100");
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["trigger"] == "queue"),
        "{records}"
    );
}

#[test]
fn object_and_cron_events_reach_process_functions_in_lambda_shapes() {
    let code = process_fn("python/events", "awslambdaric/__init__.py");
    let s = Server::start_with(&["--sandbox", "off"]);
    let m = format!(
        "[app]\nname = \"shapes\"\n\n[function.h]\nruntime = \"process\"\nsource = \"{}\"\n\
         command = [\"/usr/bin/python3\", \"-m\", \"awslambdaric\", \"app.handler\"]\n\n\
         [[trigger.object]]\nname = \"photos\"\nfunction = \"h\"\nbucket = \"photos\"\n\n\
         [[trigger.cron]]\nname = \"nightly\"\nfunction = \"h\"\nschedule = \"@every 1s\"\n",
        code.display()
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/photos/objects/holiday%20pics/beach.jpg",
        &[("content-type", "image/jpeg")],
        b"jpeg",
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let (s3, cron) = eventually(Duration::from_secs(30), || {
        let events: Vec<serde_json::Value> = log_lines(&s, "shapes")
            .iter()
            .filter_map(|l| l.strip_prefix("LAMBDA-EVENT "))
            .map(|j| serde_json::from_str(j).unwrap())
            .collect();
        let s3 = events.iter().find(|e| e.get("Records").is_some())?.clone();
        let cron = events
            .iter()
            .find(|e| e.get("detail-type").is_some())?
            .clone();
        Some((s3, cron))
    });
    let typed: aws_lambda_events::s3::S3Event = serde_json::from_value(s3.clone()).unwrap();
    let rec = &typed.records[0];
    assert_eq!(rec.event_name.as_deref(), Some("ObjectCreated:Put"), "{s3}");
    assert_eq!(rec.s3.bucket.name.as_deref(), Some("photos"));
    assert_eq!(rec.s3.object.key.as_deref(), Some("holiday+pics/beach.jpg"));
    assert_eq!(rec.s3.object.size, Some(4));
    assert_eq!(rec.s3.configuration_id.as_deref(), Some("photos"));
    let typed: aws_lambda_events::eventbridge::EventBridgeEvent =
        serde_json::from_value(cron.clone()).unwrap();
    assert_eq!(typed.detail_type, "Scheduled Event", "{cron}");
    assert_eq!(typed.source, "aws.events");
    assert_eq!(
        typed.resources,
        Some(vec![
            "arn:aws:events:local:000000000000:rule/shapes-nightly".to_string()
        ])
    );
}

/// Whether something listens on 127.0.0.1:`port` (the brokers scripts/test.sh starts).
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn mosquitto_pub(topic: &str, message: &str) {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ])
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The payloads of `app`'s async invocations that ran to success: the durable proof that an
/// event was accepted and executed (log lines of a run just before a `kill -9` may be lost
/// with the records batch they were in, the invocation's state is not).
fn succeeded_payloads(s: &Server, app: &str) -> BTreeSet<String> {
    let list = s.api(&format!(
        "/_nubo/api/v1/apps/{app}/async?state=succeeded&limit=1000"
    ));
    list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            let d = s.api(&format!("/_nubo/api/v1/invocations/{id}"));
            d["async"]["body"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// The bodies the chain guest dumped, decoded.
fn bodies_seen(s: &Server, app: &str) -> Vec<String> {
    requests_seen(s, app)
        .iter()
        .map(|r| String::from_utf8(b64(r["body"].as_str().unwrap())).unwrap())
        .collect()
}

#[test]
fn mqtt_qos1_messages_survive_kill9_of_the_server() {
    assert!(
        listening(1883),
        "Mosquitto is not listening on 127.0.0.1:1883: scripts/test.sh starts it"
    );
    let run = format!("{}", std::process::id());
    let app = format!("mqtt{run}");
    let topic_root = format!("nubo-e2e/{run}");
    let s = Server::start();
    let dir = chain_app(
        &app,
        &[("ingest", "/dump", "")],
        &format!(
            "[[trigger.mqtt]]\nname = \"sensors\"\nfunction = \"ingest\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [\"{topic_root}/+/temp\"]\nqos = 1\n"
        ),
    );
    s.deploy(dir.path());
    eventually(Duration::from_secs(20), || {
        let all = triggers_json(&s, &app);
        (trigger(&all, "sensors")["state"] == "running").then_some(())
    });
    let mut sent = Vec::new();
    for i in 0..10 {
        let m = format!("{{\"reading\": {i}}}");
        mosquitto_pub(&format!("{topic_root}/s{i}/temp"), &m);
        sent.push(m);
    }
    // Kill it while deliveries may still be on their way, publish while it is down.
    let data = s.kill9();
    for i in 10..20 {
        let m = format!("{{\"reading\": {i}}}");
        mosquitto_pub(&format!("{topic_root}/s{i}/temp"), &m);
        sent.push(m);
    }
    let s = Server::start_in(&data, &[]);
    let start = Instant::now();
    loop {
        let done = succeeded_payloads(&s, &app);
        let missing: Vec<&String> = sent.iter().filter(|m| !done.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "MQTT messages never executed: {missing:?}; triggers: {}",
            triggers_json(&s, &app)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Any delivery that reached the logs reads as a CloudEvent.
    let first = eventually(Duration::from_secs(20), || {
        requests_seen(&s, &app).into_iter().next()
    });
    let parsed = cloudevents_sdk_reads(&first);
    assert_eq!(parsed["attributes"]["type"], "dev.nubo.mqtt.message");
    let subject = parsed["attributes"]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(&format!("{topic_root}/s")) && subject.ends_with("/temp"),
        "{parsed}"
    );
    assert_eq!(parsed["attributes"]["source"], "mqtt://127.0.0.1:1883");
}

#[test]
fn jetstream_messages_survive_kill9_and_core_nats_is_delivered() {
    assert!(
        listening(4222),
        "nats-server is not listening on 127.0.0.1:4222: scripts/test.sh starts it"
    );
    let run = format!("{}", std::process::id());
    let stream = format!("NUBO_E2E_{run}");
    let subject_root = format!("e2e{run}");
    // One runtime for the whole test: the client's connection lives on it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let client = rt.block_on(async { async_nats::connect("nats://127.0.0.1:4222").await.unwrap() });
    let js = async_nats::jetstream::new(client.clone());
    rt.block_on(async {
        let _ = js.delete_stream(&stream).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject_root}.js.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let app = format!("nats{run}");
    let s = Server::start();
    let dir = chain_app(
        &app,
        &[("orders", "/dump", ""), ("pings", "/dump", "")],
        &format!(
            "[[trigger.nats]]\nname = \"js\"\nfunction = \"orders\"\nsubject = \"{subject_root}.js.>\"\nstream = \"{stream}\"\n\n\
             [[trigger.nats]]\nname = \"core\"\nfunction = \"pings\"\nsubject = \"{subject_root}.core\"\n"
        ),
    );
    s.deploy(dir.path());
    eventually(Duration::from_secs(20), || {
        let all = triggers_json(&s, &app);
        (trigger(&all, "js")["state"] == "running" && trigger(&all, "core")["state"] == "running")
            .then_some(())
    });
    let publish_js = |i: usize| {
        rt.block_on(async {
            js.publish(
                format!("{subject_root}.js.o{i}"),
                format!("order {i}").into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        });
    };
    for i in 0..10 {
        publish_js(i);
    }
    rt.block_on(async {
        client
            .publish(format!("{subject_root}.core"), "ping".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    // Core NATS is at most once: wait for the ping before the kill.
    eventually(Duration::from_secs(20), || {
        bodies_seen(&s, &app)
            .iter()
            .any(|b| b == "ping")
            .then_some(())
    });
    let data = s.kill9();
    for i in 10..15 {
        publish_js(i);
    }
    let s = Server::start_in(&data, &[]);
    let expected: Vec<String> = (0..15).map(|i| format!("order {i}")).collect();
    let start = Instant::now();
    loop {
        let seen = succeeded_payloads(&s, &app);
        let missing: Vec<&String> = expected.iter().filter(|m| !seen.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "JetStream messages never delivered: {missing:?}; triggers: {}; server log: {}",
            triggers_json(&s, &app),
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let js_request = eventually(Duration::from_secs(20), || {
        requests_seen(&s, &app)
            .into_iter()
            .find(|r| r["headers"]["nubo-trigger-name"] == "js")
    });
    let parsed = cloudevents_sdk_reads(&js_request);
    assert_eq!(parsed["attributes"]["type"], "dev.nubo.nats.message");
    assert!(
        parsed["attributes"]["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{stream}-")),
        "{parsed}"
    );
    rt.block_on(async {
        let _ = js.delete_stream(&stream).await;
    });
}

#[test]
fn a_redeploy_switches_triggers_with_the_revision() {
    let s = Server::start();
    let v1 = chain_app(
        "switch",
        &[("f", "/", "")],
        "[[trigger.cron]]\nname = \"old\"\nfunction = \"f\"\nschedule = \"@every 1s\"\n",
    );
    s.deploy(v1.path());
    eventually(Duration::from_secs(15), || {
        (!events_seen(&s, "switch").is_empty()).then_some(())
    });
    let v2 = chain_app(
        "switch",
        &[("f", "/", "")],
        "[[trigger.queue]]\nname = \"new\"\nfunction = \"f\"\nqueue = \"switch-q\"\n",
    );
    s.deploy(v2.path());
    let after_deploy = Instant::now();
    let names: Vec<String> = triggers_json(&s, "switch")["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["new"]);
    // Let anything stored before the switch finish, then no new tick may come.
    std::thread::sleep(Duration::from_millis(1500));
    let ticks_then = events_seen(&s, "switch").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        events_seen(&s, "switch").len(),
        ticks_then,
        "the removed cron trigger still fires"
    );
    let r = http(
        s.addr,
        "POST",
        "/_nubo/api/v1/queues/switch-q/messages",
        &[],
        b"hello",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(20), || {
        events_seen(&s, "switch")
            .iter()
            .any(|e| e[1] == id)
            .then_some(())
    });
    assert!(after_deploy.elapsed() < Duration::from_secs(60));
    // Rolling back brings the cron trigger back.
    s.ok(&["rollback", "switch"]);
    eventually(Duration::from_secs(15), || {
        let names: BTreeMap<String, String> = triggers_json(&s, "switch")["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (names.get("old").map(String::as_str) == Some("cron")).then_some(())
    });
}

#[test]
fn broken_trigger_manifests_are_refused_and_the_old_revision_keeps_serving() {
    let s = Server::start();
    let good = chain_app(
        "strict",
        &[("f", "/", "")],
        "[[trigger.queue]]\nfunction = \"f\"\nqueue = \"q1\"\n",
    );
    s.deploy(good.path());
    let bad = chain_app(
        "strict",
        &[("f", "/", "")],
        "[[trigger.cron]]\nfunction = \"f\"\nschedule = \"every tuesday\"\n",
    );
    let out = s.nubo(&["deploy", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[[trigger.cron]] schedule"), "{err}");
    assert!(err.contains("@every 30s"), "{err}");
    let all = triggers_json(&s, "strict");
    assert_eq!(trigger(&all, "queue-f")["kind"], "queue");
}
