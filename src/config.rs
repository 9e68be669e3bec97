//! Runtime settings: one typed struct, every field a documented flag that also
//! reads `UNITED_<FLAG>` from the environment (a flag beats its variable).
//!
//! Why it is this long: every flag with its documentation and its validation,
//! and their tests (173 lines).

pub use crate::store::url::DatabaseUrl;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The defaults of the wire contract (section 5), in one place.
pub mod defaults {
    pub const BIND: &str = "127.0.0.1:1984";
    pub const DATA_DIR: &str = "./data";
    pub const ACCESS_TOKEN_TTL: u64 = 900;
    pub const REFRESH_TOKEN_TTL: u64 = 7 * 24 * 3600;
    pub const CHALLENGE_TTL: u64 = 60;
    pub const WS_TICKET_TTL: u64 = 30;
    pub const OFFLINE_TTL: u64 = 30 * 24 * 3600;
    pub const JANITOR_INTERVAL: u64 = 3600;
    pub const PING_INTERVAL: u64 = 10;
    pub const IDLE_TIMEOUT: u64 = 30;
    pub const SEND_TIMEOUT: u64 = 30;
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
    pub const MAX_FRAME_BYTES: usize = 256 * 1024;
    pub const SESSION_BUFFER: usize = 1024;
    pub const SESSION_BUFFER_BYTES: usize = 4 * 1024 * 1024;
    pub const MAX_SESSIONS_PER_USER: usize = 32;
    pub const MAX_CONNECTIONS_PER_IP: usize = 4096;
    pub const AUTH_RATE: u32 = 20;
    pub const AUTH_BURST: u32 = 100;
    pub const SEND_RATE: u32 = 200;
    pub const SEND_BURST: u32 = 1000;
    pub const READ_RATE: u32 = 100;
    pub const READ_BURST: u32 = 500;
    pub const KEY_RATE: u32 = 1;
    pub const KEY_BURST: u32 = 20;
    pub const CONVERSATION_RATE: u32 = 10;
    pub const CONVERSATION_BURST: u32 = 200;
    /// Four pages of 4 MiB.
    pub const ANSWER_BYTES_PER_USER: usize = 16 * 1024 * 1024;
    pub const ANSWER_BYTES_PER_NODE: usize = 256 * 1024 * 1024;
}

/// Everything the hub can be told at start.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Listen address (use port 0 to let the OS pick one).
    #[arg(long, env = "UNITED_BIND", default_value = defaults::BIND)]
    pub bind: SocketAddr,

    /// Directory that holds `united.db` and `jwt_secret`; created if missing.
    #[arg(long, env = "UNITED_DATA_DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,

    /// HS256 key file [default: <data-dir>/jwt_secret, generated on first
    /// start]. Required in cluster mode, the same file on every node: it
    /// also seals the bus, and is never generated there.
    #[arg(long, env = "UNITED_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Access-token lifetime, seconds.
    #[arg(long, env = "UNITED_ACCESS_TOKEN_TTL", default_value_t = defaults::ACCESS_TOKEN_TTL)]
    pub access_token_ttl: u64,

    /// Refresh-token lifetime, seconds.
    #[arg(long, env = "UNITED_REFRESH_TOKEN_TTL", default_value_t = defaults::REFRESH_TOKEN_TTL)]
    pub refresh_token_ttl: u64,

    /// How long a login challenge can be answered, seconds.
    #[arg(long, env = "UNITED_CHALLENGE_TTL", default_value_t = defaults::CHALLENGE_TTL)]
    pub challenge_ttl: u64,

    /// How long a WebSocket ticket (`POST /api/auth/ws-ticket`) can be used, seconds.
    #[arg(long, env = "UNITED_WS_TICKET_TTL", default_value_t = defaults::WS_TICKET_TTL)]
    pub ws_ticket_ttl: u64,

    /// How long an offline-queue entry is kept, seconds (30 days).
    #[arg(long, env = "UNITED_OFFLINE_TTL", default_value_t = defaults::OFFLINE_TTL)]
    pub offline_ttl: u64,

    /// Seconds between two runs of the janitor's purge.
    #[arg(long, env = "UNITED_JANITOR_INTERVAL", default_value_t = defaults::JANITOR_INTERVAL)]
    pub janitor_interval: u64,

    /// Seconds between two WebSocket pings.
    #[arg(long, env = "UNITED_PING_INTERVAL", default_value_t = defaults::PING_INTERVAL)]
    pub ping_interval: u64,

    /// A session that sends nothing (not even a pong) for this many seconds is closed.
    #[arg(long, env = "UNITED_IDLE_TIMEOUT", default_value_t = defaults::IDLE_TIMEOUT)]
    pub idle_timeout: u64,

    /// The longest a send may wait for its commit, seconds: then 503
    /// `unavailable`, and the client's resend with the same id is answered
    /// from whatever was stored.
    #[arg(long, env = "UNITED_SEND_TIMEOUT", default_value_t = defaults::SEND_TIMEOUT)]
    pub send_timeout: u64,

    /// Ciphertext bytes allowed in one message.
    #[arg(long, env = "UNITED_MAX_PAYLOAD_BYTES", default_value_t = defaults::MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// Bytes allowed in one WebSocket message, after continuation frames are joined.
    #[arg(long, env = "UNITED_MAX_FRAME_BYTES", default_value_t = defaults::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Events a session may have waiting before it counts as too slow (closed with 1013).
    #[arg(long, env = "UNITED_SESSION_BUFFER", default_value_t = defaults::SESSION_BUFFER)]
    pub session_buffer: usize,

    /// Bytes of events a session may have waiting before it counts as too
    /// slow (closed with 1013; what it missed goes to the offline queue); 0 turns the cap off.
    #[arg(long, env = "UNITED_SESSION_BUFFER_BYTES", default_value_t = defaults::SESSION_BUFFER_BYTES)]
    pub session_buffer_bytes: usize,

    /// Live WebSocket sessions one user may have on this node; 0 turns the cap off.
    #[arg(long, env = "UNITED_MAX_SESSIONS_PER_USER", default_value_t = defaults::MAX_SESSIONS_PER_USER)]
    pub max_sessions_per_user: usize,

    /// Live WebSocket sessions from one client IP on this node; 0 turns the cap off.
    #[arg(long, env = "UNITED_MAX_CONNECTIONS_PER_IP", default_value_t = defaults::MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,

    /// Auth requests per second per client IP (`/api/auth/*`); 0 turns the limit off.
    #[arg(long, env = "UNITED_AUTH_RATE", default_value_t = defaults::AUTH_RATE)]
    pub auth_rate: u32,

    /// Auth requests a client IP may make in a burst.
    #[arg(long, env = "UNITED_AUTH_BURST", default_value_t = defaults::AUTH_BURST)]
    pub auth_burst: u32,

    /// Sends per second per user (HTTP and WebSocket); 0 turns the limit off.
    #[arg(long, env = "UNITED_SEND_RATE", default_value_t = defaults::SEND_RATE)]
    pub send_rate: u32,

    /// Sends a user may make in a burst.
    #[arg(long, env = "UNITED_SEND_BURST", default_value_t = defaults::SEND_BURST)]
    pub send_burst: u32,

    /// Reads per second per user (history, conversation lists, offline
    /// fetches; both transports); 0 turns the limit off.
    #[arg(long, env = "UNITED_READ_RATE", default_value_t = defaults::READ_RATE)]
    pub read_rate: u32,

    /// Reads a user may make in a burst.
    #[arg(long, env = "UNITED_READ_BURST", default_value_t = defaults::READ_BURST)]
    pub read_burst: u32,

    /// Key publications per second per user (`POST /api/dm/keys`); 0 turns
    /// the limit off.
    #[arg(long, env = "UNITED_KEY_RATE", default_value_t = defaults::KEY_RATE)]
    pub key_rate: u32,

    /// Key publications a user may make in a burst.
    #[arg(long, env = "UNITED_KEY_BURST", default_value_t = defaults::KEY_BURST)]
    pub key_burst: u32,

    /// Conversation creations per second per user (HTTP and WebSocket,
    /// existing conversations included); 0 turns the limit off.
    #[arg(long, env = "UNITED_CONVERSATION_RATE", default_value_t = defaults::CONVERSATION_RATE)]
    pub conversation_rate: u32,

    /// Conversation creations a user may make in a burst.
    #[arg(long, env = "UNITED_CONVERSATION_BURST", default_value_t = defaults::CONVERSATION_BURST)]
    pub conversation_burst: u32,

    /// Bytes of history and offline answers one user may have waiting to
    /// be read (a page takes up to 4 MiB); past it a page request waits,
    /// then gets 429. 0 turns the cap off.
    #[arg(long, env = "UNITED_ANSWER_BYTES_PER_USER", default_value_t = defaults::ANSWER_BYTES_PER_USER)]
    pub answer_bytes_per_user: usize,

    /// Bytes of history and offline answers all users together may have
    /// waiting to be read on this node; 0 turns the cap off.
    #[arg(long, env = "UNITED_ANSWER_BYTES_PER_NODE", default_value_t = defaults::ANSWER_BYTES_PER_NODE)]
    pub answer_bytes_per_node: usize,

    /// Reverse proxies whose `X-Forwarded-For` is believed: addresses or
    /// CIDR blocks, repeatable or comma-separated. The client is the last
    /// forwarded hop that is not one of them; without any, the header is
    /// ignored.
    #[arg(long, env = "UNITED_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<crate::net::IpNet>,

    /// Origins allowed to open `/ws` (comma-separated); empty allows any.
    #[arg(long, env = "UNITED_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// PostgreSQL for cluster mode (`postgres://user:password@host:port/db`)
    /// [default: the embedded SQLite database in --data-dir].
    #[arg(long, env = "UNITED_DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,

    /// NATS for cluster mode: carries events between nodes that share
    /// --database-url. `nats://[user:password@]host:port`, `tls://…` for
    /// TLS; several URLs, comma-separated, are one NATS cluster.
    #[arg(long, env = "UNITED_NATS_URL")]
    pub nats_url: Option<NatsUrl>,

    /// A PEM file of the CA that signed the NATS servers' certificates
    /// [default: the system's roots].
    #[arg(long, env = "UNITED_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// PEM certificate chain to serve HTTPS and `wss://` with (with
    /// --tls-key) [default: plain HTTP].
    #[arg(long, env = "UNITED_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "UNITED_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// HTTP worker threads [default: one per core].
    #[arg(long, env = "UNITED_WORKERS")]
    pub workers: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // The constant is a valid socket address; a unit test checks it.
            bind: defaults::BIND.parse().expect("default bind address parses"),
            data_dir: PathBuf::from(defaults::DATA_DIR),
            jwt_secret_file: None,
            access_token_ttl: defaults::ACCESS_TOKEN_TTL,
            refresh_token_ttl: defaults::REFRESH_TOKEN_TTL,
            challenge_ttl: defaults::CHALLENGE_TTL,
            ws_ticket_ttl: defaults::WS_TICKET_TTL,
            offline_ttl: defaults::OFFLINE_TTL,
            janitor_interval: defaults::JANITOR_INTERVAL,
            ping_interval: defaults::PING_INTERVAL,
            idle_timeout: defaults::IDLE_TIMEOUT,
            send_timeout: defaults::SEND_TIMEOUT,
            max_payload_bytes: defaults::MAX_PAYLOAD_BYTES,
            max_frame_bytes: defaults::MAX_FRAME_BYTES,
            session_buffer: defaults::SESSION_BUFFER,
            session_buffer_bytes: defaults::SESSION_BUFFER_BYTES,
            max_sessions_per_user: defaults::MAX_SESSIONS_PER_USER,
            max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            auth_rate: defaults::AUTH_RATE,
            auth_burst: defaults::AUTH_BURST,
            send_rate: defaults::SEND_RATE,
            send_burst: defaults::SEND_BURST,
            read_rate: defaults::READ_RATE,
            read_burst: defaults::READ_BURST,
            key_rate: defaults::KEY_RATE,
            key_burst: defaults::KEY_BURST,
            conversation_rate: defaults::CONVERSATION_RATE,
            conversation_burst: defaults::CONVERSATION_BURST,
            answer_bytes_per_user: defaults::ANSWER_BYTES_PER_USER,
            answer_bytes_per_node: defaults::ANSWER_BYTES_PER_NODE,
            trusted_proxy: Vec::new(),
            allowed_origins: Vec::new(),
            database_url: None,
            nats_url: None,
            nats_ca_file: None,
            tls_cert: None,
            tls_key: None,
            workers: None,
        }
    }
}

/// `--nats-url`: one or more NATS servers, comma-separated, with optional
/// credentials. Its `Debug` and `Display` leave the credentials out.
#[derive(Clone)]
pub struct NatsUrl {
    /// `scheme://host:port` of each server, without credentials.
    servers: Vec<String>,
    user: Option<(String, String)>,
    problem: Option<&'static str>,
}

impl NatsUrl {
    /// The servers, without credentials.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// User and password, when the URL has them (percent-decoded).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Whether every server is asked for TLS (`tls://`).
    pub fn tls(&self) -> bool {
        self.servers.iter().all(|s| s.starts_with("tls://"))
    }
}

impl std::str::FromStr for NatsUrl {
    type Err = std::convert::Infallible;
    /// Keeps any string, so that clap never quotes a password in an error:
    /// `Settings::validate` names what is wrong.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut url = NatsUrl {
            servers: Vec::new(),
            user: None,
            problem: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((scheme, rest)) = part.split_once("://") else {
                url.problem = Some("--nats-url must be nats://host:port or tls://host:port");
                continue;
            };
            if !matches!(scheme, "nats" | "tls") {
                url.problem = Some("--nats-url must be nats://host:port or tls://host:port");
            }
            let (userinfo, host) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, rest),
            };
            if host.is_empty() || (host.contains('/') && !host.ends_with('/')) {
                url.problem = Some("--nats-url names a server without a host:port");
            }
            if let Some(userinfo) = userinfo {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let creds = (
                    crate::net::percent_decode(user),
                    crate::net::percent_decode(pass),
                );
                if url.user.as_ref().is_some_and(|c| *c != creds) {
                    url.problem =
                        Some("--nats-url gives different credentials for different servers");
                }
                url.user = Some(creds);
            }
            url.servers
                .push(format!("{scheme}://{}", host.trim_end_matches('/')));
        }
        if url.servers.is_empty() {
            url.problem = Some("--nats-url names no server");
        }
        Ok(url)
    }
}

impl std::fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.servers.join(","))
    }
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsUrl({self})")
    }
}

/// Why a cluster node will not start without `--jwt-secret-file`.
pub const CLUSTER_NEEDS_SECRET: &str = "cluster mode (--database-url) needs --jwt-secret-file: \
     every node of a cluster must be given the same secret file (at least 32 bytes, for example \
     made once with `openssl rand -hex 32 > jwt_secret`, mode 0600); it signs tokens and seals \
     the bus, and is never kept in the database";

/// The bounds `Settings::validate` enforces.
pub mod limits {
    /// The longest duration any flag accepts: 100 years, in seconds. Far
    /// below what `Instant + Duration` or milliseconds in a `u64` overflow at.
    pub const MAX_DURATION_SECS: u64 = 100 * 365 * 24 * 3600 + 25 * 24 * 3600;
    /// The largest `--max-payload-bytes`: 64 MiB.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
    /// What a WebSocket send request carries besides its ciphertext (ids,
    /// nonce, key, timestamp, request id and protobuf framing), generously.
    pub const SEND_OVERHEAD_BYTES: usize = 1024;
    /// The largest `--max-frame-bytes`: 128 MiB.
    pub const MAX_FRAME_BYTES: usize = 128 * 1024 * 1024;
}

impl Settings {
    /// Refuses values the hub cannot run with, or whose arithmetic (seconds
    /// to milliseconds, `Instant + ttl`) could overflow. Every problem is
    /// named by its flag; run before anything is opened.
    pub fn validate(&self) -> anyhow::Result<()> {
        use limits::*;
        let mut problems = Vec::new();
        for (flag, secs) in [
            ("--access-token-ttl", self.access_token_ttl),
            ("--refresh-token-ttl", self.refresh_token_ttl),
            ("--challenge-ttl", self.challenge_ttl),
            ("--ws-ticket-ttl", self.ws_ticket_ttl),
            ("--offline-ttl", self.offline_ttl),
            ("--janitor-interval", self.janitor_interval),
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--send-timeout", self.send_timeout),
        ] {
            if secs > MAX_DURATION_SECS {
                problems.push(format!(
                    "{flag} {secs} is over 100 years ({MAX_DURATION_SECS} seconds)"
                ));
            }
        }
        let payload_ok = (1..=MAX_PAYLOAD_BYTES).contains(&self.max_payload_bytes);
        if !payload_ok {
            problems.push(format!(
                "--max-payload-bytes {} must be between 1 and {MAX_PAYLOAD_BYTES} (64 MiB)",
                self.max_payload_bytes
            ));
        }
        if self.max_frame_bytes > MAX_FRAME_BYTES {
            problems.push(format!(
                "--max-frame-bytes {} is over {MAX_FRAME_BYTES} (128 MiB)",
                self.max_frame_bytes
            ));
        } else if payload_ok && self.max_frame_bytes < self.min_frame_bytes() {
            problems.push(format!(
                "--max-frame-bytes {} is smaller than a WebSocket send at --max-payload-bytes {} \
                 needs ({}): such messages could be sent over HTTP but never over /ws",
                self.max_frame_bytes,
                self.max_payload_bytes,
                self.min_frame_bytes()
            ));
        }
        for (flag, bytes) in [
            ("--answer-bytes-per-user", self.answer_bytes_per_user),
            ("--answer-bytes-per-node", self.answer_bytes_per_node),
        ] {
            let page = crate::model::MAX_PAGE_BYTES;
            let most = tokio::sync::Semaphore::MAX_PERMITS;
            if bytes != 0 && !(page..=most).contains(&bytes) {
                problems.push(format!(
                    "{flag} {bytes} must be 0 (off) or from one page, {page} bytes (4 MiB), \
                     to {most}"
                ));
            }
        }
        if let Some(problem) = self.database_url.as_ref().and_then(DatabaseUrl::problem) {
            problems.push(problem.to_owned());
        }
        if let Some(problem) = self.nats_url.as_ref().and_then(|u| u.problem) {
            problems.push(problem.to_owned());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push("--tls-cert and --tls-key go together".to_owned());
        }
        if self.database_url.is_some() && self.jwt_secret_file.is_none() {
            problems.push(CLUSTER_NEEDS_SECRET.to_owned());
        }
        if self.send_timeout == 0 {
            problems.push("--send-timeout 0 would refuse every send; it must be at least 1".into());
        }
        if self.session_buffer == 0 {
            problems.push(
                "--session-buffer 0 would count every session as too slow; it must be at least 1"
                    .to_owned(),
            );
        }
        if self.ping_interval() >= self.idle_timeout() {
            problems.push(format!(
                "--ping-interval ({} s) must be shorter than --idle-timeout ({} s), or quiet \
                 clients are closed between two pings",
                self.ping_interval().as_secs(),
                self.idle_timeout().as_secs()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid settings: {}", problems.join("; "))
        }
    }

    /// The smallest `--max-frame-bytes` that carries a send at
    /// `--max-payload-bytes`.
    pub fn min_frame_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(limits::SEND_OVERHEAD_BYTES)
    }

    /// The secret file actually used.
    pub fn jwt_secret_path(&self) -> PathBuf {
        self.jwt_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("jwt_secret"))
    }

    /// Largest JSON body accepted: a message at the payload limit, in base64,
    /// plus room for the other fields.
    pub fn max_json_bytes(&self) -> usize {
        self.max_payload_bytes.div_ceil(3) * 4 + 16 * 1024
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.max(1))
    }

    pub fn janitor_interval(&self) -> Duration {
        Duration::from_secs(self.janitor_interval.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::default();
        assert_eq!(s.bind.to_string(), "127.0.0.1:1984");
        assert_eq!(s.jwt_secret_path(), PathBuf::from("./data/jwt_secret"));
        // A 64 KiB payload in base64 fits in the JSON limit.
        assert!(s.max_json_bytes() > 65536 * 4 / 3 + 200);
    }

    fn problems(configure: impl FnOnce(&mut Settings)) -> String {
        let mut s = Settings::default();
        configure(&mut s);
        match s.validate() {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_defaults_and_sane_values_are_valid() {
        Settings::default().validate().unwrap();
        assert_eq!(
            problems(|s| s.challenge_ttl = 0),
            "",
            "tests expire challenges at once"
        );
        assert_eq!(
            problems(|s| {
                s.offline_ttl = limits::MAX_DURATION_SECS;
                s.refresh_token_ttl = limits::MAX_DURATION_SECS;
                s.max_payload_bytes = limits::MAX_PAYLOAD_BYTES;
                s.max_frame_bytes = limits::MAX_PAYLOAD_BYTES + limits::SEND_OVERHEAD_BYTES;
                s.ping_interval = 1;
                s.idle_timeout = 2;
                s.session_buffer = 1;
            }),
            ""
        );
    }

    #[test]
    fn absurd_values_are_refused_by_flag() {
        for (configure, flag) in [
            (
                Box::new(|s: &mut Settings| s.offline_ttl = u64::MAX) as Box<dyn Fn(&mut Settings)>,
                "--offline-ttl",
            ),
            (
                Box::new(|s| s.refresh_token_ttl = limits::MAX_DURATION_SECS + 1),
                "--refresh-token-ttl",
            ),
            (
                Box::new(|s| s.access_token_ttl = u64::MAX / 1000),
                "--access-token-ttl",
            ),
            (Box::new(|s| s.challenge_ttl = u64::MAX), "--challenge-ttl"),
            (
                Box::new(|s| s.janitor_interval = u64::MAX),
                "--janitor-interval",
            ),
            (Box::new(|s| s.max_payload_bytes = 0), "--max-payload-bytes"),
            (
                Box::new(|s| s.max_payload_bytes = limits::MAX_PAYLOAD_BYTES + 1),
                "--max-payload-bytes",
            ),
            (Box::new(|s| s.max_frame_bytes = 4096), "--max-frame-bytes"),
            (
                Box::new(|s| s.max_frame_bytes = 64 * 1024),
                "--max-frame-bytes",
            ),
            (
                Box::new(|s| s.max_frame_bytes = usize::MAX),
                "--max-frame-bytes",
            ),
            (Box::new(|s| s.session_buffer = 0), "--session-buffer"),
            (
                Box::new(|s| s.answer_bytes_per_user = 1024),
                "--answer-bytes-per-user",
            ),
            (
                Box::new(|s| s.answer_bytes_per_node = usize::MAX),
                "--answer-bytes-per-node",
            ),
            (Box::new(|s| s.ping_interval = 30), "--ping-interval"),
            (
                Box::new(|s| {
                    s.ping_interval = 0;
                    s.idle_timeout = 0;
                }),
                "--ping-interval",
            ),
            (Box::new(|s| s.idle_timeout = u64::MAX), "--idle-timeout"),
        ] {
            let message = problems(configure);
            assert!(message.contains(flag), "{flag}: {message:?}");
        }
        // Every problem is named at once.
        let message = problems(|s| {
            s.session_buffer = 0;
            s.max_payload_bytes = 0;
        });
        assert!(message.contains("--session-buffer") && message.contains("--max-payload-bytes"));
    }

    #[test]
    fn a_database_url_never_shows_its_password() {
        let url: DatabaseUrl = "postgres://hub:s3cret@db.internal:5432/united"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "postgres://db.internal:5432/united");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(url.expose().contains("s3cret"));
        // A password as a parameter, and other parameters, are left out too.
        for (raw, shown) in [
            (
                "postgres://hub@db:5433/united?password=p4ss&sslmode=require",
                "postgres://db:5433/united",
            ),
            (
                "postgresql://hub:p%40ss@db/united",
                "postgres://db:5432/united",
            ),
            (
                "postgres://hub:p4ss@a:1,b:2/united?password=x",
                "postgres://a:1,b:2/united",
            ),
        ] {
            let url: DatabaseUrl = raw.parse().unwrap();
            assert_eq!(url.to_string(), shown);
            assert!(url.problem().is_none(), "{shown}");
        }
    }

    #[test]
    fn a_nats_url_keeps_its_credentials_out_of_sight() {
        let url: NatsUrl = "nats://hub:p%40ss@a:4222, nats://hub:p%40ss@b:4223"
            .parse()
            .unwrap();
        assert_eq!(url.servers(), ["nats://a:4222", "nats://b:4223"]);
        assert_eq!(url.credentials(), Some(("hub", "p@ss")));
        assert_eq!(url.to_string(), "nats://a:4222,nats://b:4223");
        assert!(!format!("{url:?}").contains("ss"));
        assert!(url.problem.is_none() && !url.tls());
        let tls: NatsUrl = "tls://n1:4222".parse().unwrap();
        assert!(tls.tls() && tls.credentials().is_none());
        for bad in [
            "",
            "http://x:1",
            "nats://u:p1@a:1,nats://u:p2@b:2",
            "a:4222",
        ] {
            let message = problems(|s| s.nats_url = Some(bad.parse().unwrap()));
            assert!(message.contains("--nats-url"), "{bad}: {message}");
            assert!(!message.contains("p1"), "{message}");
        }
    }

    #[test]
    fn a_bad_database_url_is_refused_without_being_quoted() {
        for raw in [
            "mysql://root:p4ss@db/x",
            "postgres://hub:p4ss@db/x?sslmode=bogus",
        ] {
            let message = problems(|s| s.database_url = Some(raw.parse().unwrap()));
            assert!(message.contains("--database-url"), "{message}");
            assert!(!message.contains("p4ss"), "{message}");
        }
    }
}
