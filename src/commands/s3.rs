//! `nubo s3`: the S3-compatible endpoint's address and the key pair S3 clients sign with.

use crate::cli::S3Command;
use crate::client::Client;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::process::ExitCode;

/// The answer of `GET /_nubo/api/v1/s3/credentials`.
#[derive(Deserialize, Serialize)]
struct Credentials {
    endpoint: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
}

pub(crate) async fn run(command: S3Command) -> anyhow::Result<ExitCode> {
    match command {
        S3Command::Credentials { env, json } => credentials(env, json).await,
    }
}

async fn credentials(env: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let c: Credentials = client.get("/_nubo/api/v1/s3/credentials").await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&c)?)?;
    } else if env {
        // Values are letters, digits and a URL: nothing a shell would expand.
        writeln!(out, "export AWS_ACCESS_KEY_ID={}", c.access_key_id)?;
        writeln!(out, "export AWS_SECRET_ACCESS_KEY={}", c.secret_access_key)?;
        writeln!(out, "export AWS_DEFAULT_REGION={}", c.region)?;
        writeln!(out, "export AWS_ENDPOINT_URL_S3={}", c.endpoint)?;
    } else {
        writeln!(out, "endpoint           {}", c.endpoint)?;
        writeln!(out, "region             {}", c.region)?;
        writeln!(out, "access key id      {}", c.access_key_id)?;
        writeln!(out, "secret access key  {}", c.secret_access_key)?;
    }
    Ok(ExitCode::SUCCESS)
}
