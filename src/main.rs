//! The `united-hub` command. With no subcommand it runs the hub.

use clap::{Parser, Subcommand};
use united_hub::cli::{chat, demo, history, interactive};
use united_hub::{load, tools};
use united_hub::{telemetry, Application, Settings};

/// Every message allocates a handful of buffers on one thread and frees them
/// on another (session → conversation → writer → sessions); glibc's malloc
/// spent about 17% of the hub's CPU on that at full load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<Settings>),
    /// Play a short story against an embedded (or --url) hub, every step checked.
    Demo(demo::DemoArgs),
    /// Create or show an identity file.
    #[command(subcommand)]
    Identity(chat::IdentityCommand),
    /// Send an encrypted message.
    Send(chat::SendArgs),
    /// Print your messages as they arrive (and those that came while away).
    Listen(chat::ListenArgs),
    /// Print a conversation, decrypted, both sides, oldest first.
    History(history::HistoryArgs),
    /// Talk with one person in this terminal: messages above, a prompt below.
    Chat(interactive::ChatArgs),
    /// Drive a hub with many sessions, measure it, and verify every delivery.
    Load(load::LoadArgs),
    /// Copy a hub's data between engines (SQLite <-> PostgreSQL), then check the copy.
    Migrate(tools::migrate::MigrateArgs),
    /// Copy the embedded database to a new file, while the hub runs.
    Backup(tools::backup::BackupArgs),
    /// Put a backup in place as a data directory's database (the hub stopped).
    Restore(tools::backup::RestoreArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(cli.serve)));
    if matches!(command, Command::Serve(_)) {
        telemetry::init();
    }
    if !matches!(command, Command::Serve(_)) {
        trust_ca_file()?;
    }
    let system = actix_web::rt::System::new();
    match command {
        Command::Serve(settings) => system.block_on(serve(*settings)),
        Command::Demo(args) => {
            let all_held = system.block_on(demo::run(args))?;
            std::process::exit(if all_held { 0 } else { 1 });
        }
        Command::Identity(cmd) => chat::identity(cmd),
        Command::Send(args) => system.block_on(chat::send(args)),
        Command::Listen(args) => system.block_on(chat::listen(args)),
        Command::History(args) => system.block_on(history::history(args)),
        Command::Chat(args) => system.block_on(interactive::chat(args)),
        Command::Migrate(args) => {
            let copied = system.block_on(tools::migrate::run(args))?;
            for (table, rows) in copied.0 {
                println!("{table}\t{rows}");
            }
            Ok(())
        }
        Command::Backup(args) => tools::backup::backup(args).map(|_| ()),
        Command::Restore(args) => tools::backup::restore(args).map(|_| ()),
        Command::Load(args) => {
            let json = args.json.clone();
            let report = system.block_on(load::run(args))?;
            println!("{report}");
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            std::process::exit(if report.ok { 0 } else { 1 });
        }
    }
}

/// The client commands trust the CA in `UNITED_CA_FILE` (PEM) besides the
/// system's: a hub whose certificate a private CA signed.
fn trust_ca_file() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(path) = std::env::var_os("UNITED_CA_FILE") else {
        return Ok(());
    };
    let pem = std::fs::read(&path)
        .with_context(|| format!("reading UNITED_CA_FILE {}", path.to_string_lossy()))?;
    united_hub::client::trust_ca_pem(&pem)
        .with_context(|| format!("UNITED_CA_FILE {}", path.to_string_lossy()))?;
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    settings.validate()?;
    let app = Application::build(settings).await?;
    let handle = app.handle();
    #[cfg(unix)]
    {
        let handle = handle.clone();
        actix_web::rt::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot listen for SIGHUP: TLS certificates load at start only");
                return;
            };
            while hangup.recv().await.is_some() {
                handle.reload_tls();
            }
        });
    }
    let (stopped, shutdown_done) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        handle.shutdown().await;
        let _ = stopped.send(());
    });
    app.run_until_stopped().await?;
    // The server stops first; the rest of the shutdown (the cluster's
    // goodbye, the store's close) finishes before the process exits.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), shutdown_done).await;
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
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
