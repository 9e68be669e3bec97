//! `spawn_app()` and friends: a real hub on port 0 with a temporary data
//! directory, and logged-in users that talk to it like any client.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tempfile::TempDir;
use united_hub::client::crypto::{self, Identity, Sealed};
use united_hub::client::{send_body, HubClient, Incoming, WsClient};
use united_hub::json::MessageJson;
use united_hub::localcluster::{LocalNats, LocalPostgres};
use united_hub::proto::{dm, Envelope, Payload};
use united_hub::state::AppState;
use united_hub::{AppHandle, Application, Settings};

/// Whether this test binary runs the suite against a 3-node cluster (set in
/// each binary's `main.rs`).
use crate::CLUSTER;

/// Nodes of the cluster `spawn_app` starts in cluster mode.
pub const CLUSTER_NODES: usize = 3;

/// Tests that measure time or a process's memory, or that load the machine
/// heavily, hold this while they run, so that they neither measure nor
/// disturb each other (the harness runs tests in parallel on 2 cores).
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other measuring tests to finish; hold the guard to the end.
pub async fn measuring() -> tokio::sync::MutexGuard<'static, ()> {
    MEASURING.lock().await
}

/// Logs print only with `TEST_LOG` set.
fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        united_hub::telemetry::init();
    }
}

pub struct TestApp {
    pub address: String,
    pub handle: AppHandle,
    pub state: Arc<AppState>,
    pub dir: Arc<TempDir>,
    pub migrations_applied: u32,
    /// The HS256 key the hub signs with (the file, or the cluster's).
    pub jwt_secret: Vec<u8>,
    /// Cluster mode: the other nodes, PostgreSQL and NATS.
    pub cluster: Option<ClusterParts>,
    /// The node the next user calls home (cluster mode).
    next_node: Cell<usize>,
}

/// What a cluster-mode `TestApp` runs besides its first node.
pub struct ClusterParts {
    /// Every node, the first included: address, handle and state.
    pub nodes: Vec<(String, AppHandle, Arc<AppState>)>,
    pub pg: LocalPostgres,
    /// Held for its `Drop`: the server lives as long as the app.
    #[allow(dead_code)]
    pub nats: LocalNats,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A hub (in cluster mode: a 3-node cluster on a fresh PostgreSQL and NATS)
/// with `configure` applied to every node's settings.
pub async fn spawn_app_with(configure: impl Fn(&mut Settings)) -> TestApp {
    if CLUSTER {
        return spawn_cluster_with(configure).await;
    }
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_app_in(dir, configure).await
}

async fn spawn_cluster_with(configure: impl Fn(&mut Settings)) -> TestApp {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    let mut apps = Vec::new();
    for _ in 0..CLUSTER_NODES {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        apps.push(
            spawn_app_in(dir, |s| {
                s.database_url = Some(pg.url().parse().expect("a postgres URL"));
                s.nats_url = Some(nats.url().parse().expect("a NATS URL"));
                s.jwt_secret_file = Some(pg.secret_file());
                configure(s);
            })
            .await,
        );
    }
    eventually("every node hears the others", || async {
        apps.iter()
            .all(|a| a.state.cluster.as_ref().map(|c| c.peers()) == Some(CLUSTER_NODES - 1))
    })
    .await;
    let nodes = apps
        .iter()
        .map(|a| (a.address.clone(), a.handle.clone(), a.state.clone()))
        .collect();
    let mut first = apps.swap_remove(0);
    first.jwt_secret =
        united_hub::auth::load_secret(&pg.secret_file()).expect("the cluster's secret");
    first.cluster = Some(ClusterParts { nodes, pg, nats });
    first
}

/// Starts a hub on an existing data directory (for restart tests).
pub async fn spawn_app_in(dir: Arc<TempDir>, configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_tracing();
    let mut settings = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        workers: Some(2),
        ..Settings::default()
    };
    configure(&mut settings);
    let scheme = if settings.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let app = Application::build(settings).await.expect("the hub starts");
    let address = format!("{scheme}://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let state = app.state();
    let migrations_applied = app.migrations_applied();
    actix_web::rt::spawn(app.run_until_stopped());
    let jwt_secret = std::fs::read(dir.path().join("jwt_secret")).unwrap_or_default();
    TestApp {
        address,
        handle,
        state,
        dir,
        migrations_applied,
        jwt_secret,
        cluster: None,
        next_node: Cell::new(0),
    }
}

impl TestApp {
    pub fn client(&self) -> HubClient {
        HubClient::new(&self.address)
    }

    pub fn ws_url(&self) -> String {
        self.client().ws_url()
    }

    /// A raw HTTP client for requests the typed client would not make.
    pub fn http(&self) -> awc::Client {
        awc::Client::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.address).await
    }

    /// Every node's address (one without a cluster).
    pub fn addresses(&self) -> Vec<String> {
        match &self.cluster {
            Some(c) => c.nodes.iter().map(|(a, _, _)| a.clone()).collect(),
            None => vec![self.address.clone()],
        }
    }

    /// A new identity, registered and logged in, with its X25519 key
    /// published. In cluster mode each user calls a different node home,
    /// and each of their sessions opens on the next node.
    pub async fn user(&self, name: &str) -> TestUser {
        let addresses = self.addresses();
        let home = self.next_node.get() % addresses.len();
        self.next_node.set(home + 1);
        let mut user = user_at(&addresses[home], name).await;
        user.ws_urls = (0..addresses.len())
            .map(|i| HubClient::new(&addresses[(home + i) % addresses.len()]).ws_url())
            .collect();
        user
    }

    /// Whether `pubkey` has a live session on any node (and, in a cluster,
    /// whether any node believes so).
    pub fn is_online(&self, pubkey: &str) -> bool {
        let key = united_hub::model::Pubkey::parse(pubkey).unwrap();
        match &self.cluster {
            None => self.state.registry.is_online(&key),
            Some(c) => c.nodes.iter().any(|(_, _, state)| {
                state.registry.is_online(&key)
                    || state
                        .cluster
                        .as_ref()
                        .is_some_and(|n| n.online_elsewhere(&key))
            }),
        }
    }

    /// One column of integers from a query on the hub's database, SQLite or
    /// PostgreSQL. Write parameters as `$1` and compare ids as text
    /// (`CAST(id AS TEXT) = $1`): both engines read that the same way.
    pub async fn sql_i64(&self, sql: &str, param: Option<&str>) -> Vec<i64> {
        match &self.cluster {
            None => {
                let db = self.db();
                let mut stmt = db.prepare(sql).unwrap();
                let params: Vec<&str> = param.into_iter().collect();
                stmt.query_map(rusqlite::params_from_iter(params), |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Some(c) => {
                let (client, connection) =
                    tokio_postgres::connect(&c.pg.url(), tokio_postgres::NoTls)
                        .await
                        .expect("connect to PostgreSQL");
                actix_web::rt::spawn(connection);
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &param {
                    Some(p) => vec![p],
                    None => vec![],
                };
                client
                    .query(sql, &params)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        }
    }

    pub async fn stop(self) -> Arc<TempDir> {
        match &self.cluster {
            Some(c) => {
                for (_, handle, _) in &c.nodes {
                    handle.shutdown().await;
                }
            }
            None => self.handle.shutdown().await,
        }
        self.dir
    }

    /// Every file of the data directory, read whole.
    pub fn data_files(&self) -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// A direct connection to the hub's database, for assertions.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("united.db")).unwrap()
    }
}

/// The Prometheus text of `/metrics` of the hub at `address`.
pub async fn metrics_at(address: &str) -> String {
    let body = awc::Client::default()
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A new identity on the hub at `address`, logged in, key published.
pub async fn user_at(address: &str, name: &str) -> TestUser {
    let identity = Identity::generate();
    let mut client = HubClient::new(address);
    client.login(&identity, Some(name)).await.expect("login");
    client
        .publish_key(&identity.x25519_public())
        .await
        .expect("publish key");
    TestUser {
        pubkey: identity.public_key_hex(),
        identity,
        ws_urls: vec![client.ws_url()],
        next_ws: Cell::new(0),
        client,
    }
}

/// Waits (at most 30 s) until the hub at `address` answers `/healthz` 200.
pub async fn wait_healthy(address: &str) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(1))
        .finish();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(res) = client.get(format!("{address}/healthz")).send().await {
            if res.status().is_success() {
                return;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the hub at {address} did not become healthy");
}

/// The hub as its own process (the binary), for tests that measure its
/// memory or kill it: the test process's own RSS would count every test
/// running beside it.
pub struct ProcessHub {
    pub address: String,
    pub dir: TempDir,
    pub child: std::process::Child,
}

impl ProcessHub {
    /// Starts `united-hub serve` on a free port and a new data directory,
    /// with rate limits off and `extra` flags, and waits until it is healthy.
    pub async fn start(extra: &[&str]) -> ProcessHub {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::spawn(dir.path(), port, extra);
        let hub = ProcessHub {
            address: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        };
        hub.wait_healthy().await;
        hub
    }

    /// Starts the binary on `dir` and `port`.
    pub fn spawn(dir: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_united-hub"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .args(["--auth-rate", "0", "--send-rate", "0"])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the hub starts")
    }

    pub async fn wait_healthy(&self) {
        wait_healthy(&self.address).await;
    }

    /// The hub process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The parts of the hub's RSS (`RssAnon`, `RssFile`, `RssShmem`), for
    /// a failure message: anonymous memory is the heap, the rest is files
    /// the hub maps.
    pub fn rss_parts(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .filter(|l| l.starts_with("Rss"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn ws_url(&self) -> String {
        HubClient::new(&self.address).ws_url()
    }

    pub async fn metrics(&self) -> String {
        metrics_at(&self.address).await
    }

    /// The value of one unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("united.db")).unwrap()
    }
}

impl Drop for ProcessHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TestUser {
    pub identity: Identity,
    pub pubkey: String,
    /// HTTP calls go to the user's home node.
    pub client: HubClient,
    /// Where sessions open, in turn (the home node first).
    ws_urls: Vec<String>,
    next_ws: Cell<usize>,
}

impl TestUser {
    pub fn token(&self) -> &str {
        self.client.access_token().unwrap()
    }

    /// A new session, on the next of the user's nodes.
    pub async fn ws(&self) -> WsClient {
        let i = self.next_ws.get();
        self.next_ws.set(i + 1);
        WsClient::connect(&self.ws_urls[i % self.ws_urls.len()], self.token())
            .await
            .expect("ws connect")
    }

    /// A new session on the next of the user's nodes, opened with a ticket
    /// from the user's home node (no token on the socket at all).
    pub async fn ws_with_ticket(&self) -> WsClient {
        let ticket = self.client.ws_ticket().await.expect("a ticket").ticket;
        let i = self.next_ws.get();
        self.next_ws.set(i + 1);
        let url = format!("{}?ticket={ticket}", self.ws_urls[i % self.ws_urls.len()]);
        WsClient::connect_with(&url, None)
            .await
            .expect("ws connect with a ticket")
    }

    /// The `/ws` URL of the user's next node.
    pub fn next_ws_url(&self) -> String {
        let i = self.next_ws.get();
        self.next_ws.set(i + 1);
        self.ws_urls[i % self.ws_urls.len()].clone()
    }

    /// A session that has answered one request, so it is registered and gets
    /// every later push.
    pub async fn live_ws(&self) -> WsClient {
        let ws = self.ws().await;
        ws.call(Payload::DmConversationListRequest(
            dm::DmConversationListRequest {},
        ))
        .await
        .expect("first request");
        ws
    }

    pub async fn open_conversation(&self, other: &TestUser) -> String {
        self.client
            .create_conversation(&other.pubkey)
            .await
            .expect("create conversation")
            .0
            .id
    }

    /// Seals `text` for `to` in `conversation`.
    pub fn seal(&self, to: &TestUser, conversation: &str, text: &str) -> Sealed {
        crypto::seal(
            &self.identity,
            &to.identity.x25519_public(),
            conversation,
            text.as_bytes(),
        )
        .unwrap()
    }

    /// Sends an encrypted message over HTTP.
    pub async fn send_http(&self, to: &TestUser, conversation: &str, text: &str) -> MessageJson {
        let sealed = self.seal(to, conversation, text);
        let body = send_body(None, conversation, &sealed, now_ms());
        self.client.send(&body).await.expect("send").0
    }

    /// Opens a message to or from this user.
    pub fn open_json(&self, m: &MessageJson) -> String {
        self.open_sealed(&sealed_of(m), &m.conversation_id, &m.sender_pubkey)
    }

    pub fn open_proto(&self, m: &dm::EncryptedDmMessage) -> String {
        let sealed = Sealed {
            ciphertext: m.encrypted_payload.to_vec(),
            nonce: m.nonce[..].try_into().unwrap(),
            ephemeral_pubkey: m.ephemeral_pubkey[..].try_into().unwrap(),
        };
        self.open_sealed(&sealed, &m.conversation_id, &m.sender_pubkey)
    }

    fn open_sealed(&self, sealed: &Sealed, conversation: &str, sender: &str) -> String {
        let mut sender_key = [0u8; 32];
        hex::decode_to_slice(sender, &mut sender_key).unwrap();
        let opened =
            crypto::open(&self.identity, sealed, conversation, &sender_key).expect("decrypts");
        String::from_utf8(opened.plaintext).unwrap()
    }
}

/// The three sealed fields of a message in its JSON form.
pub fn sealed_of(m: &MessageJson) -> Sealed {
    Sealed {
        ciphertext: B64.decode(&m.encrypted_payload).unwrap(),
        nonce: B64.decode(&m.nonce).unwrap().try_into().unwrap(),
        ephemeral_pubkey: B64
            .decode(m.ephemeral_pubkey.as_ref().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    }
}

/// `POST /api/auth/challenge` at `app` over `http` as `client` (through a
/// trusted proxy's `X-Forwarded-For`): the status, `Retry-After` and the body.
pub async fn challenge_as(
    http: &awc::Client,
    app: &TestApp,
    client: &str,
) -> (u16, Option<u32>, serde_json::Value) {
    let mut res = http
        .post(app.url("/api/auth/challenge"))
        .insert_header(("X-Forwarded-For", client))
        .send()
        .await
        .unwrap();
    let retry = res
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (res.status().as_u16(), retry, res.json().await.unwrap())
}

/// A WebSocket send request for a sealed message.
pub fn send_request(id: Option<String>, conversation: &str, sealed: &Sealed) -> Payload {
    Payload::DmSendRequest(dm::DmSendRequest {
        id: id.unwrap_or_default(),
        conversation_id: conversation.to_owned(),
        encrypted_payload: sealed.ciphertext.clone().into(),
        nonce: sealed.nonce.to_vec().into(),
        ephemeral_pubkey: sealed.ephemeral_pubkey.to_vec().into(),
        timestamp: now_ms(),
    })
}

pub fn now_ms() -> u64 {
    united_hub::model::now_ms()
}

/// Waits for the next pushed envelope, skipping nothing.
pub async fn next_envelope(ws: &mut WsClient) -> Envelope {
    match ws.next(Duration::from_secs(10)).await {
        Some(Incoming::Envelope(e)) => *e,
        other => panic!("expected an envelope, got {other:?}"),
    }
}

/// Waits for the next `DmMessageEvent`, skipping other events.
pub async fn next_message(ws: &mut WsClient) -> dm::EncryptedDmMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await {
            Some(Incoming::Envelope(envelope)) => {
                if let Some(Payload::DmMessageEvent(e)) = envelope.payload {
                    return e.message.unwrap();
                }
            }
            other => panic!("expected a message event, got {other:?}"),
        }
    }
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_silent(ws: &mut WsClient, wait: Duration) {
    if let Some(got) = ws.next(wait).await {
        panic!("expected nothing, got {got:?}");
    }
}

/// Polls `check` until it holds or 10 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A socket with a 4 KiB receive buffer that sends `request` and reads
/// nothing unless asked: the hub's side stops being writable after a few
/// KiB, as with a client that hangs on a slow link.
pub fn unread_request(address: &str, request: &[u8]) -> std::net::TcpStream {
    use std::io::Write as _;
    let addr: std::net::SocketAddr = address.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.write_all(request).unwrap();
    stream
}

/// The raw `GET /ws` upgrade of `token`, handshake by hand.
pub fn ws_upgrade_request(token: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads an HTTP response's head (through the blank line) from `stream`.
pub fn read_http_head(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A CA and a certificate it signed for 127.0.0.1, written to `dir`:
/// (ca PEM, cert path, key path).
pub fn certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "united-hub test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_path, key_path) = (dir.join("hub.crt"), dir.join("hub.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}
