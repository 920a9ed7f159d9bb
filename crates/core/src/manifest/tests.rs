//! Table-driven tests of broken manifests: each must be refused with the key, its line and a fix.

use super::*;

const GOOD: &str = r#"
[app]
name = "shop"

[function.api]
source = "api.wasm"
build = "cargo build --target wasm32-wasip2 --release"
memory = "64MiB"
timeout = "5s"
env = { GREETING = "hi" }

[[route]]
path = "/api/..."
function = "api"

[[route]]
path = "/users/:id"
methods = ["GET"]
function = "api"
"#;

#[test]
fn good_manifest_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.app, "shop");
    let api = &m.functions["api"];
    assert_eq!(api.memory, 64 << 20);
    assert_eq!(api.timeout_ms, 5000);
    assert_eq!(api.env["GREETING"], "hi");
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.routes[1].methods, vec!["GET"]);
}

#[test]
fn defaults_apply() {
    let m = parse("[app]\nname = \"a\"\n[function.f]\nsource = \"f.wasm\"\n").unwrap();
    let f = &m.functions["f"];
    assert_eq!(f.memory, limits::DEFAULT_FUNCTION_MEMORY);
    assert_eq!(f.timeout_ms, limits::DEFAULT_FUNCTION_TIMEOUT_MS);
    assert!(m.routes.is_empty());
}

/// (case, manifest, expected line, fragments the message must contain)
const BROKEN: &[(&str, &str, usize, &[&str])] = &[
    (
        "unknown key",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemroy = \"1MiB\"\n",
        5,
        &[
            "unknown key \"memroy\"",
            "[function.api]",
            "line 5",
            "did you mean \"memory\"",
        ],
    ),
    (
        "unknown top-level table",
        "[app]\nname = \"a\"\n[functions.api]\nsource = \"a.wasm\"\n",
        3,
        &["unknown key \"functions\"", "did you mean \"function\""],
    ),
    (
        "wrong type",
        "[app]\nname = \"a\"\n[function.api]\nsource = 42\n",
        4,
        &["invalid type", "string"],
    ),
    (
        "missing source",
        "[app]\nname = \"a\"\n[function.api]\nmemory = \"1MiB\"\n",
        3,
        &[
            "[function.api] is missing `source`",
            "source = \"target/wasm32-wasip2/release/api.wasm\"",
        ],
    ),
    (
        "duplicate function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[function.api]\nsource = \"b.wasm\"\n",
        5,
        &["duplicate", "defined only once"],
    ),
    (
        "ambiguous routes",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"/u/:id\"\nfunction = \"api\"\n[[route]]\npath = \"/u/:name\"\nfunction = \"api\"\n",
        9,
        &["ambiguous", "/u/:id", "/u/:name", "line 6"],
    ),
    (
        "bad size",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemory = \"12 parsecs\"\n",
        5,
        &["invalid size", "128MiB"],
    ),
    (
        "size out of range",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nmemory = \"64GiB\"\n",
        5,
        &["memory 64GiB is out of range", "4GiB"],
    ),
    (
        "bad duration",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\ntimeout = \"10\"\n",
        5,
        &["no unit", "\"10s\""],
    ),
    (
        "route to unknown function",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"/x\"\nfunction = \"apu\"\n",
        7,
        &["unknown function \"apu\"", "[function.apu]", "api"],
    ),
    (
        "bad route path",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\n[[route]]\npath = \"x\"\nfunction = \"api\"\n",
        6,
        &["must start with '/'"],
    ),
    (
        "bad app name",
        "[app]\nname = \"My App\"\n[function.api]\nsource = \"a.wasm\"\n",
        2,
        &["invalid app name", "lowercase"],
    ),
    (
        "process runtime not yet",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nruntime = \"process\"\n",
        5,
        &["not available", "\"wasm\""],
    ),
    (
        "bad env key",
        "[app]\nname = \"a\"\n[function.api]\nsource = \"a.wasm\"\nenv = { \"1X\" = \"y\" }\n",
        5,
        &["env key \"1X\""],
    ),
];

#[test]
fn broken_manifests_are_explained() {
    for (case, text, line, fragments) in BROKEN {
        let errs = match parse(text) {
            Ok(_) => panic!("{case}: accepted"),
            Err(e) => e,
        };
        let first = &errs.0[0];
        let shown = errs.to_string();
        assert_eq!(first.line, Some(*line), "{case}: wrong line in {shown}");
        for frag in *fragments {
            assert!(shown.contains(frag), "{case}: {frag:?} not in {shown:?}");
        }
    }
}

#[test]
fn missing_app_table() {
    let e = parse("[function.api]\nsource = \"a.wasm\"\n").unwrap_err();
    assert!(e.to_string().contains("missing [app] table"), "{e}");
}
