//! Abuse and hostile input: rate limits, racing logins, authorization,
//! malformed frames, origins, and what every connection promises to disk.

use std::time::{Duration, Instant};

use awc::ws::Message;
use prost::Message as _;
use serde_json::Value;
use united_hub::client::crypto::Identity;
use united_hub::client::{send_body, Incoming};
use united_hub::json::VerifyBody;
use united_hub::proto::{dm, Envelope, Payload};

use crate::helpers::*;

async fn challenge_status(
    app: &TestApp,
    forwarded_for: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = app.http().post(app.url("/api/auth/challenge"));
    if let Some(ip) = forwarded_for {
        req = req.insert_header(("X-Forwarded-For", ip));
    }
    let mut res = req.send().await.unwrap();
    let retry = res
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), retry, res.json().await.unwrap())
}

#[actix_web::test]
async fn auth_is_limited_per_ip_and_forged_headers_do_not_help() {
    let app = spawn_app_with(|s| {
        s.auth_rate = 1;
        s.auth_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            challenge_status(&app, None).await.0,
            200,
            "under the quota: never refused"
        );
    }
    let (status, retry, body) = challenge_status(&app, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(retry.unwrap().parse::<u32>().unwrap() >= 1);
    // Without a trusted proxy, X-Forwarded-For is not a key.
    assert_eq!(challenge_status(&app, Some("203.0.113.9")).await.0, 429);
}

#[actix_web::test]
async fn a_trusted_proxy_keys_on_the_forwarded_client() {
    let app = spawn_app_with(|s| {
        s.auth_rate = 1;
        s.auth_burst = 2;
        s.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(challenge_status(&app, Some("10.0.0.1")).await.0, 200);
    }
    assert_eq!(challenge_status(&app, Some("10.0.0.1")).await.0, 429);
    // The client chooses the start of the header, the proxy appends the end.
    assert_eq!(
        challenge_status(&app, Some("10.0.0.2, 10.0.0.1")).await.0,
        429
    );
    assert_eq!(challenge_status(&app, Some("10.0.0.2")).await.0, 200);
}

#[actix_web::test]
async fn sends_are_limited_per_user_on_both_transports() {
    let app = spawn_app_with(|s| {
        s.send_rate = 1;
        s.send_burst = 4;
    })
    .await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    for i in 0..4 {
        alice.send_http(&bob, &conversation, &format!("{i}")).await;
    }
    let body = send_body(
        None,
        &conversation,
        &alice.seal(&bob, &conversation, "too many"),
        now_ms(),
    );
    let err = alice.client.send(&body).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(429), Some("rate_limited"))
    );
    let ws = alice.ws().await;
    let answer = ws
        .request(send_request(
            None,
            &conversation,
            &alice.seal(&bob, &conversation, "x"),
        ))
        .await
        .unwrap();
    let Some(Payload::Error(e)) = answer.payload else {
        panic!("{answer:?}")
    };
    assert_eq!((e.code, e.error_code.as_str()), (429, "rate_limited"));
    assert!(e.retry_after >= 1);
    // Bob has his own quota.
    bob.send_http(&alice, &conversation, "mine").await;
    let history = bob.client.history(&conversation, "").await.unwrap();
    assert_eq!(history.messages.len(), 5, "refused sends took no sequence");
}

#[actix_web::test]
async fn two_simultaneous_verifies_of_one_challenge_let_exactly_one_in() {
    let app = spawn_app().await;
    for _ in 0..10 {
        let id = Identity::generate();
        let challenge = app.client().challenge().await.unwrap();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&challenge.challenge, &mut bytes).unwrap();
        let body = serde_json::to_value(VerifyBody {
            public_key: id.public_key_hex(),
            challenge_id: challenge.challenge_id,
            signature: hex::encode(id.sign_login(&bytes)),
            display_name: Some("Twin".into()),
        })
        .unwrap();
        let post = || {
            app.http()
                .post(app.url("/api/auth/verify"))
                .send_json(&body)
        };
        let (a, b) = tokio::join!(post(), post());
        let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 401]);
    }
}

#[actix_web::test]
async fn another_user_gets_nothing_of_a_conversation_by_any_route() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let carol = app.user("Carol").await;
    let mallory = app.user("Mallory").await;
    let conversation = alice.open_conversation(&carol).await;
    let sent = alice.send_http(&carol, &conversation, "secret").await;
    let ws = mallory.ws().await;
    let mut successes = Vec::new();

    for query in ["", "before=5", "after=0", "limit=1"] {
        if mallory.client.history(&conversation, query).await.is_ok() {
            successes.push(format!("GET history ?{query}"));
        }
    }
    let body = send_body(
        Some(uuid::Uuid::new_v4().to_string()),
        &conversation,
        &mallory.seal(&carol, &conversation, "x"),
        now_ms(),
    );
    if mallory.client.send(&body).await.is_ok() {
        successes.push("POST message".into());
    }
    // Resending Alice's own message id as Mallory.
    let mut replay = body.clone();
    replay.id = Some(sent.id.clone());
    if mallory.client.send(&replay).await.is_ok() {
        successes.push("POST message with Alice's id".into());
    }
    if mallory
        .client
        .ack(std::slice::from_ref(&sent.id))
        .await
        .unwrap()
        != 0
    {
        successes.push("ack Carol's entry".into());
    }
    if !mallory.client.offline().await.unwrap().is_empty() {
        successes.push("GET offline".into());
    }
    let ws_requests = [
        Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            ..Default::default()
        }),
        Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            after_sequence: 1,
            ..Default::default()
        }),
        send_request(
            None,
            &conversation,
            &mallory.seal(&carol, &conversation, "y"),
        ),
        Payload::DmOfflineAckRequest(dm::DmOfflineAckRequest {
            message_ids: vec![sent.id.clone()],
        }),
    ];
    for request in ws_requests {
        match ws.call(request.clone()).await {
            Ok(Payload::DmOfflineAckResponse(a)) if a.acked == 0 => {}
            Ok(other) => successes.push(format!("WS {other:?}")),
            Err(_) => {}
        }
    }
    let Payload::DmOfflineMessagesResponse(o) = ws
        .call(Payload::DmOfflineRequest(dm::DmOfflineRequest::default()))
        .await
        .unwrap()
    else {
        panic!()
    };
    if !o.messages.is_empty() {
        successes.push("WS offline".into());
    }
    let Payload::DmConversationListResponse(l) = ws
        .call(Payload::DmConversationListRequest(
            dm::DmConversationListRequest {},
        ))
        .await
        .unwrap()
    else {
        panic!()
    };
    if !l.conversations.is_empty() {
        successes.push("WS list".into());
    }
    assert!(successes.is_empty(), "Mallory got through: {successes:?}");
    // Carol's entry is still there for Carol.
    assert_eq!(carol.client.offline().await.unwrap().len(), 1);
}

#[actix_web::test]
async fn every_connection_runs_wal_and_synchronous_full() {
    let app = spawn_app().await;
    let sqlite = app
        .state
        .store
        .sqlite()
        .expect("the default store is SQLite");
    let (mode, sync) = sqlite.writer_durability().await.unwrap();
    assert_eq!((mode.as_str(), sync), ("wal", 2), "the writer");
    // Hold every pooled connection at once, so each is checked.
    let size = sqlite.pool().max_size() as usize;
    let conns: Vec<_> = (0..size).map(|_| sqlite.pool().get().unwrap()).collect();
    for conn in &conns {
        let (mode, sync) = united_hub::db::durability_settings(conn).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "a reader");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }
}

fn nested_groups(depth: usize) -> Vec<u8> {
    // Field 2 as a start-group, `depth` times, then the matching end-groups.
    let mut bytes = vec![(2 << 3) | 3; depth];
    bytes.extend(std::iter::repeat_n((2 << 3) | 4, depth));
    bytes
}

#[actix_web::test]
async fn a_deeply_nested_message_is_a_decode_error() {
    assert!(Envelope::decode(&nested_groups(200)[..]).is_err());
    let app = spawn_app().await;
    let user = app.user("Nest").await;
    let mut ws = user.ws().await;
    ws.send_raw(Message::Binary(nested_groups(200).into()))
        .unwrap();
    let answer = next_envelope(&mut ws).await;
    assert!(
        matches!(answer.payload, Some(Payload::Error(ref e)) if e.code == 400),
        "{answer:?}"
    );
    ws.call(Payload::DmConversationListRequest(
        dm::DmConversationListRequest {},
    ))
    .await
    .expect("still served");
}

#[actix_web::test]
async fn the_origin_allow_list_is_enforced() {
    let app = spawn_app_with(|s| s.allowed_origins = vec!["https://app.example".into()]).await;
    let user = app.user("Web").await;
    let upgrade = |origin: Option<&'static str>| {
        let mut req = awc::Client::new()
            .ws(app.ws_url())
            .bearer_auth(user.token());
        if let Some(o) = origin {
            req = req.origin(o);
        }
        req.connect()
    };
    for origin in [None, Some("https://evil.example")] {
        match upgrade(origin).await {
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => assert_eq!(s.as_u16(), 403),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{origin:?} was let in"),
        }
    }
    assert!(upgrade(Some("https://app.example")).await.is_ok());
    let mut res = app
        .http()
        .get(app.ws_url().replacen("ws", "http", 1))
        .bearer_auth(user.token())
        .insert_header(("Origin", "https://evil.example"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_origin");
}

#[actix_web::test]
async fn endless_continuation_frames_close_the_session_without_growing_memory() {
    let _measuring = measuring().await;
    let hub = ProcessHub::start(&[]).await;
    let user = user_at(&hub.address, "Frag").await;
    let mut ws = user.ws().await;
    let before = hub.rss_kib();
    ws.send_raw(Message::Continuation(actix_http::ws::Item::FirstBinary(
        bytes::Bytes::new(),
    )))
    .unwrap();
    for _ in 0..100_000 {
        if ws
            .send_raw(Message::Continuation(actix_http::ws::Item::Continue(
                bytes::Bytes::new(),
            )))
            .is_err()
        {
            break;
        }
    }
    match ws.next(Duration::from_secs(30)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    let grown = hub.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the hub's RSS grew by {grown} KiB");
}

#[actix_web::test]
async fn abuse_on_one_socket_does_not_disturb_others() {
    let app = spawn_app_with(|s| {
        s.max_frame_bytes = 64 * 1024;
        s.max_payload_bytes = 32 * 1024;
    })
    .await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let eve = app.user("Eve").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;

    let abuse = async {
        for round in 0..5 {
            let mut ws = eve.ws().await;
            for _ in 0..10 {
                let _ = ws.send_raw(Message::Text("garbage".into()));
                let _ = ws.send_raw(Message::Binary(vec![0xff; 64].into()));
            }
            if round % 2 == 0 {
                let _ = ws.send_raw(Message::Binary(vec![0u8; 128 * 1024].into()));
            }
            while let Some(Incoming::Envelope(_)) = ws.next(Duration::from_secs(5)).await {}
        }
    };
    let traffic = async {
        for i in 0..50 {
            alice.send_http(&bob, &conversation, &format!("{i}")).await;
        }
    };
    tokio::join!(abuse, traffic);
    for seq in 1..=50 {
        assert_eq!(next_message(&mut bob_ws).await.server_sequence, seq);
    }
}

#[actix_web::test]
async fn a_recipient_that_stops_reading_is_cut_off_and_loses_nothing() {
    let _measuring = measuring().await;
    // Its own process, so the memory figure is the hub's alone. The buffer is
    // small, so the stuck session is found quickly; still above the bursts a
    // healthy session gets here (100 of its own events at a time).
    let hub = ProcessHub::start(&["--session-buffer", "256"]).await;
    let alice = user_at(&hub.address, "Alice").await;
    let bob = user_at(&hub.address, "Bob").await;
    let carol = user_at(&hub.address, "Carol").await;
    let dave = user_at(&hub.address, "Dave").await;
    let conversation = alice.open_conversation(&bob).await;
    let other = carol.open_conversation(&dave).await;
    // Bob's only session: a socket nobody reads.
    let (_res, mut stuck) = awc::Client::new()
        .ws(hub.ws_url())
        .bearer_auth(bob.token())
        .connect()
        .await
        .unwrap();
    let mut dave_ws = dave.live_ws().await;
    let mut alice_ws = alice.live_ws().await;
    // Alice's copies of her own messages are not this test's business; do not
    // let them pile up in this (client) process.
    drop(alice_ws.take_events());
    assert_eq!(hub.metric("united_live_sessions").await, 3.0);

    // 10,000 messages of 4 KiB to Bob over Alice's socket, in windows of 100.
    let payload = alice.seal(&bob, &conversation, &"x".repeat(4096));
    let mut accepted = 0u64;
    let mut warmed = None;
    for chunk in 0..100 {
        let sends = (0..100).map(|_| alice_ws.call(send_request(None, &conversation, &payload)));
        for answer in futures_util::future::join_all(sends).await {
            assert!(
                matches!(answer, Ok(Payload::DmSendResponse(_))),
                "{answer:?}"
            );
            accepted += 1;
        }
        // After 2,000 the stall is established and the allocator warm: from
        // here on the hub's memory must stay flat (an unbounded queue to the
        // stuck session would grow by ~33 MB over the last 8,000).
        if chunk == 19 {
            warmed = Some((hub.rss_kib(), hub.rss_parts()));
        }
        // Meanwhile Carol's messages keep reaching Dave.
        if chunk % 20 == 0 {
            let sent = carol.send_http(&dave, &other, "still here").await;
            assert_eq!(next_message(&mut dave_ws).await.id, sent.id);
        }
    }
    assert_eq!(accepted, 10_000);
    let (warmed, warmed_parts) = warmed.unwrap();
    let grown = hub.rss_kib().saturating_sub(warmed);
    // Printed on every run (seen with --nocapture), so that the spread is
    // known: it once failed at 21,544 KiB in a full parallel run, and was
    // 0-1,000 KiB in every other run measured.
    let parts = format!("from {warmed_parts} to {}", hub.rss_parts());
    eprintln!(
        "slow consumer: the hub's RSS grew {grown} KiB over the last 8000 messages ({parts})"
    );
    assert!(
        grown < 16 * 1024,
        "the hub's RSS grew by {grown} KiB for a stuck reader ({parts})"
    );

    // The stuck session was let go (Alice and Dave remain), Bob's messages are safe.
    assert_eq!(
        hub.metric("united_live_sessions").await,
        2.0,
        "the stuck session left the registry"
    );
    assert!(hub.metric("united_pushes_failed_total").await >= 1.0);
    let db = hub.db();
    let stored: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM dm_messages WHERE conversation_id = ?1",
            [&conversation],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 10_000);
    let queued: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM dm_offline_queue WHERE recipient_pubkey = ?1",
            [&bob.pubkey],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!("slow consumer: {queued} of 10000 queued offline");
    assert!(
        queued > 1_000,
        "what Bob could not take is in his offline queue ({queued})"
    );

    // When the client finally reads, it gets what was buffered, then the 1013.
    use futures_util::StreamExt as _;
    let mut close = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(10), stuck.next()).await {
        if let Ok(awc::ws::Frame::Close(reason)) = frame {
            close = reason.map(|r| u16::from(r.code));
            break;
        }
    }
    assert_eq!(close, Some(1013), "the stuck session is closed with 1013");
}

#[actix_web::test]
async fn a_compressed_body_is_never_inflated() {
    // 100 MiB of zeros, gzip-compressed to ~100 KiB.
    let bomb = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/zeros-100MiB.json.gz"
    ))
    .unwrap();
    assert!(bomb.len() < 200 * 1024);
    let hub = ProcessHub::start(&[]).await;
    let user = user_at(&hub.address, "Gzip").await;
    let before = hub.rss_kib();
    for path in [
        "/api/dm/messages",
        "/api/dm/conversations",
        "/api/auth/verify",
    ] {
        let mut res = awc::Client::default()
            .post(format!("{}{path}", hub.address))
            .bearer_auth(user.token())
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Content-Encoding", "gzip"))
            .send_body(bomb.clone())
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert!(status == 400 || status == 413, "{path}: {status}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    let grown = hub.rss_kib().saturating_sub(before);
    assert!(grown < 20 * 1024, "the hub's RSS grew by {grown} KiB");
}

#[actix_web::test]
async fn purged_entries_leave_no_bytes_behind() {
    // Refresh tokens are purged by the janitor once expired; their hash is
    // bytes that appear nowhere else, so it makes a clean marker.
    let app = spawn_app_with(|s| {
        s.refresh_token_ttl = 1;
        s.janitor_interval = 1;
    })
    .await;
    let user = app.user("Purge").await;
    let mut client = app.client();
    let tokens = client.login(&user.identity, None).await.unwrap();
    let marker = united_hub::auth::hash_refresh_token(&tokens.refresh_token);
    let contains = |bytes: &[u8]| bytes.windows(32).any(|w| w == marker);
    let files_with_marker = || {
        app.data_files()
            .into_iter()
            .filter(|(_, bytes)| contains(bytes))
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    };
    assert!(
        !files_with_marker().is_empty(),
        "the hash is stored at first"
    );
    eventually(
        "the janitor purges the token and scrubs its bytes",
        || async { files_with_marker().is_empty() },
    )
    .await;
    let err = client.refresh(&tokens.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_refresh_token"));
}

/// Issue 9: memory is bounded in bytes, not events. 50 sessions that never
/// read are each sent 30 messages of ~60 KiB (90 MB in all). With a byte
/// budget of 256 KiB per session, each is cut off (1013) once it holds that
/// much (after the kernel's fixed 256 KiB send buffer), and the rest goes to
/// its user's offline queue: over the last two thirds the hub's memory grows
/// by a few MB. Measured without the budget (`--session-buffer-bytes 0`):
/// +68 MiB, and this test fails.
#[actix_web::test]
async fn sessions_that_never_read_hold_at_most_their_byte_budget() {
    let _measuring = measuring().await;
    const STUCK: usize = 50;
    const PER_USER: usize = 30;
    const BUDGET: usize = 256 * 1024;
    let hub = ProcessHub::start(&[
        "--session-buffer-bytes",
        &BUDGET.to_string(),
        "--idle-timeout",
        "3",
        "--ping-interval",
        "1",
    ])
    .await;
    let alice = user_at(&hub.address, "Alice").await;
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let user = user_at(&hub.address, &format!("Stuck {i}")).await;
        let conversation = alice.open_conversation(&user).await;
        let socket = stalled_websocket(&hub.address, user.token());
        stuck.push((user, conversation, socket));
    }
    assert_eq!(hub.metric("united_live_sessions").await, STUCK as f64);
    let text = "x".repeat(60 * 1024);
    let mut before = 0;
    for round in 0..PER_USER {
        // After a third, the sockets and buffers are full and the allocator
        // warm: from here on the hub must not grow by more than its budgets.
        if round == PER_USER / 3 {
            before = hub.rss_kib();
        }
        let sends = stuck.iter().map(|(user, conversation, _)| {
            let sealed = alice.seal(user, conversation, &text);
            let body = send_body(None, conversation, &sealed, now_ms());
            let client = alice.client.clone();
            async move { client.send(&body).await }
        });
        for answer in futures_util::future::join_all(sends).await {
            answer.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    let grown = hub.rss_kib().saturating_sub(before);
    let bound = (STUCK * BUDGET / 1024) as u64 + 16 * 1024;
    eprintln!("stuck readers: the hub's RSS grew {grown} KiB (bound {bound} KiB)");
    assert!(
        grown < bound,
        "the hub's RSS grew by {grown} KiB, over {bound} KiB"
    );

    // Every stuck session was cut off, and every message is kept: in
    // history, and each was either handed to its session or queued offline.
    eventually("the stuck sessions left the registry", || async {
        hub.metric("united_live_sessions").await == 0.0
    })
    .await;
    let pushed = hub.metric("united_pushes_total").await;
    let queued = hub.metric("united_offline_queued_total").await;
    assert_eq!(
        pushed + queued,
        (STUCK * PER_USER) as f64,
        "every message reached a session or the offline queue ({pushed} + {queued})"
    );
    let db = hub.db();
    for (user, conversation, _) in &stuck {
        let stored: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM dm_messages WHERE conversation_id = ?1",
                [conversation],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, PER_USER as i64);
        let queued: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM dm_offline_queue WHERE recipient_pubkey = ?1",
                [&user.pubkey],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            queued > 0,
            "what the stalled session did not take is queued"
        );
    }

    // The stalled sockets do not linger: the kernel aborts them after the
    // idle timeout (TCP_USER_TIMEOUT), since their session actors cannot run.
    let port: u16 = hub.address.rsplit(':').next().unwrap().parse().unwrap();
    eventually("the stalled connections are closed by the hub", || async {
        established_from_port(port) == 0
    })
    .await;
    drop(stuck);
}

/// Established TCP connections whose local port is `port` (the hub's side).
fn established_from_port(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// A WebSocket that never reads, with a 4 KiB receive buffer: the hub's
/// side of it stops being writable after a few dozen KiB, as with a client
/// that hangs on a slow link. The handshake is done by hand on a plain
/// socket.
fn stalled_websocket(address: &str, token: &str) -> std::net::TcpStream {
    let mut stream = unread_request(address, &ws_upgrade_request(token));
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Issue 9: a cap on live sessions per user and on connections per client
/// IP, each answered 429 `rate_limited` with `Retry-After` before any
/// session exists; a closed session gives its place back.
#[actix_web::test]
async fn session_caps_per_user_and_per_ip_answer_429() {
    let app = spawn_app_with(|s| {
        s.max_sessions_per_user = 3;
        s.max_connections_per_ip = 5;
    })
    .await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(alice.live_ws().await);
    }
    let refused = |token: String| {
        let url = app.ws_url();
        async move {
            awc::Client::new()
                .ws(url)
                .bearer_auth(token)
                .connect()
                .await
                .err()
                .map(|e| match e {
                    awc::error::WsClientError::InvalidResponseStatus(s) => s.as_u16(),
                    other => panic!("{other:?}"),
                })
        }
    };
    assert_eq!(
        refused(alice.token().to_owned()).await,
        Some(429),
        "a fourth session of one user"
    );
    let _bob1 = bob.live_ws().await;
    let _bob2 = bob.live_ws().await;
    assert_eq!(
        refused(bob.token().to_owned()).await,
        Some(429),
        "a sixth connection from one address"
    );
    // The error is the contract's JSON, with Retry-After.
    let res = app
        .http()
        .get(app.url("/ws"))
        .bearer_auth(alice.token())
        .insert_header(("Upgrade", "websocket"))
        .insert_header(("Connection", "Upgrade"))
        .insert_header(("Sec-WebSocket-Version", "13"))
        .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // One of Alice's closes: her place (and the address's) comes back.
    drop(alices.pop());
    eventually("a place is free again", || async {
        refused(alice.token().to_owned()).await.is_none()
    })
    .await;
}

/// Issue 9: one client pipelining history and offline reads as fast as it
/// can (two sockets, 1,000 requests in flight) does not slow another user's
/// sends: past its read budget the flood is answered 429 at once, and Bob's
/// send p99 under the flood stays within 3× its p99 without it plus 100 ms (a ratio;
/// measured here with the flood on the same 2 cores as the hub: 72 ms vs
/// 47 ms in a debug build with a benchmark running beside it).
#[actix_web::test]
async fn a_read_flood_does_not_slow_other_users_sends() {
    let _measuring = measuring().await;
    use std::cell::Cell;
    use std::rc::Rc;
    let app = spawn_app_with(|s| s.send_rate = 0).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mallory = app.user("Mallory").await;
    let conversation = bob.open_conversation(&alice).await;
    let hers = mallory.open_conversation(&alice).await;
    for i in 0..20 {
        mallory.send_http(&alice, &hers, &format!("{i}")).await;
    }
    let bob_ws = bob.live_ws().await;

    // Bob's send latencies over WebSocket, one after the other.
    let p99 = |n: usize| {
        let (bob, alice, bob_ws, conversation) = (&bob, &alice, &bob_ws, &conversation);
        async move {
            let mut took = Vec::with_capacity(n);
            for i in 0..n {
                let sealed = bob.seal(alice, conversation, &format!("{i}"));
                let started = Instant::now();
                bob_ws
                    .call(send_request(None, conversation, &sealed))
                    .await
                    .expect("send");
                took.push(started.elapsed());
            }
            took.sort_unstable();
            took[n * 99 / 100]
        }
    };
    let idle = p99(200).await;

    let done = Rc::new(Cell::new(false));
    let refused = Rc::new(Cell::new(0u64));
    let answered = Rc::new(Cell::new(0u64));
    let flood = (0..2).map(|_| {
        let (done, refused, answered) = (done.clone(), refused.clone(), answered.clone());
        let (mallory, hers) = (&mallory, &hers);
        async move {
            let ws = mallory.ws().await;
            while !done.get() {
                let requests = (0..500).map(|i| {
                    let payload = if i % 2 == 0 {
                        Payload::DmHistoryRequest(dm::DmHistoryRequest {
                            conversation_id: hers.clone(),
                            limit: 100,
                            ..Default::default()
                        })
                    } else {
                        Payload::DmOfflineRequest(dm::DmOfflineRequest::default())
                    };
                    ws.call(payload)
                });
                for answer in futures_util::future::join_all(requests).await {
                    match answer {
                        Ok(_) => answered.set(answered.get() + 1),
                        Err(e) if e.status() == Some(429) => refused.set(refused.get() + 1),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
    });
    let measured = async {
        // Let the flood get going first.
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        let busy = p99(200).await;
        done.set(true);
        busy
    };
    let (_, busy) = tokio::join!(futures_util::future::join_all(flood), measured);
    // The machine's own noise moves both figures: the idle side is the
    // larger of a measurement before and one after the flood.
    let idle = idle.max(p99(200).await);
    eprintln!(
        "read flood: Bob's send p99 {idle:?} idle, {busy:?} under the flood ({} answered, {} refused)",
        answered.get(),
        refused.get()
    );
    assert!(refused.get() > 0, "the flood went past the read budget");
    // Plus 100 ms: since the hub and the client set TCP_NODELAY, the idle
    // p99 is about 3 ms (it used to include delayed acks of up to 40 ms),
    // and 3× of that is within what the flood's CPU alone adds on 2 cores:
    // 33-38 ms when this test runs alone, 47 ms and once over 59 ms beside
    // the rest of the suite. Starvation costs far more: with the read budget
    // off, 427 ms against 2.9 ms idle.
    let allowed = idle * 3 + Duration::from_millis(100);
    // scripts/log-privacy.sh runs the suite again with every log on
    // (TEST_LOG): there the hub's time goes to trace lines for each of the
    // flood's frames, so the bound is checked in the plain run only.
    if std::env::var_os("TEST_LOG").is_none() {
        assert!(
            busy <= allowed,
            "Bob's p99 rose from {idle:?} to {busy:?} (more than {allowed:?})"
        );
    }
    // No read waited a second or more for a pooled connection.
    let metrics = app.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    };
    let reads = value("united_db_pool_wait_seconds_count");
    let within_a_second = value("united_db_pool_wait_seconds_bucket{le=\"1\"}");
    assert!(reads > 0.0, "the flood's reads were not measured");
    assert_eq!(
        within_a_second, reads,
        "some reads waited a second or more for the pool"
    );
}

/// The descriptor of the hub's end of a connection in this process whose
/// peer is `peer`.
fn hub_side_of(hub_port: u16, peer: std::net::SocketAddr) -> Option<std::os::fd::RawFd> {
    tcp_sockets_here()
        .into_iter()
        .find_map(|(fd, local, remote)| (local.port() == hub_port && remote == peer).then_some(fd))
}

/// Every TCP socket this test process holds: descriptor, local and peer
/// address. Tests run the hub in-process, so both ends of a connection are
/// here.
fn tcp_sockets_here() -> Vec<(
    std::os::fd::RawFd,
    std::net::SocketAddr,
    std::net::SocketAddr,
)> {
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let fd: RawFd = entry.ok()?.file_name().to_string_lossy().parse().ok()?;
            // SAFETY: only addresses are read. Should another thread close the
            // descriptor meanwhile, the calls fail or read some other socket,
            // which does not match.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let local = socket.local_addr().ok()?.as_socket()?;
            let remote = socket.peer_addr().ok()?.as_socket()?;
            Some((fd.as_raw_fd(), local, remote))
        })
        .collect()
}

/// Whether the socket `fd` of this process has TCP_NODELAY.
fn nodelay(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: the callers hold the connection open while they ask.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).tcp_nodelay().unwrap()
}

/// The hub writes each frame at once: its end of every connection has
/// TCP_NODELAY. With Nagle's algorithm a send's answer, written right after
/// the echo of the same message, waited for the client's delayed ack (up to
/// 40 ms: the load generator's answer p99 was 45 ms against 7-12 ms for the
/// pushes).
#[actix_web::test]
async fn the_hub_sends_small_frames_without_waiting_for_acks() {
    use actix_web::rt::net::TcpStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    // An answered request: the hub has accepted and set up the connection.
    client
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let fd = hub_side_of(addr.port(), client.local_addr().unwrap())
        .expect("the hub's end of the connection is in this process");
    assert!(nodelay(fd), "the hub's socket has Nagle's algorithm on");
    assert!(
        !socket2::SockRef::from(&client).tcp_nodelay().unwrap(),
        "the client's default is the other way, so the check can tell them apart"
    );
}

/// The reference client (and so the load generator) writes each frame at
/// once too: awc leaves Nagle's algorithm on, and a send written while the
/// client's previous frame (a pong) was unacknowledged waited for the hub's
/// delayed ACK. That was the load generator's p99.9 of 35 ms at 5,000/s,
/// with no send over 10 ms inside the hub.
#[actix_web::test]
async fn the_reference_client_sends_small_frames_without_waiting_for_acks() {
    let app = spawn_app().await;
    let hub_port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let alice = app.user("alice").await;
    let ws = alice.live_ws().await;

    let client_ends: Vec<_> = tcp_sockets_here()
        .into_iter()
        .filter(|(_, _, remote)| remote.port() == hub_port)
        .collect();
    // At least the WebSocket and the pooled HTTP connection of the login.
    assert!(
        client_ends.len() >= 2,
        "found {} client connections to the hub",
        client_ends.len()
    );
    for (fd, local, _) in client_ends {
        assert!(
            nodelay(fd),
            "the client's connection from {local} has Nagle's algorithm on"
        );
    }
    drop(ws);
}
