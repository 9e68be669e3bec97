//! WebSocket-first clients: everything over one socket once logged in, and
//! the reference client's reconnect and refresh.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use united_hub::client::crypto::{self, ed25519_pk_to_x25519, Identity};
use united_hub::client::{reconnect, HubClient, Incoming, WsClient};
use united_hub::proto::{dm, Envelope, Payload};

use crate::helpers::*;

/// Sends a request with a chosen id over the raw socket and returns the answer.
async fn raw_request(ws: &mut WsClient, id: &str, payload: Payload) -> Envelope {
    let env = Envelope {
        request_id: id.into(),
        payload: Some(payload),
    };
    ws.send_raw(awc::ws::Message::Binary(env.encode_to_vec().into()))
        .unwrap();
    loop {
        let got = next_envelope(ws).await;
        if got.request_id == id {
            return got;
        }
    }
}

#[actix_web::test]
async fn a_websocket_only_client_does_the_whole_flow() {
    let app = spawn_app().await;
    // Login is the only HTTP either side makes; Bob's X25519 key is derived
    // from his identity, so Alice needs no key lookup either.
    let alice_id = Identity::generate();
    let bob_id = Identity::generate();
    let mut alice_http = HubClient::new(&app.address);
    let mut bob_http = HubClient::new(&app.address);
    let alice_token = alice_http
        .login(&alice_id, Some("Alice"))
        .await
        .unwrap()
        .access_token;
    let bob_token = bob_http
        .login(&bob_id, Some("Bob"))
        .await
        .unwrap()
        .access_token;
    let mut alice = WsClient::connect(&app.ws_url(), &alice_token)
        .await
        .unwrap();

    let created = raw_request(
        &mut alice,
        "create-1",
        Payload::DmConversationCreateRequest(dm::DmConversationCreateRequest {
            recipient_pubkey: bob_id.public_key_hex(),
        }),
    )
    .await;
    let Some(Payload::DmConversationCreateResponse(c)) = created.payload else {
        panic!("{created:?}")
    };
    assert!(c.created);
    let conversation = c.conversation.unwrap().id;

    let bob_x = ed25519_pk_to_x25519(&bob_id.public_key()).unwrap();
    for i in 0..3 {
        let sealed = crypto::seal(
            &alice_id,
            &bob_x,
            &conversation,
            format!("ws {i}").as_bytes(),
        )
        .unwrap();
        let answer = raw_request(
            &mut alice,
            &format!("send-{i}"),
            send_request(
                Some(uuid::Uuid::new_v4().to_string()),
                &conversation,
                &sealed,
            ),
        )
        .await;
        let Some(Payload::DmSendResponse(r)) = answer.payload else {
            panic!("{answer:?}")
        };
        assert_eq!(r.message.unwrap().server_sequence, i + 1);
    }

    let answer = raw_request(
        &mut alice,
        "history-1",
        Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            limit: 2,
            ..Default::default()
        }),
    )
    .await;
    let Some(Payload::DmHistoryResponse(h)) = answer.payload else {
        panic!("{answer:?}")
    };
    assert_eq!(
        h.messages
            .iter()
            .map(|m| m.server_sequence)
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    assert!(h.has_more);
    let answer = raw_request(
        &mut alice,
        "history-2",
        Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            after_sequence: 1,
            ..Default::default()
        }),
    )
    .await;
    let Some(Payload::DmHistoryResponse(h)) = answer.payload else {
        panic!("{answer:?}")
    };
    assert_eq!(
        h.messages
            .iter()
            .map(|m| m.server_sequence)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(!h.has_more);

    let answer = raw_request(
        &mut alice,
        "list-1",
        Payload::DmConversationListRequest(dm::DmConversationListRequest {}),
    )
    .await;
    let Some(Payload::DmConversationListResponse(l)) = answer.payload else {
        panic!("{answer:?}")
    };
    assert_eq!(l.conversations.len(), 1);
    assert!(l.conversations[0].last_message_at > 0);

    // Bob, also socket-only: his offline queue, decrypted, then an ack.
    let mut bob = WsClient::connect(&app.ws_url(), &bob_token).await.unwrap();
    let answer = raw_request(
        &mut bob,
        "offline-1",
        Payload::DmOfflineRequest(dm::DmOfflineRequest::default()),
    )
    .await;
    let Some(Payload::DmOfflineMessagesResponse(o)) = answer.payload else {
        panic!("{answer:?}")
    };
    let texts: Vec<String> = o
        .messages
        .iter()
        .map(|m| {
            let sealed = crypto::Sealed {
                ciphertext: m.encrypted_payload.to_vec(),
                nonce: m.nonce[..].try_into().unwrap(),
                ephemeral_pubkey: m.ephemeral_pubkey[..].try_into().unwrap(),
            };
            String::from_utf8(
                crypto::open(&bob_id, &sealed, &conversation, &alice_id.public_key())
                    .unwrap()
                    .plaintext,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(texts, ["ws 0", "ws 1", "ws 2"]);
    let answer = raw_request(
        &mut bob,
        "ack-1",
        Payload::DmOfflineAckRequest(dm::DmOfflineAckRequest {
            message_ids: o.messages.iter().map(|m| m.id.clone()).collect(),
        }),
    )
    .await;
    let Some(Payload::DmOfflineAckResponse(a)) = answer.payload else {
        panic!("{answer:?}")
    };
    assert_eq!(a.acked, 0, "the fetch already marked them delivered");
}

#[actix_web::test]
async fn fifty_pipelined_requests_each_get_their_own_answer() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut ws = alice.ws().await;

    // Fifty requests of five kinds, written back to back before any answer.
    let mut expected = HashMap::new();
    for i in 0..50 {
        let id = format!("p{i}");
        let payload = match i % 5 {
            0 => send_request(
                None,
                &conversation,
                &alice.seal(&bob, &conversation, &format!("{i}")),
            ),
            1 => Payload::DmHistoryRequest(dm::DmHistoryRequest {
                conversation_id: conversation.clone(),
                ..Default::default()
            }),
            2 => Payload::DmConversationListRequest(dm::DmConversationListRequest {}),
            3 => Payload::DmOfflineRequest(dm::DmOfflineRequest::default()),
            _ => Payload::DmConversationCreateRequest(dm::DmConversationCreateRequest {
                recipient_pubkey: bob.pubkey.clone(),
            }),
        };
        expected.insert(id.clone(), i % 5);
        let env = Envelope {
            request_id: id,
            payload: Some(payload),
        };
        ws.send_raw(awc::ws::Message::Binary(env.encode_to_vec().into()))
            .unwrap();
    }
    let mut answered = HashMap::new();
    while answered.len() < 50 {
        let env = next_envelope(&mut ws).await;
        if env.request_id.is_empty() {
            continue; // this session's own DmMessageEvents
        }
        let kind = match env.payload {
            Some(Payload::DmSendResponse(_)) => 0,
            Some(Payload::DmHistoryResponse(_)) => 1,
            Some(Payload::DmConversationListResponse(_)) => 2,
            Some(Payload::DmOfflineMessagesResponse(_)) => 3,
            Some(Payload::DmConversationCreateResponse(_)) => 4,
            other => panic!("unexpected answer {other:?}"),
        };
        assert!(
            answered.insert(env.request_id.clone(), kind).is_none(),
            "{} answered twice",
            env.request_id
        );
    }
    assert_eq!(answered, expected);
}

#[actix_web::test]
async fn reconnect_catches_up_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let with_alice = alice.open_conversation(&bob).await;
    let carol = app.user("Carol").await;
    let with_carol = carol.open_conversation(&bob).await;

    let mut bob_client = bob.client.clone();
    let mut last_seen = HashMap::new();
    let (mut ws, missed) = reconnect(&mut bob_client, &mut last_seen).await.unwrap();
    assert!(missed.is_empty());
    alice.send_http(&bob, &with_alice, "live 1").await;
    let live = next_message(&mut ws).await;
    last_seen.insert(live.conversation_id.clone(), live.server_sequence);
    drop(ws);

    // Away: more from both; one of them beyond a history page.
    for i in 0..3 {
        alice
            .send_http(&bob, &with_alice, &format!("away a{i}"))
            .await;
    }
    for i in 0..120 {
        carol
            .send_http(&bob, &with_carol, &format!("away c{i}"))
            .await;
    }
    let (_ws, missed) = reconnect(&mut bob_client, &mut last_seen).await.unwrap();
    let from_alice: Vec<String> = missed
        .iter()
        .filter(|m| m.conversation_id == with_alice)
        .map(|m| bob.open_json(m))
        .collect();
    assert_eq!(from_alice, ["away a0", "away a1", "away a2"]);
    let from_carol: Vec<u64> = missed
        .iter()
        .filter(|m| m.conversation_id == with_carol)
        .map(|m| m.server_sequence)
        .collect();
    assert_eq!(from_carol, (1..=120).collect::<Vec<_>>());
    assert_eq!(last_seen[&with_alice], 4);
    assert_eq!(last_seen[&with_carol], 120);
    assert!(
        bob.client.offline().await.unwrap().is_empty(),
        "the queue was consumed"
    );
}

#[actix_web::test]
async fn the_client_refreshes_before_its_token_expires() {
    let app = spawn_app_with(|s| s.access_token_ttl = 30).await;
    let id = Identity::generate();
    let mut client = app.client();
    let first = client.login(&id, Some("Fresh")).await.unwrap();
    assert!(
        client.refresh_if_needed().await.unwrap(),
        "30 s left is within the margin"
    );
    client
        .conversations()
        .await
        .expect("the refreshed token works");
    // It really rotated: the login's refresh token is spent.
    let spent = client
        .clone()
        .refresh(&first.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Some("invalid_refresh_token"));

    let app = spawn_app().await;
    let mut client = app.client();
    client.login(&id, Some("Fresh")).await.unwrap();
    assert!(
        !client.refresh_if_needed().await.unwrap(),
        "15 minutes left: no refresh"
    );
}

#[actix_web::test]
async fn a_closed_socket_reports_its_close() {
    let app = spawn_app().await;
    let user = app.user("Closer").await;
    let mut ws = user.live_ws().await;
    app.handle.shutdown().await;
    match ws.next(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1001)),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}

/// A session lives as long as its access token: it is closed with 4001 when
/// the token expires, unless the client sends a fresh token in band
/// (`AuthRequest`), which must be for the same user.
#[actix_web::test]
async fn a_session_closes_at_token_expiry_unless_reauthenticated_in_band() {
    use united_hub::client::Incoming;
    use united_hub::proto::ws::AuthRequest;
    let app = spawn_app_with(|s| s.access_token_ttl = 4).await;
    let mut user = app.user("Ttl").await;
    let other = app.user("Other").await;
    let first_token = user.token().to_owned();
    let first_exp = token_exp(&first_token);
    let mut kept = user.live_ws().await;
    let mut dropped = user.live_ws().await;

    // A token of someone else, or garbage, is refused; the session stays.
    for (token, code) in [(other.token(), "unauthorized"), ("garbage", "unauthorized")] {
        let err = kept
            .call(Payload::AuthRequest(AuthRequest {
                access_token: token.to_owned(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code));
    }

    // A fresh token from a refresh, once the clock has moved a second.
    eventually("a new second", || async { now_ms() / 1000 > first_exp - 4 }).await;
    let refresh = user.client.refresh_token().unwrap().to_owned();
    user.client.refresh(&refresh).await.unwrap();
    let fresh = user.token().to_owned();
    let fresh_exp = token_exp(&fresh);
    assert!(fresh_exp > first_exp);
    match kept
        .call(Payload::AuthRequest(AuthRequest {
            access_token: fresh,
        }))
        .await
        .unwrap()
    {
        Payload::AuthResponse(r) => assert_eq!(r.expires_at, fresh_exp),
        other => panic!("{other:?}"),
    }

    // The session without a fresh token closes with 4001 at its expiry.
    match dropped.next(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(4001)),
        other => panic!("expected a 4001 close, got {other:?}"),
    }
    assert!(now_ms() >= first_exp * 1000 - 50, "not before the expiry");
    // The other is still open past the first token's expiry...
    kept.call(Payload::DmConversationListRequest(Default::default()))
        .await
        .expect("re-authenticated: still open");
    // ...and closes at the fresh token's.
    match kept.next(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(4001)),
        other => panic!("expected a 4001 close, got {other:?}"),
    }
    assert!(now_ms() >= fresh_exp * 1000 - 50);
}

/// The `exp` claim of a JWT, read without checking it.
fn token_exp(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims["exp"].as_u64().unwrap()
}
