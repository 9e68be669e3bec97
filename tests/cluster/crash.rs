//! A node killed with SIGKILL loses nothing: 10,000 sends through three
//! nodes (separate processes) while one of them is killed three times and
//! restarted. Every answered message is in the database with its sequence,
//! sequences have no gaps, every session on a surviving node receives every
//! message of its conversation once and in order within 10 s, and the
//! sessions of the killed node reconnect to another node and catch up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::Child;
use std::rc::Rc;
use std::time::{Duration, Instant};

use united_hub::client::crypto::{Identity, Sealed};
use united_hub::client::{send_body, HubClient, Incoming, WsClient};
use united_hub::localcluster::{free_port, LocalNats, LocalPostgres};
use united_hub::proto::{dm, Payload};

use crate::helpers::{now_ms, wait_healthy, ProcessHub};

const PAIRS: usize = 20;
/// Sends per user: 2 × 20 × 250 = 10,000.
const PER_USER: usize = 250;
const KILLS: usize = 3;
/// The node that is killed; nodes 0 and 1 survive.
const VICTIM: usize = 2;

struct Node {
    url: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Node {
    /// A failing test leaves no node process behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(port: u16, dir: &std::path::Path, pg: &LocalPostgres, nats: &LocalNats) -> Child {
    ProcessHub::spawn(
        dir,
        port,
        &[
            "--database-url",
            &pg.url(),
            "--nats-url",
            &nats.url(),
            "--jwt-secret-file",
            &pg.secret_file().display().to_string(),
        ],
    )
}

/// Answered sends: message id → (conversation, sequence).
type Acked = Rc<RefCell<HashMap<String, (String, u64)>>>;
/// What one session received of its conversation, in arrival order.
type Seen = Rc<RefCell<Vec<u64>>>;

/// Sends `PER_USER` messages, each to the next node in turn; a send that
/// fails (its node is dead) is retried with the same id on the next node.
async fn sender(clients: Vec<HubClient>, conversation: String, acked: Acked) {
    let sealed = Sealed {
        ciphertext: vec![7; 64],
        nonce: [1; 24],
        ephemeral_pubkey: [2; 32],
    };
    let mut node = 0;
    for _ in 0..PER_USER {
        let body = send_body(
            Some(uuid::Uuid::new_v4().to_string()),
            &conversation,
            &sealed,
            now_ms(),
        );
        loop {
            node = (node + 1) % clients.len();
            match clients[node].send(&body).await {
                Ok((m, _)) => {
                    let previous = acked
                        .borrow_mut()
                        .insert(m.id.clone(), (m.conversation_id, m.server_sequence));
                    assert!(previous.is_none(), "an id was answered twice");
                    break;
                }
                Err(e) => {
                    assert!(e.status().is_none_or(|s| s >= 500), "refused: {e}");
                    actix_web::rt::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Appends a pushed or caught-up sequence if it is the next one; a repeat
/// is skipped (a catch-up and a push may overlap), a gap is a failure.
fn take(seen: &Seen, seq: u64, session: &str) {
    let mut seen = seen.borrow_mut();
    let last = seen.last().copied().unwrap_or(0);
    if seq <= last {
        return;
    }
    assert_eq!(seq, last + 1, "{session}: a gap before {seq}");
    seen.push(seq);
}

/// Reads a session's pushes. If its node dies, reconnects to `fallback`,
/// catches up with history `after` the last sequence seen, and goes on.
async fn session(
    mut ws: WsClient,
    token: String,
    fallback: String,
    conversation: String,
    seen: Seen,
    name: String,
    reconnects: Rc<RefCell<usize>>,
) {
    loop {
        match ws.next(Duration::from_secs(3600)).await {
            Some(Incoming::Envelope(e)) => {
                if let Some(Payload::DmMessageEvent(e)) = e.payload {
                    take(&seen, e.message.unwrap().server_sequence, &name);
                }
            }
            Some(Incoming::Closed(_)) | None => {
                *reconnects.borrow_mut() += 1;
                ws = loop {
                    match WsClient::connect(&fallback, &token).await {
                        Ok(ws) => break ws,
                        Err(_) => actix_web::rt::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                loop {
                    let after = seen.borrow().last().copied().unwrap_or(0);
                    let page = ws
                        .call(Payload::DmHistoryRequest(dm::DmHistoryRequest {
                            conversation_id: conversation.clone(),
                            before_sequence: 0,
                            after_sequence: after,
                            limit: 100,
                        }))
                        .await
                        .expect("catch-up");
                    let Payload::DmHistoryResponse(page) = page else {
                        panic!("expected history");
                    };
                    for m in &page.messages {
                        take(&seen, m.server_sequence, &name);
                    }
                    if !page.has_more {
                        break;
                    }
                }
            }
        }
    }
}

#[actix_web::test]
async fn sigkill_of_a_node_loses_no_answered_message_and_its_sessions_catch_up() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_node(port, dir.path(), &pg, &nats);
        nodes.push(Node {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            child,
        });
    }
    for node in &nodes {
        wait_healthy(&node.url).await;
    }

    // Pairs, each with a conversation; every user has a session on a
    // surviving node and one on the victim.
    let acked: Acked = Rc::default();
    let reconnects: Rc<RefCell<usize>> = Rc::default();
    let mut stable_views: Vec<(String, String, Seen)> = Vec::new();
    let mut victim_views: Vec<(String, String, Seen)> = Vec::new();
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for pair in 0..PAIRS {
        let mut users = Vec::new();
        for side in 0..2 {
            let identity = Identity::generate();
            let mut http = HubClient::new(&nodes[(pair + side) % 3].url);
            http.login(&identity, Some(&format!("u{pair}-{side}")))
                .await
                .unwrap();
            users.push((identity, http));
        }
        let (conversation, _) = users[0]
            .1
            .create_conversation(&users[1].0.public_key_hex())
            .await
            .unwrap();
        for (side, (_, http)) in users.iter().enumerate() {
            let token = http.access_token().unwrap().to_owned();
            let stable = &nodes[(pair + side) % 2];
            for (node, views) in [
                (stable, &mut stable_views),
                (&nodes[VICTIM], &mut victim_views),
            ] {
                let ws = WsClient::connect(&HubClient::new(&node.url).ws_url(), &token)
                    .await
                    .unwrap();
                ws.call(Payload::DmConversationListRequest(Default::default()))
                    .await
                    .unwrap();
                let seen: Seen = Rc::default();
                let name = format!("pair {pair} side {side} on {}", node.url);
                views.push((name.clone(), conversation.id.clone(), seen.clone()));
                readers.push(actix_web::rt::spawn(session(
                    ws,
                    token.clone(),
                    HubClient::new(&nodes[side].url).ws_url(),
                    conversation.id.clone(),
                    seen,
                    name,
                    reconnects.clone(),
                )));
            }
            let clients = nodes
                .iter()
                .map(|n| {
                    let mut c = HubClient::new(&n.url);
                    c.set_access_token(&token);
                    c
                })
                .collect();
            senders.push((clients, conversation.id.clone()));
        }
    }
    // Every session has answered a request before the first send.
    let senders: Vec<_> = senders
        .into_iter()
        .map(|(clients, conversation)| {
            actix_web::rt::spawn(sender(clients, conversation, acked.clone()))
        })
        .collect();

    let mut seed = now_ms() | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for kill in 0..KILLS {
        let wait = Duration::from_millis(800 + next() % 1200);
        actix_web::rt::time::sleep(wait).await;
        let victim = &mut nodes[VICTIM];
        victim.child.kill().unwrap(); // SIGKILL
        victim.child.wait().unwrap();
        eprintln!(
            "kill {}: after {wait:?}, {} answered",
            kill + 1,
            acked.borrow().len()
        );
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        victim.child = spawn_node(victim.port, victim.dir.path(), &pg, &nats);
        wait_healthy(&victim.url).await;
    }
    for s in senders {
        s.await.unwrap();
    }
    let answered = acked.borrow().clone();
    assert_eq!(answered.len(), 2 * PAIRS * PER_USER);

    // The database holds every answered message, gap-free.
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let rows = db
        .query(
            "SELECT id::text, conversation_id::text, server_sequence FROM dm_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), answered.len(), "one row per answered id");
    let mut per_conversation: HashMap<String, Vec<u64>> = HashMap::new();
    for row in &rows {
        let (id, conversation, seq): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            answered.get(&id),
            Some(&(conversation.clone(), seq as u64)),
            "stored as answered"
        );
        per_conversation
            .entry(conversation)
            .or_default()
            .push(seq as u64);
    }
    for (conversation, seqs) in per_conversation.iter_mut() {
        seqs.sort_unstable();
        let n = seqs.len() as u64;
        assert_eq!(
            *seqs,
            (1..=n).collect::<Vec<_>>(),
            "{conversation} has a gap"
        );
    }

    // Every session, survivor or reconnected, has every message once, in
    // order, within 10 s of the last answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, conversation, seen) in stable_views.iter().chain(&victim_views) {
        let want = per_conversation[conversation].len();
        while seen.borrow().len() < want && Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            *seen.borrow(),
            (1..=want as u64).collect::<Vec<_>>(),
            "{name} missed messages"
        );
    }
    assert!(
        *reconnects.borrow() >= 2 * PAIRS,
        "the victim's sessions had to reconnect"
    );
    for r in readers {
        r.abort();
    }
}
