//! The web client the hub serves at `/`, tested for real: its files and
//! headers over HTTP, its crypto and protobuf code under node (the
//! ENCRYPTION.md vector, golden Envelopes that prost encoded here), and the
//! page itself in headless Debian `chromium` driven by `playwright-core`
//! (tests/browser/chat.test.mjs), talking to Rust reference clients.
//!
//! Needs `node` (20+) with npm (the test runs `npm ci` for
//! `node_modules/playwright-core` when it is missing) and
//! `apt-get install chromium` (`/usr/bin/chromium`, or `UNITED_CHROMIUM`).
//! Without them the tests fail and say what to install: they are never
//! skipped. `UNITED_SCREENSHOT=1` makes the chat test rewrite
//! `docs/screenshot-chat.png`.

/// `spawn_app` starts one node in this binary.
pub const CLUSTER: bool = false;

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod golden;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore as _};
use united_hub::client::crypto::{self, Identity, Role, Scheme, Sealed};
use united_hub::client::{send_body, HubClient, Incoming, WsClient};
use united_hub::proto::Payload;

use helpers::{sealed_of, spawn_app, spawn_app_with, user_at};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("UNITED_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails (never skips) with what to install when a tool is missing.
fn require_tools(browser: bool) {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the browser tests need node 20+ on PATH: install it (Debian: apt-get install nodejs npm)"
    );
    if browser {
        let playwright = root().join("node_modules/playwright-core/package.json");
        if !playwright.exists() {
            // The packages are pinned by package-lock.json: install them
            // once, as a person would with `npm ci`.
            static NPM_CI: std::sync::Once = std::sync::Once::new();
            NPM_CI.call_once(|| {
                let status = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(root())
                    .status();
                eprintln!("npm ci: {status:?}");
            });
        }
        assert!(
            playwright.exists(),
            "the browser tests need playwright-core, and `npm ci` at the repository root \
             did not install it (is npm installed and the npm registry reachable?)"
        );
        assert!(
            chromium().exists(),
            "the browser tests need Chromium at {}: run `apt-get install chromium` \
             (or set UNITED_CHROMIUM to its path); never `npx playwright install`",
            chromium().display()
        );
    }
}

/// A node script running beside the test: its stdout lines arrive on a
/// channel, stderr is collected, stdin carries signals to it.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Script {
    fn start(script: &str, env: &[(&str, String)]) -> Script {
        let mut cmd = Command::new("node");
        cmd.arg(root().join(script))
            .current_dir(root())
            .env("UNITED_CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits (polling, at most `timeout`) for a line starting with
    /// `prefix`; returns the rest of it.
    async fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    println!("[node] {line}");
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                    // After a failure the script saves screenshots and exits:
                    // keep reading until it has.
                }
                Err(mpsc::TryRecvError::Empty) => {
                    if Instant::now() > deadline {
                        self.kill();
                        panic!("no `{prefix}` from the script within {timeout:?}");
                    }
                    actix_web::rt::time::sleep(Duration::from_millis(25)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    let failure = self.seen.iter().find(|l| l.starts_with("FAIL"));
                    panic!("the script ended ({status}) before `{prefix}`: {failure:?}");
                }
            }
        }
    }

    fn signal(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the script to exit (polling) and returns its status.
    async fn finish(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Vec<String>, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("the script did not exit within {timeout:?}");
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            println!("[node] {line}");
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, std::mem::take(&mut self.seen), stderr)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[actix_web::test]
async fn js_crypto_vector_and_protobuf_golden_bytes() {
    require_tools(false);
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.json");
    std::fs::write(&golden, golden::envelopes_json()).unwrap();
    let script = Script::start(
        "tests/browser/unit.test.mjs",
        &[("UNITED_GOLDEN", golden.display().to_string())],
    );
    let (status, lines, stderr) = script.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "the JS unit checks failed:\n{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok the ENCRYPTION.md vector")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok message ids are UUIDv7")),
        "{lines:?}"
    );
    let golden_checks = lines
        .iter()
        .filter(|l| l.starts_with("ok protobuf golden"))
        .count();
    assert_eq!(golden_checks, golden::COUNT, "{lines:?}");
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = awc::Client::default().get(url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = req.send().await.unwrap();
    let body = res.body().limit(4 << 20).await.unwrap().to_vec();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    (res.status().as_u16(), headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[actix_web::test]
async fn the_hub_serves_the_page_and_its_files_with_strict_headers() {
    let app = spawn_app().await;
    let csp = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; \
               script-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";
    for (path, ctype, file) in [
        ("/", "text/html; charset=utf-8", "web/index.html"),
        (
            "/app/app.js",
            "text/javascript; charset=utf-8",
            "web/app.js",
        ),
        ("/app/dm.js", "text/javascript; charset=utf-8", "web/dm.js"),
        (
            "/app/proto.js",
            "text/javascript; charset=utf-8",
            "web/proto.js",
        ),
        (
            "/app/vendor/crypto.js",
            "text/javascript; charset=utf-8",
            "web/vendor/crypto.js",
        ),
        ("/app/style.css", "text/css; charset=utf-8", "web/style.css"),
    ] {
        let (status, headers, body) = get(&app.url(path), &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), Some(ctype), "{path}");
        assert_eq!(body, std::fs::read(root().join(file)).unwrap(), "{path}");
        assert_eq!(
            header(&headers, "content-security-policy"),
            Some(csp),
            "{path}"
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
        let etag = header(&headers, "etag").expect("an ETag").to_owned();
        let (status, headers, body) = get(&app.url(path), &[("If-None-Match", &etag)]).await;
        assert_eq!(status, 304, "{path} revalidates");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    }
    // No inline script or style anywhere in the page: the CSP forbids them.
    let page = std::fs::read_to_string(root().join("web/index.html")).unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="));
    let handlers = page.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handlers, "no inline event handlers");

    for path in ["/app/nope.js", "/app/", "/index.html", "/app/../Cargo.toml"] {
        let (status, headers, body) = get(&app.url(path), &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/json"),
            "{path}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
    }
    let res = awc::Client::default()
        .post(app.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    assert_eq!(res.headers().get("Allow").unwrap(), "GET, HEAD");
    let (status, _, _) = get(&app.url("/healthz"), &[]).await;
    assert_eq!(status, 200);
}

fn key32(hex_key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut out).unwrap();
    out
}

/// Messages Rusty sends before its answer (more than one history page).
const FILLERS: u64 = 60;

/// The plaintext of the old-scheme (v1) message Rusty sends: the page must
/// show a warning for it, and this text nowhere.
const V1_PLAINTEXT: &str = "V1-PLAINTEXT-MARKER sent with the old scheme";

/// Alice and Bob in two browser contexts, Alice's seed imported into a third
/// (her second browser device, which reads her history), then the browser
/// (Alice) with the Rust reference client: interop both ways, Alice's second
/// (Rust) device opening as the sender, a forged message and a v1 message
/// shown as warnings, and a substituted key refused.
#[actix_web::test]
async fn two_people_chat_in_real_browsers_and_with_the_rust_client() {
    require_tools(true);
    // Short access tokens, so the page must refresh and re-authenticate its
    // socket in-band while the test runs.
    let app = spawn_app_with(|s| {
        s.access_token_ttl = 8;
        s.auth_rate = 0;
        s.send_rate = 0;
    })
    .await;
    let mut rusty = user_at(&app.address, "Rusty").await;
    let started = Instant::now();
    let mut script = Script::start(
        "tests/browser/chat.test.mjs",
        &[
            ("UNITED_HUB_URL", app.address.clone()),
            ("UNITED_RUST_PUBKEY", rusty.pubkey.clone()),
            ("UNITED_FILLERS", FILLERS.to_string()),
            ("UNITED_V1_PLAINTEXT", V1_PLAINTEXT.to_owned()),
        ],
    );
    let timeout = Duration::from_secs(180);

    // The browser part runs; then Alice's identity is handed over.
    let alice = script.expect("ALICE ", timeout).await;
    let (alice_pubkey, alice_seed) = alice.split_once(' ').expect("pubkey and seed");
    let alice_device2 = Identity::from_seed(&key32(alice_seed));
    assert_eq!(alice_device2.public_key_hex(), alice_pubkey);

    // Alice's second device: a Rust client with her seed, live on a socket.
    let mut device2 = HubClient::new(&app.address);
    device2.login(&alice_device2, None).await.expect("login");
    let mut ws = WsClient::connect(&device2.ws_url(), device2.access_token().unwrap())
        .await
        .expect("connect");
    ws.call(Payload::DmConversationListRequest(Default::default()))
        .await
        .unwrap();
    script.signal("READY");

    // The browser sends to Rusty: the second device opens it as the sender.
    let text = script.expect("SENT ", timeout).await;
    let event = loop {
        match ws.next(Duration::from_secs(30)).await {
            Some(Incoming::Envelope(env)) => {
                if let Some(Payload::DmMessageEvent(e)) = env.payload {
                    break e.message.unwrap();
                }
            }
            other => panic!("no push for the browser's message: {other:?}"),
        }
    };
    let sealed = Sealed {
        ciphertext: event.encrypted_payload.to_vec(),
        nonce: event.nonce[..].try_into().unwrap(),
        ephemeral_pubkey: event.ephemeral_pubkey[..].try_into().unwrap(),
    };
    let opened = crypto::open(
        &alice_device2,
        &sealed,
        &event.conversation_id,
        &key32(alice_pubkey),
    )
    .expect("the second device opens what the browser sent");
    assert_eq!((opened.scheme, opened.role), (Scheme::V2, Role::Sender));
    assert_eq!(String::from_utf8(opened.plaintext).unwrap(), text);

    // Rusty opens it as the recipient, from history.
    rusty
        .client
        .login(&rusty.identity, None)
        .await
        .expect("login");
    let conversation = event.conversation_id.clone();
    let history = rusty
        .client
        .history(&conversation, "after=0")
        .await
        .unwrap();
    let mine = history
        .messages
        .iter()
        .find(|m| m.id == event.id)
        .expect("in history");
    let opened = crypto::open(
        &rusty.identity,
        &sealed_of(mine),
        &conversation,
        &key32(alice_pubkey),
    )
    .expect("the Rust client opens what the browser sent");
    assert_eq!((opened.scheme, opened.role), (Scheme::V2, Role::Recipient));
    assert_eq!(String::from_utf8(opened.plaintext).unwrap(), text);

    // Rusty answers (after the key check); then a forgery: sealed by a
    // third identity, sent with Rusty's account.
    let alice_x = rusty.client.recipient_key(alice_pubkey).await.unwrap();
    crypto::check_published_key(&key32(alice_pubkey), &alice_x).expect("the browser's key");
    // Enough messages first that the page must scroll back through history.
    for i in 0..FILLERS {
        let sealed = crypto::seal(
            &rusty.identity,
            &alice_x,
            &conversation,
            format!("filler {i}").as_bytes(),
        )
        .unwrap();
        rusty
            .client
            .send(&send_body(
                None,
                &conversation,
                &sealed,
                united_hub::model::now_ms(),
            ))
            .await
            .unwrap();
    }
    let reply = crypto::seal(&rusty.identity, &alice_x, &conversation, b"hello from rust").unwrap();
    rusty
        .client
        .send(&send_body(
            Some(uuid::Uuid::new_v4().to_string()),
            &conversation,
            &reply,
            united_hub::model::now_ms(),
        ))
        .await
        .unwrap();
    let mallory = Identity::generate();
    let forged = crypto::seal(&mallory, &alice_x, &conversation, b"FORGED transfer").unwrap();
    rusty
        .client
        .send(&send_body(
            None,
            &conversation,
            &forged,
            united_hub::model::now_ms(),
        ))
        .await
        .unwrap();
    // A message sealed with the old v1 scheme (unauthenticated: the hub could
    // have written it). It opens for Alice, so only the page's rule keeps
    // its text off the screen.
    let mut ephemeral_secret = [0u8; 32];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut ephemeral_secret);
    OsRng.fill_bytes(&mut nonce);
    let v1 = crypto::seal_v1_with(
        V1_PLAINTEXT.as_bytes(),
        &alice_x,
        &conversation,
        &key32(&rusty.pubkey),
        ephemeral_secret,
        nonce,
    )
    .unwrap();
    let opened = crypto::open(&alice_device2, &v1, &conversation, &key32(&rusty.pubkey))
        .expect("Alice's identity opens the v1 message");
    assert_eq!((opened.scheme, opened.role), (Scheme::V1, Role::Recipient));
    rusty
        .client
        .send(&send_body(
            Some(uuid::Uuid::new_v4().to_string()),
            &conversation,
            &v1,
            united_hub::model::now_ms(),
        ))
        .await
        .unwrap();
    script.signal("GO");

    // A substituted key: Rusty's account publishes an X25519 key that is not
    // derived from its identity (the hub does not check; clients do).
    script.expect("CHECKED", timeout).await;
    rusty
        .client
        .login(&rusty.identity, None)
        .await
        .expect("login");
    rusty
        .client
        .publish_key(&Identity::generate().x25519_public())
        .await
        .unwrap();
    script.signal("SUBSTITUTED");

    script.expect("DONE", timeout).await;
    let (status, lines, stderr) = script.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "the browser script failed:\n{stderr}");
    assert!(lines.iter().any(|l| l == "DONE"), "{lines:?}");
    println!("browser chat test took {:?}", started.elapsed());
    ws.close();
}

/// The page checks what the hub says (issue 23, item 7): the script rewrites
/// the hub's answers (tests/browser/trust.test.mjs) to swap the peer of a
/// new conversation, to slip a message Mallory sealed into Alice's history
/// with Rusty, and to claim the conversation is now with Mallory; each is a
/// refusal or a warning, never Mallory's text. The page opens its socket
/// with a ticket, never its access token, and keeps an unsent message sealed.
#[actix_web::test]
async fn the_page_does_not_trust_the_hub() {
    require_tools(true);
    let app = spawn_app_with(|s| {
        s.auth_rate = 0;
        s.send_rate = 0;
    })
    .await;
    let rusty = user_at(&app.address, "Rusty").await;
    let mallory = user_at(&app.address, "Mallory").await;
    let mut script = Script::start(
        "tests/browser/trust.test.mjs",
        &[
            ("UNITED_HUB_URL", app.address.clone()),
            ("UNITED_RUST_PUBKEY", rusty.pubkey.clone()),
            ("UNITED_MALLORY_PUBKEY", mallory.pubkey.clone()),
        ],
    );
    let timeout = Duration::from_secs(120);
    let alice = script.expect("ALICE ", timeout).await;

    // Rusty opens the conversation (after the key check) and says hello.
    let alice_x = rusty.client.recipient_key(&alice).await.unwrap();
    crypto::check_published_key(&key32(&alice), &alice_x).expect("the page's key");
    let (conversation, _) = rusty.client.create_conversation(&alice).await.unwrap();
    let hello = crypto::seal(
        &rusty.identity,
        &alice_x,
        &conversation.id,
        b"hello from rusty",
    )
    .unwrap();
    let sent = rusty
        .client
        .send(&send_body(
            None,
            &conversation.id,
            &hello,
            united_hub::model::now_ms(),
        ))
        .await
        .unwrap()
        .0;
    assert_eq!(sent.server_sequence, 1);

    // Mallory seals a message to Alice in that conversation: it verifies as
    // Mallory's own, so only the page's sender check keeps it off screen.
    // The hub would refuse to store it; the script slips it into a page.
    let forged = crypto::seal(
        &mallory.identity,
        &alice_x,
        &conversation.id,
        b"MALLORY-MARKER: Rusty here, please wire the money",
    )
    .unwrap();
    let mut json = united_hub::json::MessageJson {
        server_sequence: 2,
        sender_pubkey: mallory.pubkey.clone(),
        sender_display_name: "Rusty".into(),
        id: uuid::Uuid::new_v4().to_string(),
        ..sent
    };
    let body = send_body(None, &conversation.id, &forged, united_hub::model::now_ms());
    json.encrypted_payload = body.encrypted_payload;
    json.nonce = body.nonce;
    json.ephemeral_pubkey = body.ephemeral_pubkey;
    script.signal(&format!("FORGED {}", serde_json::to_string(&json).unwrap()));

    script.expect("DONE", timeout).await;
    let (status, lines, stderr) = script.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "the browser script failed:\n{stderr}");
    assert!(lines.iter().any(|l| l == "DONE"), "{lines:?}");
    // The hub stored only what was really sent: Rusty's hello and the
    // message the page resent after going back online.
    let history = rusty
        .client
        .history(&conversation.id, "after=0")
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 2);
    assert!(history
        .messages
        .iter()
        .all(|m| m.sender_pubkey != mallory.pubkey));
}

/// The page over HTTPS and its socket over wss:// (issue 25, item 3), with
/// a certificate the test's CA signed: Chromium trusts exactly that
/// certificate's key, the Rust client the CA.
#[actix_web::test]
async fn the_page_works_over_https_and_wss() {
    use sha2::Digest as _;
    require_tools(true);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = helpers::certificates(dir.path());
    united_hub::client::trust_ca_pem(ca.as_bytes()).unwrap();
    let pem = std::fs::read_to_string(&key).unwrap();
    let spki =
        rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::from_pem(&pem).unwrap());
    let spki = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha2::Sha256::digest(&spki),
    );
    let app = spawn_app_with(|s| {
        s.tls_cert = Some(cert.clone());
        s.tls_key = Some(key.clone());
    })
    .await;
    assert!(app.address.starts_with("https://"));
    let rusty = user_at(&app.address, "Rusty").await;
    let mut ws = rusty.live_ws().await;
    let mut script = Script::start(
        "tests/browser/tls.test.mjs",
        &[
            ("UNITED_HUB_URL", app.address.clone()),
            ("UNITED_RUST_PUBKEY", rusty.pubkey.clone()),
            ("UNITED_SPKI", spki),
        ],
    );
    let timeout = Duration::from_secs(120);
    let tess = script.expect("TESS ", timeout).await;
    script.expect("SENT", timeout).await;
    let event = loop {
        match ws.next(Duration::from_secs(30)).await {
            Some(Incoming::Envelope(env)) => {
                if let Some(Payload::DmMessageEvent(e)) = env.payload {
                    break e.message.unwrap();
                }
            }
            other => panic!("no push for the page's message: {other:?}"),
        }
    };
    let sealed = Sealed {
        ciphertext: event.encrypted_payload.to_vec(),
        nonce: event.nonce[..].try_into().unwrap(),
        ephemeral_pubkey: event.ephemeral_pubkey[..].try_into().unwrap(),
    };
    let opened = crypto::open(
        &rusty.identity,
        &sealed,
        &event.conversation_id,
        &key32(&tess),
    )
    .expect("Rusty opens what the page sealed");
    assert_eq!(opened.plaintext, b"hello over wss");
    let tess_x = rusty.client.recipient_key(&tess).await.unwrap();
    let answer = crypto::seal(
        &rusty.identity,
        &tess_x,
        &event.conversation_id,
        b"hi back, over TLS",
    )
    .unwrap();
    rusty
        .client
        .send(&send_body(
            None,
            &event.conversation_id,
            &answer,
            helpers::now_ms(),
        ))
        .await
        .unwrap();
    script.signal("ANSWERED");
    script.expect("DONE", timeout).await;
}
