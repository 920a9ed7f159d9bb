//! Process functions reach the key-value stores they bind through the HTTP API on their
//! worker's Runtime API endpoint (`/nubo/v1/kv/...`): a Python handler (awslambdaric, urllib)
//! sets, gets, increments, lists, compares-and-swaps, batches and deletes keys, also from its
//! init code; a curl bootstrap does the same; what they wrote is checked through the admin
//! API; a store the function does not bind is refused with 403 and the manifest fix; keys with
//! `/`, spaces and other reserved characters round-trip. Sandbox on, real binary.

use crate::support::*;
use serde_json::{Value, json};

/// A process function `name` of the Python kv test function, running `handler`.
fn python_fn(name: &str, handler: &str, extra: &str) -> String {
    let code = process_fn("python/kv", "awslambdaric/__init__.py");
    format!(
        "\n[function.{name}]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"256MiB\"\n\
         timeout = \"20s\"\ncommand = [\"python3\", \"-m\", \"awslambdaric\", \"app.{handler}\"]\n{extra}\n",
        code.display()
    )
}

/// Percent-encodes every byte but the unreserved ones, for a key in a URL path.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of `key` in `store`, read through the admin API (None: absent).
fn admin_bytes(s: &Server, store: &str, key: &str) -> Option<Vec<u8>> {
    let path = format!("/_nubo/api/v1/kv/{store}/keys/{}", encode(key));
    let r = http(s.addr, "GET", &path, &[], b"");
    match r.status {
        200 => Some(r.body),
        404 if r.json()["error"]["code"] == "kv_key_not_found" => None,
        other => panic!("GET {path}: {other} {}", r.text()),
    }
}

/// The text value of `key` in `store`, read through the admin API (None: absent).
fn admin_value(s: &Server, store: &str, key: &str) -> Option<String> {
    admin_bytes(s, store, key).map(|v| String::from_utf8(v).expect("a text value"))
}

/// Invokes `function` of app `kvpy` with `event`, expecting a 200 JSON result.
fn call(s: &Server, function: &str, event: &Value) -> Value {
    let r = invoke(s, "kvpy", function, event.to_string().as_bytes());
    assert_eq!(r.status, 200, "{function}: {}", r.text());
    r.json()
}

/// The `calls` handler of `function` making one request; its answer.
fn one_call(s: &Server, function: &str, method: &str, path: &str, body: Option<&str>) -> Value {
    let mut request = json!({"method": method, "path": path});
    if let Some(body) = body {
        request["body"] = json!(body);
    }
    let answers = call(s, function, &json!({"calls": [request]}));
    answers[0].clone()
}

/// App `kvpy`: `scenario` and `calls` bind `carts` (and `scenario` writes a key at init),
/// `other` binds only `users`, `lonely` binds nothing.
fn deploy_python(s: &Server) -> tempfile::TempDir {
    let mut m = String::from("[app]\nname = \"kvpy\"\n");
    m += &python_fn(
        "scenario",
        "scenario",
        "kv = [\"carts\"]\nenv = { KV_STORE = \"carts\", KV_INIT_KEY = \"init/warm cache\" }",
    );
    m += &python_fn("calls", "calls", "kv = [\"carts\"]");
    m += &python_fn("other", "calls", "kv = [\"users\"]");
    m += &python_fn("lonely", "calls", "");
    let dir = app_dir(&m);
    s.deploy(dir.path());
    dir
}

#[test]
fn python_uses_every_operation_on_its_bound_store() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    let seen = call(&s, "scenario", &json!({"store": "carts", "prefix": "t1/"}));

    assert_eq!(seen["put"], json!([204, 204]), "{seen}");
    assert_eq!(
        seen["get"],
        json!({"status": 200, "body": "apple", "content_type": "application/octet-stream", "has_version": true}),
        "{seen}"
    );
    assert_eq!(
        seen["get_missing"],
        json!({"status": 404, "error": "kv_key_not_found"}),
        "{seen}"
    );
    assert_eq!(seen["increments"], json!([5, 3, 4]), "{seen}");
    assert_eq!(
        seen["increment_text"],
        json!({"status": 409, "error": "kv_not_a_number"}),
        "{seen}"
    );
    // Listed two at a time, in byte order, across pages joined by the cursor.
    assert_eq!(seen["list"]["status"], 200, "{seen}");
    assert_eq!(
        seen["list"]["keys"],
        json!(["t1/count", "t1/item 1/a", "t1/item 2/b"]),
        "{seen}"
    );
    assert_eq!(seen["list"]["pages"], 2, "{seen}");
    // Absent → set; absent again → refused; right version → swapped; stale → refused.
    assert_eq!(seen["cas"], json!([true, false, true, false]), "{seen}");
    assert_eq!(seen["cas_value"], "v2", "{seen}");
    assert_eq!(
        seen["batch"],
        json!({"set": 204, "keys": ["t1/b1", "t1/b2", "t1/nope"], "b1": "one", "b2_intact": true,
               "nope": null, "delete": 204, "b1_after": 404}),
        "{seen}"
    );
    assert_eq!(seen["delete"], 204, "{seen}");
    assert_eq!(seen["delete_again"], 204, "{seen}");
    assert_eq!(seen["head_deleted"], 404, "{seen}");
    assert_eq!(seen["head_kept"], 200, "{seen}");

    // What the function wrote is in the store, as the admin API sees it.
    assert_eq!(
        admin_value(&s, "carts", "t1/item 1/a").as_deref(),
        Some("apple")
    );
    assert_eq!(admin_value(&s, "carts", "t1/count").as_deref(), Some("4"));
    assert_eq!(admin_value(&s, "carts", "t1/cas").as_deref(), Some("v2"));
    assert_eq!(
        admin_bytes(&s, "carts", "t1/b2"),
        Some((0..=255u8).collect::<Vec<u8>>())
    );
    assert_eq!(admin_value(&s, "carts", "t1/item 2/b"), None);
    assert_eq!(admin_value(&s, "carts", "t1/b1"), None);
    // The init code wrote before the first event reached the worker.
    assert_eq!(
        admin_value(&s, "carts", "init/warm cache").as_deref(),
        Some("written at init")
    );
    // The second function bound to the same store sees the same data.
    let r = one_call(
        &s,
        "calls",
        "GET",
        &format!("/carts/{}", encode("t1/count")),
        None,
    );
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], 4, "{r}");
}

#[test]
fn stores_a_function_does_not_bind_are_refused_with_the_fix() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    let put = one_call(&s, "calls", "PUT", "/carts/secret", Some("kept"));
    assert_eq!(put["status"], 204, "{put}");

    for (function, method, path) in [
        ("other", "GET", "/carts/secret"),
        ("other", "PUT", "/carts/secret"),
        ("other", "GET", "/carts"),
        ("other", "POST", "/carts:batch-get"),
        ("lonely", "GET", "/carts/secret"),
    ] {
        let r = one_call(&s, function, method, path, Some("{\"keys\":[\"secret\"]}"));
        assert_eq!(r["status"], 403, "{function} {method} {path}: {r}");
        assert_eq!(r["content_type"], "application/json", "{r}");
        assert_eq!(r["body"]["error"]["code"], "kv_store_not_bound", "{r}");
        let message = r["body"]["error"]["message"].as_str().unwrap();
        let fix = format!("add kv = [\"carts\"] to [function.{function}]");
        assert!(message.contains(&fix), "{function}: {message}");
    }
    // Nothing the refused calls sent reached the store.
    assert_eq!(admin_value(&s, "carts", "secret").as_deref(), Some("kept"));
    // Its own store works for `other`.
    let r = one_call(&s, "other", "PUT", "/users/u1", Some("ada"));
    assert_eq!(r["status"], 204, "{r}");
    assert_eq!(admin_value(&s, "users", "u1").as_deref(), Some("ada"));
}

#[test]
fn percent_encoded_keys_round_trip() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    let keys = [
        "a/b c",
        "dir/with spaces/and?query&amp=1#frag",
        "100% sure",
        "ünïcødé/ключ",
        "plus+sign",
    ];
    for key in keys {
        let path = format!("/carts/{}", encode(key));
        let put = one_call(&s, "calls", "PUT", &path, Some(key));
        assert_eq!(put["status"], 204, "{key}: {put}");
        let get = one_call(&s, "calls", "GET", &path, None);
        assert_eq!(get["status"], 200, "{key}: {get}");
        assert_eq!(get["body"], key, "{key}: {get}");
        assert_eq!(admin_value(&s, "carts", key).as_deref(), Some(key));
    }
    // An unencoded `/` is part of the key as well.
    let get = one_call(&s, "calls", "GET", "/carts/a/b%20c", None);
    assert_eq!(get["body"], "a/b c", "{get}");
    let list = one_call(&s, "calls", "GET", "/carts", None);
    let mut listed: Vec<&str> = list["body"]["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = keys.to_vec();
    expected.sort_unstable();
    assert_eq!(listed, expected, "{list}");
    // A prefix with a space and a slash, sent form-encoded.
    let list = one_call(&s, "calls", "GET", "/carts?prefix=dir%2Fwith+spaces", None);
    assert_eq!(
        list["body"]["keys"],
        json!(["dir/with spaces/and?query&amp=1#frag"]),
        "{list}"
    );
}

#[test]
fn a_curl_bootstrap_uses_the_api() {
    let s = Server::start();
    let code = process_fn("shell/kv", "bootstrap");
    let m = format!(
        "[app]\nname = \"kvsh\"\n\n[function.echo]\nruntime = \"process\"\nsource = \"{}\"\n\
         memory = \"128MiB\"\ntimeout = \"20s\"\nkv = [\"logs\"]\nenv = {{ KV_STORE = \"logs\" }}\n",
        code.display()
    );
    let dir = app_dir(&m);
    s.deploy(dir.path());
    for n in 1..=2 {
        let event = format!(r#"{{"n":{n}}}"#);
        let r = invoke(&s, "kvsh", "echo", event.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"n": n}));
        assert_eq!(
            admin_value(&s, "logs", "shell/last event").as_deref(),
            Some(event.as_str())
        );
        assert_eq!(admin_value(&s, "logs", "shell/count"), Some(n.to_string()));
    }
}
