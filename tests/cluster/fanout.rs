//! What a client sees does not depend on which node it talks to.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use united_hub::client::send_body;
use united_hub::proto::Payload;

use crate::helpers::*;
use crate::support::*;

#[actix_web::test]
async fn identity_works_on_every_node() {
    let c = cluster(2).await;
    // A challenge from node 0 is answered at node 1.
    let identity = united_hub::client::crypto::Identity::generate();
    let challenge = c.nodes[0].client().challenge().await.unwrap();
    let mut at_b = c.nodes[1].client();
    let session = at_b
        .verify(&identity, &challenge, Some("Dora"))
        .await
        .expect("a challenge from node 0 verifies at node 1");
    // Its access token works at node 0, its refresh token at node 0 too.
    let mut at_a = c.nodes[0].client();
    at_a.set_access_token(&session.access_token);
    let me = at_a.user(&identity.public_key_hex()).await.unwrap();
    assert_eq!(me.display_name, "Dora");
    let refreshed = at_a.refresh(&session.refresh_token).await.unwrap();
    assert!(!refreshed.access_token.is_empty());
    // The rotated refresh token is dead everywhere.
    let again = at_b.refresh(&session.refresh_token).await;
    assert_eq!(again.unwrap_err().code(), Some("invalid_refresh_token"));
    // A challenge is used once, cluster-wide.
    let again = c.nodes[0]
        .client()
        .verify(&identity, &challenge, None)
        .await;
    assert_eq!(again.unwrap_err().code(), Some("unknown_challenge"));
}

#[actix_web::test]
async fn the_per_client_challenge_cap_counts_on_every_node() {
    use united_hub::auth::MAX_PENDING_PER_CLIENT;
    use united_hub::localcluster::{LocalNats, LocalPostgres};
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            spawn_app_with(|s| {
                node_settings(s, &pg, &nats);
                s.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
                // The per-client limits are on only with an auth rate.
                s.auth_rate = 1000;
                s.auth_burst = 1000;
            })
            .await,
        );
    }
    let c = Cluster { pg, nats, nodes };
    // The greedy client spreads its challenges over both nodes.
    let greedy = "2001:db8:6:6::1";
    for i in 0..MAX_PENDING_PER_CLIENT {
        let (status, _, _) = challenge_as(&c.nodes[i % 2].http(), &c.nodes[i % 2], greedy).await;
        assert_eq!(status, 200, "challenge {i} is under the cap");
    }
    for node in &c.nodes {
        let (status, retry, _) = challenge_as(&node.http(), node, greedy).await;
        assert_eq!(status, 429, "over the cap, on either node");
        // Until its oldest challenge expires (the TTL is 60 s).
        let retry = retry.expect("Retry-After");
        assert!((55..=60).contains(&retry), "Retry-After: {retry}");
    }
    // Another address of the same /64 counts as the same client.
    assert_eq!(
        challenge_as(&c.nodes[1].http(), &c.nodes[1], "2001:db8:6:6::beef")
            .await
            .0,
        429
    );
    // Other clients are not affected.
    assert_eq!(
        challenge_as(&c.nodes[0].http(), &c.nodes[0], "203.0.113.5")
            .await
            .0,
        200
    );
    assert_eq!(
        challenge_as(&c.nodes[1].http(), &c.nodes[1], "2001:db8:6:7::1")
            .await
            .0,
        200
    );
    // The table keys clients by a 32-byte keyed hash, never the address.
    let rows = c
        .db()
        .await
        .query(
            "SELECT client FROM auth_challenges WHERE client IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), MAX_PENDING_PER_CLIENT + 2);
    for row in rows {
        let client: Vec<u8> = row.get(0);
        assert_eq!(client.len(), 32);
        assert!(!String::from_utf8_lossy(&client).contains("2001"));
    }
}

#[actix_web::test]
async fn a_message_sent_on_one_node_is_pushed_on_the_others() {
    let c = cluster(3).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let mut bob_b = c.ws_at(&bob, 1).await;
    let mut bob_c = c.ws_at(&bob, 2).await;
    let mut alice_c = c.ws_at(&alice, 2).await;

    // Creating the conversation on node 0 reaches Bob's sessions elsewhere.
    let conversation = alice.open_conversation(&bob).await;
    for ws in [&mut bob_b, &mut bob_c, &mut alice_c] {
        let e = next_envelope(ws).await;
        assert!(
            matches!(e.payload, Some(Payload::DmConversationCreatedEvent(_))),
            "{e:?}"
        );
    }

    let sent = alice.send_http(&bob, &conversation, "across nodes").await;
    assert_eq!(sent.server_sequence, 1);
    for ws in [&mut bob_b, &mut bob_c] {
        let m = next_message(ws).await;
        assert_eq!(m.server_sequence, 1);
        assert_eq!(bob.open_proto(&m), "across nodes");
    }
    // The sender's own session on another node gets it too.
    assert_eq!(next_message(&mut alice_c).await.id, sent.id);
    // Pushed live: no offline entry.
    assert_eq!(c.offline_entries(&bob).await, 0);

    // History is the same from every node.
    for node in 0..3 {
        let page = c
            .client_at(&bob, node)
            .history(&conversation, "limit=10")
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1, "node {node}");
    }

    // A key rotation on node 1 reaches Alice's session on node 2.
    let new_key = united_hub::client::crypto::Identity::generate().x25519_public();
    c.client_at(&bob, 1).publish_key(&new_key).await.unwrap();
    let e = next_envelope(&mut alice_c).await;
    match e.payload {
        Some(Payload::DmKeyRotatedEvent(k)) => {
            assert_eq!(k.user_pubkey, bob.pubkey);
            assert_eq!(&k.new_x25519_pubkey[..], &new_key[..]);
        }
        other => panic!("expected a key rotation, got {other:?}"),
    }
}

/// The concurrency check: 2 users, each with one session on each of
/// 3 nodes, both sending 300 messages at once through all their sessions.
#[actix_web::test]
async fn both_users_sending_through_three_nodes_get_1_to_600_and_every_session_sees_all_in_order() {
    let c = cluster(3).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut sessions = Vec::new();
    for node in 0..3 {
        sessions.push((0, c.ws_at(&alice, node).await));
        sessions.push((1, c.ws_at(&bob, node).await));
    }

    let users = [&alice, &bob];
    let mut sends = Vec::new();
    for (index, (who, ws)) in sessions.iter().enumerate() {
        let (from, to) = (users[*who], users[1 - *who]);
        for i in 0..100 {
            let sealed = from.seal(to, &conversation, &format!("{index}/{i}"));
            let payload = send_request(None, &conversation, &sealed);
            sends.push(async move {
                match ws.call(payload).await {
                    Ok(Payload::DmSendResponse(r)) => r.message.unwrap().server_sequence,
                    other => panic!("send failed: {other:?}"),
                }
            });
        }
    }
    let mut answered = join_all(sends).await;
    answered.sort_unstable();
    assert_eq!(answered, (1..=600).collect::<Vec<u64>>());
    assert_eq!(
        c.stored_sequences(&conversation).await,
        (1..=600).collect::<Vec<i64>>()
    );

    for (index, (_, ws)) in sessions.iter_mut().enumerate() {
        let got = collect_messages(ws, 600, Duration::from_secs(15)).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.server_sequence).collect();
        assert_eq!(
            seqs,
            (1..=600).collect::<Vec<u64>>(),
            "session {index} sees every message once, in order"
        );
        let ids: HashSet<&str> = got.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 600);
    }
    // Nobody was offline: no entry was queued.
    assert_eq!(c.offline_entries(&alice).await, 0);
    assert_eq!(c.offline_entries(&bob).await, 0);
}

#[actix_web::test]
async fn online_means_a_session_on_any_node() {
    let c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(0, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;

    // Bob has no session anywhere: the message waits in his offline queue.
    let first = alice.send_http(&bob, &conversation, "while away").await;
    assert_eq!(c.offline_entries(&bob).await, 1);

    // Bob online on node 1 only: a send on node 0 is pushed, not queued.
    let mut bob_b = c.ws_at(&bob, 1).await;
    eventually("node 0 sees Bob online", || async {
        c.nodes[0]
            .state
            .cluster
            .as_ref()
            .unwrap()
            .online_elsewhere(&united_hub::model::Pubkey::parse(&bob.pubkey).unwrap())
    })
    .await;
    let second = alice.send_http(&bob, &conversation, "while here").await;
    assert_eq!(next_message(&mut bob_b).await.id, second.id);
    assert_eq!(c.offline_entries(&bob).await, 1, "no entry for a live push");

    // His offline queue, read at node 1, holds the first only.
    let offline = c.client_at(&bob, 1).offline().await.unwrap();
    assert_eq!(
        offline.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str()]
    );

    // Bob leaves; once node 0 knows, messages are queued again.
    drop(bob_b);
    eventually("node 0 sees Bob gone", || async {
        !c.nodes[0]
            .state
            .cluster
            .as_ref()
            .unwrap()
            .online_elsewhere(&united_hub::model::Pubkey::parse(&bob.pubkey).unwrap())
    })
    .await;
    alice.send_http(&bob, &conversation, "away again").await;
    assert_eq!(c.offline_entries(&bob).await, 2);
}

#[actix_web::test]
async fn a_resend_through_another_node_is_recognised() {
    let c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = c.ws_at(&bob, 1).await;

    let sealed = alice.seal(&bob, &conversation, "once");
    let id = uuid::Uuid::new_v4().to_string();
    let body = send_body(Some(id.clone()), &conversation, &sealed, now_ms());
    let (first, created) = alice.client.send(&body).await.unwrap();
    assert!(created);
    let (again, created) = c.client_at(&alice, 1).send(&body).await.unwrap();
    assert!(!created, "a resend through node 1 is a 200");
    assert_eq!(again.server_sequence, first.server_sequence);
    assert_eq!(again.id, id);
    // Changed content under the same id is a conflict on either node.
    let other = alice.seal(&bob, &conversation, "different");
    let clash = send_body(Some(id.clone()), &conversation, &other, now_ms());
    for node in 0..2 {
        let err = c.client_at(&alice, node).send(&clash).await.unwrap_err();
        assert_eq!(err.code(), Some("conflict"), "node {node}");
    }
    // One push, one row; the next message gets the next sequence.
    assert_eq!(next_message(&mut bob_ws).await.id, id);
    assert_silent(&mut bob_ws, Duration::from_millis(500)).await;
    let next = alice.send_http(&bob, &conversation, "next").await;
    assert_eq!(next.server_sequence, 2);
    assert_eq!(c.stored_sequences(&conversation).await, vec![1, 2]);
}

#[actix_web::test]
async fn sessions_get_nothing_of_other_peoples_conversations() {
    let c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(0, "Bob").await;
    let mallory = c.user(1, "Mallory").await;
    let mut mallory_ws = c.ws_at(&mallory, 1).await;
    let mut mallory_ws0 = c.ws_at(&mallory, 0).await;
    let conversation = alice.open_conversation(&bob).await;
    alice.send_http(&bob, &conversation, "private").await;
    let err = c
        .client_at(&mallory, 1)
        .history(&conversation, "limit=10")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_participant"));
    assert_silent(&mut mallory_ws, Duration::from_millis(700)).await;
    assert_silent(&mut mallory_ws0, Duration::from_millis(100)).await;
}

/// A new conversation's event is not repaired from the database: it must
/// reach a session that opened on another node a moment before, when the
/// creating node may not have heard of that session yet.
#[actix_web::test]
async fn a_conversation_opened_just_after_a_session_on_another_node_reaches_that_session() {
    let c = cluster(2).await;
    for round in 0..10 {
        let alice = c.user(0, &format!("Alice {round}")).await;
        let bob = c.user(1, &format!("Bob {round}")).await;
        let mut bob_ws = c.ws_at(&bob, 1).await;
        alice.open_conversation(&bob).await;
        let e = next_envelope(&mut bob_ws).await;
        assert!(
            matches!(e.payload, Some(Payload::DmConversationCreatedEvent(_))),
            "round {round}: {e:?}"
        );
    }
}

/// The mechanism behind the test above, without its race: a new
/// conversation's event goes on the bus even when no other node is known to
/// hold a session of its users, since one may have opened a moment ago.
#[actix_web::test]
async fn a_new_conversation_goes_on_the_bus_whoever_is_known_online() {
    use futures_util::StreamExt as _;
    let c = cluster(2).await;
    let tap = async_nats::connect(format!("127.0.0.1:{}", c.nats.port()))
        .await
        .expect("NATS");
    let mut events = tap.subscribe("united.events").await.unwrap();
    tap.flush().await.unwrap();
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    // Nobody has a session anywhere.
    alice.open_conversation(&bob).await;
    let frame = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(
        matches!(frame, Ok(Some(_))),
        "the conversation's event was published: {frame:?}"
    );
}
