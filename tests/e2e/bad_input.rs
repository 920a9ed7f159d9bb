//! Broken manifests and broken code are refused with a clear message, and the previous revision
//! keeps serving untouched.

use crate::support::*;

fn serving_revision(s: &Server) -> String {
    let r = http(s.addr, "GET", "/echo/x", &[], b"");
    assert_eq!(r.status, 200);
    r.header("nubo-revision").unwrap().to_string()
}

#[test]
fn bad_code_is_refused_and_the_previous_revision_keeps_serving() {
    let s = Server::start();
    let good = guest_app("echo", "echo", &guest("echo"), "", &["/echo/..."]);
    s.ok(&["deploy", "--no-build", good.path().to_str().unwrap()]);
    assert_eq!(serving_revision(&s), "1");

    let tmp = tempfile::tempdir().unwrap();
    let echo = std::fs::read(guest("echo")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.wasm",
            b"this is not wasm".to_vec(),
            "not a WebAssembly",
        ),
        (
            "module.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        ("truncated.wasm", echo[..echo.len() / 2].to_vec(), "echo"),
        (
            "empty-component.wasm",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "wasi:http/incoming-handler",
        ),
    ];
    for (file, bytes, fragment) in cases {
        let path = tmp.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let bad = guest_app("echo", "echo", &path, "", &["/echo/..."]);
        let out = s.nubo(&["deploy", "--no-build", bad.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} accepted");
        assert!(err.contains(fragment), "{file}: {fragment:?} not in {err}");
        assert!(err.contains("previous revision keeps serving"), "{err}");
        assert_eq!(serving_revision(&s), "1", "{file} changed what serves");
    }
    // Revision numbers were not consumed by the refused deploys' side effects on serving.
    let v = s.api("/_nubo/api/v1/apps/echo");
    assert_eq!(v["revision"], 1);
}

#[test]
fn missing_import_is_named() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    // A component importing an interface Nubo does not provide.
    let wat = r#"(component
        (import "acme:nope/thing@1.0.0" (instance (export "f" (func))))
    )"#;
    let path = tmp.path().join("imports.wat");
    std::fs::write(&path, wat).unwrap();
    let bytes = wat_bytes(&path);
    let wasm = tmp.path().join("imports.wasm");
    std::fs::write(&wasm, bytes).unwrap();
    let bad = guest_app("imp", "imp", &wasm, "", &["/imp"]);
    let out = s.nubo(&["deploy", "--no-build", bad.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("acme:nope/thing@1.0.0"),
        "the missing import is named: {err}"
    );
}

/// Component binary for a WAT file, via the server's own toolchain-free path: the wasm text
/// is compiled by the `wat` crate the runtime already depends on.
fn wat_bytes(path: &std::path::Path) -> Vec<u8> {
    wat::parse_file(path).unwrap()
}

#[test]
fn broken_manifest_names_key_line_and_fix() {
    let s = Server::start();
    let app =
        app_dir("[app]\nname = \"a\"\n\n[function.api]\nsource = \"x.wasm\"\nmemroy = \"1MiB\"\n");
    let out = s.nubo(&["deploy", "--no-build", app.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nubo.toml:6"), "{err}");
    assert!(err.contains("unknown key \"memroy\""), "{err}");
    assert!(err.contains("did you mean \"memory\""), "{err}");
}

#[test]
fn server_validates_the_manifest_too() {
    // A client other than the CLI gets the same checks from the server.
    let s = Server::start();
    let manifest = "[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\ntimeout = \"10\"\n";
    let body = format!(
        "NUBO-BUNDLE-1\nnubo.toml {}\n{manifest}function/f 4\n\0asm",
        manifest.len()
    );
    let r = http(s.addr, "POST", "/_nubo/api/v1/apps", &[], body.as_bytes());
    let v = r.assert_error(400, "invalid_manifest");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nubo.toml:5") && msg.contains("\"10s\""),
        "{msg}"
    );
}

#[test]
fn routes_clashing_with_another_app_are_refused() {
    let s = Server::start();
    let a = guest_app("first", "echo", &guest("echo"), "", &["/shared/..."]);
    s.ok(&["deploy", "--no-build", a.path().to_str().unwrap()]);
    let b = guest_app("second", "echo", &guest("echo"), "", &["/shared/..."]);
    let out = s.nubo(&["deploy", "--no-build", b.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ambiguous") && err.contains("\"first\"") && err.contains("\"second\""),
        "{err}"
    );
    assert!(http(s.addr, "GET", "/_nubo/api/v1/apps/second", &[], b"").status == 404);
}
