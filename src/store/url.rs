//! The `--database-url` a person gives: kept as typed (clap quotes a
//! refused value, so checking happens in `Settings::validate`), shown
//! without its password. It lives in the storage layer because only
//! PostgreSQL's own parser can say what it means; `config` re-exports it.

/// A `postgres://` URL. Its `Debug` and `Display` show the hosts, ports and
/// database only: never the user, a password (in the user info or as
/// `?password=`) or any other parameter, so it can appear in logs.
///
/// Parsing keeps any string, so that clap's error for a bad value (which
/// quotes the value) never prints a password: `Settings::validate` checks it
/// and names the problem without the value.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn from_text(text: &str) -> Self {
        DatabaseUrl(text.to_owned())
    }

    /// The full URL, password included: for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why this is not a URL the hub can use, in words that hold no part of it.
    pub fn problem(&self) -> Option<&'static str> {
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            return Some("--database-url must be postgres://user:password@host:port/dbname");
        }
        if crate::store::postgres::tls::parse(&self.0).is_err() {
            return Some(
                "--database-url is not a valid postgres:// URL (sslmode: disable, prefer, \
                 require, verify-ca or verify-full)",
            );
        }
        None
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use tokio_postgres::config::Host;
        let Ok(connect) = crate::store::postgres::tls::parse(&self.0) else {
            return write!(f, "postgres://(an invalid URL)");
        };
        let config = connect.config;
        let ports = config.get_ports();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        write!(
            f,
            "postgres://{}/{}",
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        )
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}
