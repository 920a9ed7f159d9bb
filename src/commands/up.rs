//! `nubo up DIR`: an embedded server with the app in DIR built, deployed and its logs streamed,
//! until Ctrl-C.

use crate::cli::ServerArgs;
use crate::client::Client;
use crate::commands::{deploy, logs, server::config};
use crate::server::{Server, shutdown_signal};
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) async fn run(dir: PathBuf, args: ServerArgs) -> anyhow::Result<ExitCode> {
    // Check the manifest before starting anything, so a typo fails fast.
    let (m, _) = deploy::read_manifest(&dir)?;
    let config = config(&args);
    let server = Server::build(config.clone()).await?;
    let addr = server.addr();
    println!(
        "nubo listening on http://{addr} (data in {})",
        config.data_dir.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let client = Client::new(
        &format!("http://{addr}"),
        std::env::var("NUBO_ADMIN_KEY").ok(),
    )?;
    let result = async {
        let resp = deploy::deploy_dir(&client, &dir, false).await?;
        deploy::print_result(&client, &resp);
        println!("streaming logs of {} (Ctrl-C to stop)", m.app);
        tokio::select! {
            r = logs::stream(&client, &m.app, None, true, Some("0s")) => r,
            () = shutdown_signal() => Ok(()),
        }
    }
    .await;
    let _ = stop_tx.send(());
    serving.await??;
    result.map(|()| ExitCode::SUCCESS)
}
