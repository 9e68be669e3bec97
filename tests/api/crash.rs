//! Crash safety: 10,000 messages from 50 clients while the hub is killed with
//! SIGKILL three times at random moments and restarted on the same data.
//! Every message that was answered is there after each restart, sequences have
//! no gaps or repeats, retries with the same id made one row, and SQLite's
//! integrity check passes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::rc::Rc;
use std::time::Duration;

use united_hub::client::crypto::Identity;
use united_hub::client::{send_body, HubClient};

use crate::helpers::{now_ms, wait_healthy, ProcessHub};

const CLIENTS: usize = 50;
const PER_CLIENT: usize = 200;
const KILLS: usize = 3;

fn start_hub(dir: &Path, port: u16) -> Child {
    ProcessHub::spawn(dir, port, &[])
}

/// A hub on a free port and a new data directory, up and healthy.
async fn fresh_hub() -> (tempfile::TempDir, u16, String, Child) {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let hub = start_hub(dir.path(), port);
    wait_healthy(&url).await;
    (dir, port, url, hub)
}

/// Answered sends: message id → (conversation, sequence).
type Acked = Rc<RefCell<HashMap<String, (String, u64)>>>;

/// What the database holds must cover `acked`, with gap-free sequences.
fn verify(dir: &Path, acked: &HashMap<String, (String, u64)>) {
    let db = rusqlite::Connection::open(dir.join("united.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut stored: HashMap<String, (String, u64)> = HashMap::new();
    let mut per_conversation: HashMap<String, Vec<u64>> = HashMap::new();
    let mut stmt = db
        .prepare("SELECT id, conversation_id, server_sequence FROM dm_messages")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, conversation, seq) = row.unwrap();
        per_conversation
            .entry(conversation.clone())
            .or_default()
            .push(seq);
        assert!(
            stored.insert(id, (conversation, seq)).is_none(),
            "one row per id"
        );
    }
    for (id, expected) in acked {
        assert_eq!(
            stored.get(id),
            Some(expected),
            "answered message {id} is missing or changed"
        );
    }
    for (conversation, mut seqs) in per_conversation {
        seqs.sort_unstable();
        let n = seqs.len() as u64;
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "conversation {conversation} has a gap or repeat"
        );
    }
}

/// A logged-in client with its conversation, before any kill.
async fn setup_client(url: &str, recipient: &str) -> (HubClient, String) {
    let mut http = HubClient::new(url);
    http.login(&Identity::generate(), Some("crash"))
        .await
        .unwrap();
    let (conversation, _) = http.create_conversation(recipient).await.unwrap();
    (http, conversation.id)
}

/// One client: 200 sends, each retried with the same id until answered.
async fn client(http: HubClient, conversation: String, acked: Acked) {
    let sealed = united_hub::client::crypto::Sealed {
        ciphertext: vec![7; 64],
        nonce: [1; 24],
        ephemeral_pubkey: [2; 32],
    };
    for _ in 0..PER_CLIENT {
        let body = send_body(
            Some(uuid::Uuid::new_v4().to_string()),
            &conversation,
            &sealed,
            now_ms(),
        );
        loop {
            match http.send(&body).await {
                Ok((m, _)) => {
                    let previous = acked
                        .borrow_mut()
                        .insert(m.id.clone(), (m.conversation_id, m.server_sequence));
                    assert!(previous.is_none(), "an id was answered twice");
                    break;
                }
                // The hub is down or restarting: retry the very same body.
                Err(e) => {
                    assert!(e.status().is_none_or(|s| s >= 500), "refused: {e}");
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[actix_web::test]
async fn answered_messages_survive_sigkill() {
    let (dir, port, url, mut hub) = fresh_hub().await;

    // Recipients exist first; they never connect, so everything is queued for them too.
    let mut recipients = Vec::new();
    for i in 0..CLIENTS {
        let id = Identity::generate();
        HubClient::new(&url)
            .login(&id, Some(&format!("r{i}")))
            .await
            .unwrap();
        recipients.push(id.public_key_hex());
    }
    let mut ready = Vec::new();
    for r in &recipients {
        ready.push(setup_client(&url, r).await);
    }
    let acked: Acked = Rc::default();
    let clients: Vec<_> = ready
        .into_iter()
        .map(|(http, conversation)| actix_web::rt::spawn(client(http, conversation, acked.clone())))
        .collect();

    // A small deterministic-per-run PRNG for the kill times.
    let mut seed = now_ms() | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for kill in 0..KILLS {
        let wait = Duration::from_millis(400 + next() % 900);
        actix_web::rt::time::sleep(wait).await;
        let snapshot = acked.borrow().clone();
        hub.kill().unwrap(); // SIGKILL
        hub.wait().unwrap();
        verify(dir.path(), &snapshot);
        eprintln!(
            "kill {}: after {wait:?}, {} answered messages all present",
            kill + 1,
            snapshot.len()
        );
        hub = start_hub(dir.path(), port);
        wait_healthy(&url).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let all = acked.borrow().clone();
    assert_eq!(all.len(), CLIENTS * PER_CLIENT);
    verify(dir.path(), &all);
    let rows: i64 = rusqlite::Connection::open(dir.path().join("united.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM dm_messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows as usize,
        CLIENTS * PER_CLIENT,
        "retries made no second row"
    );
    hub.kill().unwrap();
    hub.wait().unwrap();
}

#[actix_web::test]
async fn sigterm_closes_sessions_with_1001_and_exits_cleanly() {
    let (_dir, _port, url, mut hub) = fresh_hub().await;
    let id = Identity::generate();
    let mut http = HubClient::new(&url);
    http.login(&id, Some("Term")).await.unwrap();
    let mut ws =
        united_hub::client::WsClient::connect(&http.ws_url(), http.access_token().unwrap())
            .await
            .unwrap();
    ws.call(united_hub::proto::Payload::DmConversationListRequest(
        Default::default(),
    ))
    .await
    .unwrap();

    let pid = hub.id().to_string();
    let sent = actix_web::rt::task::spawn_blocking(move || {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap()
    })
    .await
    .unwrap();
    assert!(sent.success());
    match ws.next(Duration::from_secs(10)).await {
        Some(united_hub::client::Incoming::Closed(code)) => assert_eq!(code, Some(1001)),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let status = actix_web::rt::task::spawn_blocking(move || hub.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
