//! `nubo server`: run a node until SIGTERM or SIGINT.

use crate::cli::ServerArgs;
use crate::server::{Hidden, Server, ServerConfig, default_data_dir, shutdown_signal};
use std::io::Write as _;
use std::process::ExitCode;

pub(crate) fn config(args: &ServerArgs) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone().unwrap_or_else(default_data_dir),
        admin_key: std::env::var("NUBO_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(Hidden),
        drain_timeout: args.drain_timeout,
        keep_revisions: args.keep_revisions,
        retention: nubo_store::Retention {
            max_invocations: args.keep_records,
            max_log_lines: args.keep_log_lines,
            max_age: args.keep_for,
        },
        max_concurrency: args.max_concurrency,
        max_async_queue: args.max_async_queue,
        sandbox: args.sandbox,
        allow_host_network: args.allow_host_network,
        sandbox_readonly: args.sandbox_readonly.clone(),
        s3_listen: args.s3_listen.0,
        s3_access_key: std::env::var("NUBO_S3_ACCESS_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        s3_secret_key: std::env::var("NUBO_S3_SECRET_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(Hidden),
        metrics_labels: args.metrics_labels.parse().unwrap_or_default(),
        usage: nubo_store::UsageSettings {
            granularity: args.usage.billing_granularity,
            prices: nubo_core::api::v1::UsagePrices {
                per_million_requests: args.usage.price_per_million_requests,
                per_gb_second: args.usage.price_per_gb_second,
                per_gb_out: args.usage.price_per_gb_out,
            },
            keep_minutes: args.usage.keep_usage_minutes,
            keep_hours: args.usage.keep_usage_hours,
            keep_days: args.usage.keep_usage_days,
            keep_rows: args.usage.keep_usage_rows,
        },
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
        telemetry: !args.no_telemetry,
    }
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args);
    let server = Server::build(config.clone()).await?;
    // The first stdout line names the bound address (tests and scripts read it with port 0).
    let mut out = std::io::stdout();
    writeln!(out, "nubo listening on http://{}", server.addr())?;
    if let Some(s3) = server.s3_addr() {
        writeln!(out, "s3 listening on http://{s3}")?;
    }
    out.flush()?;
    tracing::info!(data_dir = %config.data_dir.display(), "serving");
    server.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
