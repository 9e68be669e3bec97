//! Tools for the people who run a hub: `migrate` (between engines) and
//! `backup` and `restore` (of the embedded database). They work through the store, like
//! the hub itself, and print their progress to stderr.

pub mod backup;
pub mod migrate;

use std::path::PathBuf;

use crate::config::{DatabaseUrl, Settings};

/// Where a hub keeps its data, as a person writes it: a `postgres://` URL or
/// a SQLite data directory.
#[derive(Clone, Debug)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    pub fn parse(text: &str) -> anyhow::Result<Location> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let url = DatabaseUrl::from_text(text);
            if let Some(problem) = url.problem() {
                anyhow::bail!("{problem}");
            }
            Ok(Location::Postgres(text.to_owned()))
        } else if text.contains("://") {
            anyhow::bail!(
                "a location is a data directory (SQLite) or a postgres:// URL, not {}",
                text.split("://").next().unwrap_or("")
            )
        } else {
            Ok(Location::Sqlite(PathBuf::from(text)))
        }
    }

    /// The settings that open this location's store.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        match self {
            Location::Sqlite(dir) => settings.data_dir = dir.clone(),
            Location::Postgres(url) => settings.database_url = Some(DatabaseUrl::from_text(url)),
        }
        settings
    }

    /// How to name it in messages: never with a password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(dir) => format!("SQLite in {}", dir.display()),
            Location::Postgres(url) => format!("PostgreSQL at {}", DatabaseUrl::from_text(url)),
        }
    }
}
