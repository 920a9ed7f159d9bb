//! `nubo deploy`: read nubo.toml, run the build commands, upload the app, print its routes.

use crate::client::{Client, api_error, read_body};
use crate::commands::traffic::{conflict_error, format_split};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, StreamBody};
use nubo_control::{BundleWriter, FUNCTION_PART_PREFIX, MANIFEST_PART};
use nubo_core::api::v1::DeployResponse;
use nubo_core::manifest::{self, Manifest, Runtime};
use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

/// Size of upload chunks (and of progress bar steps).
const UPLOAD_CHUNK: usize = 256 * 1024;

/// How a deploy shares the app's traffic with the revisions serving now.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrafficOptions {
    /// Percent the new revision takes: `None` = all (a plain deploy), 1..=99 = a canary,
    /// 0 = none (reachable only by pinning).
    pub(crate) percent: Option<u8>,
    /// Deploy only if the app is still at this traffic generation.
    pub(crate) expect: Option<u64>,
}

pub(crate) async fn run(
    dir: &Path,
    no_build: bool,
    percent: Option<u8>,
    expect: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let opts = TrafficOptions { percent, expect };
    let resp = deploy_dir_with(&client, dir, no_build, opts).await?;
    print_result(&client, &resp);
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks the manifest in `dir`.
pub(crate) fn read_manifest(dir: &Path) -> anyhow::Result<(Manifest, String)> {
    let path = dir.join(manifest::FILE_NAME);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no readable {} in {}: run nubo in the app's folder or pass the folder, like `nubo deploy examples/hello`", manifest::FILE_NAME, dir.display())
    })?;
    let m = manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: invalid manifest\n{e}", path.display()))?;
    Ok((m, text))
}

/// Builds (unless `no_build`) and deploys the app in `dir`, moving all traffic to it.
pub(crate) async fn deploy_dir(
    client: &Client,
    dir: &Path,
    no_build: bool,
) -> anyhow::Result<DeployResponse> {
    deploy_dir_with(client, dir, no_build, TrafficOptions::default()).await
}

/// Builds (unless `no_build`) and deploys the app in `dir` with `opts` deciding its traffic.
pub(crate) async fn deploy_dir_with(
    client: &Client,
    dir: &Path,
    no_build: bool,
    opts: TrafficOptions,
) -> anyhow::Result<DeployResponse> {
    let (m, text) = read_manifest(dir)?;
    if !no_build {
        build(dir, &m).await?;
    }
    let mut bundle = BundleWriter::new();
    bundle.part(MANIFEST_PART, text.as_bytes());
    for (name, f) in &m.functions {
        let path = dir.join(&f.source);
        if f.runtime == Runtime::Process {
            let code = crate::archive::process_code(name, &path)?;
            bundle.part(&format!("{FUNCTION_PART_PREFIX}{name}"), &code);
            continue;
        }
        let code = std::fs::read(&path).with_context(|| {
            let hint = match &f.build {
                Some(b) if no_build => format!("; run its build command ({b}) or drop --no-build"),
                Some(b) => format!("; its build command ({b}) did not produce it: check `source`"),
                None => "; build it first, or add a `build` command to [function.NAME]".to_string(),
            };
            format!(
                "function {name:?}: cannot read its source {}{hint}",
                path.display()
            )
        })?;
        bundle.part(&format!("{FUNCTION_PART_PREFIX}{name}"), &code);
    }
    upload(client, &m.app, bundle.finish(), opts).await
}

/// Runs each distinct build command once, streaming its output.
async fn build(dir: &Path, m: &Manifest) -> anyhow::Result<()> {
    let mut done: BTreeSet<(PathBuf, String)> = BTreeSet::new();
    for (name, f) in &m.functions {
        let Some(cmd) = &f.build else { continue };
        let workdir = f
            .workdir
            .as_ref()
            .map_or_else(|| dir.to_path_buf(), |w| dir.join(w));
        if !done.insert((workdir.clone(), cmd.clone())) {
            continue;
        }
        if cmd.contains("wasm32-wasip2") {
            ensure_wasm_target().await?;
        }
        eprintln!("building {name}: {cmd}");
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .status()
            .await
            .with_context(|| {
                format!(
                    "running the build command of function {name:?} in {}",
                    workdir.display()
                )
            })?;
        if !status.success() {
            bail!(
                "the build command of function {name:?} failed ({status}); fix the error above, or run `{cmd}` in {} yourself",
                workdir.display()
            );
        }
    }
    Ok(())
}

/// Adds the wasm32-wasip2 Rust target when it is missing, saying so.
pub(crate) async fn ensure_wasm_target() -> anyhow::Result<()> {
    let out = tokio::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .await;
    let out = match out {
        Ok(o) => o,
        // No rustup: the toolchain is managed some other way; let the build speak for itself.
        Err(_) => return Ok(()),
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!(
        "the wasm32-wasip2 target is missing: adding it with `rustup target add wasm32-wasip2`"
    );
    let status = tokio::process::Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .await?;
    if !status.success() {
        bail!(
            "`rustup target add wasm32-wasip2` failed ({status}); run it yourself and deploy again"
        );
    }
    Ok(())
}

async fn upload(
    client: &Client,
    app: &str,
    bundle: Vec<u8>,
    opts: TrafficOptions,
) -> anyhow::Result<DeployResponse> {
    let total = bundle.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {msg} [{bar:30}] {bytes}/{total_bytes}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(app.to_string());
        bar
    } else {
        eprintln!("uploading {app} ({total} bytes); the server checks and compiles it");
        indicatif::ProgressBar::hidden()
    };
    let bundle = Bytes::from(bundle);
    let chunks: Vec<Bytes> = (0..bundle.len())
        .step_by(UPLOAD_CHUNK)
        .map(|i| bundle.slice(i..(i + UPLOAD_CHUNK).min(bundle.len())))
        .collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
        progress.inc(c.len() as u64);
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(c))
    }));
    let body = StreamBody::new(stream)
        .map_err(|never| match never {})
        .boxed_unsync();
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.nubo.bundle"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(total)),
    ];
    let mut query = Vec::new();
    if let Some(p) = opts.percent {
        query.push(format!("traffic={p}"));
    }
    if let Some(g) = opts.expect {
        query.push(format!("expected_generation={g}"));
    }
    let path = if query.is_empty() {
        "/_nubo/api/v1/apps".to_string()
    } else {
        format!("/_nubo/api/v1/apps?{}", query.join("&"))
    };
    let resp = client.send(Method::POST, &path, body, &headers).await?;
    bar.finish_and_clear();
    let status = resp.status();
    let bytes = read_body(resp).await?;
    if status == http::StatusCode::CONFLICT {
        return Err(
            conflict_error(app, opts.expect, &bytes, "deploy").context(format!(
                "deploy of {app} refused; the previous revision keeps serving"
            )),
        );
    }
    if !status.is_success() {
        return Err(api_error(status, &bytes).context(format!(
            "deploy of {app} refused; the previous revision keeps serving"
        )));
    }
    serde_json::from_slice(&bytes).context("unexpected answer from the server to the deploy")
}

/// Prints the revision and route URLs.
pub(crate) fn print_result(client: &Client, resp: &DeployResponse) {
    println!("deployed {} revision {}", resp.app, resp.revision);
    for f in &resp.functions {
        let how = match (f.cached, f.runtime.as_str()) {
            (true, _) => "cached".to_string(),
            (false, "process") => format!("archive checked in {} ms", f.compile_ms),
            (false, _) => format!("compiled in {} ms", f.compile_ms),
        };
        println!(
            "  function {:<16} {} bytes, sha256 {}…, {how}",
            f.name,
            f.size,
            &f.digest[..12.min(f.digest.len())]
        );
    }
    let share = resp.traffic.as_ref().map_or(100, |t| {
        t.split
            .iter()
            .find(|e| e.revision == resp.revision)
            .map_or(0, |e| e.weight)
    });
    // A revision without traffic answers only when pinned: show the URLs that reach it.
    let prefix = if share == 0 {
        format!("/_rev/{}", resp.revision)
    } else {
        String::new()
    };
    if resp.routes.is_empty() {
        println!(
            "  no routes; invoke with `nubo invoke {}/FUNCTION`",
            resp.app
        );
    }
    for r in &resp.routes {
        let methods = if r.methods.is_empty() {
            "ANY".to_string()
        } else {
            r.methods.join(",")
        };
        println!(
            "  {:<8} {}{prefix}{}  -> {}",
            methods,
            client.base(),
            r.path,
            r.function
        );
    }
    for t in &resp.triggers {
        println!("  trigger  {} ({})  -> {}", t.name, t.kind, t.function);
    }
    if !resp.triggers.is_empty() && share < 50 {
        println!(
            "  (its triggers take over once revision {} has the largest share of traffic; see `nubo triggers {}`)",
            resp.revision, resp.app
        );
    }
    if let Some(t) = &resp.traffic {
        let note = match share {
            100 => "takes all traffic".to_string(),
            0 => format!(
                "takes no traffic; reach it with the header `nubo-revision: {0}` or the path prefix /_rev/{0}/",
                resp.revision
            ),
            p => format!("takes {p}% of traffic (canary)"),
        };
        println!("  revision {} {note}", resp.revision);
        println!(
            "  traffic  {} (generation {})",
            format_split(&t.split),
            t.generation
        );
    }
}
