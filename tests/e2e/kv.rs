//! Key-value stores from outside: `nubo kv` and the admin API (create, list, get, set with TTL,
//! delete, paging, limits), stores created by deploys, and values surviving `kill -9`.

use crate::support::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `nubo kv set STORE KEY -` with `input` on stdin.
fn set_from_stdin(s: &Server, store: &str, key: &str, input: &[u8]) -> std::process::Output {
    let mut child = Command::new(nubo_bin())
        .args(["kv", "set", store, key, "-"])
        .env("NUBO_URL", s.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn cli_creates_sets_gets_lists_and_removes() {
    let s = Server::start();
    // No stores yet, and writing to a missing one says how to make it.
    assert!(s.ok(&["kv", "ls"]).contains("no key-value stores"));
    let out = s.nubo(&["kv", "set", "carts", "k", "v"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no key-value store \"carts\"") && err.contains("nubo kv create carts"),
        "{err}"
    );

    assert!(s.ok(&["kv", "create", "carts"]).contains("carts"));
    s.ok(&["kv", "set", "carts", "user/1", "alice"]);
    s.ok(&["kv", "set", "carts", "user/2", "bob"]);
    s.ok(&["kv", "set", "carts", "other key?", "x"]);
    assert_eq!(s.ok(&["kv", "get", "carts", "user/1"]), "alice");
    assert_eq!(s.ok(&["kv", "get", "carts", "other key?"]), "x");

    // Raw bytes through stdin, exactly as given.
    let binary = [0u8, 159, 146, 150, b'\n', 255];
    let out = set_from_stdin(&s, "carts", "blob", &binary);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.nubo(&["kv", "get", "carts", "blob"]).stdout, binary);

    assert_eq!(
        s.ok(&["kv", "ls", "carts", "--prefix", "user/"]),
        "user/1\nuser/2\n"
    );
    assert_eq!(
        s.ok(&["kv", "ls", "carts"]),
        "blob\nother key?\nuser/1\nuser/2\n"
    );
    let table = s.ok(&["kv", "ls"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("carts"))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "4", "{row}");
    let bytes = 6 + 5 + 6 + 3 + 10 + 1 + 4 + binary.len();
    assert_eq!(cols[2], bytes.to_string(), "{row}");

    s.ok(&["kv", "rm", "carts", "user/1"]);
    let out = s.nubo(&["kv", "get", "carts", "user/1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("kv_key_not_found"),
        "{}",
        stderr(&out)
    );
    let out = s.nubo(&["kv", "rm", "carts", "user/1"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn ttl_expires_keys() {
    let s = Server::start();
    s.ok(&["kv", "create", "sessions"]);
    s.ok(&["kv", "set", "sessions", "brief", "x", "--ttl", "300ms"]);
    s.ok(&["kv", "set", "sessions", "stays", "y", "--ttl", "1h"]);
    // Bounded wait: the key must be gone once its TTL has passed.
    eventually(Duration::from_secs(10), || {
        let out = s.nubo(&["kv", "get", "sessions", "brief"]);
        (out.status.code() == Some(1)).then_some(())
    });
    assert_eq!(s.ok(&["kv", "ls", "sessions"]), "stays\n");
    let out = s.nubo(&["kv", "set", "sessions", "k", "v", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--ttl"), "{}", stderr(&out));
}

#[test]
fn admin_api_answers_with_codes_and_pages() {
    let s = Server::start();
    let r = http(s.addr, "GET", "/_nubo/api/v1/kv/nope/keys/a", &[], b"");
    r.assert_error(404, "kv_store_not_found");
    let r = http(s.addr, "PUT", "/_nubo/api/v1/kv/Bad.Name", &[], b"");
    r.assert_error(400, "kv_invalid_key");

    let r = http(s.addr, "PUT", "/_nubo/api/v1/kv/data", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "data");

    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/kv/data/keys/missing",
        &[],
        b"",
    );
    r.assert_error(404, "kv_key_not_found");
    let r = http(
        s.addr,
        "DELETE",
        "/_nubo/api/v1/kv/data/keys/missing",
        &[],
        b"",
    );
    r.assert_error(404, "kv_key_not_found");

    // Over the value limit: 413, and nothing stored.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let r = http(s.addr, "PUT", "/_nubo/api/v1/kv/data/keys/big", &[], &big);
    r.assert_error(413, "payload_too_large");
    let r = http(s.addr, "GET", "/_nubo/api/v1/kv/data/keys/big", &[], b"");
    assert_eq!(r.status, 404);
    // Exactly at the limit: stored.
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/kv/data/keys/big",
        &[],
        &big[1..],
    );
    assert_eq!(r.status, 204, "{}", r.text());

    // A key longer than 1024 bytes: 400.
    let long = "k".repeat(1025);
    let r = http(
        s.addr,
        "PUT",
        &format!("/_nubo/api/v1/kv/data/keys/{long}"),
        &[],
        b"v",
    );
    r.assert_error(400, "kv_invalid_key");
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/kv/data/keys/k?ttl=forever",
        &[],
        b"v",
    );
    r.assert_error(400, "bad_request");

    for i in 0..5 {
        let r = http(
            s.addr,
            "PUT",
            &format!("/_nubo/api/v1/kv/data/keys/p%2F{i}"),
            &[],
            format!("{i}").as_bytes(),
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let r = http(s.addr, "GET", "/_nubo/api/v1/kv/data/keys/p%2F3", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "3"));
    let page = s.api("/_nubo/api/v1/kv/data/keys?prefix=p%2F&limit=2");
    assert_eq!(page["keys"], serde_json::json!(["p/0", "p/1"]));
    assert_eq!(page["cursor"], "p/1");
    let page = s.api("/_nubo/api/v1/kv/data/keys?prefix=p%2F&limit=2&cursor=p%2F3");
    assert_eq!(page["keys"], serde_json::json!(["p/4"]));
    assert!(page.get("cursor").is_none(), "{page}");
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/kv/data/keys?limit=0",
        &[],
        b"",
    );
    r.assert_error(400, "bad_request");

    let stores = s.api("/_nubo/api/v1/kv");
    assert_eq!(stores["stores"][0]["name"], "data");
    assert_eq!(stores["stores"][0]["keys"], 6);

    let doc = s.api("/_nubo/api/v1/openapi.json");
    assert!(doc["paths"]["/_nubo/api/v1/kv/{store}/keys/{key}"]["put"].is_object());
}

#[test]
fn deploys_create_the_stores_functions_bind_and_values_survive_kill9() {
    let s = Server::start();
    let dir = guest_app(
        "shop",
        "api",
        &guest("echo"),
        "kv = [\"carts\", \"sessions\"]",
        &["/shop/..."],
    );
    s.deploy(dir.path());
    let stores = s.api("/_nubo/api/v1/kv");
    let names: Vec<&str> = stores["stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["carts", "sessions"]);

    s.ok(&["kv", "set", "carts", "cart-1", "3 apples"]);
    let data = s.kill9();
    let s = Server::start_in(&data, &[]);
    assert_eq!(s.ok(&["kv", "get", "carts", "cart-1"]), "3 apples");
    // Deploying again keeps what the stores hold.
    s.deploy(dir.path());
    assert_eq!(s.ok(&["kv", "get", "carts", "cart-1"]), "3 apples");
}
