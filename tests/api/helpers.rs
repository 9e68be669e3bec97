//! `spawn_app()` and friends: a real hub on port 0 with a temporary data
//! directory, and logged-in users that talk to it like any client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tempfile::TempDir;
use united_hub::client::crypto::{self, Identity, Sealed};
use united_hub::client::{send_body, HubClient, Incoming, WsClient};
use united_hub::json::MessageJson;
use united_hub::proto::{dm, Envelope, Payload};
use united_hub::state::AppState;
use united_hub::{AppHandle, Application, Settings};

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
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_app_in(dir, configure).await
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
    let app = Application::build(settings).await.expect("the hub starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let state = app.state();
    let migrations_applied = app.migrations_applied();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        handle,
        state,
        dir,
        migrations_applied,
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

    /// A new identity, registered and logged in, with its X25519 key published.
    pub async fn user(&self, name: &str) -> TestUser {
        user_at(&self.address, name).await
    }

    pub async fn stop(self) -> Arc<TempDir> {
        self.handle.shutdown().await;
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
        ws_url: client.ws_url(),
        client,
    }
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
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(1))
            .finish();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(res) = client.get(format!("{}/healthz", self.address)).send().await {
                if res.status().is_success() {
                    return;
                }
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the hub did not become healthy");
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
    pub client: HubClient,
    ws_url: String,
}

impl TestUser {
    pub fn token(&self) -> &str {
        self.client.access_token().unwrap()
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.ws_url, self.token())
            .await
            .expect("ws connect")
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
            text.as_bytes(),
            &to.identity.x25519_public(),
            conversation,
            &self.identity.public_key(),
        )
        .unwrap()
    }

    /// Sends an encrypted message over HTTP.
    pub async fn send_http(&self, to: &TestUser, conversation: &str, text: &str) -> MessageJson {
        let sealed = self.seal(to, conversation, text);
        let body = send_body(None, conversation, &sealed, now_ms());
        self.client.send(&body).await.expect("send").0
    }

    /// Opens a message addressed to this user.
    pub fn open_json(&self, m: &MessageJson) -> String {
        let sealed = Sealed {
            ciphertext: B64.decode(&m.encrypted_payload).unwrap(),
            nonce: B64.decode(&m.nonce).unwrap().try_into().unwrap(),
            ephemeral_pubkey: B64
                .decode(m.ephemeral_pubkey.as_ref().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        };
        self.open_sealed(&sealed, &m.conversation_id, &m.sender_pubkey)
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
        let plain = crypto::open(
            sealed,
            &self.identity.x25519_secret(),
            conversation,
            &sender_key,
        )
        .expect("decrypts");
        String::from_utf8(plain).unwrap()
    }
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
