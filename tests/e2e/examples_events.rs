//! The event-driven examples, driven as their READMEs say: `examples/thumbnails` (an upload
//! makes a thumbnail, which lands in a catalog; a bad upload ends in the dead-letter queue; a
//! delete cascades) and `examples/iot` (MQTT readings through a queue into per-sensor
//! aggregates; needs `mosquitto_pub` and a broker on 127.0.0.1:1883, else it is skipped with
//! a note).

use crate::support::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a chain of trigger deliveries may take to show its result.
const SETTLE: Duration = Duration::from_secs(60);

/// Polls `f` (bounded by [`SETTLE`]) until it returns `Some`; on timeout, fails with what the
/// app's triggers, dead-letter queue and logs say, which is where a broken chain shows.
fn settle<T>(s: &Server, app: &str, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > SETTLE {
            // The last lines of each, so the message stays readable.
            let show = |args: &[&str]| {
                let out = s.nubo(args);
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                format!("$ nubo {}\n{tail}", args.join(" "))
            };
            panic!(
                "{what}: not seen within {SETTLE:?}\n{}\n{}\n{}",
                show(&["triggers", app]),
                show(&["dlq", app]),
                show(&["logs", app]),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A binary PGM whose 4×4 blocks are each one gray value, so its thumbnail is known exactly.
fn blocky_pgm(width: usize, height: usize) -> (Vec<u8>, Vec<u8>) {
    let shade = |bx: usize, by: usize| ((bx * 37 + by * 11) % 256) as u8;
    let mut image = format!("P5\n# made by the test\n{width} {height}\n255\n").into_bytes();
    for y in 0..height {
        for x in 0..width {
            image.push(shade(x / 4, y / 4));
        }
    }
    let mut thumb = format!("P5\n{} {}\n255\n", width / 4, height / 4).into_bytes();
    for by in 0..height / 4 {
        for bx in 0..width / 4 {
            thumb.push(shade(bx, by));
        }
    }
    (image, thumb)
}

/// The catalog's entries by key.
fn catalog(s: &Server) -> Vec<Value> {
    let r = http(s.addr, "GET", "/thumbnails/catalog", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .cloned()
        .expect("the catalog is a JSON list")
}

fn entry<'a>(entries: &'a [Value], key: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e["key"] == key)
}

fn upload(s: &Server, dir: &Path, key: &str, bytes: &[u8]) {
    let file = dir.join(key.replace('/', "_"));
    std::fs::write(&file, bytes).unwrap();
    s.ok(&["obj", "put", "uploads", key, file.to_str().unwrap()]);
}

#[test]
fn thumbnails_are_made_cataloged_and_removed_and_bad_uploads_dead_letter() {
    let s = Server::start();
    s.deploy(&root().join("examples/thumbnails"));
    let dir = tempfile::tempdir().unwrap();

    let (cat, cat_thumb) = blocky_pgm(64, 48);
    upload(&s, dir.path(), "images/cat.pgm", &cat);
    // PPM: 40x20 RGB → 10x5.
    let mut flag = b"P6\n40 20\n255\n".to_vec();
    for y in 0..20u8 {
        for _x in 0..40 {
            flag.extend_from_slice(&[200, y * 4, 30]);
        }
    }
    upload(&s, dir.path(), "images/flag.ppm", &flag);
    // Outside the prefix: no thumbnail.
    upload(&s, dir.path(), "docs/cat.pgm", &cat);
    // Cut short: the function answers 422, retries fail alike, the event is dead-lettered.
    upload(&s, dir.path(), "images/broken.pgm", b"P5\n8 8\n255\nshort");

    let entries = settle(&s, "thumbnails", "both thumbnails in the catalog", || {
        let entries = catalog(&s);
        (entry(&entries, "images/cat.pgm").is_some()
            && entry(&entries, "images/flag.ppm").is_some())
        .then_some(entries)
    });
    let cat_entry = entry(&entries, "images/cat.pgm").unwrap();
    assert_eq!(
        (cat_entry["width"].as_u64(), cat_entry["height"].as_u64()),
        (Some(16), Some(12))
    );
    assert_eq!(cat_entry["bytes"].as_u64(), Some(cat_thumb.len() as u64));
    let flag_entry = entry(&entries, "images/flag.ppm").unwrap();
    assert_eq!(
        (flag_entry["width"].as_u64(), flag_entry["height"].as_u64()),
        (Some(10), Some(5))
    );

    // The thumbnail itself: every pixel is its block's mean.
    let back = dir.path().join("back.pgm");
    s.ok(&[
        "obj",
        "get",
        "thumbnails",
        "images/cat.pgm",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), cat_thumb);

    // The broken upload: failed attempts up to the limit, then the dead-letter queue.
    let dead = settle(&s, "thumbnails", "the broken upload dead-lettered", || {
        let dlq = s.api("/_nubo/api/v1/apps/thumbnails/dlq");
        let list = dlq["invocations"].as_array().cloned().unwrap_or_default();
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(dead.len(), 1, "only the broken upload fails: {dead:?}");
    assert_eq!(dead[0]["function"], "thumbnail");
    assert_eq!(
        dead[0]["attempts"], dead[0]["max_attempts"],
        "{:?}",
        dead[0]
    );

    let listing = s.ok(&["obj", "ls", "thumbnails/images/"]);
    assert!(
        listing.contains("images/cat.pgm") && listing.contains("images/flag.ppm"),
        "{listing}"
    );
    assert!(!listing.contains("broken"), "{listing}");
    let top = s.ok(&["obj", "ls", "thumbnails"]);
    assert!(!top.contains("docs/"), "{top}");
    let entries = catalog(&s);
    assert_eq!(entries.len(), 2, "{entries:?}");

    // Deleting an upload deletes its thumbnail, and that deletes its catalog entry.
    s.ok(&["obj", "rm", "uploads", "images/cat.pgm"]);
    settle(
        &s,
        "thumbnails",
        "the deleted thumbnail gone from the catalog",
        || {
            let entries = catalog(&s);
            (entry(&entries, "images/cat.pgm").is_none()).then_some(())
        },
    );
    assert!(entry(&catalog(&s), "images/flag.ppm").is_some());
    let listing = s.ok(&["obj", "ls", "thumbnails/images/"]);
    assert!(!listing.contains("images/cat.pgm"), "{listing}");

    let triggers = s.ok(&["triggers", "thumbnails"]);
    for name in ["uploads-pgm", "uploads-ppm", "catalog"] {
        assert!(triggers.contains(name), "{triggers}");
    }
}

/// Whether the MQTT tools and broker this test needs are there; prints why not.
fn mqtt_ready() -> bool {
    let has_pub = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !has_pub {
        eprintln!("skipping: mosquitto_pub is missing (Debian package mosquitto-clients)");
        return false;
    }
    let broker: SocketAddr = "127.0.0.1:1883".parse().unwrap();
    if TcpStream::connect_timeout(&broker, Duration::from_secs(2)).is_err() {
        eprintln!("skipping: no MQTT broker on 127.0.0.1:1883 (start one with `mosquitto -d`)");
        return false;
    }
    true
}

fn publish(sensor: &str, payload: &str) {
    let topic = format!("sensors/{sensor}/temperature");
    let out = Command::new("timeout")
        .args([
            "20",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
        ])
        .args(["-t", &topic, "-m", payload])
        .output()
        .expect("running mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sensors(s: &Server) -> Value {
    let r = http(s.addr, "GET", "/iot/sensors", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn iot_readings_are_aggregated_per_sensor() {
    if !mqtt_ready() {
        return;
    }
    let s = Server::start();
    s.deploy(&root().join("examples/iot"));
    // Topics are fixed by the manifest and the broker is shared: names unique to this run.
    let run = format!("{}x{}", s.addr.port(), std::process::id());
    let (warm, hall, porch) = (
        format!("warm{run}"),
        format!("hall{run}"),
        format!("porch{run}"),
    );

    // The subscription is made after the deploy answers: publish until a reading gets through.
    let mut polls = 0u32;
    settle(&s, "iot", "a warm-up reading aggregated", || {
        if polls.is_multiple_of(10) {
            publish(&warm, r#"{"celsius": 1}"#);
        }
        polls += 1;
        sensors(&s).get(&warm).map(|_| ())
    });

    for celsius in ["20.5", "22", "18", "23.5"] {
        publish(&hall, &format!(r#"{{"celsius": {celsius}}}"#));
    }
    // Bad readings are logged and dropped, not counted and not retried.
    publish(&hall, r#"{"celsius": "warm"}"#);
    publish(&hall, "not json");
    publish(&hall, r#"{"celsius": -300}"#);
    publish(&porch, r#"{"celsius": -4.25}"#);

    let all = settle(&s, "iot", "every reading aggregated", || {
        let all = sensors(&s);
        let done = all[&hall]["count"].as_u64() >= Some(4) && all.get(&porch).is_some();
        done.then_some(all)
    });
    let h = &all[&hall];
    assert_eq!(h["count"].as_u64(), Some(4), "{h}");
    assert_eq!(h["min"].as_f64(), Some(18.0), "{h}");
    assert_eq!(h["max"].as_f64(), Some(23.5), "{h}");
    assert_eq!(h["mean"].as_f64(), Some(21.0), "{h}");
    assert_eq!(h["sensor"], hall.as_str());
    assert!(
        h["lastAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{h}"
    );
    let p = &all[&porch];
    assert_eq!(
        (p["count"].as_u64(), p["mean"].as_f64()),
        (Some(1), Some(-4.25)),
        "{p}"
    );

    // None of the deliveries failed: bad readings were answered 2xx.
    let dlq = s.api("/_nubo/api/v1/apps/iot/dlq");
    assert_eq!(
        dlq["invocations"].as_array().map(Vec::len),
        Some(0),
        "{dlq}"
    );

    let triggers = s.ok(&["triggers", "iot"]);
    assert!(
        triggers.contains("temperatures") && triggers.contains("readings"),
        "{triggers}"
    );
}
