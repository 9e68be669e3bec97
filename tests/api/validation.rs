//! Every refusal of the contract, with its status and code.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use united_hub::proto::{dm, Payload};

use crate::helpers::*;

async fn post(app: &TestApp, user: &TestUser, path: &str, body: Value) -> (u16, String) {
    let mut res = app
        .http()
        .post(app.url(path))
        .bearer_auth(user.token())
        .send_json(&body)
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn get(app: &TestApp, user: &TestUser, path: &str) -> (u16, String) {
    let mut res = app
        .http()
        .get(app.url(path))
        .bearer_auth(user.token())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

fn message(conversation: &str) -> Value {
    json!({
        "conversation_id": conversation,
        "encrypted_payload": B64.encode(b"ciphertext"),
        "nonce": B64.encode([0u8; 24]),
        "ephemeral_pubkey": B64.encode([9u8; 32]),
        "timestamp": 1_700_000_000_000u64,
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

#[actix_web::test]
async fn bad_sends_are_refused_with_their_codes() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let ok = message(&conversation);
    let big = B64.encode(vec![7u8; 64 * 1024 + 1]);
    let at_limit = B64.encode(vec![7u8; 64 * 1024]);

    let cases = [
        (
            "nonce of 23 bytes",
            with(ok.clone(), "nonce", json!(B64.encode([0u8; 23]))),
            400,
            "invalid_request",
        ),
        (
            "nonce not base64",
            with(ok.clone(), "nonce", json!("***")),
            400,
            "invalid_request",
        ),
        (
            "ephemeral of 31 bytes",
            with(ok.clone(), "ephemeral_pubkey", json!(B64.encode([1u8; 31]))),
            400,
            "invalid_request",
        ),
        (
            "empty payload",
            with(ok.clone(), "encrypted_payload", json!("")),
            400,
            "invalid_request",
        ),
        (
            "zero timestamp",
            with(ok.clone(), "timestamp", json!(0)),
            400,
            "invalid_request",
        ),
        (
            "negative timestamp",
            with(ok.clone(), "timestamp", json!(-5)),
            400,
            "invalid_request",
        ),
        (
            "id not a UUID",
            with(ok.clone(), "id", json!("msg-1")),
            400,
            "invalid_request",
        ),
        (
            "conversation not a UUID",
            with(ok.clone(), "conversation_id", json!("c1")),
            400,
            "invalid_request",
        ),
        (
            "unknown conversation",
            with(
                ok.clone(),
                "conversation_id",
                json!(uuid::Uuid::new_v4().to_string()),
            ),
            404,
            "not_found",
        ),
        (
            "payload over the limit",
            with(ok.clone(), "encrypted_payload", json!(big)),
            413,
            "payload_too_large",
        ),
    ];
    for (name, body, status, code) in cases {
        assert_eq!(
            post(&app, &alice, "/api/dm/messages", body).await,
            (status, code.to_owned()),
            "{name}"
        );
    }
    // At the limit is fine, and an absent ephemeral key is stored as null.
    let mut res = app
        .http()
        .post(app.url("/api/dm/messages"))
        .bearer_auth(alice.token())
        .send_json(&with(
            with(ok.clone(), "encrypted_payload", json!(at_limit)),
            "ephemeral_pubkey",
            Value::Null,
        ))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let stored: Value = res.json().await.unwrap();
    assert_eq!(stored["ephemeral_pubkey"], Value::Null);
    assert_eq!(stored["server_sequence"], 1);
    // No refused send took a sequence number.
    let history = alice.client.history(&conversation, "").await.unwrap();
    assert_eq!(history.messages.len(), 1);
}

#[actix_web::test]
async fn bad_websocket_sends_get_error_responses() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let ws = alice.ws().await;
    let good = dm::DmSendRequest {
        conversation_id: conversation.clone(),
        encrypted_payload: b"c".to_vec().into(),
        nonce: vec![0u8; 24].into(),
        timestamp: 1,
        ..Default::default()
    };
    let cases = [
        (
            dm::DmSendRequest {
                nonce: vec![0u8; 12].into(),
                ..good.clone()
            },
            400,
        ),
        (
            dm::DmSendRequest {
                ephemeral_pubkey: vec![0u8; 16].into(),
                ..good.clone()
            },
            400,
        ),
        (
            dm::DmSendRequest {
                timestamp: 0,
                ..good.clone()
            },
            400,
        ),
        (
            dm::DmSendRequest {
                encrypted_payload: Default::default(),
                ..good.clone()
            },
            400,
        ),
        (
            dm::DmSendRequest {
                id: "nope".into(),
                ..good.clone()
            },
            400,
        ),
        (
            dm::DmSendRequest {
                conversation_id: uuid::Uuid::new_v4().to_string(),
                ..good.clone()
            },
            404,
        ),
        (
            dm::DmSendRequest {
                encrypted_payload: vec![1u8; 65537].into(),
                ..good.clone()
            },
            413,
        ),
    ];
    for (request, status) in cases {
        let answer = ws
            .request(Payload::DmSendRequest(request.clone()))
            .await
            .unwrap();
        let Some(Payload::Error(e)) = &answer.payload else {
            panic!("{request:?} was accepted")
        };
        assert_eq!(e.code, status, "{request:?}");
        assert_eq!(e.request_id, answer.request_id);
    }
    let Payload::DmSendResponse(r) = ws.call(Payload::DmSendRequest(good)).await.unwrap() else {
        panic!()
    };
    assert_eq!(r.message.unwrap().server_sequence, 1);
}

#[actix_web::test]
async fn bad_conversation_requests_are_refused() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let me = json!({"recipient_pubkey": alice.pubkey});
    assert_eq!(
        post(&app, &alice, "/api/dm/conversations", me).await,
        (400, "self_conversation".into())
    );
    let bad = json!({"recipient_pubkey": "xyz"});
    assert_eq!(
        post(&app, &alice, "/api/dm/conversations", bad).await,
        (400, "invalid_request".into())
    );
    let stranger = json!({"recipient_pubkey": "ab".repeat(32)});
    assert_eq!(
        post(&app, &alice, "/api/dm/conversations", stranger).await,
        (404, "not_found".into())
    );
    let ws = alice.ws().await;
    let err = ws
        .call(Payload::DmConversationCreateRequest(
            dm::DmConversationCreateRequest {
                recipient_pubkey: alice.pubkey.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("self_conversation"))
    );
}

#[actix_web::test]
async fn bad_history_queries_are_refused() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let base = format!("/api/dm/messages/{conversation}");
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "before=3&after=1",
        "before=0",
        "before=-2",
        "after=x",
    ] {
        assert_eq!(
            get(&app, &alice, &format!("{base}?{query}")).await,
            (400, "invalid_request".into()),
            "{query}"
        );
    }
    assert_eq!(
        get(&app, &alice, "/api/dm/messages/not-a-uuid").await,
        (400, "invalid_request".into())
    );
    let unknown = format!("/api/dm/messages/{}", uuid::Uuid::new_v4());
    assert_eq!(get(&app, &alice, &unknown).await, (404, "not_found".into()));
}

#[actix_web::test]
async fn bad_acks_are_refused() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let body = json!({"message_ids": ["not-a-uuid"]});
    assert_eq!(
        post(&app, &alice, "/api/dm/offline/ack", body).await,
        (400, "invalid_request".into())
    );
    let body = json!({"message_ids": "nope"});
    assert_eq!(
        post(&app, &alice, "/api/dm/offline/ack", body).await,
        (400, "invalid_request".into())
    );
}

#[actix_web::test]
async fn authentication_is_checked_before_shape() {
    let app = spawn_app().await;
    let mut res = app
        .http()
        .post(app.url("/api/dm/messages"))
        .send_json(&json!({"nonsense": true}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}
