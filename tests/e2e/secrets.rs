//! App secrets end to end: a secret set from stdin (never the command line) reaches a wasm
//! function's environment and `wasi:config/store` and a process function's environment; the
//! CLI, the admin API and revisions show names only; a function printing the value has it
//! masked in its logs; a changed secret reaches the next invocation without a deploy; a deploy
//! naming an unset secret fails with the fix; the database file never holds the plaintext.

use crate::support::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const FIRST: &str = "postgres://shop:first-s3cr3t-value@db.internal/shop";
const SECOND: &str = "postgres://shop:second-s3cr3t-value@db.internal/shop";

/// Runs `nubo ARGS` against `s` with `stdin` piped in; asserts success.
fn nubo_stdin(s: &Server, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new(nubo_bin())
        .args(args)
        .env("NUBO_URL", s.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nubo");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nubo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The manifest of app `shop`: the config guest and the shell process function, both with
/// `DB_URL` from secret `db_url` (and `extra` secrets for the wasm function).
fn manifest(extra: &str) -> String {
    format!(
        "[app]\nname = \"shop\"\n\n[function.cfg]\nsource = \"{}\"\n\
         env = {{ MODE = \"prod\", DB_URL = {{ secret = \"db_url\" }}{extra} }}\n\n\
         [function.sh]\nruntime = \"process\"\nsource = \"{}\"\nmemory = \"128MiB\"\n\
         timeout = \"20s\"\nenv = {{ DB_URL = {{ secret = \"db_url\" }} }}\n\n\
         [[route]]\npath = \"/cfg\"\nfunction = \"cfg\"\n",
        guest("config").display(),
        process_fn("shell/secrets", "bootstrap").display()
    )
}

/// Every byte of the server's database and its write-ahead log.
fn database_bytes(s: &Server) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["nubo.db", "nubo.db-wal"] {
        if let Ok(bytes) = std::fs::read(s.data_dir.join(name)) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The log lines of invocation `id`, as one JSON string, once the record is written.
fn logs_of(s: &Server, id: &str) -> String {
    eventually(Duration::from_secs(10), || {
        let logs = s.invocation(id)["logs"].clone();
        (logs.as_array().is_some_and(|l| !l.is_empty())).then(|| logs.to_string())
    })
}

#[test]
fn secrets_reach_functions_masked_and_never_leak() {
    let s = Server::start();
    let dir = app_dir(&manifest(""));

    // Not set yet: the deploy fails, naming the secret and the command that fixes it.
    let _g = build_lock();
    let out = s.nubo(&["deploy", dir.path().to_str().unwrap()]);
    drop(_g);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "secret \"db_url\" of app \"shop\" is not set: run `nubo secrets set shop db_url` first"
        ),
        "{err}"
    );
    assert!(err.contains("secret_not_set"), "{err}");

    // There is no VALUE argument: a value on the command line is refused.
    let out = s.nubo(&["secrets", "set", "shop", "db_url", FIRST]);
    assert!(!out.status.success());

    // From stdin (piped: taken as is, so no newline is sent).
    nubo_stdin(&s, &["secrets", "set", "shop", "db_url"], FIRST.as_bytes());
    s.deploy(dir.path());

    // The wasm function: environment and wasi:config/store alike.
    let r = http(s.addr, "GET", "/cfg?key=DB_URL", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains(&format!("config DB_URL={FIRST}\n")), "{text}");
    assert!(text.contains(&format!("env DB_URL={FIRST}\n")), "{text}");
    assert!(text.contains(&format!("all DB_URL={FIRST}\n")), "{text}");
    assert!(text.contains("all 2\n"), "{text}");
    let plain = http(s.addr, "GET", "/cfg?key=MODE", &[], b"").text();
    assert!(plain.contains("config MODE=prod\n"), "{plain}");

    // Its log line printing the value is masked.
    let id = r.header("nubo-invocation-id").expect("an invocation id");
    let logs = logs_of(&s, id);
    assert!(logs.contains("using DB_URL=[secret]"), "{logs}");
    assert!(!logs.contains("s3cr3t"), "{logs}");

    // The process function: its worker's environment; its log masked too.
    let r = invoke(&s, "shop", "sh", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let first_worker = r.json()["worker"].clone();
    assert_eq!(r.json()["db_url"], FIRST, "{}", r.text());
    let id = r.header("nubo-invocation-id").expect("an invocation id");
    let logs = logs_of(&s, id);
    assert!(logs.contains("connecting to [secret]"), "{logs}");
    assert!(!logs.contains("s3cr3t"), "{logs}");

    // Names only: the CLI, the admin API, revisions.
    let ls = s.ok(&["secrets", "ls", "shop"]);
    assert!(ls.contains("db_url"), "{ls}");
    assert!(!ls.contains("s3cr3t"), "{ls}");
    let api = s.api("/_nubo/api/v1/apps/shop/secrets");
    assert_eq!(api["secrets"][0]["name"], "db_url", "{api}");
    assert!(!api.to_string().contains("s3cr3t"), "{api}");
    let revisions = s.ok(&["revisions", "shop"]);
    assert!(!revisions.contains("s3cr3t"), "{revisions}");
    let revisions = s.api("/_nubo/api/v1/apps/shop/revisions").to_string();
    assert!(!revisions.contains("s3cr3t"), "{revisions}");

    // Changed from a file: the next invocations see it, with no deploy.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), SECOND).unwrap();
    s.ok(&[
        "secrets",
        "set",
        "shop",
        "db_url",
        "--from-file",
        file.path().to_str().unwrap(),
    ]);
    let text = http(s.addr, "GET", "/cfg?key=DB_URL", &[], b"").text();
    assert!(text.contains(&format!("env DB_URL={SECOND}\n")), "{text}");
    assert!(
        text.contains(&format!("config DB_URL={SECOND}\n")),
        "{text}"
    );
    let r = invoke(&s, "shop", "sh", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["db_url"], SECOND, "{}", r.text());
    // The worker that held the old value was replaced, not reused.
    assert_ne!(r.json()["worker"], first_worker, "{}", r.text());
    let revisions = s.api("/_nubo/api/v1/apps/shop/revisions");
    assert_eq!(revisions["revisions"].as_array().unwrap().len(), 1);

    // Neither value is in the database file.
    let db = database_bytes(&s);
    assert!(!db.is_empty());
    assert!(!contains(&db, FIRST) && !contains(&db, SECOND));
    assert!(!contains(&db, "s3cr3t"));
    // Nor in what the server logged.
    assert!(!s.stderr().contains("s3cr3t"), "{}", s.stderr());

    // Another secret the manifest names but nobody set: refused, nothing deployed.
    let dir = app_dir(&manifest(", API_TOKEN = { secret = \"api_token\" }"));
    let _g = build_lock();
    let out = s.nubo(&["deploy", dir.path().to_str().unwrap()]);
    drop(_g);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret \"api_token\" of app \"shop\" is not set"),
        "{err}"
    );

    // Removed: listed no more; a second removal is a 404.
    s.ok(&["secrets", "rm", "shop", "db_url"]);
    assert!(!s.ok(&["secrets", "ls", "shop"]).contains("db_url"));
    let r = http(
        s.addr,
        "DELETE",
        "/_nubo/api/v1/apps/shop/secrets/db_url",
        &[],
        b"",
    );
    r.assert_error(404, "secret_not_found");
}

#[test]
fn the_admin_api_never_answers_a_value() {
    let s = Server::start();
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/apps/shop/secrets/token",
        &[],
        b"tok-0123456789",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/apps/shop/secrets/token",
        &[],
        b"",
    );
    assert_ne!(
        r.status,
        200,
        "a value must never be readable: {}",
        r.text()
    );
    assert!(!r.text().contains("tok-0123456789"));
    let list = s.api("/_nubo/api/v1/apps/shop/secrets");
    assert_eq!(list["app"], "shop");
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains("tok-0123456789"));

    // Bad names and oversized values are refused with invalid_secret.
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/apps/shop/secrets/Bad.Name",
        &[],
        b"x",
    );
    r.assert_error(400, "invalid_secret");
    let big = vec![b'x'; 64 * 1024 + 1];
    let r = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/apps/shop/secrets/big",
        &[],
        &big,
    );
    r.assert_error(400, "invalid_secret");

    // The key file was generated private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(s.data_dir.join("secret.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_server_with_another_key_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = "11".repeat(32);
    {
        let s = Server::start_in_env(&data, &[], &[("NUBO_SECRET_KEY", &key)]);
        nubo_stdin(&s, &["secrets", "set", "shop", "db_url"], FIRST.as_bytes());
        let (status, _) = s.terminate();
        assert!(status.success());
    }
    let mut child = Command::new(nubo_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NUBO_S3_LISTEN", "127.0.0.1:0")
        .env("NUBO_SECRET_KEY", "22".repeat(32))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that started anyway is killed after the limit, and the test fails.
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("the secret key does not match") && err.contains("NUBO_SECRET_KEY"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}
