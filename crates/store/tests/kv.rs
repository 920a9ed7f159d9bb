//! The key-value stores of the embedded backend, as a caller sees them.

use nubo_core::ErrorCode;
use nubo_core::limits::{MAX_KV_BATCH, MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES};
use nubo_store::Store;
use nubo_store::kv::{Kv, KvError};
use std::time::Duration;

fn open() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    (tmp, store)
}

fn with_store(name: &str) -> (tempfile::TempDir, Store, Kv) {
    let (tmp, store) = open();
    let kv = store.kv();
    kv.ensure_store(name).unwrap();
    (tmp, store, kv)
}

#[test]
fn set_get_delete_round_trip() {
    let (_tmp, _store, kv) = with_store("carts");
    assert_eq!(kv.get("carts", "a").unwrap(), None);
    assert!(!kv.exists("carts", "a").unwrap());
    kv.set("carts", "a", b"\x00binary\xff", None).unwrap();
    assert_eq!(
        kv.get("carts", "a").unwrap(),
        Some(b"\x00binary\xff".to_vec())
    );
    assert!(kv.exists("carts", "a").unwrap());
    kv.set("carts", "a", b"second", None).unwrap();
    assert_eq!(kv.get("carts", "a").unwrap(), Some(b"second".to_vec()));
    assert!(kv.delete("carts", "a").unwrap());
    assert!(!kv.delete("carts", "a").unwrap());
    assert_eq!(kv.get("carts", "a").unwrap(), None);
    // An empty value is a value, not an absence.
    kv.set("carts", "empty", b"", None).unwrap();
    assert_eq!(kv.get("carts", "empty").unwrap(), Some(Vec::new()));
}

#[test]
fn stores_must_exist_and_ensure_is_idempotent() {
    let (_tmp, store) = open();
    let kv = store.kv();
    let err = kv.set("nope", "k", b"v", None).unwrap_err();
    assert!(
        matches!(err, KvError::NoSuchStore(ref s) if s == "nope"),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::KvStoreNotFound);
    assert!(err.to_string().contains("nubo kv create nope"), "{err}");
    assert!(matches!(kv.get("nope", "k"), Err(KvError::NoSuchStore(_))));
    assert!(matches!(
        kv.exists("nope", "k"),
        Err(KvError::NoSuchStore(_))
    ));
    assert!(matches!(
        kv.list_keys("nope", None, None, 10),
        Err(KvError::NoSuchStore(_))
    ));
    assert!(matches!(
        kv.increment("nope", "k", 1),
        Err(KvError::NoSuchStore(_))
    ));
    // The failed writes created nothing.
    assert!(kv.stores().unwrap().is_empty());

    kv.ensure_store("b").unwrap();
    kv.ensure_store("a").unwrap();
    kv.set("a", "k", b"v", None).unwrap();
    kv.ensure_store("a").unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), Some(b"v".to_vec()));
    let names: Vec<String> = kv.stores().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);

    let bad = kv.ensure_store("Bad/Name").unwrap_err();
    assert!(matches!(bad, KvError::BadStoreName(_)), "{bad}");
}

#[test]
fn store_totals_follow_writes() {
    let (_tmp, _store, kv) = with_store("s");
    kv.set("s", "ab", b"1234", None).unwrap();
    kv.set("s", "c", b"12", None).unwrap();
    kv.set("s", "ab", b"1", None).unwrap();
    let info = &kv.stores().unwrap()[0];
    assert_eq!((info.keys, info.bytes), (2, 2 + 1 + 1 + 2));
    kv.delete("s", "ab").unwrap();
    let info = &kv.stores().unwrap()[0];
    assert_eq!((info.keys, info.bytes), (1, 3));
}

#[test]
fn keys_and_values_are_checked_against_the_limits() {
    let (_tmp, _store, kv) = with_store("s");
    let longest = "k".repeat(MAX_KV_KEY_BYTES);
    kv.set("s", &longest, b"v", None).unwrap();
    let too_long = "k".repeat(MAX_KV_KEY_BYTES + 1);
    let err = kv.set("s", &too_long, b"v", None).unwrap_err();
    assert!(matches!(err, KvError::KeyTooLong { len } if len == MAX_KV_KEY_BYTES + 1));
    assert!(err.to_string().contains("1024"), "{err}");
    assert_eq!(err.code(), ErrorCode::KvInvalidKey);
    for bad in ["", "a\0b"] {
        let err = kv.set("s", bad, b"v", None).unwrap_err();
        assert!(matches!(err, KvError::BadKey { .. }), "{bad:?}: {err}");
        assert!(matches!(kv.get("s", bad), Err(KvError::BadKey { .. })));
    }
    kv.set("s", "big", &vec![7; MAX_KV_VALUE_BYTES], None)
        .unwrap();
    let err = kv
        .set("s", "bigger", &vec![7; MAX_KV_VALUE_BYTES + 1], None)
        .unwrap_err();
    assert!(matches!(err, KvError::ValueTooLarge { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    assert_eq!(kv.get("s", "bigger").unwrap(), None);
    let batch: Vec<String> = (0..=MAX_KV_BATCH).map(|i| format!("k{i}")).collect();
    assert!(matches!(
        kv.get_many("s", &batch),
        Err(KvError::BatchTooLarge { .. })
    ));
}

#[test]
fn ttl_makes_keys_absent_everywhere_and_the_sweep_purges_them() {
    let (_tmp, _store, kv) = with_store("s");
    kv.set("s", "short", b"5", Some(Duration::from_millis(50)))
        .unwrap();
    kv.set("s", "long", b"x", Some(Duration::from_secs(3600)))
        .unwrap();
    kv.set("s", "forever", b"y", None).unwrap();
    assert_eq!(kv.get("s", "short").unwrap(), Some(b"5".to_vec()));
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(kv.get("s", "short").unwrap(), None);
    assert!(!kv.exists("s", "short").unwrap());
    assert_eq!(kv.get_versioned("s", "short").unwrap(), None);
    assert_eq!(kv.get_many("s", &["short".into()]).unwrap(), vec![None]);
    let page = kv.list_keys("s", None, None, 100).unwrap();
    assert_eq!(page.keys, ["forever", "long"]);
    // An expired number counts as absent: the increment starts from 0.
    assert_eq!(kv.increment("s", "short", 2).unwrap(), 2);
    // Deleting an expired key reports it absent.
    kv.set("s", "gone", b"z", Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!kv.delete("s", "gone").unwrap());

    kv.set("s", "e1", b"a", Some(Duration::from_millis(1)))
        .unwrap();
    kv.set("s", "e2", b"b", Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(kv.stores().unwrap()[0].keys, 5);
    assert_eq!(kv.sweep_expired(1).unwrap(), 1);
    assert_eq!(kv.sweep_expired(100).unwrap(), 1);
    assert_eq!(kv.sweep_expired(100).unwrap(), 0);
    let info = &kv.stores().unwrap()[0];
    assert_eq!(info.keys, 3, "forever, long and short remain");
    assert_eq!(info.bytes, (7 + 1) + (4 + 1) + (5 + 1));
    // Setting again without a TTL clears the old one.
    kv.set("s", "long", b"x", None).unwrap();
    kv.set("s", "ttl", b"x", Some(Duration::from_millis(1)))
        .unwrap();
    kv.set("s", "ttl", b"x", None).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(kv.get("s", "ttl").unwrap(), Some(b"x".to_vec()));
}

#[test]
fn listing_pages_in_byte_order_with_prefix_and_cursor() {
    let (_tmp, _store, kv) = with_store("s");
    let keys = ["b/1", "a", "b/2", "b/3", "b0", "b", "é", "c"];
    for k in keys {
        kv.set("s", k, b"", None).unwrap();
    }
    let all = kv.list_keys("s", None, None, 100).unwrap();
    assert_eq!(all.keys, ["a", "b", "b/1", "b/2", "b/3", "b0", "c", "é"]);
    assert_eq!(all.cursor, None);

    let first = kv.list_keys("s", Some("b/"), None, 2).unwrap();
    assert_eq!(first.keys, ["b/1", "b/2"]);
    assert_eq!(first.cursor.as_deref(), Some("b/2"));
    let second = kv
        .list_keys("s", Some("b/"), first.cursor.as_deref(), 2)
        .unwrap();
    assert_eq!(second.keys, ["b/3"]);
    assert_eq!(second.cursor, None);

    // Walk the whole store one key at a time; bounded by the number of keys.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..=keys.len() {
        let page = kv.list_keys("s", None, cursor.as_deref(), 1).unwrap();
        seen.extend(page.keys);
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, all.keys);
    assert!(
        kv.list_keys("s", Some("zz"), None, 10)
            .unwrap()
            .keys
            .is_empty()
    );
}

#[test]
fn increment_is_atomic_and_checks_numbers() {
    let (_tmp, _store, kv) = with_store("s");
    assert_eq!(kv.increment("s", "n", 5).unwrap(), 5);
    assert_eq!(kv.increment("s", "n", -7).unwrap(), -2);
    assert_eq!(kv.get("s", "n").unwrap(), Some(b"-2".to_vec()));
    kv.set("s", "text", b"hello", None).unwrap();
    let err = kv.increment("s", "text", 1).unwrap_err();
    assert!(matches!(err, KvError::NotANumber { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::KvNotANumber);
    assert_eq!(kv.get("s", "text").unwrap(), Some(b"hello".to_vec()));
    kv.set("s", "max", i64::MAX.to_string().as_bytes(), None)
        .unwrap();
    assert!(matches!(
        kv.increment("s", "max", 1),
        Err(KvError::Overflow { .. })
    ));

    // Eight threads adding 100 each must not lose an update.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    kv.increment("s", "counter", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(kv.get("s", "counter").unwrap(), Some(b"800".to_vec()));
}

#[test]
fn compare_and_swap_uses_versions_that_never_repeat() {
    let (_tmp, _store, kv) = with_store("s");
    assert!(kv.compare_and_swap("s", "k", None, b"first").unwrap());
    assert!(!kv.compare_and_swap("s", "k", None, b"again").unwrap());
    let v1 = kv.get_versioned("s", "k").unwrap().unwrap();
    assert_eq!(v1.value, b"first");
    kv.set("s", "k", b"other", None).unwrap();
    assert!(
        !kv.compare_and_swap("s", "k", Some(v1.version), b"stale")
            .unwrap()
    );
    let v2 = kv.get_versioned("s", "k").unwrap().unwrap();
    assert!(v2.version > v1.version);
    assert!(
        kv.compare_and_swap("s", "k", Some(v2.version), b"swapped")
            .unwrap()
    );
    assert_eq!(kv.get("s", "k").unwrap(), Some(b"swapped".to_vec()));

    // Delete and write again: the old version must not match the new value.
    let v3 = kv.get_versioned("s", "k").unwrap().unwrap();
    kv.delete("s", "k").unwrap();
    kv.set("s", "k", b"reborn", None).unwrap();
    assert!(
        !kv.compare_and_swap("s", "k", Some(v3.version), b"aba")
            .unwrap()
    );
    assert_eq!(kv.get("s", "k").unwrap(), Some(b"reborn".to_vec()));
}

#[test]
fn batches_read_write_and_delete_together() {
    let (_tmp, _store, kv) = with_store("s");
    let items: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}"), format!("v{i}").into_bytes()))
        .collect();
    kv.set_many("s", &items).unwrap();
    let got = kv
        .get_many("s", &["k2".into(), "missing".into(), "k0".into()])
        .unwrap();
    assert_eq!(got, vec![Some(b"v2".to_vec()), None, Some(b"v0".to_vec())]);

    // One bad item: nothing of the batch is written.
    let bad = vec![
        ("k9".to_string(), b"x".to_vec()),
        (String::new(), b"y".to_vec()),
    ];
    assert!(kv.set_many("s", &bad).is_err());
    assert_eq!(kv.get("s", "k9").unwrap(), None);

    kv.delete_many("s", &["k0".into(), "k1".into(), "never".into()])
        .unwrap();
    assert_eq!(
        kv.list_keys("s", None, None, 10).unwrap().keys,
        ["k2".to_string()]
    );
    assert_eq!(kv.stores().unwrap()[0].keys, 1);
}

#[test]
fn values_survive_reopening_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        let kv = store.kv();
        kv.ensure_store("s").unwrap();
        kv.set("s", "k", b"durable", None).unwrap();
        kv.increment("s", "n", 3).unwrap();
    }
    let store = Store::open(tmp.path()).unwrap();
    let kv = store.kv();
    assert_eq!(kv.get("s", "k").unwrap(), Some(b"durable".to_vec()));
    assert_eq!(kv.get("s", "n").unwrap(), Some(b"3".to_vec()));
    assert_eq!(kv.stores().unwrap()[0].keys, 2);
}

#[test]
fn a_full_store_refuses_new_keys_after_purging_its_expired_ones() {
    use nubo_core::limits::MAX_KV_KEYS_PER_STORE;
    let (tmp, _store, kv) = with_store("s");
    kv.set("s", "a", b"1", None).unwrap();
    kv.set("s", "old", b"x", Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Filling a store for real takes a million writes; its running total is what the limit
    // reads, so set it as if the store held the maximum.
    let raw = rusqlite::Connection::open(tmp.path().join("nubo.db")).unwrap();
    raw.execute(
        "UPDATE kv_stores SET keys = ?1 WHERE name = 's'",
        [MAX_KV_KEYS_PER_STORE as i64],
    )
    .unwrap();
    // Replacing a key adds none.
    kv.set("s", "a", b"2", None).unwrap();
    // A new key fits once the expired one is purged...
    kv.set("s", "new", b"y", None).unwrap();
    assert_eq!(kv.stores().unwrap()[0].keys, MAX_KV_KEYS_PER_STORE);
    // ...and after that the store is full.
    let err = kv.set("s", "more", b"z", None).unwrap_err();
    assert!(matches!(err, KvError::StoreFull { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::KvStoreFull);
    assert!(err.to_string().contains("1000000"), "{err}");
    assert_eq!(kv.get("s", "more").unwrap(), None);
    assert!(matches!(
        kv.increment("s", "counter", 1),
        Err(KvError::StoreFull { .. })
    ));
    // Deleting makes room again.
    assert!(kv.delete("s", "a").unwrap());
    kv.set("s", "more", b"z", None).unwrap();
}
