//! `nubo secrets`: set an app's secret from stdin or a file, list the names, remove one. The
//! value never comes from the command line and is never printed.

use crate::cli::SecretsCommand;
use crate::client::{Client, api_error, read_body};
use anyhow::Context as _;
use http::Method;
use nubo_core::api::v1::SecretList;
use nubo_core::limits::MAX_SECRET_VALUE_BYTES;
use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::process::ExitCode;

pub(crate) async fn run(command: SecretsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretsCommand::Set {
            app,
            name,
            from_file,
        } => set(&app, &name, from_file.as_deref()).await,
        SecretsCommand::Ls { app, json } => ls(&app, json).await,
        SecretsCommand::Rm { app, name } => rm(&app, &name).await,
    }
}

/// The admin path of one secret. Names are checked before they are sent, so they need no
/// escaping beyond what the name rule already excludes.
fn secret_path(app: &str, name: &str) -> String {
    format!("/_nubo/api/v1/apps/{app}/secrets/{name}")
}

/// Checks a name locally so a typo fails before the value is read.
fn check_names(app: &str, name: Option<&str>) -> anyhow::Result<()> {
    nubo_core::validate_name("app", app)?;
    if let Some(name) = name {
        nubo_core::validate_name("secret", name)?;
    }
    Ok(())
}

/// Reads at most one byte past the limit from `input`, refusing a larger value.
fn read_value(input: &mut dyn std::io::Read, from: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    input
        .take(MAX_SECRET_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the secret value from {from}"))?;
    if buf.len() > MAX_SECRET_VALUE_BYTES {
        anyhow::bail!(
            "the secret value in {from} is larger than the limit of {MAX_SECRET_VALUE_BYTES} bytes (64 KiB); keep large files in a bucket and put only a key to them in the secret"
        );
    }
    Ok(buf)
}

async fn set(app: &str, name: &str, from_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    check_names(app, Some(name))?;
    let value = match from_file {
        Some(path) => {
            let mut file = std::fs::File::open(path).with_context(|| {
                format!("cannot open {} to read the secret value", path.display())
            })?;
            read_value(&mut file, &path.display().to_string())?
        }
        None => {
            let stdin = std::io::stdin();
            let typed = stdin.is_terminal();
            let _echo = if typed {
                eprintln!(
                    "enter the value of secret {name:?} of app {app:?}, then press Enter and Ctrl-D (what you type is not shown)"
                );
                EchoOff::new(&stdin)
            } else {
                None
            };
            let mut value = read_value(&mut stdin.lock(), "stdin")?;
            // A value typed at a terminal ends with the Enter key; a piped one is taken as is.
            if typed && value.last() == Some(&b'\n') {
                value.pop();
            }
            value
        }
    };
    let client = Client::from_env()?;
    let resp = client
        .send(
            Method::PUT,
            &secret_path(app, name),
            nubo_core::full_body(value),
            &[],
        )
        .await?;
    let status = resp.status();
    let body = read_body(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    eprintln!("secret {name:?} of app {app:?} set; new invocations see it");
    Ok(ExitCode::SUCCESS)
}

/// Terminal echo turned off while a value is typed; restored when dropped (also on errors).
struct EchoOff {
    saved: nix::sys::termios::Termios,
}

impl EchoOff {
    /// Turns echo off on the terminal `stdin` is; `None` when that fails (the value is then
    /// shown as typed, as it would be without this).
    fn new(stdin: &std::io::Stdin) -> Option<EchoOff> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
        Some(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
        // The Enter that ended the value was not echoed either.
        eprintln!();
    }
}

async fn ls(app: &str, json: bool) -> anyhow::Result<ExitCode> {
    check_names(app, None)?;
    let client = Client::from_env()?;
    let list: SecretList = client
        .get(&format!("/_nubo/api/v1/apps/{app}/secrets"))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.secrets.is_empty() {
        println!("app {app:?} has no secrets; set one with `nubo secrets set {app} NAME`");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} UPDATED", "NAME");
    for s in &list.secrets {
        println!("{:<40} {}", s.name, s.updated_at);
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(app: &str, name: &str) -> anyhow::Result<ExitCode> {
    check_names(app, Some(name))?;
    let client = Client::from_env()?;
    let resp = client
        .send(
            Method::DELETE,
            &secret_path(app, name),
            nubo_core::empty_body(),
            &[],
        )
        .await?;
    let status = resp.status();
    let body = read_body(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    Ok(ExitCode::SUCCESS)
}
