//! Live push, ordering under concurrency, targeting, offline delivery.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use united_hub::client::{send_body, Incoming, WsClient};
use united_hub::proto::{dm, Payload};

use crate::helpers::*;

/// Collects `n` message events from a session, in arrival order.
async fn collect_messages(ws: &mut WsClient, n: usize) -> Vec<dm::EncryptedDmMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_message(ws).await);
    }
    out
}

#[actix_web::test]
async fn concurrent_senders_get_gap_free_sequences_and_every_session_sees_all_in_order() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut sessions = vec![
        alice.live_ws().await,
        alice.live_ws().await,
        bob.live_ws().await,
        bob.live_ws().await,
    ];

    // Each user sends 100: 50 over HTTP, 50 over one of their sockets, all at once.
    let mut http_sends = Vec::new();
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        for i in 0..50 {
            let sealed = from.seal(to, &conversation, &format!("http {i}"));
            let body = send_body(None, &conversation, &sealed, now_ms());
            let client = from.client.clone();
            http_sends
                .push(async move { client.send(&body).await.map(|(m, _)| m.server_sequence) });
        }
    }
    let mut ws_sends = Vec::new();
    for (ws_index, from, to) in [(0, &alice, &bob), (2, &bob, &alice)] {
        for i in 0..50 {
            let sealed = from.seal(to, &conversation, &format!("ws {i}"));
            ws_sends.push((ws_index, send_request(None, &conversation, &sealed)));
        }
    }
    let ws_futures = ws_sends.into_iter().map(|(index, payload)| {
        let ws = &sessions[index];
        async move {
            match ws.call(payload).await {
                Ok(Payload::DmSendResponse(r)) => Ok(r.message.unwrap().server_sequence),
                other => Err(format!("{other:?}")),
            }
        }
    });
    let (http_results, ws_results) = tokio::join!(join_all(http_sends), join_all(ws_futures));
    let mut answered: Vec<u64> = http_results
        .into_iter()
        .map(|r| r.expect("http send"))
        .collect();
    answered.extend(ws_results.into_iter().map(|r| r.expect("ws send")));
    answered.sort_unstable();
    assert_eq!(
        answered,
        (1..=200).collect::<Vec<u64>>(),
        "every send answered with a unique sequence"
    );

    let stored = app
        .sql_i64(
            "SELECT server_sequence FROM dm_messages \
             WHERE CAST(conversation_id AS TEXT) = $1 ORDER BY server_sequence",
            Some(&conversation),
        )
        .await;
    assert_eq!(stored, (1..=200).collect::<Vec<i64>>());

    for ws in &mut sessions {
        let got = collect_messages(ws, 200).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.server_sequence).collect();
        assert_eq!(
            seqs,
            (1..=200).collect::<Vec<u64>>(),
            "all 200, once each, in order"
        );
        assert_silent(ws, Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn concurrent_creates_from_both_sides_make_one_conversation() {
    let app = spawn_app().await;
    for round in 0..20 {
        let alice = app.user(&format!("A{round}")).await;
        let bob = app.user(&format!("B{round}")).await;
        let (a, b) = tokio::join!(
            alice.client.create_conversation(&bob.pubkey),
            bob.client.create_conversation(&alice.pubkey)
        );
        let (a, a_new) = a.unwrap();
        let (b, b_new) = b.unwrap();
        assert_eq!(a.id, b.id, "round {round}");
        assert!(a_new ^ b_new, "exactly one create made it (round {round})");
    }
    let count = app
        .sql_i64("SELECT COUNT(*) FROM dm_conversations", None)
        .await;
    assert_eq!(count, vec![20]);
}

#[actix_web::test]
async fn a_third_user_sees_nothing_and_can_touch_nothing() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let eve = app.user("Eve").await;
    let mut eve_ws = eve.live_ws().await;
    let mut bob_ws = bob.live_ws().await;

    let conversation = alice.open_conversation(&bob).await;
    let sent = alice.send_http(&bob, &conversation, "private").await;
    alice
        .client
        .publish_key(&united_hub::client::crypto::Identity::generate().x25519_public())
        .await
        .unwrap();
    next_message(&mut bob_ws).await;
    assert_silent(&mut eve_ws, Duration::from_millis(300)).await;

    let err = eve.client.history(&conversation, "").await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("not_participant"))
    );
    let body = send_body(
        None,
        &conversation,
        &eve.seal(&bob, &conversation, "let me in"),
        now_ms(),
    );
    let err = eve.client.send(&body).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("not_participant"))
    );
    let err = eve_ws
        .call(send_request(
            None,
            &conversation,
            &eve.seal(&bob, &conversation, "x"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    let err = eve_ws
        .call(Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));

    // Bob is offline for the next one: Eve cannot ack his entry away.
    drop(bob_ws);
    eventually("bob is offline", || async { !app.is_online(&bob.pubkey) }).await;
    let queued = alice.send_http(&bob, &conversation, "for bob only").await;
    assert_eq!(
        eve.client
            .ack(&[queued.id.clone(), sent.id.clone()])
            .await
            .unwrap(),
        0
    );
    assert!(eve.client.offline().await.unwrap().is_empty());
    let bobs = bob.client.offline().await.unwrap();
    assert_eq!(
        bobs.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![queued.id]
    );
    assert_silent(&mut eve_ws, Duration::from_millis(100)).await;
}

#[actix_web::test]
async fn offline_messages_come_back_in_order_once() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let carol = app.user("Carol").await;
    let with_bob = alice.open_conversation(&bob).await;
    let with_carol = carol.open_conversation(&bob).await;

    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(alice.send_http(&bob, &with_bob, &format!("a{i}")).await.id);
        expected.push(
            carol
                .send_http(&bob, &with_carol, &format!("c{i}"))
                .await
                .id,
        );
    }
    // The senders never get offline entries for their own messages.
    assert!(alice.client.offline().await.unwrap().is_empty());

    let got = bob.client.offline().await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        expected
    );
    let texts: Vec<String> = got.iter().map(|m| bob.open_json(m)).collect();
    assert_eq!(texts, ["a0", "c0", "a1", "c1", "a2", "c2"]);
    assert!(
        bob.client.offline().await.unwrap().is_empty(),
        "a second GET is empty"
    );

    // The same over the socket, and an explicit ack.
    let queued = alice.send_http(&bob, &with_bob, "later").await;
    let ws = bob.ws().await;
    let Payload::DmOfflineMessagesResponse(r) = ws
        .call(Payload::DmOfflineRequest(dm::DmOfflineRequest::default()))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![queued.id.clone()]
    );
    let Payload::DmOfflineAckResponse(ack) = ws
        .call(Payload::DmOfflineAckRequest(dm::DmOfflineAckRequest {
            message_ids: vec![queued.id.clone()],
        }))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(ack.acked, 0, "already delivered by the fetch");
}

#[actix_web::test]
async fn ack_marks_undelivered_entries() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let m1 = alice.send_http(&bob, &conversation, "1").await;
    let m2 = alice.send_http(&bob, &conversation, "2").await;
    assert_eq!(bob.client.ack(&[]).await.unwrap(), 0);
    assert_eq!(
        bob.client
            .ack(&[m1.id.clone(), uuid::Uuid::new_v4().to_string()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        bob.client.ack(std::slice::from_ref(&m1.id)).await.unwrap(),
        0
    );
    let left = bob.client.offline().await.unwrap();
    assert_eq!(
        left.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![m2.id]
    );
}

#[actix_web::test]
async fn an_online_recipient_gets_no_offline_entry() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;
    alice.send_http(&bob, &conversation, "live").await;
    next_message(&mut bob_ws).await;
    assert!(bob.client.offline().await.unwrap().is_empty());
}

#[actix_web::test]
async fn a_recipient_that_drops_mid_send_loses_nothing() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let alice_ws = alice.live_ws().await;
    let mut bob_ws = bob.live_ws().await;

    let sends = (0..60).map(|i| {
        let payload = send_request(
            None,
            &conversation,
            &alice.seal(&bob, &conversation, &format!("{i}")),
        );
        let ws = &alice_ws;
        async move {
            match ws.call(payload).await {
                Ok(Payload::DmSendResponse(r)) => r.message.unwrap().id,
                other => panic!("{other:?}"),
            }
        }
    });
    let dropper = async {
        let mut seen = HashSet::new();
        for _ in 0..10 {
            seen.insert(next_message(&mut bob_ws).await.id);
        }
        bob_ws.close();
        // What the socket still received before it closed was delivered live.
        while let Some(Incoming::Envelope(e)) = bob_ws.next(Duration::from_secs(10)).await {
            if let Some(Payload::DmMessageEvent(m)) = e.payload {
                seen.insert(m.message.unwrap().id);
            }
        }
        seen
    };
    let (accepted, seen_live) = tokio::join!(join_all(sends), dropper);

    let offline = std::cell::RefCell::new(HashSet::new());
    eventually("offline fallbacks are written", || async {
        let fetched = bob.client.offline().await.unwrap();
        let mut offline = offline.borrow_mut();
        offline.extend(fetched.into_iter().map(|m| m.id));
        accepted
            .iter()
            .all(|id| seen_live.contains(id) || offline.contains(id))
    })
    .await;
    let history = bob
        .client
        .history(&conversation, "after=0&limit=100")
        .await
        .unwrap();
    let stored: HashMap<_, _> = history
        .messages
        .iter()
        .map(|m| (m.id.clone(), m.server_sequence))
        .collect();
    assert!(accepted.iter().all(|id| stored.contains_key(id)));
    assert_eq!(stored.len(), 60);
}

/// Contract v1.1: the offline queue comes in pages (`limit`, `has_more`),
/// over HTTP and WebSocket; each entry is returned once.
#[actix_web::test]
async fn the_offline_queue_comes_in_pages_with_has_more() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send_http(&bob, &conversation, &format!("{i}"))
                .await
                .id,
        );
    }

    let mut pages = Vec::new();
    loop {
        let page = bob.client.offline_page(Some(2)).await.unwrap();
        let more = page.has_more;
        pages.push(page.messages.into_iter().map(|m| m.id).collect::<Vec<_>>());
        if !more {
            break;
        }
        assert!(pages.len() < 10, "has_more never ends");
    }
    assert_eq!(
        pages,
        vec![
            sent[0..2].to_vec(),
            sent[2..4].to_vec(),
            sent[4..5].to_vec()
        ],
        "pages of 2, oldest first, has_more until the last"
    );
    let empty = bob.client.offline_page(None).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.has_more);

    for bad in ["0", "-1", "abc", "1.5"] {
        let res = app
            .http()
            .get(app.url(&format!("/api/dm/offline?limit={bad}")))
            .bearer_auth(bob.token())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "limit={bad}");
    }
    let capped = app
        .http()
        .get(app.url("/api/dm/offline?limit=5000"))
        .bearer_auth(bob.token())
        .send()
        .await
        .unwrap();
    assert_eq!(
        capped.status().as_u16(),
        200,
        "over the cap is served at the cap"
    );

    // Over WebSocket: `limit` and `has_more`, 0 meaning the default.
    for i in 0..3 {
        alice
            .send_http(&bob, &conversation, &format!("later {i}"))
            .await;
    }
    let ws = bob.live_ws().await;
    let page = |limit| {
        let ws = &ws;
        async move {
            match ws
                .call(Payload::DmOfflineRequest(dm::DmOfflineRequest { limit }))
                .await
                .unwrap()
            {
                Payload::DmOfflineMessagesResponse(r) => (r.messages.len(), r.has_more),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(page(2).await, (2, true));
    assert_eq!(page(0).await, (1, false));
    assert_eq!(page(0).await, (0, false));
}

/// Issue 9: one client id sent into two conversations. Claimed before it is
/// assigned and checked again at commit, it is stored once; the other send
/// is 409 `conflict` (never a failed batch for anyone else), whether the two
/// race (20 rounds) or the second comes after the first committed.
#[actix_web::test]
async fn one_id_sent_into_two_conversations_is_stored_once() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let carol = app.user("Carol").await;
    let with_bob = alice.open_conversation(&bob).await;
    let with_carol = alice.open_conversation(&carol).await;
    for round in 0..20 {
        let id = uuid::Uuid::new_v4().to_string();
        let to_bob = send_body(
            Some(id.clone()),
            &with_bob,
            &alice.seal(&bob, &with_bob, "b"),
            now_ms(),
        );
        let to_carol = send_body(
            Some(id.clone()),
            &with_carol,
            &alice.seal(&carol, &with_carol, "c"),
            now_ms(),
        );
        let (a, b) = tokio::join!(alice.client.send(&to_bob), alice.client.send(&to_carol));
        let conflicts = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Err(e) if e.code() == Some("conflict")))
            .count();
        let stored = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok((_, true))))
            .count();
        assert_eq!((stored, conflicts), (1, 1), "round {round}: {a:?} / {b:?}");
        // Sequential: the stored one answers 200 again, the other 409.
        let (winner, loser) = if a.is_ok() {
            (&to_bob, &to_carol)
        } else {
            (&to_carol, &to_bob)
        };
        assert!(!alice.client.send(winner).await.unwrap().1);
        assert_eq!(
            alice.client.send(loser).await.unwrap_err().code(),
            Some("conflict")
        );
    }
    // Neither conversation has a gap; 20 rows in all.
    let mut total = 0;
    for conversation in [&with_bob, &with_carol] {
        let seqs = app
            .sql_i64(
                "SELECT server_sequence FROM dm_messages \
                 WHERE CAST(conversation_id AS TEXT) = $1 ORDER BY server_sequence",
                Some(conversation),
            )
            .await;
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
        total += seqs.len();
    }
    assert_eq!(total, 20);
}
