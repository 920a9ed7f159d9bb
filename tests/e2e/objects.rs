//! Object storage from outside: `nubo obj` round trips (a 20 MiB file arrives intact), the
//! admin API (ranges, metadata, listings with a delimiter and pages, error codes), buckets
//! created by deploys, and objects surviving `kill -9`.

use crate::support::*;
use std::io::Write as _;
use std::process::{Command, Stdio};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The sha256 of a file, by the system's `sha256sum`.
fn sha256_file(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// 20 MiB that no simple pattern reproduces: a small xorshift generator.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn cli_round_trips_a_large_file_and_lists_and_removes() {
    let s = Server::start();
    assert!(s.ok(&["obj", "ls"]).contains("no buckets"));
    let out = s.nubo(&["obj", "put", "media", "k", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nubo obj mb media"),
        "{}",
        stderr(&out)
    );

    s.ok(&["obj", "mb", "media"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let data = pseudo_random(20 * 1024 * 1024);
    std::fs::write(&src, &data).unwrap();
    s.ok(&[
        "obj",
        "put",
        "media",
        "videos/big.bin",
        src.to_str().unwrap(),
    ]);

    let dst = dir.path().join("back.bin");
    s.ok(&[
        "obj",
        "get",
        "media",
        "videos/big.bin",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&dst), sha256_file(&src));
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), data.len() as u64);

    // Through stdin and stdout too.
    let mut child = Command::new(nubo_bin())
        .args(["obj", "put", "media", "notes/hello.txt", "-"])
        .env("NUBO_URL", s.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello objects\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        s.ok(&["obj", "get", "media", "notes/hello.txt"]),
        "hello objects\n"
    );

    let top = s.ok(&["obj", "ls", "media"]);
    assert!(
        top.contains("PRE") && top.contains("videos/") && top.contains("notes/"),
        "{top}"
    );
    let videos = s.ok(&["obj", "ls", "media/videos/"]);
    let row = videos
        .lines()
        .find(|l| l.ends_with("videos/big.bin"))
        .unwrap_or_else(|| panic!("{videos}"));
    assert!(row.contains(&data.len().to_string()), "{row}");
    let buckets = s.ok(&["obj", "ls"]);
    let row = buckets
        .lines()
        .find(|l| l.starts_with("media"))
        .unwrap_or_else(|| panic!("{buckets}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "2", "{row}");
    assert_eq!(cols[2], (data.len() + 14).to_string(), "{row}");

    // A bucket with objects is not removed; emptied, it is.
    let out = s.nubo(&["obj", "rb", "media"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bucket_not_empty"),
        "{}",
        stderr(&out)
    );
    s.ok(&["obj", "rm", "media", "videos/big.bin"]);
    s.ok(&["obj", "rm", "media", "notes/hello.txt"]);
    let out = s.nubo(&["obj", "rm", "media", "notes/hello.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("object_not_found"),
        "{}",
        stderr(&out)
    );
    let out = s.nubo(&[
        "obj",
        "get",
        "media",
        "videos/big.bin",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    s.ok(&["obj", "rb", "media"]);
    assert!(s.ok(&["obj", "ls"]).contains("no buckets"));
}

#[test]
fn admin_api_serves_ranges_metadata_and_pages() {
    let s = Server::start();
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/buckets/nope/objects/a",
        &[],
        b"",
    );
    r.assert_error(404, "bucket_not_found");
    let r = http(s.addr, "PUT", "/_nubo/api/v1/buckets/Bad_Name", &[], b"");
    r.assert_error(400, "invalid_bucket_name");
    let r = http(s.addr, "PUT", "/_nubo/api/v1/buckets/files", &[], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = http(s.addr, "PUT", "/_nubo/api/v1/buckets/files", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());

    let body = b"0123456789abcdefghij";
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/files/objects/docs/a%20b.txt",
        &[("content-type", "text/plain"), ("x-nubo-meta-owner", "ada")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = r.json()["etag"].as_str().unwrap().to_string();
    assert_eq!(etag.len(), 32);
    assert_eq!(r.header("etag"), Some(format!("\"{etag}\"").as_str()));

    let path = "/_nubo/api/v1/buckets/files/objects/docs/a%20b.txt";
    let r = http(s.addr, "GET", path, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-nubo-meta-owner"), Some("ada"));
    assert!(
        r.header("last-modified")
            .is_some_and(|v| v.ends_with(" GMT"))
    );

    let r = http(s.addr, "GET", path, &[("range", "bytes=2-5")], b"");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, b"2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/20"));
    let r = http(s.addr, "GET", path, &[("range", "bytes=-3")], b"");
    assert_eq!((r.status, r.body.as_slice()), (206, &b"hij"[..]));
    let r = http(s.addr, "GET", path, &[("range", "bytes=15-")], b"");
    assert_eq!((r.status, r.body.as_slice()), (206, &b"fghij"[..]));
    http(s.addr, "GET", path, &[("range", "bytes=20-")], b"")
        .assert_error(416, "range_not_satisfiable");

    let r = http(s.addr, "HEAD", path, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("x-nubo-meta-owner"), Some("ada"));
    assert!(r.body.is_empty());

    // Listing: a delimiter rolls keys up, pages continue after `next`.
    for k in ["a.txt", "docs/b.txt", "img/1.png", "img/2.png", "z.txt"] {
        let p = format!("/_nubo/api/v1/buckets/files/objects/{k}");
        assert_eq!(http(s.addr, "PUT", &p, &[], k.as_bytes()).status, 200);
    }
    let list = s.api("/_nubo/api/v1/buckets/files/objects?delimiter=/");
    let keys: Vec<&str> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["key"].as_str())
        .collect();
    assert_eq!(keys, ["a.txt", "z.txt"]);
    assert_eq!(
        list["common_prefixes"],
        serde_json::json!(["docs/", "img/"])
    );

    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page = s.api(&format!(
            "/_nubo/api/v1/buckets/files/objects?limit=2&after={after}"
        ));
        for o in page["objects"].as_array().unwrap() {
            seen.push(o["key"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = n.replace(' ', "%20"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "a.txt",
            "docs/a b.txt",
            "docs/b.txt",
            "img/1.png",
            "img/2.png",
            "z.txt"
        ]
    );
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/buckets/files/objects?limit=0",
        &[],
        b"",
    );
    r.assert_error(400, "bad_request");

    let r = http(s.addr, "DELETE", "/_nubo/api/v1/buckets/files", &[], b"");
    r.assert_error(409, "bucket_not_empty");
    let r = http(s.addr, "DELETE", path, &[], b"");
    assert_eq!(r.status, 204);
    http(s.addr, "GET", path, &[], b"").assert_error(404, "object_not_found");

    let doc = s.api("/_nubo/api/v1/openapi.json");
    assert!(doc["paths"]["/_nubo/api/v1/buckets/{bucket}/objects/{key}"]["put"].is_object());
}

#[test]
fn deploys_create_bound_buckets_and_objects_survive_kill9() {
    let s = Server::start();
    let dir = guest_app(
        "gallery",
        "api",
        &guest("echo"),
        "buckets = [\"uploads\", \"thumbs.v2\"]",
        &["/gallery/..."],
    );
    s.deploy(dir.path());
    let list = s.api("/_nubo/api/v1/buckets");
    let names: Vec<&str> = list["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["thumbs.v2", "uploads"]);

    let files = tempfile::tempdir().unwrap();
    let src = files.path().join("photo.jpg");
    std::fs::write(&src, pseudo_random(300_000)).unwrap();
    s.ok(&["obj", "put", "uploads", "cat.jpg", src.to_str().unwrap()]);
    let data = s.kill9();
    let s = Server::start_in(&data, &[]);
    let back = files.path().join("back.jpg");
    s.ok(&["obj", "get", "uploads", "cat.jpg", back.to_str().unwrap()]);
    assert_eq!(sha256_file(&back), sha256_file(&src));
    // Deploying again keeps the buckets and what they hold.
    s.deploy(dir.path());
    let r = http(
        s.addr,
        "HEAD",
        "/_nubo/api/v1/buckets/uploads/objects/cat.jpg",
        &[],
        b"",
    );
    assert_eq!(r.header("content-length"), Some("300000"));
}

#[test]
fn objects_larger_than_the_admin_body_limit_stream_through() {
    let s = Server::start();
    s.ok(&["obj", "mb", "large"]);
    // One MiB past the deploy limit, written to stdin as it is sent: neither side holds it.
    let len = nubo_core::limits::MAX_DEPLOY_BYTES + 1024 * 1024;
    let mut child = Command::new(nubo_bin())
        .args(["obj", "put", "large", "zeros.bin", "-"])
        .env("NUBO_URL", s.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    for _ in 0..len / chunk.len() as u64 {
        stdin.write_all(&chunk).unwrap();
    }
    drop(stdin);
    let out = wait_output(child);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = http(
        s.addr,
        "HEAD",
        "/_nubo/api/v1/buckets/large/objects/zeros.bin",
        &[],
        b"",
    );
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
}

/// Waits (bounded) for a child and collects its output.
fn wait_output(mut child: std::process::Child) -> std::process::Output {
    let status = wait_bounded(&mut child, std::time::Duration::from_secs(120));
    let mut out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read as _;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut out.stderr);
    }
    out
}
