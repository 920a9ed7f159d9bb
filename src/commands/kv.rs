//! `nubo kv`: list key-value stores and their keys, read, write and delete values, create a
//! store by hand.

use crate::cli::KvCommand;
use crate::client::{Client, api_error, encode_query, read_body};
use anyhow::Context as _;
use http::Method;
use nubo_core::api::v1::{KvKeyPage, KvStoreInfo, KvStoreList};
use nubo_core::limits::{MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES};
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

pub(crate) async fn run(command: KvCommand) -> anyhow::Result<ExitCode> {
    match command {
        KvCommand::Ls {
            store: None,
            prefix: _,
            json,
        } => stores(json).await,
        KvCommand::Ls {
            store: Some(store),
            prefix,
            json,
        } => keys(&store, prefix.as_deref(), json).await,
        KvCommand::Get { store, key } => get(&store, &key).await,
        KvCommand::Set {
            store,
            key,
            value,
            ttl,
        } => set(&store, &key, &value, ttl.as_deref()).await,
        KvCommand::Rm { store, key } => rm(&store, &key).await,
        KvCommand::Create { store } => create(&store).await,
    }
}

/// The admin path of one key. Everything but unreserved characters is escaped, `/` and `.`
/// included, so no key can turn into another path.
fn key_path(store: &str, key: &str) -> String {
    let mut out = format!("/_nubo/api/v1/kv/{}/keys/", encode_segment(store));
    out.push_str(&encode_segment(key));
    out
}

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

async fn stores(json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let list: KvStoreList = client.get("/_nubo/api/v1/kv").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.stores.is_empty() {
        println!(
            "no key-value stores; bind one in a function's `kv = [\"name\"]` and deploy, or create one with `nubo kv create NAME`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:>10} {:>12}  CREATED", "STORE", "KEYS", "BYTES");
    for s in &list.stores {
        print_store(s);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_store(s: &KvStoreInfo) {
    println!(
        "{:<32} {:>10} {:>12}  {}",
        s.name, s.keys, s.bytes, s.created_at
    );
}

async fn keys(store: &str, prefix: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    // Each page starts after the last key of the one before, so this ends.
    loop {
        let mut path = format!(
            "/_nubo/api/v1/kv/{}/keys?limit={MAX_KV_LIST_LIMIT}",
            encode_segment(store)
        );
        if let Some(p) = prefix {
            path.push_str(&format!("&prefix={}", encode_query(p)));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode_query(c)));
        }
        let page: KvKeyPage = client.get(&path).await?;
        if json {
            all.extend(page.keys);
        } else {
            let mut out = std::io::stdout().lock();
            for k in &page.keys {
                writeln!(out, "{k}")?;
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(store: &str, key: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let resp = client
        .send(
            Method::GET,
            &key_path(store, key),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    let status = resp.status();
    let body = read_body(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&body)
        .context("writing the value to stdout")?;
    out.flush().context("writing the value to stdout")?;
    Ok(ExitCode::SUCCESS)
}

async fn set(store: &str, key: &str, value: &str, ttl: Option<&str>) -> anyhow::Result<ExitCode> {
    let bytes = if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_KV_VALUE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading the value from stdin")?;
        if buf.len() > MAX_KV_VALUE_BYTES {
            anyhow::bail!(
                "the value on stdin is larger than the limit of {MAX_KV_VALUE_BYTES} bytes (1 MiB); split it over several keys or keep large data in the object store"
            );
        }
        buf
    } else {
        value.as_bytes().to_vec()
    };
    let mut path = key_path(store, key);
    if let Some(t) = ttl {
        nubo_core::parse_duration(t).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
        path.push_str(&format!("?ttl={}", encode_query(t)));
    }
    let client = Client::from_env()?;
    let resp = client
        .send(Method::PUT, &path, nubo_core::full_body(bytes), &[])
        .await?;
    let status = resp.status();
    let body = read_body(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(store: &str, key: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    client.delete(&key_path(store, key)).await?;
    Ok(ExitCode::SUCCESS)
}

async fn create(store: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let info: KvStoreInfo = client
        .json(
            Method::PUT,
            &format!("/_nubo/api/v1/kv/{}", encode_segment(store)),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    println!(
        "key-value store {} ready ({} keys, {} bytes)",
        info.name, info.keys, info.bytes
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_escape_everything_that_could_change_the_path() {
        assert_eq!(
            key_path("carts", "../a b/?#%"),
            "/_nubo/api/v1/kv/carts/keys/%2E%2E%2Fa%20b%2F%3F%23%25"
        );
        assert_eq!(key_path("s", "é"), "/_nubo/api/v1/kv/s/keys/%C3%A9");
    }
}
