//! WebSocket tickets (contract §8): `POST /api/auth/ws-ticket` gives a
//! single-use ticket bound to the caller, valid 30 seconds; `/ws?ticket=`
//! opens a session as that user, so a browser never puts its access token
//! in a URL. In `api_cluster` each ticket is issued by the user's home node
//! and used at another node.

use std::time::Duration;

use united_hub::client::WsClient;
use united_hub::proto::{dm, Payload};

use crate::helpers::*;

#[actix_web::test]
async fn a_ticket_opens_one_session_as_its_user() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = bob.open_conversation(&alice).await;

    let issued = alice.client.ws_ticket().await.unwrap();
    let now = now_ms();
    assert!(
        issued.expires_at > now && issued.expires_at <= now + 31_000,
        "valid 30 s: {} at {now}",
        issued.expires_at
    );
    let url = format!("{}?ticket={}", alice.next_ws_url(), issued.ticket);
    let mut ws = WsClient::connect_with(&url, None).await.unwrap();
    // The session is Alice's: it answers her requests and gets her pushes.
    ws.call(Payload::DmConversationListRequest(
        dm::DmConversationListRequest {},
    ))
    .await
    .unwrap();
    bob.send_http(&alice, &conversation, "over a ticket").await;
    let pushed = next_message(&mut ws).await;
    assert_eq!(alice.open_proto(&pushed), "over a ticket");

    // Used once: the same ticket again is 401.
    let again = WsClient::connect_with(&url, None).await.err().unwrap();
    assert_eq!(again.status(), Some(401));
}

#[actix_web::test]
async fn unknown_expired_and_missing_tickets_are_refused_with_401() {
    let app = spawn_app_with(|s| s.ws_ticket_ttl = 0).await;
    let alice = app.user("Alice").await;
    // Expired (a TTL of 0 here).
    let expired = alice.client.ws_ticket().await.unwrap().ticket;
    actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    for ticket in [expired.as_str(), "AAAA", "", &"x".repeat(43)] {
        let url = format!("{}?ticket={ticket}", alice.next_ws_url());
        let err = WsClient::connect_with(&url, None).await.err().unwrap();
        assert_eq!(err.status(), Some(401), "ticket {ticket:?}");
    }
    // No ticket and no token.
    let err = WsClient::connect_with(&alice.next_ws_url(), None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(401));
    // A ticket is only given for a valid access token.
    let res = app
        .http()
        .post(app.url("/api/auth/ws-ticket"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

#[actix_web::test]
async fn another_users_ticket_opens_only_that_users_session() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mallory = app.user("Mallory").await;
    let conversation = bob.open_conversation(&alice).await;
    // Mallory's ticket is Mallory's, whoever presents it.
    let mut ws = mallory.ws_with_ticket().await;
    let answer = ws
        .call(Payload::DmHistoryRequest(dm::DmHistoryRequest {
            conversation_id: conversation.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(answer.status(), Some(403), "not Alice's session");
    bob.send_http(&alice, &conversation, "not for Mallory")
        .await;
    assert_silent(&mut ws, Duration::from_millis(500)).await;
}

#[actix_web::test]
async fn a_user_holds_a_bounded_number_of_unused_tickets() {
    let app = spawn_app_with(|s| s.auth_rate = 0).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    for _ in 0..united_hub::tickets::MAX_TICKETS_PER_USER {
        alice.client.ws_ticket().await.unwrap();
    }
    let err = alice.client.ws_ticket().await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    bob.client.ws_ticket().await.expect("another user");
}
