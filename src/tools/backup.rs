//! `united-hub backup --to FILE` and `united-hub restore --from FILE`: the
//! embedded database, copied while the hub runs, and put back. The work is
//! the store's (`store::backup`); this prints progress and the outcome.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{DatabaseUrl, Settings};
use crate::store::{self, BackupSummary};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The hub's data directory.
    #[arg(long, env = "UNITED_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A hub on PostgreSQL is refused, with what to use instead.
    #[arg(long, env = "UNITED_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The file to write; it must not exist.
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A file `united-hub backup` wrote.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into; it must hold no database. Stop
    /// any hub that runs on it first.
    #[arg(long, env = "UNITED_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

fn settings(data_dir: PathBuf, database_url: Option<String>) -> Settings {
    Settings {
        data_dir,
        database_url: database_url.map(|u| DatabaseUrl::from_text(&u)),
        ..Settings::default()
    }
}

pub fn backup(args: BackupArgs) -> anyhow::Result<BackupSummary> {
    let settings = settings(args.data_dir, args.database_url);
    eprintln!(
        "backing up {} to {}",
        settings.data_dir.display(),
        args.to.display()
    );
    let mut shown = Instant::now();
    let started = Instant::now();
    let mut show = |written: u64, total: u64| {
        if shown.elapsed() < Duration::from_secs(1) && written < total {
            return;
        }
        shown = Instant::now();
        eprintln!(
            "  {:>8.1} MiB of about {:.1} MiB written ({:.0} s)",
            mib(written),
            mib(total),
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    };
    let summary = store::backup(&settings, &args.to, &mut show)?;
    if let Some(pid) = summary.made_by_hub {
        eprintln!("the copy was made by the hub that runs on the database (pid {pid})");
    }
    eprintln!(
        "done: {} checked, {} users and {} messages, {:.1} MiB in {:.1} s",
        args.to.display(),
        summary.users,
        summary.messages,
        mib(summary.bytes),
        summary.took.as_secs_f64()
    );
    Ok(summary)
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<BackupSummary> {
    let settings = settings(args.data_dir, None);
    let summary = store::restore(&settings, &args.from)?;
    eprintln!(
        "restored {} into {}: {} users and {} messages; start the hub with --data-dir {}",
        args.from.display(),
        settings.data_dir.display(),
        summary.users,
        summary.messages,
        settings.data_dir.display()
    );
    Ok(summary)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
