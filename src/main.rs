//! The `united-hub` command. With no subcommand it runs the hub.

use clap::{Parser, Subcommand};
use united_hub::{telemetry, Application, Settings};

#[derive(Parser)]
#[command(
    name = "united-hub",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve(Settings),
}

fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let settings = match cli.command {
        Some(Command::Serve(settings)) => settings,
        None => cli.serve,
    };
    actix_web::rt::System::new().block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    let handle = app.handle();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        handle.shutdown().await;
    });
    app.run_until_stopped().await?;
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
