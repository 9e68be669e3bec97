//! The WebSocket transport: upgrade, frames, errors, heartbeat, registry.

use std::time::Duration;

use awc::ws::Message;
use serde_json::Value;
use united_hub::client::{Incoming, WsClient};
use united_hub::model::Pubkey;
use united_hub::proto::{dm, ws, Envelope, Payload};

use crate::helpers::*;

fn list_request() -> Payload {
    Payload::DmConversationListRequest(dm::DmConversationListRequest {})
}

#[actix_web::test]
async fn the_upgrade_needs_a_valid_token() {
    let app = spawn_app().await;
    let user = app.user("Wes").await;

    let none = WsClient::connect_with(&app.ws_url(), None)
        .await
        .err()
        .unwrap();
    assert_eq!(none.status(), Some(401));
    let bad = WsClient::connect(&app.ws_url(), "garbage")
        .await
        .err()
        .unwrap();
    assert_eq!(bad.status(), Some(401));
    assert_eq!(
        app.state.registry.total_sessions(),
        0,
        "no session was created"
    );

    // The refusal is the contract's JSON error.
    let mut res = app
        .http()
        .get(app.url("/ws"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let header = WsClient::connect(&app.ws_url(), user.token())
        .await
        .unwrap();
    header
        .call(list_request())
        .await
        .expect("header token works");
    let url = format!("{}?access_token={}", app.ws_url(), user.token());
    let query = WsClient::connect_with(&url, None).await.unwrap();
    query.call(list_request()).await.expect("query token works");
}

#[actix_web::test]
async fn bad_frames_get_an_error_and_the_session_keeps_working() {
    let app = spawn_app().await;
    let user = app.user("Frames").await;
    let mut ws = user.ws().await;

    ws.send_raw(Message::Binary(vec![0xff, 0xff, 0xff, 0x0f, 0x01].into()))
        .unwrap();
    let err = next_envelope(&mut ws).await;
    let Some(Payload::Error(e)) = err.payload else {
        panic!("{err:?}")
    };
    assert_eq!((e.code, e.error_code.as_str()), (400, "invalid_request"));

    ws.send_raw(Message::Text("hello".into())).unwrap();
    let err = next_envelope(&mut ws).await;
    let Some(Payload::Error(e)) = err.payload else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, 400);

    // An envelope with no payload, and one with a server-only payload, keep their id.
    use prost::Message as _;
    let empty = Envelope {
        request_id: "e1".into(),
        payload: None,
    };
    ws.send_raw(Message::Binary(empty.encode_to_vec().into()))
        .unwrap();
    let err = next_envelope(&mut ws).await;
    assert_eq!(err.request_id, "e1");
    let Some(Payload::Error(e)) = err.payload else {
        panic!("{err:?}")
    };
    assert_eq!((e.code, e.request_id.as_str()), (400, "e1"));
    let server_only = Envelope {
        request_id: "e2".into(),
        payload: Some(Payload::DmSendResponse(dm::DmSendResponse {
            message: None,
        })),
    };
    ws.send_raw(Message::Binary(server_only.encode_to_vec().into()))
        .unwrap();
    let err = next_envelope(&mut ws).await;
    assert!(matches!(
        err.payload,
        Some(Payload::Error(ws::ErrorResponse { code: 400, .. }))
    ));

    ws.call(list_request()).await.expect("still served");
}

#[actix_web::test]
async fn ten_bad_frames_in_a_row_close_with_1008() {
    let app = spawn_app().await;
    let user = app.user("Abuser").await;
    let mut ws = user.ws().await;
    for _ in 0..10 {
        ws.send_raw(Message::Text("x".into())).unwrap();
    }
    let mut errors = 0;
    loop {
        match ws.next(Duration::from_secs(10)).await {
            Some(Incoming::Envelope(_)) => errors += 1,
            Some(Incoming::Closed(code)) => {
                assert_eq!(code, Some(1008));
                break;
            }
            None => panic!("the session was not closed"),
        }
    }
    assert_eq!(errors, 10, "every bad frame was answered");
}

#[actix_web::test]
async fn an_oversized_message_closes_with_1009() {
    let app = spawn_app_with(|s| {
        s.max_frame_bytes = 4096;
        s.max_payload_bytes = 1024;
    })
    .await;
    let user = app.user("Big").await;
    let mut ws = user.ws().await;
    ws.send_raw(Message::Binary(vec![0u8; 8192].into()))
        .unwrap();
    match ws.next(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_silent_client_is_closed_and_unregistered() {
    let app = spawn_app_with(|s| {
        s.ping_interval = 1;
        s.idle_timeout = 2;
    })
    .await;
    let user = app.user("Quiet").await;
    let key = Pubkey::parse(&user.pubkey).unwrap();
    // A raw connection that never reads, so it never answers a ping.
    let (_res, _silent) = awc::Client::new()
        .ws(app.ws_url())
        .bearer_auth(user.token())
        .connect()
        .await
        .unwrap();
    eventually("the session registers", || async {
        app.state.registry.session_count(&key) == 1
    })
    .await;
    eventually("the silent session is closed", || async {
        app.state.registry.session_count(&key) == 0
    })
    .await;
    assert!(!app.state.registry.is_online(&key));
}

#[actix_web::test]
async fn a_client_that_answers_pings_stays_connected() {
    let app = spawn_app_with(|s| {
        s.ping_interval = 1;
        s.idle_timeout = 2;
    })
    .await;
    let user = app.user("Chatty").await;
    let mut ws = user.live_ws().await;
    // Three idle timeouts pass; the client's pongs keep it alive.
    assert_silent(&mut ws, Duration::from_secs(6)).await;
    ws.call(list_request()).await.expect("still connected");
}

#[actix_web::test]
async fn two_sessions_of_one_user_are_both_registered_and_both_pushed_to() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mut phone = bob.live_ws().await;
    let mut laptop = bob.live_ws().await;
    let key = Pubkey::parse(&bob.pubkey).unwrap();
    assert_eq!(app.state.registry.session_count(&key), 2);

    alice.open_conversation(&bob).await;
    for ws in [&mut phone, &mut laptop] {
        let event = next_envelope(ws).await;
        assert!(matches!(
            event.payload,
            Some(Payload::DmConversationCreatedEvent(_))
        ));
        assert_eq!(event.request_id, "");
    }

    phone.close();
    eventually("the closed session leaves", || async {
        app.state.registry.session_count(&key) == 1
    })
    .await;
}

#[actix_web::test]
async fn dropping_a_client_closes_its_session() {
    let app = spawn_app().await;
    let bob = app.user("Bob").await;
    let key = Pubkey::parse(&bob.pubkey).unwrap();
    let ws = bob.live_ws().await;
    assert!(app.state.registry.is_online(&key));
    drop(ws);
    eventually("the dropped session leaves", || async {
        !app.state.registry.is_online(&key)
    })
    .await;
}
