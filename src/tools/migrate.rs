//! `united-hub migrate --from A --to B`: copies a hub's lasting data from one
//! engine to the other (SQLite to PostgreSQL when a hub becomes a cluster,
//! or back), through the store.
//!
//! - The target must be empty: nothing already there is overwritten. Its
//!   schema is created (migrated) first; the source's is brought up to date
//!   too, as a start of the hub would.
//! - Tables go parents first ([`TABLES`]), in pages of `--batch` rows in key
//!   order, each page in one transaction. Progress goes to stderr.
//! - It refuses to start while a hub runs on either side (a SQLite hub's
//!   marker file, PostgreSQL sessions named `united-hub`).
//! - Then every row is read again from both sides and compared, and the
//!   verdict printed: a source that changed meanwhile fails it.
//!
//! Login challenges and WebSocket tickets live for seconds and are not
//! copied. The JWT key is a file, not a row: see `docs/operations.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Location;
use crate::db::portable::{Table, TABLES};
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Where the data is: a data directory (SQLite) or a postgres:// URL.
    #[arg(long)]
    pub from: String,
    /// Where it goes: a new data directory or an empty PostgreSQL database.
    #[arg(long)]
    pub to: String,
    /// Delete what the target holds first (a migration that stopped half
    /// way, say) instead of refusing it. What is deleted is gone.
    #[arg(long)]
    pub replace: bool,
    /// Rows per transaction (at most 5,000: PostgreSQL takes 65,535
    /// parameters in one statement, and a message row has 10).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub batch: u32,
}

/// What a migration copied, per table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, u64)>);

impl Copied {
    pub fn rows(&self, table: &str) -> u64 {
        self.0
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    }
}

/// Runs the migration; returns what it copied. Must run inside an actix
/// system.
pub async fn run(args: MigrateArgs) -> anyhow::Result<Copied> {
    let from = Location::parse(&args.from).context("--from")?;
    let to = Location::parse(&args.to).context("--to")?;
    check_locations(&from, &to)?;
    let metrics = Arc::new(Metrics::new());
    let (source, _) = Store::open_engine(&from.settings(), &metrics)
        .await
        .with_context(|| format!("opening the source, {}", from.describe()))?;
    let (target, _) = Store::open_engine(&to.settings(), &metrics)
        .await
        .with_context(|| format!("opening the target, {}", to.describe()))?;
    let result = migrate(&source, &target, &from, &to, args.batch, args.replace).await;
    source.close();
    target.close();
    result
}

/// Refuses a copy onto itself, and a SQLite source that does not exist
/// (opening it would make an empty one).
fn check_locations(from: &Location, to: &Location) -> anyhow::Result<()> {
    match (from, to) {
        (Location::Sqlite(a), Location::Sqlite(b)) if same_dir(a, b) => {
            anyhow::bail!("--from and --to are the same data directory")
        }
        (Location::Postgres(a), Location::Postgres(b)) if a == b => {
            anyhow::bail!("--from and --to are the same database")
        }
        _ => {}
    }
    if let Location::Sqlite(dir) = from {
        let file = crate::db::db_path(dir);
        anyhow::ensure!(
            file.exists(),
            "there is no hub database at {} (--from names the data directory a hub ran with)",
            file.display()
        );
    }
    Ok(())
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

async fn migrate(
    source: &Store,
    target: &Store,
    from: &Location,
    to: &Location,
    batch: u32,
    replace: bool,
) -> anyhow::Result<Copied> {
    eprintln!("migrating {} -> {}", from.describe(), to.describe());
    for (what, store, at) in [("source", source, from), ("target", target, to)] {
        let hubs = store.other_hubs().await?;
        anyhow::ensure!(
            hubs.is_empty(),
            "the {what}, {}, is in use ({}): stop every hub on it first; nothing was written",
            at.describe(),
            hubs.join(", ")
        );
    }
    let mut held = Vec::new();
    for table in TABLES {
        let n = target.count_rows(table).await?;
        if n > 0 {
            held.push(format!("{n} {}", table.name));
        }
    }
    if !held.is_empty() {
        anyhow::ensure!(
            replace,
            "the target already holds data ({}): migrate into an empty database, or add \
             --replace to delete it first; nothing was written",
            held.join(", ")
        );
        let deleted = target.clear_tables(TABLES).await?;
        eprintln!(
            "--replace: deleted the target's {deleted} rows ({})",
            held.join(", ")
        );
    }
    let mut copied = Copied::default();
    for table in TABLES {
        let n = copy_table(source, target, table, batch)
            .await
            .with_context(|| format!("copying {}", table.name))?;
        copied.0.push((table.name, n));
    }
    target.finish_import().await?;
    eprintln!("checking: every row read again from both sides");
    for table in TABLES {
        compare_table(source, target, table, batch)
            .await
            .with_context(|| format!("checking {}", table.name))?;
    }
    eprintln!(
        "done: {} and {} hold the same data",
        from.describe(),
        to.describe()
    );
    Ok(copied)
}

/// Copies one table page by page; returns how many rows it copied.
async fn copy_table(
    source: &Store,
    target: &Store,
    table: &'static Table,
    batch: u32,
) -> anyhow::Result<u64> {
    let total = source.count_rows(table).await?;
    let started = Instant::now();
    let mut progress = Progress::new(table.name, total);
    let mut after = None;
    let mut copied = 0u64;
    loop {
        let page = source.export_page(table, after.clone(), batch).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(Table::key_of(last));
        copied += page.len() as u64;
        target.import_rows(table, page).await?;
        progress.show(copied, false);
    }
    progress.show(copied, true);
    tracing::debug!(table = table.name, copied, took = ?started.elapsed(), "copied");
    Ok(copied)
}

/// Reads both sides again, page by page, and fails at the first difference.
async fn compare_table(
    source: &Store,
    target: &Store,
    table: &'static Table,
    batch: u32,
) -> anyhow::Result<()> {
    let mut after = None;
    let mut checked = 0u64;
    loop {
        let a = source.export_page(table, after.clone(), batch).await?;
        let b = target.export_page(table, after.clone(), batch).await?;
        if a != b {
            let at = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            anyhow::bail!(
                "the copy differs from the source at row {} of {} (the source changed during \
                 the copy? stop the hub first, then migrate into a new, empty target)",
                checked + at as u64 + 1,
                table.name
            );
        }
        let Some(last) = a.last() else {
            return Ok(());
        };
        after = Some(Table::key_of(last));
        checked += a.len() as u64;
    }
}

/// One line per table on stderr, at most once a second while it runs.
struct Progress {
    table: &'static str,
    total: u64,
    started: Instant,
    shown: Option<Instant>,
}

impl Progress {
    fn new(table: &'static str, total: u64) -> Self {
        Progress {
            table,
            total,
            started: Instant::now(),
            shown: None,
        }
    }

    fn show(&mut self, done: u64, last: bool) {
        let due = self
            .shown
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !last && !due {
            return;
        }
        self.shown = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let percent = if self.total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / self.total as f64
        };
        eprintln!(
            "  {:<17} {done:>10} / {:<10} rows  {percent:5.1}%  {:.0} rows/s",
            self.table,
            self.total,
            done as f64 / secs
        );
    }
}
