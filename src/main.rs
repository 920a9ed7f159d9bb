//! The `nubo` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = nubo::cli::Cli::parse();
    if let nubo::cli::Command::CompileWorker = cli.command {
        // The compile worker speaks a byte protocol on stdio: no logging setup, no runtime.
        return nubo_runtime::compile_worker_main();
    }
    nubo_telemetry::init_tracing(if cli.verbose { "debug" } else { "info" });
    match nubo::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
