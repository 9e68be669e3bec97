//! Keys, conversations, sending and history: the seed plan's success
//! criteria, one test each.

use std::collections::HashSet;

use prost::Message as _;
use serde_json::{json, Value};
use united_hub::client::send_body;
use united_hub::proto::{dm, Envelope, Payload};

use crate::helpers::*;

/// Criteria 1 and 2: every DM message exists, and the Envelope carries the
/// DM payloads at the contract's field numbers (150-164, error 99).
#[actix_web::test]
async fn envelope_field_numbers_match_the_contract() {
    let cases: Vec<(Payload, u32)> = vec![
        (Payload::Error(Default::default()), 99),
        (Payload::DmMessageEvent(Default::default()), 150),
        (Payload::DmConversationCreatedEvent(Default::default()), 151),
        (Payload::DmKeyRotatedEvent(Default::default()), 152),
        (Payload::DmHistoryRequest(Default::default()), 153),
        (Payload::DmHistoryResponse(Default::default()), 154),
        (Payload::DmConversationListRequest(Default::default()), 155),
        (Payload::DmConversationListResponse(Default::default()), 156),
        (Payload::DmOfflineMessagesResponse(Default::default()), 157),
        (Payload::DmSendRequest(Default::default()), 158),
        (Payload::DmSendResponse(Default::default()), 159),
        (Payload::DmOfflineRequest(Default::default()), 160),
        (Payload::DmOfflineAckRequest(Default::default()), 161),
        (Payload::DmOfflineAckResponse(Default::default()), 162),
        (
            Payload::DmConversationCreateRequest(Default::default()),
            163,
        ),
        (
            Payload::DmConversationCreateResponse(Default::default()),
            164,
        ),
    ];
    for (payload, field) in cases {
        let bytes = Envelope {
            request_id: String::new(),
            payload: Some(payload),
        }
        .encode_to_vec();
        // A length-delimited field: tag = field << 3 | 2, as a varint.
        let mut tag = Vec::new();
        prost::encoding::encode_varint(u64::from(field << 3 | 2), &mut tag);
        assert_eq!(&bytes[..tag.len()], &tag[..], "field {field}");
    }
    // request_id is field 1; the seed's message fields keep their numbers.
    let env = Envelope {
        request_id: "x".into(),
        payload: None,
    }
    .encode_to_vec();
    assert_eq!(env, vec![0x0a, 1, b'x']);
    let m = dm::EncryptedDmMessage {
        sender_display_name: "n".into(),
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), vec![9 << 3 | 2, 1, b'n']);
    let h = dm::DmHistoryRequest {
        after_sequence: 1,
        ..Default::default()
    };
    assert_eq!(h.encode_to_vec(), vec![4 << 3, 1]);
}

/// Criterion 4: a user publishes the X25519 key derived from their identity;
/// others fetch it.
#[actix_web::test]
async fn keys_are_published_and_fetched() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let key = bob.client.get_key(&alice.pubkey).await.unwrap();
    assert_eq!(key.ed25519_pubkey, alice.pubkey);
    assert_eq!(
        key.x25519_pubkey,
        hex::encode(alice.identity.x25519_public())
    );
    assert!(key.published_at > 0);

    let nobody = app.client();
    let mut nobody_client = nobody.clone();
    nobody_client
        .login(
            &united_hub::client::crypto::Identity::generate(),
            Some("Nobody"),
        )
        .await
        .unwrap();
    let me = nobody_client.user(&alice.pubkey).await.unwrap();
    assert_eq!(me.display_name, "Alice");
    let err = alice.client.get_key(&"cd".repeat(32)).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(404), Some("not_found")));
}

/// Criterion 5: one conversation per pair, normalised, 201 then 200.
#[actix_web::test]
async fn conversations_are_created_once_per_pair() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let (created, is_new) = alice.client.create_conversation(&bob.pubkey).await.unwrap();
    assert!(is_new);
    let (again, is_new) = bob
        .client
        .create_conversation(&alice.pubkey.to_uppercase())
        .await
        .unwrap();
    assert!(!is_new);
    assert_eq!(created, again);
    assert!(created.participant_a_pubkey < created.participant_b_pubkey);
    let names: HashSet<_> = [
        created.participant_a_display_name.as_str(),
        created.participant_b_display_name.as_str(),
    ]
    .into();
    assert_eq!(names, HashSet::from(["Alice", "Bob"]));
    assert_eq!(created.last_message_at, 0);
    assert_eq!(created.last_message_preview, "");
}

#[actix_web::test]
async fn conversations_are_listed_most_recent_first() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let carol = app.user("Carol").await;
    let dave = app.user("Dave").await;
    let with_bob = alice.open_conversation(&bob).await;
    let with_carol = alice.open_conversation(&carol).await;
    let with_dave = alice.open_conversation(&dave).await;
    let first = alice.send_http(&carol, &with_carol, "first").await;
    // Distinct server times, so the order is not a tie.
    let stored = app
        .sql_i64(
            "SELECT created_at FROM dm_messages WHERE CAST(id AS TEXT) = $1",
            Some(&first.id),
        )
        .await[0];
    eventually("the clock moves on", || async { now_ms() > stored as u64 }).await;
    alice.send_http(&bob, &with_bob, "second").await;

    let list = alice.client.conversations().await.unwrap();
    let ids: Vec<_> = list.iter().map(|c| c.id.clone()).collect();
    // Bob (latest message), Carol, then Dave (no messages).
    assert_eq!(ids, vec![with_bob.clone(), with_carol, with_dave]);
    assert!(list[0].last_message_at >= list[1].last_message_at);
    assert_eq!(list[2].last_message_at, 0);
    // Bob sees only his own conversation.
    let bobs = bob.client.conversations().await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, with_bob);
}

/// Criterion 6: a sent message is stored as ciphertext and pushed to the
/// recipient, who decrypts it.
#[actix_web::test]
async fn a_message_is_stored_and_pushed_to_the_recipient() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;

    let sent = alice.send_http(&bob, &conversation, "hello bob").await;
    assert_eq!(sent.server_sequence, 1);
    assert_eq!(sent.sender_pubkey, alice.pubkey);
    assert_eq!(sent.sender_display_name, "Alice");

    let pushed = next_message(&mut bob_ws).await;
    assert_eq!(pushed.id, sent.id);
    assert_eq!(pushed.server_sequence, 1);
    assert_eq!(bob.open_proto(&pushed), "hello bob");
    assert_eq!(bob.open_json(&sent), "hello bob");
}

/// Ids the server makes are UUIDv7 with the time of the send, so the unique
/// index on message ids grows at its end (docs/benchmarks-history.md, issue 13); the
/// reference client's ids are v7 too.
#[actix_web::test]
async fn ids_are_time_ordered_uuids() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let timestamp_ms = |id: &str| {
        let id = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(id.get_version_num(), 7, "{id} is not a UUIDv7");
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        secs * 1000 + u64::from(nanos) / 1_000_000
    };

    let before = now_ms();
    let by_server = alice.send_http(&bob, &conversation, "no id").await;
    let bob_key = alice.client.recipient_key(&bob.pubkey).await.unwrap();
    let (by_client, _) = (alice.client)
        .send_sealed(&alice.identity, &bob_key, &conversation, b"client id")
        .await
        .unwrap();
    let after = now_ms();

    for id in [&by_server.id, &by_client.id] {
        let at = timestamp_ms(id);
        assert!(
            (before..=after).contains(&at),
            "{id}: {at} not in {before}..={after}"
        );
    }
    assert!(timestamp_ms(&by_server.id) <= timestamp_ms(&by_client.id));
}

#[actix_web::test]
async fn a_client_id_makes_sends_idempotent() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;

    let id = uuid::Uuid::new_v4().to_string();
    let sealed = alice.seal(&bob, &conversation, "once");
    let body = send_body(Some(id.clone()), &conversation, &sealed, 1_700_000_000_000);
    let (first, created) = alice.client.send(&body).await.unwrap();
    assert!(created);
    assert_eq!(first.id, id, "stored under the client's id");
    let (second, created) = alice.client.send(&body).await.unwrap();
    assert!(!created, "a resend is 200");
    assert_eq!(second, first);

    let pushed = next_message(&mut bob_ws).await;
    assert_eq!(pushed.id, id);
    assert_silent(&mut bob_ws, std::time::Duration::from_millis(300)).await;

    let mut changed = body.clone();
    changed.timestamp += 1;
    let err = alice.client.send(&changed).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("conflict")));
    // Bob reusing Alice's id is a conflict too.
    let bob_body = send_body(
        Some(id),
        &conversation,
        &bob.seal(&alice, &conversation, "x"),
        1,
    );
    let err = bob.client.send(&bob_body).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    let history = alice.client.history(&conversation, "").await.unwrap();
    assert_eq!(history.messages.len(), 1, "no second row");
}

/// Criterion 7: paginated history, both directions, exact has_more.
#[actix_web::test]
async fn history_pages_both_ways() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    for i in 1..=7 {
        alice.send_http(&bob, &conversation, &format!("m{i}")).await;
    }
    let seqs = |h: &united_hub::json::HistoryJson| {
        h.messages
            .iter()
            .map(|m| m.server_sequence)
            .collect::<Vec<_>>()
    };

    let newest = bob.client.history(&conversation, "limit=3").await.unwrap();
    assert_eq!((seqs(&newest), newest.has_more), (vec![7, 6, 5], true));
    let older = bob
        .client
        .history(&conversation, "before=5&limit=3")
        .await
        .unwrap();
    assert_eq!((seqs(&older), older.has_more), (vec![4, 3, 2], true));
    let oldest = bob
        .client
        .history(&conversation, "before=2&limit=3")
        .await
        .unwrap();
    assert_eq!((seqs(&oldest), oldest.has_more), (vec![1], false));
    let exact = bob
        .client
        .history(&conversation, "before=4&limit=3")
        .await
        .unwrap();
    assert_eq!((seqs(&exact), exact.has_more), (vec![3, 2, 1], false));

    let catch_up = bob
        .client
        .history(&conversation, "after=2&limit=4")
        .await
        .unwrap();
    assert_eq!(
        (seqs(&catch_up), catch_up.has_more),
        (vec![3, 4, 5, 6], true)
    );
    let rest = bob.client.history(&conversation, "after=6").await.unwrap();
    assert_eq!((seqs(&rest), rest.has_more), (vec![7], false));
    let all = bob
        .client
        .history(&conversation, "after=0&limit=500")
        .await
        .unwrap();
    assert_eq!(all.messages.len(), 7, "limit is capped, not refused");
    assert_eq!(bob.open_json(&all.messages[0]), "m1");
}

#[actix_web::test]
async fn key_changes_reach_the_publisher_and_partners_only() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let eve = app.user("Eve").await;
    alice.open_conversation(&bob).await;
    let mut alice_ws = alice.live_ws().await;
    let mut bob_ws = bob.live_ws().await;
    let mut eve_ws = eve.live_ws().await;

    let new_key = united_hub::client::crypto::Identity::generate().x25519_public();
    alice.client.publish_key(&new_key).await.unwrap();
    for ws in [&mut alice_ws, &mut bob_ws] {
        let event = next_envelope(ws).await;
        let Some(Payload::DmKeyRotatedEvent(e)) = event.payload else {
            panic!("{event:?}")
        };
        assert_eq!(e.user_pubkey, alice.pubkey);
        assert_eq!(&e.new_x25519_pubkey[..], &new_key[..]);
    }
    // Publishing the same key again sends nothing.
    alice.client.publish_key(&new_key).await.unwrap();
    assert_silent(&mut alice_ws, std::time::Duration::from_millis(300)).await;
    assert_silent(&mut bob_ws, std::time::Duration::from_millis(100)).await;
    assert_silent(&mut eve_ws, std::time::Duration::from_millis(100)).await;
}

#[actix_web::test]
async fn small_order_keys_are_refused() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let mut p_minus_1 = [0xffu8; 32];
    p_minus_1[0] = 0xec;
    p_minus_1[31] = 0x7f;
    let mut one_high = [0u8; 32];
    one_high[0] = 1;
    one_high[31] = 0x80;
    for key in [[0u8; 32], p_minus_1, one_high] {
        let err = alice.client.publish_key(&key).await.unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (Some(400), Some("invalid_request"))
        );
    }
    for bad in [
        json!({"x25519_pubkey": "ab"}),
        json!({"x25519_pubkey": "zz".repeat(32)}),
        json!({}),
    ] {
        let mut res = app
            .http()
            .post(app.url("/api/dm/keys"))
            .bearer_auth(alice.token())
            .send_json(&bad)
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}

#[actix_web::test]
async fn only_a_new_conversation_sends_an_event() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mut alice_ws = alice.live_ws().await;
    let mut bob_ws = bob.live_ws().await;
    alice.open_conversation(&bob).await;
    for ws in [&mut alice_ws, &mut bob_ws] {
        let event = next_envelope(ws).await;
        let Some(Payload::DmConversationCreatedEvent(e)) = event.payload else {
            panic!("{event:?}")
        };
        let c = e.conversation.unwrap();
        assert_eq!(c.last_message_at, 0);
        assert_eq!(c.last_message_preview, "");
    }
    // Opening it again, from either side, is silent.
    bob.open_conversation(&alice).await;
    alice.open_conversation(&bob).await;
    assert_silent(&mut alice_ws, std::time::Duration::from_millis(300)).await;
    assert_silent(&mut bob_ws, std::time::Duration::from_millis(100)).await;
}

#[actix_web::test]
async fn an_upgrade_with_an_expired_token_is_token_expired() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let app = spawn_app().await;
    let user = app.user("Late").await;
    let secret = app.jwt_secret.clone();
    let now = now_ms() / 1000;
    let claims = json!({"sub": user.pubkey, "iat": now - 100, "exp": now - 1, "iss": "united-hub"});
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let mut res = app
        .http()
        .get(app.url("/ws"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_expired");
    let refused = united_hub::client::WsClient::connect(&app.ws_url(), &expired)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), Some(401));
}

/// A rename reaches the live conversation actor: the next message carries
/// the new name (issue 9: renames reach actors without the directory lock).
#[actix_web::test]
async fn a_rename_reaches_a_conversation_that_is_already_active() {
    let app = spawn_app().await;
    let mut alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let first = alice.send_http(&bob, &conversation, "before").await;
    assert_eq!(first.sender_display_name, "Alice");
    let identity = alice.identity.clone();
    alice
        .client
        .login(&identity, Some("Alice Two"))
        .await
        .unwrap();
    let second = alice.send_http(&bob, &conversation, "after").await;
    assert_eq!(second.sender_display_name, "Alice Two");
    // History keeps each message's name as it was sent.
    let page = bob
        .client
        .history(&conversation, "after=0&limit=10")
        .await
        .unwrap();
    let names: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.sender_display_name.as_str())
        .collect();
    assert_eq!(names, vec!["Alice", "Alice Two"]);
}
