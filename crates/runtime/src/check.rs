//! Checks that code is a component Nubo can run, turning wasmtime's errors into messages that
//! name the problem and the fix. Shared by compile (in-process or in the worker) and load.

use crate::host::Host;
use nubo_core::ErrorCode;
use nubo_core::engine::CodeError;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The export every function must have.
const HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2.x";

/// The WASI release wasmtime 48 implements (every 0.2.x import up to it links).
const WASI_VERSION: &str = "0.2.12";

/// Packages whose 0.2 interfaces the linker provides.
const PROVIDED_PACKAGES: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
    "wasi:http/",
];

/// The key-value package the linker provides, and its versions (drafts: no semver matching,
/// a component must be built against exactly one of these WITs).
const KEYVALUE_PACKAGE: &str = "wasi:keyvalue/";
/// See [`KEYVALUE_PACKAGE`].
const KEYVALUE_VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft2"];

/// Nubo's object storage package (WIT in `wit/nubo-objects/`) and the one version provided.
const OBJECTS_PACKAGE: &str = "nubo:objects/";
/// See [`OBJECTS_PACKAGE`].
const OBJECTS_VERSION: &str = "0.1.0";

/// Nubo's queue package (WIT in `wit/nubo-queues/`) and the one version provided.
const QUEUES_PACKAGE: &str = "nubo:queues/";
/// See [`QUEUES_PACKAGE`].
const QUEUES_VERSION: &str = "0.1.0";

/// Builds the linker every function is checked and instantiated against: all of WASI 0.2 plus
/// wasi:http, `wasi:keyvalue` (0.2.0-draft and 0.2.0-draft2), `nubo:objects@0.1.0` and
/// `nubo:queues@0.1.0`, so components from real toolchains link; policy in [`Host`] decides
/// what they may actually do (which stores, buckets and queues they may reach).
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::keyvalue::add_to_linker(&mut linker, Host::keyvalue)?;
    crate::keyvalue::draft2::add_to_linker(&mut linker, Host::keyvalue)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, Host::config)?;
    crate::objects_host::add_to_linker(&mut linker, Host::objects)?;
    crate::queues_host::add_to_linker(&mut linker, Host::queues)?;
    Ok(linker)
}

/// A [`CodeError`] for `function`.
pub(crate) fn code_error(function: &str, code: ErrorCode, message: impl Into<String>) -> CodeError {
    CodeError {
        function: function.to_owned(),
        code,
        message: message.into(),
    }
}

/// Rejects bytes that are not a component before spending compile time on them.
pub(crate) fn check_header(function: &str, code: &[u8]) -> Result<(), CodeError> {
    let invalid = |message: String| code_error(function, ErrorCode::InvalidComponent, message);
    let max = nubo_core::limits::MAX_COMPONENT_BYTES;
    if code.len() as u64 > max {
        return Err(invalid(format!(
            "the component is {} bytes, more than the limit of {max} bytes",
            code.len()
        )));
    }
    if !code.starts_with(b"\0asm") {
        return Err(invalid(
            "is not a WebAssembly file (bad magic number): build the function for wasm32-wasip2 \
             (`cargo build --target wasm32-wasip2`) or with another wasi:http toolchain"
                .to_owned(),
        ));
    }
    if wasmparser::Parser::is_core_wasm(code) {
        return Err(invalid(
            "is a core WebAssembly module, not a component: build with `--target wasm32-wasip2` \
             or run `wasm-tools component new`"
                .to_owned(),
        ));
    }
    if !wasmparser::Parser::is_component(code) {
        return Err(invalid(
            "is a WebAssembly file of an unknown version or layer: Nubo runs WebAssembly \
             components (WASI 0.2), build with `--target wasm32-wasip2`"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Compiles checked bytes; errors say whether the input or the compiler was at fault.
pub(crate) fn compile(
    engine: &wasmtime::Engine,
    function: &str,
    code: &[u8],
) -> Result<Component, CodeError> {
    check_header(function, code)?;
    Component::new(engine, code).map_err(|e| compile_error(function, &e))
}

fn compile_error(function: &str, error: &wasmtime::Error) -> CodeError {
    let detail = format!("{error:#}");
    // Wasmtime reports malformed or invalid input as a `WasmError`, whose text starts with
    // these; anything else (implementation limits, codegen failures) is the compiler's.
    let invalid = [
        "Invalid input WebAssembly",
        "Unsupported feature",
        "failed to parse",
    ]
    .iter()
    .any(|marker| detail.contains(marker))
        || error
            .chain()
            .any(|e| e.is::<wasmparser::BinaryReaderError>());
    if invalid {
        code_error(
            function,
            ErrorCode::InvalidComponent,
            format!("is not a valid component: {}", strip_markers(&detail)),
        )
    } else {
        code_error(
            function,
            ErrorCode::CompileFailed,
            format!("could not be compiled: {detail}"),
        )
    }
}

/// Drops wasmtime's capitalised prefixes so the message reads as one lower-case sentence.
fn strip_markers(detail: &str) -> String {
    detail
        .replace("Invalid input WebAssembly code at offset", "at offset")
        .replace("Unsupported feature: ", "uses an unsupported feature: ")
}

/// Resolves `component`'s imports against `linker` and finds its HTTP handler.
pub(crate) fn pre_instantiate(
    linker: &Linker<Host>,
    function: &str,
    component: &Component,
) -> Result<ProxyPre<Host>, CodeError> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| code_error(function, ErrorCode::InvalidComponent, import_message(&e)))?;
    ProxyPre::new(pre).map_err(|e| {
        code_error(
            function,
            ErrorCode::InvalidComponent,
            format!(
                "does not export {HANDLER_EXPORT}: build it for the wasi:http/proxy world \
                 ({})",
                first_line(&format!("{e:#}"))
            ),
        )
    })
}

/// Turns a linker error into `imports "<name>", which Nubo does not provide`.
fn import_message(error: &wasmtime::Error) -> String {
    // The linker's outermost message is "component imports <kind> `<name>`, but a matching
    // implementation was not found in the linker"; the causes below it say why.
    let top = error.to_string();
    let Some(name) = top
        .strip_prefix("component imports ")
        .and_then(|rest| rest.split('`').nth(1))
        .filter(|name| !name.is_empty())
    else {
        return format!("cannot be linked: {}", first_line(&format!("{error:#}")));
    };
    if name.starts_with(KEYVALUE_PACKAGE)
        && !KEYVALUE_VERSIONS
            .iter()
            .any(|v| name.ends_with(&format!("@{v}")))
    {
        return format!(
            "imports \"{name}\", which Nubo does not provide (Nubo implements \
             wasi:keyvalue@{}: build the function against one of those versions of the WIT)",
            KEYVALUE_VERSIONS.join(" and @")
        );
    }
    if name.starts_with(OBJECTS_PACKAGE) && !name.ends_with(&format!("@{OBJECTS_VERSION}")) {
        return format!(
            "imports \"{name}\", which Nubo does not provide (Nubo implements \
             nubo:objects@{OBJECTS_VERSION}: build the function against the WIT in Nubo's \
             wit/nubo-objects/)"
        );
    }
    if name.starts_with(QUEUES_PACKAGE) && !name.ends_with(&format!("@{QUEUES_VERSION}")) {
        return format!(
            "imports \"{name}\", which Nubo does not provide (Nubo implements \
             nubo:queues@{QUEUES_VERSION}: build the function against the WIT in Nubo's \
             wit/nubo-queues/)"
        );
    }
    let causes: Vec<String> = error.chain().skip(1).map(|e| e.to_string()).collect();
    let missing = causes
        .last()
        .is_some_and(|root| root.ends_with("implementation is missing"));
    if missing {
        // A member is missing from an interface Nubo does implement: the component was built
        // against a newer WASI 0.2 release than wasmtime's.
        let ours = PROVIDED_PACKAGES.iter().any(|p| name.starts_with(p)) && name.contains("@0.2.");
        match causes.iter().find_map(|c| member_name(c)) {
            Some(member) if ours => format!(
                "imports \"{name}\", which Nubo does not provide (Nubo implements WASI \
                 {WASI_VERSION}, which has no \"{member}\" there)"
            ),
            _ => format!("imports \"{name}\", which Nubo does not provide"),
        }
    } else {
        format!(
            "imports \"{name}\" with a type that does not match what Nubo provides: {}",
            causes.join(": ")
        )
    }
}

/// `foo` out of "instance export `foo` has the wrong type".
fn member_name(cause: &str) -> Option<&str> {
    cause
        .strip_prefix("instance export `")
        .and_then(|rest| rest.split('`').next())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
