//! The `nubo` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "__sandbox")
    {
        // The sandbox launcher forks, so it runs before anything could start a thread; it is
        // on every cold start, so it skips argument parsing and logging setup too.
        return nubo_runtime::sandbox::launcher_main();
    }
    let cli = nubo::cli::Cli::parse();
    if let nubo::cli::Command::CompileWorker = cli.command {
        // The compile worker speaks a byte protocol on stdio: no logging setup, no runtime.
        return nubo_runtime::compile_worker_main();
    }
    nubo_telemetry::init_tracing(if cli.verbose { "debug" } else { "info" }, cli.log_format);
    match nubo::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
