//! Issue 25, item 4: a rolling restart. Three nodes take traffic while
//! each is stopped (SIGTERM's path: `AppHandle::shutdown`) and a new node
//! started in its place, one after the other. Every session on a stopping
//! node is closed with 1001 (contract §5) and its device reconnects to
//! another node and catches up (`client::catch_up`); senders whose node
//! went away resend with the same id elsewhere. In the end every answered
//! message is stored, no conversation has a gap, and every device holds
//! every message of its conversation exactly once, nothing else.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use united_hub::client::{catch_up, connect_live, send_body, HubClient, Incoming};
use united_hub::proto::Payload;

use crate::helpers::*;
use crate::support::*;

/// What one device saw: message id → (conversation, sequence), each time
/// it saw it; and the close codes of its sessions.
#[derive(Default)]
struct Seen {
    messages: Vec<(String, String, u64)>,
    closes: Vec<Option<u16>>,
}

/// A device of a user: a session on one node after another, caught up
/// after each (re)connect, until `stop`.
async fn device(
    token: String,
    nodes: Rc<RefCell<Vec<String>>>,
    first: usize,
    stop: Rc<Cell<bool>>,
    seen: Rc<RefCell<Seen>>,
) {
    let mut last_seen = HashMap::new();
    let mut next = first;
    while !stop.get() {
        let address = {
            let nodes = nodes.borrow();
            nodes[next % nodes.len()].clone()
        };
        next += 1;
        let mut client = HubClient::new(&address);
        client.set_access_token(token.clone());
        let Ok(mut ws) = connect_live(&mut client).await else {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(missed) = catch_up(&client, &mut last_seen).await else {
            continue;
        };
        for m in missed {
            (seen.borrow_mut().messages).push((m.id, m.conversation_id, m.server_sequence));
        }
        loop {
            match ws.next(Duration::from_millis(200)).await {
                Some(Incoming::Envelope(env)) => {
                    if let Some(Payload::DmMessageEvent(e)) = env.payload {
                        let m = e.message.unwrap();
                        let last = last_seen.entry(m.conversation_id.clone()).or_insert(0);
                        *last = (*last).max(m.server_sequence);
                        (seen.borrow_mut().messages).push((
                            m.id,
                            m.conversation_id,
                            m.server_sequence,
                        ));
                    }
                }
                Some(Incoming::Closed(code)) => {
                    seen.borrow_mut().closes.push(code);
                    break;
                }
                None if stop.get() => return,
                None => {}
            }
        }
    }
}

/// Sends until `enough` is set (and at least `min` messages), each with a
/// client id, resent with that id to the next node until answered;
/// returns (id, sequence) of every answer.
async fn sender(
    user: &TestUser,
    to: &TestUser,
    conversation: String,
    nodes: Rc<RefCell<Vec<String>>>,
    min: usize,
    enough: Rc<Cell<bool>>,
) -> Vec<(String, u64)> {
    let mut answered = Vec::new();
    let mut next = 0;
    while answered.len() < min || !enough.get() {
        let id = uuid::Uuid::now_v7().to_string();
        let text = format!("m{}", answered.len());
        let sealed = user.seal(to, &conversation, &text);
        let body = send_body(Some(id.clone()), &conversation, &sealed, now_ms());
        loop {
            let address = {
                let nodes = nodes.borrow();
                nodes[next % nodes.len()].clone()
            };
            let mut client = HubClient::new(&address);
            client.set_access_token(user.token());
            match client.send(&body).await {
                Ok((m, _)) => {
                    assert_eq!(m.id, id);
                    answered.push((id, m.server_sequence));
                    break;
                }
                Err(_) => {
                    next += 1;
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    answered
}

#[actix_web::test]
async fn every_node_restarted_in_turn_loses_no_answered_message() {
    let mut c = cluster(3).await;
    let nodes = Rc::new(RefCell::new(
        c.nodes
            .iter()
            .map(|n| n.address.clone())
            .collect::<Vec<_>>(),
    ));
    // Three pairs; each user's device starts on a different node.
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(c.user(i % 3, &format!("User {i}")).await);
    }
    let mut conversations = Vec::new();
    for pair in users.chunks(2) {
        conversations.push(pair[0].open_conversation(&pair[1]).await);
    }
    let stop = Rc::new(Cell::new(false));
    let mut seen = Vec::new();
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let s = Rc::new(RefCell::new(Seen::default()));
        seen.push(s.clone());
        devices.push(actix_web::rt::spawn(device(
            user.token().to_owned(),
            nodes.clone(),
            i % 3,
            stop.clone(),
            s,
        )));
    }
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;

    let enough = Rc::new(Cell::new(false));
    let sends =
        futures_util::future::join_all(users.chunks(2).zip(&conversations).map(|(pair, conv)| {
            sender(
                &pair[0],
                &pair[1],
                conv.clone(),
                nodes.clone(),
                30,
                enough.clone(),
            )
        }));
    let restarts = async {
        for k in 0..3 {
            actix_web::rt::time::sleep(Duration::from_millis(400)).await;
            let old = std::mem::replace(
                &mut c.nodes[k],
                spawn_app_with(|s| node_settings(s, &c.pg, &c.nats)).await,
            );
            nodes.borrow_mut()[k] = c.nodes[k].address.clone();
            old.stop().await;
            c.wait_for_peers().await;
        }
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        enough.set(true);
    };
    let (answered, ()) = tokio::join!(sends, restarts);

    // Every answer is stored, and no conversation has a gap.
    let mut stored: HashMap<String, HashSet<String>> = HashMap::new();
    for (j, (conversation, answers)) in conversations.iter().zip(&answered).enumerate() {
        let mut client = HubClient::new(&c.nodes[0].address);
        client.set_access_token(users[2 * j].token());
        let all = client.history_after(conversation, 0).await.unwrap();
        let seqs: Vec<u64> = all.iter().map(|m| m.server_sequence).collect();
        assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "no gap");
        let ids: HashSet<String> = all.iter().map(|m| m.id.clone()).collect();
        for (id, seq) in answers {
            assert!(ids.contains(id), "answered message {seq} is stored");
        }
        assert!(answers.len() >= 30, "{} answered", answers.len());
        stored.insert(conversation.clone(), ids);
    }

    // Every device catches up to exactly what its conversation holds.
    for (i, s) in seen.iter().enumerate() {
        let conversation = &conversations[i / 2];
        let want = &stored[conversation];
        eventually("the device has every message", || async {
            let got: HashSet<String> = s.borrow().messages.iter().map(|m| m.0.clone()).collect();
            &got == want
        })
        .await;
        let s = s.borrow();
        assert!(
            s.messages.iter().all(|(_, conv, _)| conv == conversation),
            "a device saw another conversation's message"
        );
        // Seen more than once only across a reconnect (a push and the
        // catch-up that followed); one message, one sequence.
        let mut by_id: HashMap<&str, u64> = HashMap::new();
        for (id, _, seq) in &s.messages {
            assert_eq!(*by_id.entry(id).or_insert(*seq), *seq);
        }
        assert!(!s.closes.is_empty(), "device {i} never saw its node go");
        assert!(
            s.closes.iter().all(|code| *code == Some(1001)),
            "device {i}: {:?}",
            s.closes
        );
    }
    stop.set(true);
    for d in devices {
        let _ = d.await;
    }
}

/// `listen --url a,b` follows the cluster: when its node stops, it
/// reconnects to the next URL, catches up, and goes on showing messages.
#[actix_web::test]
async fn listen_with_two_urls_moves_to_the_other_node_when_its_node_stops() {
    use std::io::BufRead as _;
    let mut c = cluster(2).await;
    let dir = tempfile::tempdir().unwrap();
    let bob_file = dir.path().join("bob.json");
    let bob = united_hub::client::crypto::Identity::generate();
    united_hub::cli::IdentityFile::create(&bob_file, &bob, "Bob", false).unwrap();
    let urls = format!("{},{}", c.nodes[0].address, c.nodes[1].address);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args([
            "listen",
            "--identity",
            bob_file.to_str().unwrap(),
            "--url",
            &urls,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    wait_for(&mut lines, "listening as Bob").await;

    let alice = c.user(1, "Alice").await;
    let bob_pubkey = bob.public_key_hex();
    united_hub::cli::send_text(
        &alice.client,
        &alice.identity,
        &bob_pubkey,
        "before the stop",
    )
    .await
    .unwrap();
    wait_for(&mut lines, "before the stop").await;

    let node0 = c.nodes.remove(0);
    node0.stop().await;
    let line = wait_for(&mut lines, "reconnecting").await;
    assert!(line.contains("1001"), "{line}");
    assert!(line.contains(&c.nodes[0].address), "{line}");
    united_hub::cli::send_text(
        &alice.client,
        &alice.identity,
        &bob_pubkey,
        "after the stop",
    )
    .await
    .unwrap();
    wait_for(&mut lines, "after the stop").await;
    let _ = child.kill();
    let _ = child.wait();
}

/// The next line of `lines` that holds `want` (20 s at most).
async fn wait_for(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no line with {want:?}"))
            .unwrap_or_else(|| panic!("listen ended before {want:?}"));
        if line.contains(want) {
            return line;
        }
    }
}
