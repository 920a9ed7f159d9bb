//! One module per subcommand; this file dispatches to them.

mod apps;
mod asynchronous;
mod deploy;
mod invoke;
mod kv;
mod logs;
mod obj;
mod queue;
mod rollout;
mod s3;
mod secrets;
mod server;
mod traffic;
mod triggers;
mod up;
mod usage;

use crate::cli::{Cli, Command};
use std::process::ExitCode;

pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Up { dir, server } => up::run(dir, server).await,
        Command::Deploy {
            dir,
            no_build,
            canary,
            no_traffic,
            expect,
        } => {
            let traffic = if no_traffic { Some(0) } else { canary };
            deploy::run(&dir, no_build, traffic, expect).await
        }
        Command::Revisions { app, json } => traffic::revisions(&app, json).await,
        Command::Traffic {
            app,
            split,
            expect,
            json,
        } => {
            if split.is_empty() {
                if expect.is_some() {
                    anyhow::bail!(
                        "--expect applies to a traffic change; name the new split too, like `nubo traffic {app} 12=90 13=10 --expect 7`"
                    );
                }
                traffic::show(&app, json).await
            } else {
                traffic::set(&app, &split, expect, json).await
            }
        }
        Command::Rollback { app, to, expect } => traffic::rollback(&app, to, expect).await,
        Command::Rollout {
            app,
            to,
            steps,
            interval,
            error_ratio,
            min_error_rate,
            expect,
            abort,
            wait,
            json,
        } => match to {
            Some(to) => {
                let plan = rollout::Plan {
                    to,
                    steps: steps.as_deref().unwrap_or(rollout::DEFAULT_STEPS),
                    interval: interval.unwrap_or(rollout::DEFAULT_INTERVAL),
                    error_ratio,
                    min_error_rate,
                    expect,
                };
                rollout::start(&app, plan, wait, json).await
            }
            None if abort => rollout::abort(&app, json).await,
            None => rollout::show(&app, wait, json).await,
        },
        Command::Ls => apps::ls().await,
        Command::Rm { app } => apps::rm(&app).await,
        Command::Invoke {
            target,
            data,
            method,
            path,
            headers,
            include,
            revision,
            asynchronous,
            idempotency_key,
        } => {
            let request = invoke::Request {
                target: &target,
                data,
                method,
                path: &path,
                headers: &headers,
            };
            if asynchronous {
                invoke::submit(request, idempotency_key.as_deref()).await
            } else {
                invoke::run(request, include, revision).await
            }
        }
        Command::Logs(args) => logs::run(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Invocations {
            app,
            function,
            limit,
            status,
            asynchronous,
            json,
        } => {
            if asynchronous || status.is_some() {
                asynchronous::list(&app, function.as_deref(), status.as_deref(), limit, json).await
            } else {
                apps::invocations(&app, function.as_deref(), limit, json).await
            }
        }
        Command::Invocation { id, cancel, json } => {
            if cancel {
                asynchronous::cancel(&id, json).await
            } else {
                asynchronous::show(&id, json).await
            }
        }
        Command::Dlq {
            app,
            redrive,
            purge,
            ids,
            json,
        } => {
            if redrive {
                asynchronous::redrive(&app, ids, json).await
            } else if purge {
                asynchronous::purge(&app, json).await
            } else {
                asynchronous::dlq(&app, json).await
            }
        }
        Command::Kv { command } => kv::run(command).await,
        Command::Obj { command } => obj::run(command).await,
        Command::S3 { command } => s3::run(command).await,
        Command::Secrets { command } => secrets::run(command).await,
        Command::Queue { command } => queue::run(command).await,
        Command::Triggers { app, json } => triggers::run(&app, json).await,
        Command::CompileWorker => Ok(ExitCode::from(2)),
    }
}

/// Splits `APP/FUNCTION` (function optional when `need_function` is false).
pub(crate) fn split_target(
    target: &str,
    need_function: bool,
) -> anyhow::Result<(String, Option<String>)> {
    match target.split_once('/') {
        Some((a, f)) if !a.is_empty() && !f.is_empty() && !f.contains('/') => {
            Ok((a.to_string(), Some(f.to_string())))
        }
        None if !need_function && !target.is_empty() => Ok((target.to_string(), None)),
        _ if need_function => {
            anyhow::bail!("expected APP/FUNCTION, like `hello/hello`, got {target:?}")
        }
        _ => anyhow::bail!("expected APP or APP/FUNCTION, got {target:?}"),
    }
}
