//! `nubo queue`: create, list, publish to, purge and remove durable queues.

use crate::cli::QueueCommand;
use crate::client::Client;
use anyhow::Context as _;
use http::{HeaderValue, Method, header};
use nubo_core::api::v1::{QueueList, QueuePublished, QueuePurged, QueueSummary};
use nubo_store::MAX_MESSAGE_BYTES;
use std::io::Read as _;
use std::process::ExitCode;

pub(crate) async fn run(command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::Create { queue } => create(&queue).await,
        QueueCommand::Ls { json } => ls(json).await,
        QueueCommand::Publish {
            queue,
            data,
            content_type,
        } => publish(&queue, &data, content_type.as_deref()).await,
        QueueCommand::Purge { queue } => purge(&queue).await,
        QueueCommand::Rm { queue } => rm(&queue).await,
    }
}

/// The admin path of a queue; everything but unreserved characters is escaped.
fn queue_path(queue: &str) -> String {
    let mut out = String::from("/_nubo/api/v1/queues/");
    for b in queue.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn create(queue: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let info: QueueSummary = client
        .json(
            Method::PUT,
            &queue_path(queue),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    println!("queue {} ready ({} messages)", info.name, info.messages);
    Ok(ExitCode::SUCCESS)
}

async fn ls(json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: QueueList = client.get("/_nubo/api/v1/queues").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.queues.is_empty() {
        println!(
            "no queues; name one in an app's nubo.toml (a queue trigger, `queues = [\"name\"]` or a `queue:` destination) and deploy, or create one with `nubo queue create NAME`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>10} {:>10} {:>10}  OLDEST",
        "QUEUE", "MESSAGES", "IN_FLIGHT", "PUBLISHED"
    );
    for q in &list.queues {
        println!(
            "{:<32} {:>10} {:>10} {:>10}  {}",
            q.name,
            q.messages,
            q.in_flight,
            q.published,
            q.oldest_enqueued_at.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The message bytes `-d` names: text as given, `@FILE`, or `@-` for stdin (read at most one
/// byte past the limit, so an oversized stdin is refused without reading it all).
fn message_body(data: &str) -> anyhow::Result<Vec<u8>> {
    let too_large = |from: &str| {
        anyhow::anyhow!(
            "the message from {from} is larger than the limit of {MAX_MESSAGE_BYTES} bytes; store the payload in a bucket and publish its key"
        )
    };
    match data {
        "@-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .take(MAX_MESSAGE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading the message from stdin")?;
            if buf.len() > MAX_MESSAGE_BYTES {
                return Err(too_large("stdin"));
            }
            Ok(buf)
        }
        d if d.starts_with('@') => {
            let path = &d[1..];
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading the message from {path}"))?
                .len();
            if len > MAX_MESSAGE_BYTES as u64 {
                return Err(too_large(path));
            }
            std::fs::read(path).with_context(|| format!("reading the message from {path}"))
        }
        d => Ok(d.as_bytes().to_vec()),
    }
}

async fn publish(queue: &str, data: &str, content_type: Option<&str>) -> anyhow::Result<ExitCode> {
    let body = message_body(data)?;
    let mut headers = Vec::new();
    if let Some(ct) = content_type {
        let v = HeaderValue::from_str(ct)
            .map_err(|_| anyhow::anyhow!("--content-type {ct:?} is not a valid header value"))?;
        headers.push((header::CONTENT_TYPE, v));
    }
    let client = Client::from_env()?;
    let published: QueuePublished = client
        .json(
            Method::POST,
            &format!("{}/messages", queue_path(queue)),
            nubo_core::full_body(body),
            &headers,
        )
        .await?;
    println!("{}", published.id);
    Ok(ExitCode::SUCCESS)
}

async fn purge(queue: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let purged: QueuePurged = client
        .json(
            Method::POST,
            &format!("{}/purge", queue_path(queue)),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    println!(
        "purged {} messages from queue {}",
        purged.purged, purged.queue
    );
    Ok(ExitCode::SUCCESS)
}

async fn rm(queue: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    client.delete(&queue_path(queue)).await?;
    println!("queue {queue} deleted");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_paths_escape_everything_that_could_change_the_path() {
        assert_eq!(queue_path("orders"), "/_nubo/api/v1/queues/orders");
        assert_eq!(
            queue_path("../a b?#"),
            "/_nubo/api/v1/queues/%2E%2E%2Fa%20b%3F%23"
        );
    }

    #[test]
    fn message_data_is_text_or_a_file() {
        assert_eq!(message_body("hello").unwrap(), b"hello");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, b"{\"n\":1}").unwrap();
        assert_eq!(
            message_body(&format!("@{}", path.display())).unwrap(),
            b"{\"n\":1}"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_MESSAGE_BYTES + 1]).unwrap();
        let err = message_body(&format!("@{}", big.display())).unwrap_err();
        assert!(err.to_string().contains("larger than the limit"), "{err}");
        let missing = message_body("@/nonexistent/nubo-message").unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/nubo-message"),
            "{missing:#}"
        );
    }
}
