//! Behaviour of the embedded store as its callers see it: files on disk, revision numbering,
//! durability across reopen, and invocation records written by the batching writer.

use nubo_core::manifest::{self, Manifest};
use nubo_core::{InvocationId, Outcome};
use nubo_store::{
    CommittedInvocation, FunctionCode, NewRevision, Retention, Store, StoreError, format_rfc3339,
};
use nubo_telemetry::{FinishedInvocation, InvocationMeta, LogEntry, Stream, record_channel};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn manifest(app: &str, functions: &[&str]) -> Manifest {
    let mut text = format!("[app]\nname = \"{app}\"\n");
    for f in functions {
        text.push_str(&format!("[function.{f}]\nsource = \"{f}.wasm\"\n"));
    }
    manifest::parse(&text).unwrap()
}

/// A revision of `app` whose functions' code is stored (each function's code is distinct).
fn new_revision(store: &Store, app: &str, functions: &[&str]) -> NewRevision {
    let functions_code = functions
        .iter()
        .map(|f| {
            let code = format!("code of {app}/{f}");
            FunctionCode {
                name: f.to_string(),
                digest: store.put_blob(code.as_bytes()).unwrap(),
                size: code.len() as u64,
            }
        })
        .collect();
    NewRevision {
        app: app.into(),
        manifest: manifest(app, functions),
        functions: functions_code,
        deployed_by: None,
    }
}

fn finished(
    app: &str,
    function: &str,
    started_at: SystemTime,
    lines: &[&str],
) -> FinishedInvocation {
    FinishedInvocation {
        meta: InvocationMeta {
            id: InvocationId::new(),
            app: app.into(),
            function: function.into(),
            revision: 3,
            trigger: "http",
        },
        started_at,
        duration: Duration::from_micros(1_234),
        outcome: Outcome::Ok,
        status: Some(200),
        cold: true,
        init_ms: None,
        bytes_in: 5,
        bytes_out: 7,
        outbound_requests: 0,
        outbound_bytes_out: 0,
        outbound_bytes_in: 0,
        memory_limit_bytes: None,
        peak_memory_bytes: None,
        cpu_time: None,
        dispatched_after: None,
        running_after: None,
        logs: lines
            .iter()
            .enumerate()
            .map(|(i, line)| LogEntry {
                time: started_at + Duration::from_millis(i as u64),
                stream: if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                line: line.to_string(),
            })
            .collect(),
        logs_truncated: false,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// Receives one committed invocation, failing the test instead of hanging.
fn recv(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<CommittedInvocation>>,
) -> Arc<CommittedInvocation> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(c) => return c,
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no committed invocation: {e:?}"),
        }
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_a_private_data_dir_with_a_wal_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.data_dir(), dir);
    assert!(dir.join("nubo.db").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    }
    let conn = rusqlite::Connection::open(dir.join("nubo.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 14);
}

#[test]
fn blobs_round_trip_and_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let digest = store.put_blob(b"hello").unwrap();
    assert_eq!(digest, HELLO_SHA256);
    let path = store.blob_path(&digest);
    assert_eq!(path, tmp.path().join("blobs/sha256/2c").join(HELLO_SHA256));
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    assert_eq!(store.get_blob(&digest).unwrap(), b"hello");

    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert_eq!(store.put_blob(b"hello").unwrap(), digest);
    // A rewrite would rename a new file (a new inode) into place.
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
        inode,
        "rewritten"
    );
    // One file, no leftover temp files.
    assert_eq!(files_in(path.parent().unwrap()), [HELLO_SHA256]);

    let empty = store.put_blob(b"").unwrap();
    assert_eq!(store.get_blob(&empty).unwrap(), b"");
}

#[test]
fn bad_digests_and_keys_are_refused_and_stay_inside_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let upper = HELLO_SHA256.to_uppercase();
    let traversal = format!("../../{}", &HELLO_SHA256[6..]);
    for bad in [
        "",
        "../../etc/passwd",
        upper.as_str(),
        &HELLO_SHA256[1..],
        traversal.as_str(),
    ] {
        let err = store.get_blob(bad).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidDigest(_)),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("64 lowercase hex"), "{err}");
        assert!(store.blob_path(bad).starts_with(tmp.path()), "{bad:?}");
        assert!(!store.blob_path(bad).exists());
        assert!(!store.has_artifact(bad, "key"));
        assert!(matches!(
            store.put_artifact(bad, "key", b"x"),
            Err(StoreError::InvalidDigest(_))
        ));
    }
    store.put_blob(b"hello").unwrap();
    for bad_key in ["", ".", "..", "../escape", "a/b", ".tmp-x"] {
        let err = store.put_artifact(HELLO_SHA256, bad_key, b"x").unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArtifactKey(_)),
            "{bad_key:?}: {err}"
        );
        assert!(!store.has_artifact(HELLO_SHA256, bad_key));
        assert!(
            store
                .artifact_path(HELLO_SHA256, bad_key)
                .starts_with(tmp.path().join("artifacts"))
        );
    }
    let missing = "0".repeat(64);
    let err = store.get_blob(&missing).unwrap_err();
    assert!(matches!(err, StoreError::BlobNotFound { .. }), "{err}");
    assert!(err.to_string().contains("deploy the app again"), "{err}");
}

#[test]
fn damaged_blob_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let digest = store.put_blob(b"hello").unwrap();
    std::fs::write(store.blob_path(&digest), b"jello").unwrap();
    let err = store.get_blob(&digest).unwrap_err();
    assert!(matches!(err, StoreError::BlobCorrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&store.blob_path(&digest).display().to_string()),
        "{err}"
    );
    // Deploying the same code again repairs it.
    assert_eq!(store.put_blob(b"hello").unwrap(), digest);
    assert_eq!(store.get_blob(&digest).unwrap(), b"hello");
}

#[test]
fn artifacts_are_cached_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert!(!store.has_artifact(HELLO_SHA256, "engine-1"));
    let path = store
        .put_artifact(HELLO_SHA256, "engine-1", b"compiled")
        .unwrap();
    assert_eq!(
        path,
        tmp.path()
            .join("artifacts/engine-1")
            .join(format!("{HELLO_SHA256}.cwasm"))
    );
    assert_eq!(store.artifact_path(HELLO_SHA256, "engine-1"), path);
    assert!(store.has_artifact(HELLO_SHA256, "engine-1"));
    assert!(!store.has_artifact(HELLO_SHA256, "engine-2"));
    assert_eq!(std::fs::read(&path).unwrap(), b"compiled");
    store
        .put_artifact(HELLO_SHA256, "engine-1", b"recompiled")
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"recompiled");
    assert_eq!(
        files_in(path.parent().unwrap()),
        [format!("{HELLO_SHA256}.cwasm")]
    );
}

#[test]
fn revisions_are_numbered_per_app_and_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.next_revision("shop").unwrap(), 1);
    for n in 1..=3 {
        let rec = store
            .commit_revision(new_revision(&store, "shop", &["api"]))
            .unwrap();
        assert_eq!(rec.revision, n);
        assert_eq!(store.app("shop").unwrap().unwrap().revision, n);
    }
    // Another app has its own numbers.
    assert_eq!(
        store
            .commit_revision(new_revision(&store, "blog", &["web"]))
            .unwrap()
            .revision,
        1
    );

    assert!(store.delete_app("shop").unwrap());
    assert!(store.app("shop").unwrap().is_none());
    assert!(
        !store.delete_app("shop").unwrap(),
        "second delete reported success"
    );
    assert!(!store.delete_app("never-deployed").unwrap());
    // History survives removal.
    assert_eq!(store.revision("shop", 2).unwrap().unwrap().revision, 2);
    assert_eq!(store.next_revision("shop").unwrap(), 4);

    let rec = store
        .commit_revision(new_revision(&store, "shop", &["api", "admin"]))
        .unwrap();
    assert_eq!(rec.revision, 4);
    assert_eq!(store.app("shop").unwrap().unwrap(), rec);
    let numbers: Vec<u64> = store
        .revisions("shop")
        .unwrap()
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert!(store.revision("shop", 5).unwrap().is_none());
    assert!(store.revision("shop", u64::MAX).unwrap().is_none());
}

#[test]
fn a_revision_keeps_its_manifest_and_code() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let new = new_revision(&store, "shop", &["web", "api"]);
    let api_digest = new
        .functions
        .iter()
        .find(|f| f.name == "api")
        .unwrap()
        .digest
        .clone();
    let before = SystemTime::now() - Duration::from_millis(1);
    let rec = store.commit_revision(new.clone()).unwrap();
    assert!(rec.created_at >= before && rec.created_at <= SystemTime::now());
    assert_eq!(rec.manifest, new.manifest);
    let names: Vec<&str> = rec.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["api", "web"], "functions sorted by name");
    assert_eq!(rec.digest("api"), Some(api_digest.as_str()));
    assert_eq!(rec.digest("nope"), None);
    assert_eq!(
        rec.function("web").unwrap().size,
        "code of shop/web".len() as u64
    );
    assert_eq!(
        store.get_blob(rec.digest("web").unwrap()).unwrap(),
        b"code of shop/web"
    );
    assert_eq!(store.revision("shop", 1).unwrap().unwrap(), rec);
}

#[test]
fn inconsistent_revisions_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();

    let mut missing_code = new_revision(&store, "shop", &["api", "web"]);
    missing_code.functions.retain(|f| f.name == "api");
    let mut unknown_function = new_revision(&store, "shop", &["api"]);
    unknown_function.functions.push(FunctionCode {
        name: "ghost".into(),
        ..unknown_function.functions[0].clone()
    });
    let mut blob_not_stored = new_revision(&store, "shop", &["api"]);
    blob_not_stored.functions[0].digest = "f".repeat(64);
    let mut bad_digest = new_revision(&store, "shop", &["api"]);
    bad_digest.functions[0].digest = "../x".into();
    let mut other_app = new_revision(&store, "shop", &["api"]);
    other_app.app = "blog".into();
    let cases = [
        (missing_code, "\"web\" has no code"),
        (unknown_function, "\"ghost\" is not in the manifest"),
        (blob_not_stored, "is not stored"),
        (bad_digest, "invalid digest"),
        (other_app, "the manifest is for app \"shop\""),
    ];
    for (new, want) in cases {
        let err = store.commit_revision(new).unwrap_err();
        assert!(matches!(err, StoreError::InvalidRevision { .. }), "{err}");
        assert!(err.to_string().contains(want), "{want:?} not in {err}");
    }
    assert!(store.live_revisions().unwrap().is_empty());
    assert_eq!(store.next_revision("shop").unwrap(), 1);
}

#[test]
fn live_revisions_lists_each_deployed_app_once_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    for app in ["zeta", "alpha", "mid", "alpha", "gone"] {
        store
            .commit_revision(new_revision(&store, app, &["f"]))
            .unwrap();
    }
    store.delete_app("gone").unwrap();
    let live: Vec<(String, u64)> = store
        .live_revisions()
        .unwrap()
        .into_iter()
        .map(|r| (r.app, r.revision))
        .collect();
    assert_eq!(
        live,
        [("alpha".into(), 2), ("mid".into(), 1), ("zeta".into(), 1)]
    );
    let listed: Vec<String> = store
        .list_apps()
        .unwrap()
        .into_iter()
        .map(|r| r.app)
        .collect();
    assert_eq!(listed, ["alpha", "mid", "zeta"]);
}

#[test]
fn everything_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, id, digest) = {
        let store = Store::open(tmp.path()).unwrap();
        let rec = store
            .commit_revision(new_revision(&store, "shop", &["api"]))
            .unwrap();
        store
            .commit_revision(new_revision(&store, "gone", &["api"]))
            .unwrap();
        store.delete_app("gone").unwrap();
        let digest = store.put_blob(b"hello").unwrap();
        store
            .put_artifact(&digest, "engine-1", b"compiled")
            .unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let writer = store.spawn_record_writer(rx).unwrap();
        let fin = finished("shop", "api", at(0), &["one", "two"]);
        let id = fin.meta.id.to_string();
        tx.send(fin).unwrap();
        assert_eq!(writer.shutdown().written, 1);
        (rec, id, digest)
    };
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.app("shop").unwrap().unwrap(), rec);
    assert!(store.app("gone").unwrap().is_none());
    assert_eq!(store.next_revision("gone").unwrap(), 2);
    assert_eq!(store.get_blob(&digest).unwrap(), b"hello");
    assert!(store.has_artifact(&digest, "engine-1"));
    let (record, logs) = store.invocation(&id).unwrap().unwrap();
    assert_eq!(record.app, "shop");
    let lines: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, ["one", "two"]);
}

#[test]
fn a_newer_schema_is_refused_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    let conn = rusqlite::Connection::open(tmp.path().join("nubo.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade nubo"), "{err}");
}

#[test]
fn an_unusable_data_dir_names_the_path_and_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: refused even for root, unlike permissions.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let dir = file.join("data");
    let err = Store::open(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::DataDir { .. }), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains("--data-dir"), "{msg}");
}

#[test]
fn the_writer_commits_a_batch_and_tells_followers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let writer = store.spawn_record_writer(rx).unwrap();
    let mut follower = writer.subscribe();

    let sent: Vec<FinishedInvocation> = (0..3)
        .map(|i| finished("shop", "api", at(i), &["hello", "world"]))
        .collect();
    for fin in &sent {
        tx.send(fin.clone()).unwrap();
    }
    let mut last_cursor = 0;
    for fin in &sent {
        let got = recv(&mut follower);
        assert_eq!(got.record.id, fin.meta.id.to_string());
        assert_eq!(got.record.started_at, format_rfc3339(fin.started_at));
        let lines: Vec<(&str, &str)> = got
            .logs
            .iter()
            .map(|(_, l)| (l.stream.as_str(), l.line.as_str()))
            .collect();
        assert_eq!(lines, [("stdout", "hello"), ("stderr", "world")]);
        for (cursor, _) in &got.logs {
            assert!(*cursor > last_cursor, "cursors must increase");
            last_cursor = *cursor;
        }
        // Announced only once committed: a follower can read it back at once.
        let (record, logs) = store
            .invocation(&got.record.id)
            .unwrap()
            .expect("announced but not stored");
        assert_eq!(record.duration_us, 1_234);
        assert_eq!(record.status, Some(200));
        assert!(record.cold);
        assert_eq!((record.bytes_in, record.bytes_out), (5, 7));
        assert_eq!(
            (
                record.outcome.as_str(),
                record.trigger.as_str(),
                record.revision
            ),
            ("ok", "http", 3)
        );
        assert_eq!(logs.len(), 2);
        assert_eq!(
            logs[1].time,
            format_rfc3339(fin.started_at + Duration::from_millis(1))
        );
    }
    let counts = writer.shutdown();
    assert_eq!((counts.written, counts.failed, counts.log_lines), (3, 0, 6));
}

#[test]
fn records_from_invocation_handles_reach_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (sink, rx) = record_channel(16);
    let writer = store.spawn_record_writer(rx).unwrap();
    let meta = InvocationMeta {
        id: InvocationId::new(),
        app: "shop".into(),
        function: "api".into(),
        revision: 1,
        trigger: "invoke",
    };
    let inv = nubo_telemetry::Invocation::start(meta.clone(), &sink);
    inv.write_log(Stream::Stdout, b"from the guest\n");
    inv.finish(Outcome::Trap, Some(500));
    drop(inv);
    writer.shutdown();
    let (record, logs) = store.invocation(&meta.id.to_string()).unwrap().unwrap();
    assert_eq!(
        (record.outcome.as_str(), record.status),
        ("trap", Some(500))
    );
    assert_eq!(logs[0].line, "from the guest");
}

#[test]
fn invocation_queries_filter_and_order_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let writer = store.spawn_record_writer(rx).unwrap();
    // Sent out of start order: records arrive when invocations end, not when they start.
    let plan = [
        (5, "shop", "api"),
        (1, "shop", "web"),
        (3, "shop", "api"),
        (4, "blog", "api"),
        (2, "shop", "api"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (secs, app, function) in plan {
        let fin = finished(app, function, at(secs), &[]);
        ids.insert(secs, fin.meta.id.to_string());
        tx.send(fin).unwrap();
    }
    writer.shutdown();

    let order = |recs: Vec<nubo_core::api::v1::InvocationRecord>| -> Vec<String> {
        recs.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(
        order(store.invocations("shop", None, 10).unwrap()),
        [
            ids[&5].as_str(),
            ids[&3].as_str(),
            ids[&2].as_str(),
            ids[&1].as_str()
        ]
    );
    assert_eq!(
        order(store.invocations("shop", Some("api"), 10).unwrap()),
        [ids[&5].as_str(), ids[&3].as_str(), ids[&2].as_str()]
    );
    assert_eq!(
        order(store.invocations("shop", None, 2).unwrap()),
        [ids[&5].as_str(), ids[&3].as_str()]
    );
    assert_eq!(
        order(store.invocations("blog", None, 10).unwrap()),
        [ids[&4].as_str()]
    );
    assert!(
        store
            .invocations("shop", Some("nope"), 10)
            .unwrap()
            .is_empty()
    );
    assert!(store.invocations("none", None, 10).unwrap().is_empty());
    assert!(store.invocations("shop", None, 0).unwrap().is_empty());
    assert!(
        store
            .invocation("01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .unwrap()
            .is_none()
    );
    let record = &store.invocations("shop", None, 1).unwrap()[0];
    assert_eq!(record.started_at, "2023-11-14T22:13:25.000Z");
}

#[test]
fn logs_page_by_cursor_and_filter_by_function_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let writer = store.spawn_record_writer(rx).unwrap();
    tx.send(finished("shop", "api", at(10), &["a1", "a2"]))
        .unwrap();
    tx.send(finished("blog", "api", at(11), &["other app"]))
        .unwrap();
    tx.send(finished("shop", "web", at(12), &["w1"])).unwrap();
    tx.send(finished("shop", "api", at(13), &["a3", "a4"]))
        .unwrap();
    writer.shutdown();

    let text = |page: &[(i64, nubo_core::api::v1::LogLine)]| -> Vec<String> {
        page.iter().map(|(_, l)| l.line.clone()).collect()
    };
    let all = store.logs("shop", None, UNIX_EPOCH, None, 100).unwrap();
    assert_eq!(text(&all), ["a1", "a2", "w1", "a3", "a4"]);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "cursors not increasing"
    );

    // Paging: each page continues after the last cursor of the previous one, nothing twice.
    let first = store.logs("shop", None, UNIX_EPOCH, None, 2).unwrap();
    assert_eq!(text(&first), ["a1", "a2"]);
    let second = store
        .logs("shop", None, UNIX_EPOCH, Some(first[1].0), 2)
        .unwrap();
    assert_eq!(text(&second), ["w1", "a3"]);
    let third = store
        .logs("shop", None, UNIX_EPOCH, Some(second[1].0), 2)
        .unwrap();
    assert_eq!(text(&third), ["a4"]);
    assert!(
        store
            .logs("shop", None, UNIX_EPOCH, Some(third[0].0), 2)
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        text(
            &store
                .logs("shop", Some("api"), UNIX_EPOCH, None, 100)
                .unwrap()
        ),
        ["a1", "a2", "a3", "a4"]
    );
    assert_eq!(
        text(&store.logs("shop", None, at(12), None, 100).unwrap()),
        ["w1", "a3", "a4"]
    );
    assert_eq!(
        text(&store.logs("shop", Some("api"), at(12), None, 100).unwrap()),
        ["a3", "a4"]
    );
    // The tail: newest lines, still oldest first, with cursors to follow from.
    let tail = store.recent_logs("shop", None, 3).unwrap();
    assert_eq!(text(&tail), ["w1", "a3", "a4"]);
    assert_eq!(tail[2].0, all[4].0);
    assert_eq!(
        text(&store.recent_logs("shop", Some("api"), 3).unwrap()),
        ["a2", "a3", "a4"]
    );
    let line = &all[0].1;
    assert_eq!(
        (
            line.app.as_str(),
            line.function.as_str(),
            line.stream.as_str()
        ),
        ("shop", "api", "stdout")
    );
    assert_eq!(line.time, "2023-11-14T22:13:30.000Z");
}

#[test]
fn shutdown_writes_everything_already_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<String> = {
        let store = Store::open(tmp.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(2_000);
        let writer = store.spawn_record_writer(rx).unwrap();
        let mut ids = Vec::new();
        for i in 0..1_000 {
            let fin = finished("shop", "api", at(i), &["line"]);
            ids.push(fin.meta.id.to_string());
            tx.send(fin).unwrap();
        }
        // The sender stays alive (as the server's sinks do): shutdown must not wait for it.
        let counts = writer.shutdown();
        assert_eq!((counts.written, counts.failed), (1_000, 0));
        drop(tx);
        ids
    };
    let store = Store::open(tmp.path()).unwrap();
    let stored = store.invocations("shop", None, 5_000).unwrap();
    assert_eq!(stored.len(), 1_000);
    let mut stored_ids: Vec<String> = stored.into_iter().map(|r| r.id).collect();
    stored_ids.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(stored_ids, ids);
    assert_eq!(
        store
            .logs("shop", None, UNIX_EPOCH, None, 5_000)
            .unwrap()
            .len(),
        1_000
    );
}

#[test]
fn dropping_the_writer_also_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let writer = store.spawn_record_writer(rx).unwrap();
    for i in 0..10 {
        tx.send(finished("shop", "api", at(i), &[])).unwrap();
    }
    drop(writer);
    assert_eq!(store.invocations("shop", None, 100).unwrap().len(), 10);
}

#[test]
fn retention_keeps_only_the_newest_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(512);
    let retention = Retention {
        max_invocations: 10,
        max_log_lines: 25,
        max_age: None,
    };
    let writer = store.spawn_record_writer_with(rx, retention).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let fin = finished("shop", "api", at(i), &["x", "y"]);
        ids.push(fin.meta.id.to_string());
        tx.send(fin).unwrap();
    }
    assert_eq!(writer.shutdown().written, 100);

    let kept: Vec<String> = store
        .invocations("shop", None, 1_000)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let newest: Vec<String> = ids.iter().rev().take(10).cloned().collect();
    assert_eq!(kept, newest);
    let lines = store.logs("shop", None, UNIX_EPOCH, None, 1_000).unwrap();
    assert_eq!(lines.len(), 25);
    // The newest 25 lines: the last 12 invocations' two lines and one line of the 13th.
    assert_eq!(lines.last().unwrap().1.invocation_id, ids[99]);
    assert_eq!(lines[0].1.invocation_id, ids[87]);
    assert_eq!(lines[0].1.line, "y");
    // Cursors are not reused after pruning: a new line continues the sequence.
    let last = lines.last().unwrap().0;
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let writer = store.spawn_record_writer_with(rx, retention).unwrap();
    tx.send(finished("shop", "api", at(200), &["z"])).unwrap();
    writer.shutdown();
    let after = store
        .logs("shop", None, UNIX_EPOCH, Some(last), 10)
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, last + 1);
}

#[test]
fn store_and_writer_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Store>();
    fn sendable<T: Send>() {}
    sendable::<nubo_store::RecordWriter>();
}

#[test]
fn temp_files_left_by_a_crash_are_swept_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let digest = store.put_blob(b"hello").unwrap();
    let dir = store.blob_path(&digest).parent().unwrap().to_path_buf();
    std::fs::write(dir.join(".tmp-01HZZZZZZZZZZZZZZZZZZZZZZZ"), b"half a blob").unwrap();
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(files_in(&dir), [HELLO_SHA256]);
    assert_eq!(store.get_blob(&digest).unwrap(), b"hello");
}

// ---- traffic splits, generations, rollback and pruning ----

use nubo_core::api::v1::WeightedRevision;
use nubo_store::TrafficInstruction;

fn wr(revision: u64, weight: u8) -> WeightedRevision {
    WeightedRevision { revision, weight }
}

fn commit_with(store: &Store, app: &str, t: TrafficInstruction) -> Result<u64, StoreError> {
    store
        .commit_revision_with(new_revision(store, app, &["api"]), t, None)
        .map(|(r, _)| r.revision)
}

#[test]
fn deploy_instructions_shape_the_split_and_bump_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A first deploy must take everything.
    let err = commit_with(&store, "shop", TrafficInstruction::Canary(10)).unwrap_err();
    assert!(matches!(err, StoreError::InvalidTraffic { .. }), "{err}");
    assert!(err.to_string().contains("first deploy"), "{err}");
    assert_eq!(
        store.revisions("shop").unwrap().len(),
        0,
        "nothing committed"
    );

    assert_eq!(
        commit_with(&store, "shop", TrafficInstruction::All).unwrap(),
        1
    );
    let t = store.traffic("shop").unwrap().unwrap();
    assert_eq!((t.generation, t.split.clone()), (1, vec![wr(1, 100)]));

    let (_, t) = store
        .commit_revision_with(
            new_revision(&store, "shop", &["api"]),
            TrafficInstruction::Canary(10),
            Some(1),
        )
        .unwrap();
    assert_eq!((t.generation, t.split), (2, vec![wr(1, 90), wr(2, 10)]));

    let (_, t) = store
        .commit_revision_with(
            new_revision(&store, "shop", &["api"]),
            TrafficInstruction::None,
            None,
        )
        .unwrap();
    assert_eq!((t.generation, t.split), (3, vec![wr(1, 90), wr(2, 10)]));
    assert_eq!(
        store.app("shop").unwrap().unwrap().revision,
        1,
        "live = top weight"
    );

    // A stale expectation changes nothing.
    let err = store
        .commit_revision_with(
            new_revision(&store, "shop", &["api"]),
            TrafficInstruction::All,
            Some(2),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 2,
                current: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.revisions("shop").unwrap().len(), 3);
    assert_eq!(store.generation("shop").unwrap(), 3);
}

#[test]
fn set_traffic_checks_and_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..3 {
            commit_with(&store, "shop", TrafficInstruction::All).unwrap();
        }
        let bad = store
            .set_traffic("shop", &[wr(1, 50), wr(2, 40)], None)
            .unwrap_err();
        assert!(bad.to_string().contains("sum to 90"), "{bad}");
        let missing = store.set_traffic("shop", &[wr(9, 100)], None).unwrap_err();
        assert!(
            matches!(missing, StoreError::RevisionNotFound { revision: 9, .. }),
            "{missing}"
        );
        let absent = store.set_traffic("nope", &[wr(1, 100)], None).unwrap_err();
        assert!(matches!(absent, StoreError::AppNotDeployed(_)), "{absent}");
        let stale = store
            .set_traffic("shop", &[wr(1, 100)], Some(1))
            .unwrap_err();
        assert!(
            matches!(stale, StoreError::Conflict { current: 3, .. }),
            "{stale}"
        );

        let t = store
            .set_traffic("shop", &[wr(2, 30), wr(3, 70)], Some(3))
            .unwrap();
        assert_eq!((t.generation, t.split), (4, vec![wr(3, 70), wr(2, 30)]));
    }
    let store = Store::open(dir.path()).unwrap();
    let t = store.traffic("shop").unwrap().unwrap();
    assert_eq!((t.generation, t.split), (4, vec![wr(3, 70), wr(2, 30)]));
    assert_eq!(store.all_traffic().unwrap().len(), 1);
}

#[test]
fn rollback_target_is_the_top_revision_before_the_last_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.rollback_target("shop").unwrap(), None);
    commit_with(&store, "shop", TrafficInstruction::All).unwrap();
    assert_eq!(
        store.rollback_target("shop").unwrap(),
        None,
        "nothing before"
    );
    commit_with(&store, "shop", TrafficInstruction::All).unwrap();
    assert_eq!(store.rollback_target("shop").unwrap(), Some(1));
    store.set_traffic("shop", &[wr(1, 100)], None).unwrap();
    // Rolling back again undoes the rollback.
    assert_eq!(store.rollback_target("shop").unwrap(), Some(2));
    // A no-traffic deploy is not a traffic change.
    commit_with(&store, "shop", TrafficInstruction::None).unwrap();
    assert_eq!(store.rollback_target("shop").unwrap(), Some(2));
    // After a canary the target is the revision that had the most before it.
    commit_with(&store, "shop", TrafficInstruction::Canary(20)).unwrap();
    assert_eq!(
        store.traffic("shop").unwrap().unwrap().split,
        vec![wr(1, 80), wr(4, 20)]
    );
    assert_eq!(store.rollback_target("shop").unwrap(), Some(1));
}

#[test]
fn removal_resets_traffic_and_bumps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    commit_with(&store, "shop", TrafficInstruction::All).unwrap();
    assert!(store.delete_app("shop").unwrap());
    assert_eq!(store.traffic("shop").unwrap(), None);
    assert_eq!(store.generation("shop").unwrap(), 2);
    let err = commit_with(&store, "shop", TrafficInstruction::None).unwrap_err();
    assert!(matches!(err, StoreError::InvalidTraffic { .. }), "{err}");
    assert_eq!(
        commit_with(&store, "shop", TrafficInstruction::All).unwrap(),
        2
    );
    assert_eq!(store.generation("shop").unwrap(), 3);
}

#[test]
fn pruning_keeps_the_newest_and_every_weighted_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for _ in 0..6 {
        commit_with(&store, "shop", TrafficInstruction::All).unwrap();
    }
    store
        .set_traffic("shop", &[wr(1, 50), wr(6, 50)], None)
        .unwrap();
    assert!(store.prune_revisions("shop", 0).is_err());
    assert_eq!(store.prune_revisions("shop", 2).unwrap(), vec![2, 3, 4]);
    let kept: Vec<u64> = store
        .revisions("shop")
        .unwrap()
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(kept, vec![1, 5, 6]);
    assert!(store.revision("shop", 3).unwrap().is_none());
    let err = store.set_traffic("shop", &[wr(3, 100)], None).unwrap_err();
    assert!(matches!(err, StoreError::RevisionNotFound { .. }), "{err}");
    // Numbers are never reused after pruning.
    assert_eq!(
        commit_with(&store, "shop", TrafficInstruction::All).unwrap(),
        7
    );
    assert_eq!(store.prune_revisions("shop", 2).unwrap(), vec![1, 5]);
}

#[test]
fn retention_by_age_prunes_old_records_and_lines_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let retention = Retention {
        max_age: Some(Duration::from_secs(3600)),
        ..Retention::default()
    };
    let writer = store.spawn_record_writer_with(rx, retention).unwrap();
    // Old records (2023) first, as a busy server's oldest rows are, then two of today.
    for i in 0..5 {
        tx.send(finished("shop", "api", at(i), &["old"])).unwrap();
    }
    let mut fresh = Vec::new();
    for _ in 0..2 {
        let fin = finished("shop", "api", SystemTime::now(), &["new", "newer"]);
        fresh.push(fin.meta.id.to_string());
        tx.send(fin).unwrap();
    }
    // Shutting down leaves the tables within their limits.
    assert_eq!(writer.shutdown().written, 7);
    let mut kept: Vec<String> = store
        .invocations("shop", None, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    kept.sort();
    fresh.sort();
    assert_eq!(kept, fresh);
    let lines = store.logs("shop", None, UNIX_EPOCH, None, 100).unwrap();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|(_, l)| l.line != "old"));
}
