//! Unit tests of the limiter: reserve accounting, queue full, queue timeout, FIFO order and
//! slot release.

use super::*;
use std::time::Duration;

fn target(function: &str, revision: u64) -> FunctionTarget {
    FunctionTarget {
        app: "app".into(),
        function: function.into(),
        revision,
    }
}

fn spec(max: u32, reserve: bool, depth: u32, timeout_ms: u64) -> ConcurrencySpec {
    ConcurrencySpec {
        max_concurrency: max,
        reserve,
        queue_depth: depth,
        queue_timeout_ms: timeout_ms,
    }
}

fn one(limiter: &Limiter, function: &str, s: ConcurrencySpec) -> Arc<FunctionLimit> {
    limiter
        .register(&[(target(function, 1), s)])
        .expect("register")
        .limits
        .remove(0)
}

fn figures(limiter: &Limiter, function: &str) -> FunctionLoad {
    limiter
        .metrics()
        .functions
        .into_iter()
        .find(|f| f.function == function)
        .expect("function in the figures")
}

fn throttled(r: &Result<Permit, InvokeError>) -> bool {
    matches!(r, Err(InvokeError::Throttled { retry_after_secs }) if *retry_after_secs >= 1)
}

#[tokio::test]
async fn function_limit_then_queue_full_is_throttled() {
    let limiter = Limiter::new(100);
    let f = one(&limiter, "f", spec(2, false, 0, 1_000));
    let a = f.acquire().await.expect("first slot");
    let _b = f.acquire().await.expect("second slot");
    // No queue: the third is answered at once.
    assert!(throttled(&f.acquire().await));
    assert_eq!(figures(&limiter, "f").throttled, 1);
    assert_eq!(limiter.metrics().server.throttled, 1);
    drop(a);
    let _c = f.acquire().await.expect("a released slot is reusable");
    assert_eq!(figures(&limiter, "f").in_flight, 2);
}

#[tokio::test]
async fn queue_full_is_throttled_at_once() {
    let limiter = Limiter::new(100);
    let f = one(&limiter, "f", spec(1, false, 1, 60_000));
    let held = f.acquire().await.expect("slot");
    let f2 = f.clone();
    let waiting = tokio::spawn(async move { f2.acquire().await.map(drop) });
    eventually(|| figures(&limiter, "f").queued == 1).await;
    let started = std::time::Instant::now();
    assert!(throttled(&f.acquire().await), "queue of 1 is full");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not after the queue timeout"
    );
    drop(held);
    waiting
        .await
        .unwrap()
        .expect("the waiter got the released slot");
}

#[tokio::test]
async fn queue_timeout_is_throttled() {
    let limiter = Limiter::new(100);
    let f = one(&limiter, "f", spec(1, false, 10, 50));
    let _held = f.acquire().await.expect("slot");
    assert!(throttled(&f.acquire().await));
    let fig = figures(&limiter, "f");
    assert_eq!((fig.queued, fig.throttled, fig.in_flight), (0, 1, 1));
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let limiter = Limiter::new(100);
    let f = one(&limiter, "f", spec(1, false, 10, 60_000));
    let held = f.acquire().await.expect("slot");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (f, order) = (f.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = f.acquire().await.expect("slot after waiting");
            lock(&order).push(i);
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(permit);
        }));
        // Each joins the queue before the next starts.
        eventually(|| figures(&limiter, "f").queued == i + 1).await;
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*lock(&order), vec![0, 1, 2, 3, 4]);
    assert_eq!(figures(&limiter, "f").in_flight, 0);
}

#[tokio::test]
async fn a_dropped_waiter_leaves_the_queue() {
    let limiter = Limiter::new(100);
    let f = one(&limiter, "f", spec(1, false, 1, 60_000));
    let held = f.acquire().await.expect("slot");
    let f2 = f.clone();
    let waiting = tokio::spawn(async move { f2.acquire().await.map(drop) });
    eventually(|| figures(&limiter, "f").queued == 1).await;
    waiting.abort();
    eventually(|| figures(&limiter, "f").queued == 0).await;
    drop(held);
    assert_eq!(figures(&limiter, "f").in_flight, 0);
    let _again = f.acquire().await.expect("the slot is free again");
}

#[tokio::test]
async fn reserved_capacity_is_kept_from_other_functions() {
    let limiter = Limiter::new(10);
    let r = one(&limiter, "reserved", spec(4, true, 0, 0));
    let u = one(&limiter, "open", spec(100, false, 0, 0));
    let m = limiter.metrics().server;
    assert_eq!((m.cap, m.reserved, m.shared_cap), (10, 4, 6));
    // Unreserved functions share only 10 - 4.
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(u.acquire().await.expect("shared slot"));
    }
    assert!(throttled(&u.acquire().await), "shared capacity used up");
    // The reservation is still there.
    let mut mine = Vec::new();
    for _ in 0..4 {
        mine.push(r.acquire().await.expect("reserved slot"));
    }
    assert!(
        throttled(&r.acquire().await),
        "a reserved function stops at its own limit"
    );
    let m = limiter.metrics().server;
    assert_eq!((m.in_use, m.shared_in_use), (10, 6));
    drop(open);
    drop(mine);
    assert_eq!(limiter.metrics().server.in_use, 0);
}

#[test]
fn reservations_past_the_cap_fail_the_load_and_change_nothing() {
    let limiter = Limiter::new(10);
    one(&limiter, "a", spec(6, true, 0, 0));
    let err = match limiter.register(&[(target("b", 1), spec(5, true, 0, 0))]) {
        Err(e) => e,
        Ok(_) => panic!("11 reserved of 10 was accepted"),
    };
    assert_eq!(err.code, ErrorCode::InvalidManifest);
    assert_eq!(err.function, "b");
    for part in [
        "reserve 11",
        "server's 10",
        "6 are reserved by other functions",
    ] {
        assert!(
            err.message.contains(part),
            "{part:?} not in {}",
            err.message
        );
    }
    let m = limiter.metrics();
    assert_eq!((m.server.reserved, m.server.shared_cap), (6, 4));
    assert!(m.functions.iter().all(|f| f.function != "b"));
    // The same function unreserved loads.
    limiter
        .register(&[(target("b", 1), spec(5, false, 0, 0))])
        .expect("unreserved fits");
}

#[test]
fn newest_revision_sets_the_limits_and_retain_gives_reservations_back() {
    let limiter = Limiter::new(10);
    one(&limiter, "f", spec(3, true, 0, 0));
    limiter
        .register(&[(target("f", 2), spec(5, false, 7, 100))])
        .expect("revision 2");
    let fig = figures(&limiter, "f");
    assert_eq!(
        (fig.revision, fig.max_concurrency, fig.reserve),
        (2, 5, false)
    );
    assert_eq!(limiter.metrics().server.reserved, 0);
    // Revision 2 goes away: revision 1's settings are back.
    limiter.retain("app", &[1]);
    let fig = figures(&limiter, "f");
    assert_eq!(
        (fig.revision, fig.max_concurrency, fig.reserve),
        (1, 3, true)
    );
    assert_eq!(limiter.metrics().server.reserved, 3);
    limiter.retain("app", &[]);
    let m = limiter.metrics();
    assert!(m.functions.is_empty());
    assert_eq!((m.server.reserved, m.server.shared_cap), (0, 10));
}

#[test]
fn a_failed_load_restores_the_settings_it_replaced() {
    let limiter = Limiter::new(10);
    one(&limiter, "f", spec(3, true, 0, 0));
    // Revision 1 loaded again with other settings, and a new revision 2; the load fails.
    let reg = limiter
        .register(&[
            (target("f", 1), spec(7, false, 0, 0)),
            (target("f", 2), spec(9, false, 0, 0)),
        ])
        .expect("register");
    assert_eq!(figures(&limiter, "f").max_concurrency, 9);
    limiter.unregister(reg.previous);
    let fig = figures(&limiter, "f");
    assert_eq!(
        (fig.revision, fig.max_concurrency, fig.reserve),
        (1, 3, true)
    );
    assert_eq!(limiter.metrics().server.reserved, 3);
}

#[tokio::test]
async fn loads_that_add_no_reservation_succeed_even_when_reservations_exceed_the_cap() {
    let limiter = Limiter::new(10);
    one(&limiter, "f", spec(8, true, 0, 0));
    limiter
        .register(&[(target("f", 2), spec(2, true, 0, 0))])
        .expect("revision 2 reserves less");
    limiter
        .register(&[(target("g", 1), spec(3, true, 0, 0))])
        .expect("2 + 3 of 10");
    // Revision 2 of f goes away: revision 1's 8 come back, 11 in all (a retain cannot fail).
    limiter.retain("app", &[1]);
    assert_eq!(limiter.metrics().server.reserved, 11);
    assert_eq!(limiter.metrics().server.shared_cap, 0);
    // A load that adds no reservation still succeeds; it shares what is left (nothing).
    let h = one(&limiter, "h", spec(5, false, 0, 0));
    assert!(throttled(&h.acquire().await));
    // One that adds a reservation does not.
    assert!(
        limiter
            .register(&[(target("k", 1), spec(1, true, 0, 0))])
            .is_err()
    );
}

#[tokio::test]
async fn waiters_for_the_shared_capacity_get_slots_other_functions_free() {
    let limiter = Limiter::new(2);
    let a = one(&limiter, "a", spec(10, false, 0, 0));
    let b = one(&limiter, "b", spec(10, false, 5, 60_000));
    let a1 = a.acquire().await.expect("slot");
    let a2 = a.acquire().await.expect("slot");
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.acquire().await.map(drop) });
    eventually(|| figures(&limiter, "b").queued == 1).await;
    drop(a1);
    waiting.await.unwrap().expect("b got a's slot");
    drop(a2);
    assert_eq!(limiter.metrics().server.in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_never_oversubscribed_under_contention() {
    let limiter = Arc::new(Limiter::new(1_000));
    let f = one(&limiter, "f", spec(3, false, 1_000, 60_000));
    let peak = Arc::new(AtomicU32::new(0));
    let running = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (f, peak, running) = (f.clone(), peak.clone(), running.clone());
        tasks.push(tokio::spawn(async move {
            let permit = f.acquire().await.expect("slot");
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    let fig = figures(&limiter, "f");
    assert_eq!((fig.in_flight, fig.queued, fig.throttled), (0, 0, 0));
    assert_eq!(limiter.metrics().server.in_use, 0);
}

async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached in 2 s");
}
