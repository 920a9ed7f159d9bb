//! Wasm functions reach the key-value stores they bind through `wasi:keyvalue@0.2.0-draft`:
//! every interface (`store`, `atomics`, `batch`) driven through the `kv` guest, its writes
//! checked through the admin API, stores it does not bind refused with a log line that names
//! the manifest fix, and concurrent increments summed exactly.

use crate::support::{Server, guest, guest_app, http};

/// Deploys the kv guest as app `shop`, function `api`, bound to `carts`, under `/kv/...`.
fn deploy_kv(s: &Server) {
    let dir = guest_app(
        "shop",
        "api",
        &guest("kv"),
        "kv = [\"carts\"]\ntimeout = \"20s\"",
        &["/kv/..."],
    );
    s.deploy(dir.path());
}

/// The value of `key` in store `store`, read through the admin API (None: absent).
fn admin_value(s: &Server, store: &str, key: &str) -> Option<Vec<u8>> {
    let r = http(
        s.addr,
        "GET",
        &format!("/_nubo/api/v1/kv/{store}/keys/{key}"),
        &[],
        b"",
    );
    match r.status {
        200 => Some(r.body),
        404 if r.json()["error"]["code"] == "kv_key_not_found" => None,
        other => panic!("GET kv {store}/{key}: {other} {}", r.text()),
    }
}

fn get(s: &Server, path: &str) -> crate::support::Resp {
    http(s.addr, "GET", path, &[], b"")
}

#[test]
fn store_operations_reach_the_bound_store() {
    let s = Server::start();
    deploy_kv(&s);

    // set: the request body becomes the value, visible to the admin API.
    let r = http(s.addr, "PUT", "/kv/set?key=alice", &[], b"two apples");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    assert_eq!(
        admin_value(&s, "carts", "alice").as_deref(),
        Some(&b"two apples"[..])
    );

    // get and exists, present and absent.
    let r = get(&s, "/kv/get?key=alice");
    assert_eq!((r.status, r.text()), (200, "two apples".to_owned()));
    let r = get(&s, "/kv/get?key=nobody");
    assert_eq!((r.status, r.text()), (404, "absent".to_owned()));
    assert_eq!(get(&s, "/kv/exists?key=alice").text(), "true");
    assert_eq!(get(&s, "/kv/exists?key=nobody").text(), "false");

    // A value the store refuses comes back as the WIT's `other` with the limit and the fix.
    let big = vec![b'x'; nubo_core::limits::MAX_KV_VALUE_BYTES + 1];
    let r = http(s.addr, "PUT", "/kv/set?key=big", &[], &big);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().starts_with("other: "), "{}", r.text());
    assert!(r.text().contains("1 MiB"), "names the limit: {}", r.text());
    assert_eq!(admin_value(&s, "carts", "big"), None);

    // delete: gone for the guest and the admin API; deleting again is fine.
    assert_eq!(get(&s, "/kv/delete?key=alice").text(), "ok");
    assert_eq!(get(&s, "/kv/exists?key=alice").text(), "false");
    assert_eq!(admin_value(&s, "carts", "alice"), None);
    assert_eq!(get(&s, "/kv/delete?key=alice").status, 200);
}

#[test]
fn list_keys_pages_through_the_whole_store() {
    let s = Server::start();
    deploy_kv(&s);
    // More keys than one page: each batch writes 400 keys and deletes its first two.
    const BATCHES: usize = 3;
    const PER_BATCH: usize = 400;
    let expected = BATCHES * (PER_BATCH - 2);
    assert!(expected > nubo_core::limits::MAX_KV_LIST_LIMIT);
    for batch in 0..BATCHES {
        let r = http(
            s.addr,
            "POST",
            &format!("/kv/batch?prefix=k{batch}-&n={PER_BATCH}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let first = get(&s, "/kv/list");
    assert_eq!(first.status, 200, "{}", first.text());
    let page: Vec<String> = first.text().lines().map(str::to_owned).collect();
    assert_eq!(page.len(), nubo_core::limits::MAX_KV_LIST_LIMIT);
    let cursor = first
        .header("x-cursor")
        .expect("a cursor for the next page");
    // A cursor belongs to the bucket that issued it: a new request (a new instance) cannot
    // resume another's, and says how to.
    let r = get(&s, &format!("/kv/list?cursor={cursor}"));
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("unknown list-keys cursor"),
        "{}",
        r.text()
    );

    let all = get(&s, "/kv/list-all");
    assert_eq!(all.status, 200, "{}", all.text());
    let text = all.text();
    let mut listed: Vec<&str> = text.lines().collect();
    assert_eq!(listed.len(), expected);
    let before = listed.clone();
    listed.sort_unstable();
    listed.dedup();
    assert_eq!(listed, before, "every key once, in byte order");
    assert_eq!(
        &listed[..page.len()],
        &page[..],
        "the first page starts the walk"
    );
}

#[test]
fn increments_and_batches() {
    let s = Server::start();
    deploy_kv(&s);

    assert_eq!(get(&s, "/kv/incr?key=visits&delta=5").text(), "5");
    assert_eq!(get(&s, "/kv/incr?key=visits&delta=2").text(), "7");
    assert_eq!(
        admin_value(&s, "carts", "visits").as_deref(),
        Some(&b"7"[..])
    );
    // A value that is not a number cannot be incremented; the message says so.
    assert_eq!(
        http(s.addr, "PUT", "/kv/set?key=word", &[], b"hello").status,
        200
    );
    let r = get(&s, "/kv/incr?key=word&delta=1");
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("not a signed 64-bit decimal number"),
        "{}",
        r.text()
    );

    // The WIT's counters are unsigned: a delta past i64::MAX, or a counter made negative
    // from outside, is refused with what to do rather than wrapped.
    let r = get(&s, &format!("/kv/incr?key=visits&delta={}", u64::MAX));
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("counters are signed 64-bit"),
        "{}",
        r.text()
    );
    assert_eq!(
        admin_value(&s, "carts", "visits").as_deref(),
        Some(&b"7"[..])
    );
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/kv/carts/keys/debt",
        &[],
        b"-5",
    );
    assert!(r.status < 300, "{}", r.text());
    let r = get(&s, "/kv/incr?key=debt&delta=1");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("the counter is now -4"), "{}", r.text());

    let r = http(s.addr, "POST", "/kv/batch?prefix=item&n=4", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "get item0=value-0 item1=value-1 item2=value-2 item3=value-3 item-missing=none\n\
         after delete item0=none item1=none item2=value-2 item3=value-3 item-missing=none\n"
    );
    assert_eq!(admin_value(&s, "carts", "item0"), None);
    assert_eq!(
        admin_value(&s, "carts", "item3").as_deref(),
        Some(&b"value-3"[..])
    );
}

#[test]
fn unbound_stores_are_refused_and_logged() {
    let s = Server::start();
    deploy_kv(&s);
    assert_eq!(get(&s, "/kv/open?store=carts").text(), "opened");

    let r = get(&s, "/kv/open?store=secrets");
    assert_eq!((r.status, r.text()), (403, "access-denied".to_owned()));
    let id = r.header("nubo-invocation-id").expect("an invocation id");
    let logs = s.invocation(id)["logs"].to_string();
    assert!(logs.contains("\\\"secrets\\\" is not bound"), "{logs}");
    assert!(
        logs.contains("kv = [\\\"secrets\\\"]"),
        "names the fix: {logs}"
    );

    // A function that binds nothing opens nothing.
    let dir = guest_app("bare", "api", &guest("kv"), "", &["/bare/..."]);
    s.deploy(dir.path());
    let r = get(&s, "/bare/open?store=carts");
    assert_eq!((r.status, r.text()), (403, "access-denied".to_owned()));
}

#[test]
fn concurrent_increments_sum_exactly() {
    let s = Server::start();
    deploy_kv(&s);
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let addr = s.addr;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut seen = Vec::with_capacity(PER_THREAD);
                for _ in 0..PER_THREAD {
                    let r = http(addr, "POST", "/kv/incr?key=hits&delta=1", &[], b"");
                    assert_eq!(r.status, 200, "{}", r.text());
                    seen.push(r.text().parse::<u64>().expect("a number"));
                }
                seen
            })
        })
        .collect();
    let mut seen: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("an increment thread"))
        .collect();
    seen.sort_unstable();
    // Each increment returned a distinct sum: none was lost or applied twice.
    let expected: Vec<u64> = (1..=(THREADS * PER_THREAD) as u64).collect();
    assert_eq!(seen, expected);
    assert_eq!(
        admin_value(&s, "carts", "hits").as_deref(),
        Some((THREADS * PER_THREAD).to_string().as_bytes())
    );
}

#[test]
fn get_many_is_capped_by_total_value_size() {
    let s = Server::start();
    deploy_kv(&s);
    let mib = vec![b'v'; 1024 * 1024];
    for i in 0..17 {
        let r = http(
            s.addr,
            "PUT",
            &format!("/_nubo/api/v1/kv/carts/keys/big{i}"),
            &[],
            &mib,
        );
        assert!(r.status < 300, "PUT big{i}: {} {}", r.status, r.text());
    }
    let r = get(&s, "/kv/get-many?keys=big0,big1,big2,none");
    assert_eq!(
        (r.status, r.text()),
        (200, "found 3 bytes 3145728".to_owned())
    );

    // 17 MiB of values in one get-many is refused with the limit and the fix.
    let keys: Vec<String> = (0..17).map(|i| format!("big{i}")).collect();
    let r = get(&s, &format!("/kv/get-many?keys={}", keys.join(",")));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("more than 16777216 bytes"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("ask for fewer keys"), "{}", r.text());
}

/// Components built against `wasi:keyvalue@0.2.0-draft2` (as Spin 3's are) link too, and get
/// what that release adds: string cursors that work across requests, signed counters, and
/// compare-and-swap that never swaps over a value it did not see.
#[test]
fn the_draft2_release_adds_string_cursors_signed_counters_and_compare_and_swap() {
    let s = Server::start();
    let dir = guest_app(
        "shop2",
        "api",
        &guest("kv2"),
        "kv = [\"carts\"]\ntimeout = \"20s\"",
        &["/kv2/..."],
    );
    s.deploy(dir.path());

    // The same store as the draft guest and the admin API see.
    let r = http(s.addr, "PUT", "/kv2/set?key=a", &[], b"1");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    assert_eq!(admin_value(&s, "carts", "a").as_deref(), Some(&b"1"[..]));

    // Signed counters: below zero and back.
    assert_eq!(get(&s, "/kv2/incr?key=n&delta=-5").text(), "-5");
    assert_eq!(get(&s, "/kv2/incr?key=n&delta=7").text(), "2");

    // String cursors: 1,500 keys come back in two pages, all of them, in order.
    // (written through the admin API to keep the test quick)
    for i in 0..1500 {
        let k = format!("k{i:04}");
        let r = http(
            s.addr,
            "PUT",
            &format!("/_nubo/api/v1/kv/carts/keys/{k}"),
            &[],
            b"v",
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let all = get(&s, "/kv2/list-all").text();
    let listed: Vec<&str> = all.lines().filter(|k| k.starts_with('k')).collect();
    assert_eq!(listed.len(), 1500);
    assert_eq!(listed.first(), Some(&"k0000"));
    assert_eq!(listed.last(), Some(&"k1499"));

    // Compare-and-swap: a swap over a value written behind the cas's back fails and hands
    // back what is there now.
    let r = http(s.addr, "POST", "/kv2/cas-stale?key=c", &[], b"");
    assert_eq!(r.text(), "cas-failed current=written-behind");
    assert_eq!(
        admin_value(&s, "carts", "c").as_deref(),
        Some(&b"written-behind"[..])
    );

    // Concurrent appends through compare-and-swap lose nothing: 4 threads × 10 appends.
    let addr = s.addr;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let r = http(
                        addr,
                        "POST",
                        "/kv2/append?key=log",
                        &[],
                        format!("{t}").as_bytes(),
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = admin_value(&s, "carts", "log").unwrap();
    assert_eq!(log.len(), 40, "{}", String::from_utf8_lossy(&log));
    for t in 0..4u8 {
        assert_eq!(log.iter().filter(|b| **b == b'0' + t).count(), 10);
    }

    // get-many answers every key asked, present or not.
    assert_eq!(get(&s, "/kv2/get-many?keys=a,zz").text(), "a=1\nzz=none");
}
