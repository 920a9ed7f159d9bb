//! Functions reach the buckets they bind: a wasm guest through `nubo:objects@0.1.0` and a
//! Python process function through the HTTP API on its worker's Runtime API endpoint
//! (`/nubo/v1/obj/...`) put, get (whole and by range), head, list and delete objects; what they
//! wrote is checked through the admin API; a bucket they do not bind is refused with the
//! manifest fix; a 20 MiB object streams through the process API intact. Real binary.

use crate::support::*;
use serde_json::{Value, json};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The sha256 of `bytes`, by the system's `sha256sum`.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Percent-encodes every byte but the unreserved ones and `/`, for a key in a URL path.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The object at `key` in `bucket`, read through the admin API (None: absent).
fn admin_object(s: &Server, bucket: &str, key: &str) -> Option<Resp> {
    let path = format!("/_nubo/api/v1/buckets/{bucket}/objects/{}", encode(key));
    let r = http(s.addr, "GET", &path, &[], b"");
    match r.status {
        200 => Some(r),
        404 if r.json()["error"]["code"] == "object_not_found" => None,
        other => panic!("GET {path}: {other} {}", r.text()),
    }
}

fn get(s: &Server, path: &str) -> Resp {
    http(s.addr, "GET", path, &[], b"")
}

/// Deploys the objects guest as app `files`, function `api`, bound to `uploads`, under
/// `/obj/...`.
fn deploy_guest(s: &Server) {
    let dir = guest_app(
        "files",
        "api",
        &guest("objects"),
        "buckets = [\"uploads\"]\ntimeout = \"20s\"",
        &["/obj/..."],
    );
    s.deploy(dir.path());
}

#[test]
fn wasm_functions_use_their_bound_bucket() {
    let s = Server::start();
    deploy_guest(&s);

    // put: the request body becomes the object, as the admin API sees it.
    let r = http(
        s.addr,
        "PUT",
        "/obj/put?key=notes%2Fa%20b.txt&type=text%2Fplain",
        &[],
        b"hello wasm",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The hex MD5 of "hello wasm", then the size.
    let etag = r.text().split(' ').next().unwrap().to_owned();
    assert_eq!(r.text(), format!("{etag} 10"));
    let admin = admin_object(&s, "uploads", "notes/a b.txt").expect("the object is there");
    assert_eq!(admin.body, b"hello wasm");
    assert_eq!(admin.header("content-type"), Some("text/plain"));
    assert_eq!(admin.header("etag"), Some(format!("\"{etag}\"").as_str()));

    // get, whole and by range, of what the admin API wrote too.
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/uploads/objects/from-admin",
        &[],
        b"0123456789",
    );
    assert!(r.status < 300, "{} {}", r.status, r.text());
    let r = get(&s, "/obj/get?key=from-admin");
    assert_eq!((r.status, r.text()), (200, "0123456789".to_owned()));
    let r = get(&s, "/obj/get?key=notes%2Fa%20b.txt&first=6&last=9");
    assert_eq!((r.status, r.text()), (200, "wasm".to_owned()));
    let r = get(&s, "/obj/get?key=from-admin&first=7");
    assert_eq!((r.status, r.text()), (200, "789".to_owned()));
    let r = get(&s, "/obj/get?key=from-admin&first=10&last=12");
    assert_eq!(
        (r.status, r.text()),
        (416, "range-not-satisfiable".to_owned())
    );
    let r = get(&s, "/obj/get?key=nobody");
    assert_eq!((r.status, r.text()), (404, "absent".to_owned()));

    // head.
    let r = get(&s, "/obj/head?key=notes%2Fa%20b.txt");
    assert_eq!(r.text(), format!("10 {etag} text/plain"));
    assert_eq!(get(&s, "/obj/head?key=nobody").status, 404);

    // list: by prefix, one a page, joined by `next`.
    http(s.addr, "PUT", "/obj/put?key=notes%2Fc", &[], b"c");
    let r = get(&s, "/obj/list?prefix=notes%2F&limit=1");
    assert_eq!(r.text(), "notes/a b.txt\n");
    let next = r.header("x-next").expect("a next page").to_owned();
    let r = get(
        &s,
        &format!("/obj/list?prefix=notes%2F&limit=1&after={}", encode(&next)),
    );
    assert_eq!(r.text(), "notes/c\n");
    let r = get(&s, "/obj/list");
    assert_eq!(r.text(), "from-admin\nnotes/a b.txt\nnotes/c\n");

    // delete: true once, then false; gone for the admin API too.
    let r = http(s.addr, "DELETE", "/obj/delete?key=notes%2Fc", &[], b"");
    assert_eq!((r.status, r.text()), (200, "true".to_owned()));
    let r = http(s.addr, "DELETE", "/obj/delete?key=notes%2Fc", &[], b"");
    assert_eq!((r.status, r.text()), (200, "false".to_owned()));
    assert!(admin_object(&s, "uploads", "notes/c").is_none());

    // An invalid key is refused with the reason.
    let r = http(s.addr, "PUT", "/obj/put?key=", &[], b"x");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().starts_with("invalid: "), "{}", r.text());
}

#[test]
fn wasm_reads_of_more_than_16_mib_go_by_range() {
    let s = Server::start();
    deploy_guest(&s);
    let big: Vec<u8> = (0..17 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/uploads/objects/big.bin",
        &[],
        &big,
    );
    assert!(r.status < 300, "{} {}", r.status, r.text());
    let r = get(&s, "/obj/get?key=big.bin");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("ranges"), "names the fix: {}", r.text());
    let first = 16 * 1024 * 1024u64;
    let r = get(&s, &format!("/obj/get?key=big.bin&first={first}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, &big[first as usize..]);
}

#[test]
fn wasm_functions_are_refused_unbound_buckets_with_the_fix() {
    let s = Server::start();
    deploy_guest(&s);
    s.ok(&["obj", "mb", "private"]);

    let r = get(&s, "/obj/get?bucket=private&key=k");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("buckets = [\"private\"]"), "{}", r.text());
    let id = r.header("nubo-invocation-id").expect("an invocation id");
    let logs = s.invocation(id)["logs"].to_string();
    assert!(logs.contains("\\\"private\\\" is not bound"), "{logs}");
    let r = http(s.addr, "PUT", "/obj/put?bucket=private&key=k", &[], b"v");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(admin_object(&s, "private", "k").is_none());

    // A function that binds nothing reaches nothing.
    let dir = guest_app("bare", "api", &guest("objects"), "", &["/bare/..."]);
    s.deploy(dir.path());
    let r = get(&s, "/bare/list?bucket=uploads");
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A process function `name` of the Python objects test function, running `handler`.
fn python_fn(name: &str, handler: &str, extra: &str) -> String {
    let code = process_fn("python/objects", "awslambdaric/__init__.py");
    format!(
        "\n[function.{name}]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"256MiB\"\n\
         timeout = \"60s\"\ncommand = [\"python3\", \"-m\", \"awslambdaric\", \"app.{handler}\"]\n{extra}\n",
        code.display()
    )
}

/// App `objpy`: `scenario`, `big` and `calls` bind `uploads`; `lonely` binds nothing.
fn deploy_python(s: &Server) -> tempfile::TempDir {
    let mut m = String::from("[app]\nname = \"objpy\"\n");
    m += &python_fn("scenario", "scenario", "buckets = [\"uploads\"]");
    m += &python_fn("big", "big", "buckets = [\"uploads\"]");
    m += &python_fn("calls", "calls", "buckets = [\"uploads\"]");
    m += &python_fn("lonely", "calls", "");
    let dir = app_dir(&m);
    s.deploy(dir.path());
    dir
}

/// Invokes `function` of app `objpy` with `event`, expecting a 200 JSON result.
fn call(s: &Server, function: &str, event: &Value) -> Value {
    let r = invoke(s, "objpy", function, event.to_string().as_bytes());
    assert_eq!(r.status, 200, "{function}: {}", r.text());
    r.json()
}

#[test]
fn python_uses_every_operation_on_its_bound_bucket() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    let seen = call(
        &s,
        "scenario",
        &json!({"bucket": "uploads", "prefix": "t1/"}),
    );

    let etag = seen["put"]["etag"].as_str().expect("an etag").to_owned();
    assert_eq!(seen["put"]["status"], 200, "{seen}");
    assert_eq!(seen["put"]["size"], 13, "{seen}");
    assert_eq!(
        seen["get"],
        json!({"status": 200, "body": "hello objects", "content_type": "text/plain",
               "etag": etag, "owner": "ann", "has_last_modified": true}),
        "{seen}"
    );
    assert_eq!(
        seen["range"],
        json!({"status": 206, "body": "objects", "content_range": "bytes 6-12/13"}),
        "{seen}"
    );
    assert_eq!(
        seen["get_missing"],
        json!({"status": 404, "error": "object_not_found"}),
        "{seen}"
    );
    assert_eq!(seen["head"], 200, "{seen}");
    // One entry a page: the `t1/notes/` prefix rolled up, then `t1/z`.
    assert_eq!(
        seen["list"],
        json!({"keys": ["t1/z"], "prefixes": ["t1/notes/"], "pages": 2}),
        "{seen}"
    );
    assert_eq!(seen["delete"], 204, "{seen}");
    assert_eq!(seen["head_deleted"], 404, "{seen}");

    // What the function wrote is in the bucket, as the admin API sees it.
    let r = admin_object(&s, "uploads", "t1/notes/a b.txt").expect("written");
    assert_eq!(r.body, b"hello objects");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-nubo-meta-owner"), Some("ann"));
    assert_eq!(
        admin_object(&s, "uploads", "t1/notes/c").unwrap().body,
        b"c"
    );
    assert!(admin_object(&s, "uploads", "t1/z").is_none());
}

#[test]
fn python_streams_a_20_mib_object_through_the_api() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    let seen = call(
        &s,
        "big",
        &json!({"bucket": "uploads", "key": "big/20mib.bin", "mib": 20}),
    );
    let len = 20 * 1024 * 1024;
    assert_eq!(seen["put"], 200, "{seen}");
    assert_eq!(seen["get"], 200, "{seen}");
    assert_eq!(seen["content_length"], len, "{seen}");
    assert_eq!(seen["size"], len, "{seen}");
    let sent = seen["sent_sha256"].as_str().unwrap();
    assert_eq!(seen["got_sha256"], sent, "{seen}");
    let stored = admin_object(&s, "uploads", "big/20mib.bin").expect("written");
    assert_eq!(stored.body.len(), len);
    assert_eq!(sha256(&stored.body), sent);
}

#[test]
fn python_is_refused_unbound_buckets_with_the_fix() {
    let s = Server::start();
    let _dir = deploy_python(&s);
    s.ok(&["obj", "mb", "private"]);
    let answers = call(
        &s,
        "calls",
        &json!({"calls": [
            {"method": "PUT", "path": "/private/k", "body": "v"},
            {"method": "GET", "path": "/uploads?prefx=a"},
        ]}),
    );
    assert_eq!(answers[0]["status"], 403, "{answers}");
    assert_eq!(answers[0]["body"]["error"]["code"], "bucket_not_bound");
    let message = answers[0]["body"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(r#"add buckets = ["private"] to [function.calls]"#),
        "{message}"
    );
    assert!(admin_object(&s, "private", "k").is_none());
    assert_eq!(answers[1]["status"], 400, "{answers}");

    let answers = call(
        &s,
        "lonely",
        &json!({"calls": [{"method": "GET", "path": "/uploads/k"}]}),
    );
    assert_eq!(answers[0]["status"], 403, "{answers}");
    assert_eq!(answers[0]["body"]["error"]["code"], "bucket_not_bound");
}
