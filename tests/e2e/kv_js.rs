//! A JavaScript component built with componentize-js reaches its bound key-value store through
//! `wasi:keyvalue@0.2.0-draft` (`store` and `atomics`), and its writes are visible through the
//! admin API.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::{Server, guest_app, http, root};

/// Builds (or finds up to date) tests/js-kv-guest's component and returns its path.
fn js_kv_guest() -> PathBuf {
    let status = Command::new("bash")
        .arg(root().join("tests/js-kv-guest/build.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("running tests/js-kv-guest/build.sh (needs bash, and Node.js to rebuild)");
    assert!(
        status.success(),
        "tests/js-kv-guest/build.sh failed; run it by hand to see why"
    );
    let wasm = root().join("tests/js-kv-guest/dist/kv-js.wasm");
    assert!(wasm.exists(), "no component at {}", wasm.display());
    wasm
}

#[test]
fn javascript_component_counts_and_stores_through_wasi_keyvalue() {
    let wasm = js_kv_guest();
    let s = Server::start();
    let app = guest_app(
        "js-shop",
        "api",
        &wasm,
        "kv = [\"carts\"]\ntimeout = \"20s\"",
        &["/js-kv/..."],
    );
    s.ok(&["deploy", "--no-build", app.path().to_str().unwrap()]);

    // atomics.increment: each call answers the new value.
    for expected in 1..=3 {
        let r = http(s.addr, "GET", "/js-kv/count", &[], b"");
        assert_eq!(
            (r.status, r.text()),
            (200, expected.to_string()),
            "count call {expected}"
        );
    }

    // A key never written is absent.
    let r = http(s.addr, "GET", "/js-kv/item?key=basket", &[], b"");
    assert_eq!((r.status, r.text()), (404, "absent".to_owned()));

    // set then get: the bytes round-trip unchanged.
    let value = "three pears, one ünïcode plum".as_bytes();
    let r = http(s.addr, "PUT", "/js-kv/item?key=basket", &[], value);
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    let r = http(s.addr, "GET", "/js-kv/item?key=basket", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, value);

    // The admin API sees the same store: the item and the counter.
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/kv/carts/keys/basket",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, value);
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/kv/carts/keys/visits",
        &[],
        b"",
    );
    assert_eq!((r.status, r.text()), (200, "3".to_owned()));

    // A function that binds no store opens none: the WIT error reaches the JavaScript code.
    let bare = guest_app("js-bare", "api", &wasm, "", &["/js-bare/..."]);
    s.ok(&["deploy", "--no-build", bare.path().to_str().unwrap()]);
    let r = http(s.addr, "GET", "/js-bare/count", &[], b"");
    assert_eq!((r.status, r.text()), (500, "access-denied".to_owned()));
}
