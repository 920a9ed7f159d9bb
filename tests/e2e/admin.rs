//! The admin API's own surface: health, OpenAPI, errors for unknown things.

use crate::support::*;

#[test]
fn health_openapi_and_not_found() {
    let s = Server::start();
    assert_eq!(s.api("/_nubo/health")["status"], "ok");
    assert_eq!(s.api("/_nubo/ready")["status"], "ready");
    let doc = s.api("/_nubo/api/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/_nubo/api/v1/apps"].is_object());
    http(s.addr, "GET", "/_nubo/api/v1/nope", &[], b"").assert_error(404, "not_found");
    http(s.addr, "GET", "/_nubo/api/v1/apps/nope", &[], b"").assert_error(404, "app_not_found");
    http(
        s.addr,
        "GET",
        "/_nubo/api/v1/invocations/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &[],
        b"",
    )
    .assert_error(404, "invocation_not_found");
    let out = s.nubo(&["invoke", "nope/f"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app_not_found"));
}

#[test]
fn admin_api_requires_the_key_when_one_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(nubo_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("NUBO_ADMIN_KEY", "s3cret")
        .env("NUBO_S3_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("nubo listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    http(addr, "GET", "/_nubo/api/v1/apps", &[], b"").assert_error(403, "forbidden");
    let r = http(
        addr,
        "GET",
        "/_nubo/api/v1/apps",
        &[("authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        http(addr, "GET", "/_nubo/health", &[], b"").status,
        200,
        "health stays open"
    );
    let _ = child.kill();
    let _ = child.wait();
}
