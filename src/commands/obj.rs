//! `nubo obj`: list buckets and objects, make and remove buckets, and copy objects between
//! files (or stdin and stdout) and the server, streaming both ways.

use crate::cli::ObjCommand;
use crate::client::{Client, api_error, encode_query, read_body};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, StreamBody};
use nubo_core::api::v1::{BucketInfo, BucketList, ObjectInfo, ObjectList};
use nubo_core::limits::MAX_LIST_OBJECTS;
use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::process::ExitCode;
use tokio::io::AsyncWriteExt as _;

/// Bytes read from a file or stdin at a time while uploading.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 1024 * 1024;

/// Chunks read ahead of the upload. Bounds the memory a put holds.
const READ_AHEAD: usize = 8;

pub(crate) async fn run(command: ObjCommand) -> anyhow::Result<ExitCode> {
    match command {
        ObjCommand::Ls { target: None, json } => buckets(json).await,
        ObjCommand::Ls {
            target: Some(target),
            json,
        } => {
            let (bucket, prefix) = match target.split_once('/') {
                Some((b, p)) => (b.to_string(), Some(p.to_string()).filter(|p| !p.is_empty())),
                None => (target, None),
            };
            objects(&bucket, prefix.as_deref(), json).await
        }
        ObjCommand::Mb { bucket } => make_bucket(&bucket).await,
        ObjCommand::Rb { bucket } => remove_bucket(&bucket).await,
        ObjCommand::Put {
            bucket,
            key,
            file,
            content_type,
        } => put(&bucket, &key, file.as_deref(), content_type).await,
        ObjCommand::Get { bucket, key, file } => get(&bucket, &key, file.as_deref()).await,
        ObjCommand::Rm { bucket, key } => rm(&bucket, &key).await,
    }
}

/// Escapes everything but unreserved characters, `/` and `.` included, so no name or key
/// can turn into another path.
fn encode_segment(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bucket_path(bucket: &str) -> String {
    format!("/_nubo/api/v1/buckets/{}", encode_segment(bucket))
}

fn object_path(bucket: &str, key: &str) -> String {
    format!("{}/objects/{}", bucket_path(bucket), encode_segment(key))
}

async fn buckets(json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: BucketList = client.get("/_nubo/api/v1/buckets").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.buckets.is_empty() {
        println!(
            "no buckets; bind one in a function's `buckets = [\"name\"]` and deploy, or create one with `nubo obj mb NAME`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>10} {:>14}  CREATED",
        "BUCKET", "OBJECTS", "BYTES"
    );
    for b in &list.buckets {
        print_bucket(b);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_bucket(b: &BucketInfo) {
    println!(
        "{:<40} {:>10} {:>14}  {}",
        b.name, b.objects, b.bytes, b.created_at
    );
}

/// Lists a bucket's objects under `prefix`, one level deep: keys holding a further `/` are
/// shown once as their common prefix, like `aws s3 ls`.
async fn objects(bucket: &str, prefix: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut all_objects: Vec<ObjectInfo> = Vec::new();
    let mut all_prefixes: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut header_printed = false;
    // Each page starts after the last entry of the one before, so this ends.
    loop {
        let mut path = format!(
            "{}/objects?limit={MAX_LIST_OBJECTS}&delimiter=%2F",
            bucket_path(bucket)
        );
        if let Some(p) = prefix {
            path.push_str(&format!("&prefix={}", encode_query(p)));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_query(a)));
        }
        let page: ObjectList = client.get(&path).await?;
        if json {
            all_objects.extend(page.objects);
            all_prefixes.extend(page.common_prefixes);
        } else {
            if !header_printed && (!page.objects.is_empty() || !page.common_prefixes.is_empty()) {
                println!(
                    "{:<24} {:>14}  {:<36}  KEY",
                    "LAST MODIFIED", "SIZE", "ETAG"
                );
                header_printed = true;
            }
            for p in &page.common_prefixes {
                println!("{:<24} {:>14}  {:<36}  {p}", "", "PRE", "");
            }
            for o in &page.objects {
                println!(
                    "{:<24} {:>14}  {:<36}  {}",
                    o.last_modified, o.size, o.etag, o.key
                );
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if json {
        let out = serde_json::json!({
            "bucket": bucket,
            "objects": all_objects,
            "common_prefixes": all_prefixes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !header_printed {
        eprintln!(
            "no objects in {bucket}{}",
            prefix.map(|p| format!(" under {p:?}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn make_bucket(bucket: &str) -> anyhow::Result<ExitCode> {
    nubo_core::validate_bucket_name(bucket)?;
    let client = Client::from_env()?;
    let info: BucketInfo = client
        .json(
            Method::PUT,
            &bucket_path(bucket),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    println!(
        "bucket {} ready ({} objects, {} bytes)",
        info.name, info.objects, info.bytes
    );
    Ok(ExitCode::SUCCESS)
}

async fn remove_bucket(bucket: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    client.delete(&bucket_path(bucket)).await?;
    println!("bucket {bucket} removed");
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(verb: &str, name: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let Some(total) = total.filter(|t| *t >= PROGRESS_MIN_BYTES) else {
        return indicatif::ProgressBar::hidden();
    };
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{verb} {{msg}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

async fn put(
    bucket: &str,
    key: &str,
    file: Option<&str>,
    content_type: Option<String>,
) -> anyhow::Result<ExitCode> {
    // The source is read on a blocking thread and handed over chunk by chunk, so a large file
    // never sits in memory whole.
    let (source, size): (Box<dyn std::io::Read + Send>, Option<u64>) = match file {
        None | Some("-") => (Box::new(std::io::stdin()), None),
        Some(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {path:?} to upload it"))?;
            let len = f
                .metadata()
                .with_context(|| format!("cannot read the size of {path:?}"))?
                .len();
            (Box::new(f), Some(len))
        }
    };
    let bar = progress_bar("uploading", key, size);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD);
    let progress = bar.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut source = source;
        loop {
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            let item = match source.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (item.map(http_body::Frame::data), rx))
    });
    let body = StreamBody::new(stream)
        .map_err(|e| -> nubo_core::BoxError { Box::new(e) })
        .boxed_unsync();
    let mut headers = Vec::new();
    if let Some(len) = size {
        headers.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
    }
    if let Some(ct) = content_type {
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_str(&ct).context("--content-type is not a valid header value")?,
        ));
    }
    let client = Client::from_env()?;
    let resp = client
        .send(Method::PUT, &object_path(bucket, key), body, &headers)
        .await;
    bar.finish_and_clear();
    let resp = resp?;
    let status = resp.status();
    let bytes = read_body(resp).await?;
    // The reader ends once the body is consumed or dropped; a read error surfaced as the
    // body's error above.
    let _ = reader.await;
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    let info: ObjectInfo = serde_json::from_slice(&bytes)
        .context("unexpected answer from the server for the upload")?;
    eprintln!(
        "stored {bucket}/{} ({} bytes, etag {})",
        info.key, info.size, info.etag
    );
    Ok(ExitCode::SUCCESS)
}

async fn get(bucket: &str, key: &str, file: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let resp = client
        .send(
            Method::GET,
            &object_path(bucket, key),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let body = read_body(resp).await?;
        return Err(api_error(status, &body));
    }
    let total = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let to_file = file.filter(|f| *f != "-");
    let bar = if to_file.is_some() {
        progress_bar("downloading", key, total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    // A file is written beside its destination and renamed at the end, so a broken download
    // never leaves a partial file under the name asked for.
    let (mut out, tmp): (Box<dyn tokio::io::AsyncWrite + Unpin + Send>, Option<_>) = match to_file {
        None => (Box::new(tokio::io::stdout()), None),
        Some(path) => {
            let dest = Path::new(path);
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "download".into());
            let tmp = dest.with_file_name(format!(".{name}.nubo-part"));
            let f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            (Box::new(f), Some((tmp, dest.to_path_buf())))
        }
    };
    let mut body = resp.into_body();
    let mut received = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the download broke off; run it again")?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .context("writing the object failed")?;
                received += data.len() as u64;
                bar.inc(data.len() as u64);
            }
        }
        out.flush().await.context("writing the object failed")?;
        if let Some(t) = total
            && t != received
        {
            bail!("the download ended after {received} of {t} bytes; run it again");
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    drop(out);
    match (result, tmp) {
        (Ok(()), Some((tmp, dest))) => {
            tokio::fs::rename(&tmp, &dest)
                .await
                .with_context(|| format!("cannot move the download to {}", dest.display()))?;
        }
        (Ok(()), None) => {}
        (Err(e), tmp) => {
            if let Some((tmp, _)) = tmp {
                let _ = tokio::fs::remove_file(tmp).await;
            }
            return Err(e);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(bucket: &str, key: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    client.delete(&object_path(bucket, key)).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_escape_everything_that_could_change_the_path() {
        assert_eq!(
            object_path("photos", "../a b/?#%"),
            "/_nubo/api/v1/buckets/photos/objects/%2E%2E%2Fa%20b%2F%3F%23%25"
        );
        assert_eq!(
            object_path("my.bucket", "é"),
            "/_nubo/api/v1/buckets/my%2Ebucket/objects/%C3%A9"
        );
    }
}
