//! Security round 3 (contract §8, issue 23), through the real server:
//! answers nobody reads are held against a budget, not the node's memory;
//! the client address behind proxies; rate limits on key publications and
//! conversation creations; no password of a database URL in the log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use united_hub::json::OfflineJson;
use united_hub::proto::{dm, Envelope, Payload};

use crate::helpers::*;

const MIB: u64 = 1024;
/// Messages of 60 KiB: 50 fill a 4 MiB page.
const TEXT_BYTES: usize = 60 * 1024;

/// Alice sends Bob `count` messages of 60 KiB while he is offline.
async fn large_messages(alice: &TestUser, bob: &TestUser, count: usize) -> String {
    let conversation = alice.open_conversation(bob).await;
    let text = "m".repeat(TEXT_BYTES);
    for _ in 0..count {
        alice.send_http(bob, &conversation, &text).await;
    }
    conversation
}

fn get_request(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// Reads one HTTP response from `stream`: its status and body.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = read_http_head(stream);
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, body)
}

/// Issue 23, item 1: one free account asked for the largest history page on
/// 200 sockets and never read; the node grew by gigabytes. Now the unread
/// answers are held against the user's budget (16 MiB by default), the
/// rest wait and get 429, and everyone else is served as before.
#[actix_web::test]
async fn two_hundred_unread_history_pages_hold_only_the_users_budget() {
    let _measuring = measuring().await;
    const SOCKETS: usize = 200;
    let hub = ProcessHub::start(&[]).await;
    let alice = user_at(&hub.address, "Alice").await;
    let bob = user_at(&hub.address, "Bob").await;
    let conversation = large_messages(&alice, &bob, 100).await;
    let carol = user_at(&hub.address, "Carol").await;
    let dave = user_at(&hub.address, "Dave").await;
    let small = carol.open_conversation(&dave).await;
    // Warm the paths up, then measure.
    bob.client
        .history(&conversation, "limit=100")
        .await
        .unwrap();
    let before = hub.rss_kib();

    let path = format!("/api/dm/messages/{conversation}?limit=100");
    let sockets: Vec<TcpStream> = (0..SOCKETS)
        .map(|_| unread_request(&hub.address, &get_request(&path, bob.token())))
        .collect();
    // While they hang, another user sends and reads as usual.
    carol.send_http(&dave, &small, "still here").await;
    let page = dave.client.history(&small, "limit=10").await.unwrap();
    assert_eq!(dave.open_json(&page.messages[0]), "still here");

    // Each request past the budget waits 5 s for room, then gets 429.
    let refused = SOCKETS - 4;
    for _ in 0..300 {
        if hub.metric("united_answers_refused_total").await >= refused as f64 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hub.metric("united_answers_refused_total").await >= refused as f64);
    let held = hub.metric("united_answer_pending_bytes").await;
    assert!(
        held <= 16.0 * 1024.0 * 1024.0,
        "{held} bytes held for one user"
    );
    let grown = hub.rss_kib().saturating_sub(before);
    eprintln!("200 unread history pages: the hub grew {grown} KiB");
    assert!(grown < 100 * MIB, "the hub grew {grown} KiB");

    // Bob's own reads wait for his unread answers: his budget is spent.
    let err = bob
        .client
        .history(&conversation, "limit=1")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(429));
    // Closing the sockets gives the budget back.
    drop(sockets);
    eventually("the budget is given back", || async {
        hub.metric("united_answer_pending_bytes").await == 0.0
    })
    .await;
    assert_eq!(
        bob.client
            .history(&conversation, "limit=1")
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}

/// A masked binary WebSocket frame holding `envelope` (client to server).
fn ws_frame(envelope: &Envelope) -> Vec<u8> {
    let payload = prost::Message::encode_to_vec(envelope);
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The same over one WebSocket: 200 pipelined history requests on a socket
/// that never reads.
#[actix_web::test]
async fn two_hundred_pipelined_history_requests_on_an_unread_websocket_stay_bounded() {
    let _measuring = measuring().await;
    let hub = ProcessHub::start(&[]).await;
    let alice = user_at(&hub.address, "Alice").await;
    let bob = user_at(&hub.address, "Bob").await;
    let conversation = large_messages(&alice, &bob, 100).await;
    bob.client
        .history(&conversation, "limit=100")
        .await
        .unwrap();
    let before = hub.rss_kib();

    let mut socket = unread_request(&hub.address, &ws_upgrade_request(bob.token()));
    let mut requests = Vec::new();
    for i in 0..200 {
        requests.extend(ws_frame(&Envelope {
            request_id: format!("h{i}"),
            payload: Some(Payload::DmHistoryRequest(dm::DmHistoryRequest {
                conversation_id: conversation.clone(),
                limit: 100,
                ..Default::default()
            })),
        }));
    }
    socket.write_all(&requests).unwrap();
    actix_web::rt::time::sleep(Duration::from_secs(8)).await;
    let grown = hub.rss_kib().saturating_sub(before);
    eprintln!("200 unread WebSocket history pages: the hub grew {grown} KiB");
    // The budget's 16 MiB, and the copies of it on their way to the socket
    // (the encoded answers, the frame buffer, the connection's write buffer).
    assert!(grown < 150 * MIB, "the hub grew {grown} KiB");
    let held = hub.metric("united_answer_pending_bytes").await;
    assert!(held <= 16.0 * 1024.0 * 1024.0, "{held} bytes held");
    assert!(held > 0.0, "the unread answers are counted");
    drop(socket);
    eventually("the budget is given back", || async {
        hub.metric("united_answer_pending_bytes").await == 0.0
    })
    .await;
}

/// Offline fetches nobody reads: one page is held (a budget of one page
/// here), the others wait and get 429, and a refused fetch marks nothing
/// delivered, so every entry reaches Bob exactly once.
#[actix_web::test]
async fn unread_offline_fetches_are_refused_without_losing_an_entry() {
    let _measuring = measuring().await;
    const COUNT: usize = 100;
    const SOCKETS: usize = 10;
    let hub = ProcessHub::start(&["--answer-bytes-per-user", "4194304"]).await;
    let alice = user_at(&hub.address, "Alice").await;
    let bob = user_at(&hub.address, "Bob").await;
    large_messages(&alice, &bob, COUNT).await;
    let before = hub.rss_kib();

    let mut sockets: Vec<TcpStream> = (0..SOCKETS)
        .map(|_| unread_request(&hub.address, &get_request("/api/dm/offline", bob.token())))
        .collect();
    for _ in 0..300 {
        if hub.metric("united_answers_refused_total").await >= (SOCKETS - 1) as f64 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hub.metric("united_answers_refused_total").await,
        (SOCKETS - 1) as f64
    );
    let grown = hub.rss_kib().saturating_sub(before);
    assert!(grown < 64 * MIB, "the hub grew {grown} KiB");

    let mut seen = Vec::new();
    let mut statuses = Vec::new();
    for socket in &mut sockets {
        let (status, body) = read_response(socket);
        statuses.push(status);
        if status == 200 {
            let page: OfflineJson = serde_json::from_slice(&body).unwrap();
            assert!(page.has_more && !page.messages.is_empty());
            seen.extend(page.messages.into_iter().map(|m| m.id));
        }
    }
    statuses.sort();
    let mut expected = vec![200];
    expected.extend([429; SOCKETS - 1]);
    assert_eq!(statuses, expected);
    seen.extend(
        bob.client
            .offline()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id),
    );
    let stored: Vec<String> = {
        let db = hub.db();
        let mut stmt = db
            .prepare("SELECT id FROM dm_messages ORDER BY server_sequence")
            .unwrap();
        let ids = stmt.query_map([], |r| r.get(0)).unwrap();
        ids.map(Result::unwrap).collect()
    };
    assert_eq!(seen, stored, "every entry once, in order");
}

/// Issue 23, item 2: behind HAProxy-style proxies, which add their own
/// `X-Forwarded-For` line, the client's forged first line is not the key.
#[actix_web::test]
async fn a_forged_first_forwarded_line_does_not_escape_the_auth_limit() {
    let app = spawn_app_with(|s| {
        s.auth_rate = 1;
        s.auth_burst = 3;
        s.trusted_proxy = vec!["127.0.0.1".parse().unwrap(), "10.9.0.0/16".parse().unwrap()];
    })
    .await;
    let challenge = |lines: Vec<String>| {
        let mut req = app.http().post(app.url("/api/auth/challenge"));
        for line in lines {
            req = req.append_header(("X-Forwarded-For", line));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // The client rotates its first line; the proxy's line names it.
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(challenge(vec![format!("203.0.113.{i}"), "198.51.100.7".into()]).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Through a second trusted proxy (by CIDR), in one line or two.
    assert_eq!(
        challenge(vec!["203.0.113.99, 198.51.100.7".into(), "10.9.1.1".into()]).await,
        429
    );
    assert_eq!(
        challenge(vec!["203.0.113.99, 198.51.100.7, 10.9.1.1".into()]).await,
        429
    );
    // Another client behind the same proxies is counted on its own.
    assert_eq!(
        challenge(vec!["198.51.100.8".into(), "10.9.1.1".into()]).await,
        200
    );
}

/// The hub without `--trusted-proxy` ignores the header altogether.
#[actix_web::test]
async fn without_a_trusted_proxy_forwarded_lines_are_ignored() {
    let app = spawn_app_with(|s| {
        s.auth_rate = 1;
        s.auth_burst = 2;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let res = app
            .http()
            .post(app.url("/api/auth/challenge"))
            .insert_header(("X-Forwarded-For", format!("203.0.113.{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// Issue 23, item 3: 500 key publications from one user are refused in
/// part with 429 and `Retry-After`; another user is unaffected.
#[actix_web::test]
async fn a_burst_of_key_publications_is_refused_in_part() {
    let app = spawn_app().await;
    let mallory = app.user("Mallory").await;
    let alice = app.user("Alice").await;
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..500u32 {
        let mut key = [7u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        let res = app
            .http()
            .post(app.url("/api/dm/keys"))
            .bearer_auth(mallory.token())
            .send_json(&serde_json::json!({ "x25519_pubkey": hex::encode(key) }))
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => accepted += 1,
            429 => {
                let retry: u32 = res
                    .headers()
                    .get("Retry-After")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(refused > 400, "{accepted} accepted, {refused} refused");
    assert!(accepted >= 15, "the burst is allowed: {accepted}");
    let key = alice.identity.x25519_public();
    alice.client.publish_key(&key).await.expect("another user");
}

/// 400 new conversations from one user: refused in part, over both
/// transports; another user still opens one. The default burst (200) is
/// kept; the refill is 1 a second instead of 10, so that how long a slow
/// machine takes over the 400 requests does not decide the test.
#[actix_web::test]
async fn a_burst_of_new_conversations_is_refused_in_part() {
    let app = spawn_app_with(|s| {
        s.auth_rate = 0;
        s.conversation_rate = 1;
    })
    .await;
    let mallory = app.user("Mallory").await;
    let alice = app.user("Alice").await;
    let ws = mallory.ws().await;
    let mut peers = Vec::new();
    for i in 0..400 {
        peers.push(app.user(&format!("Peer {i}")).await);
    }
    let mut accepted = 0;
    let mut refused = 0;
    for (i, peer) in peers.iter().enumerate() {
        let outcome = if i % 2 == 0 {
            mallory
                .client
                .create_conversation(&peer.pubkey)
                .await
                .map(|_| ())
        } else {
            ws.call(Payload::DmConversationCreateRequest(
                dm::DmConversationCreateRequest {
                    recipient_pubkey: peer.pubkey.clone(),
                },
            ))
            .await
            .map(|_| ())
        };
        match outcome {
            Ok(()) => accepted += 1,
            Err(e) if e.status() == Some(429) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 50, "{accepted} accepted, {refused} refused");
    assert!(accepted >= 200, "the burst is allowed: {accepted}");
    alice.open_conversation(&mallory).await;
}
