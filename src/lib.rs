//! The composition root of the `nubo` binary: the command line, the client of the admin API,
//! and the embedded server built as `ServerConfig → Server::build → Server::run`, so tests and
//! `nubo up` run exactly what `nubo server` runs.

mod archive;
pub mod cli;
mod client;
mod commands;
mod server;

pub use server::{Server, ServerConfig, default_data_dir, shutdown_signal};

use std::process::ExitCode;

/// Runs a parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(commands::dispatch(cli))
}
