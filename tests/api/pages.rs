//! Contract §8: history and offline pages stop before 4 MiB of body, say so
//! with `has_more`, and a client that pages until `has_more` is false sees
//! every message once, on both transports (and, in `api_cluster`, on
//! PostgreSQL, whose offline page is cut in SQL).

use std::collections::BTreeSet;

use united_hub::json::{HistoryJson, OfflineJson};
use united_hub::proto::{dm, Payload};

use crate::helpers::*;

/// 4 MiB: no page's body may reach it.
const PAGE_CAP: usize = 4 * 1024 * 1024;
/// Messages of 60 KiB: 50 fit a page, so 120 need three.
const COUNT: usize = 120;
const TEXT_BYTES: usize = 60 * 1024;

/// Alice sends Bob `COUNT` large messages while Bob has no session, so they
/// are in history and in Bob's offline queue. Returns the conversation and
/// the ids in sequence order.
async fn large_messages(alice: &TestUser, bob: &TestUser) -> (String, Vec<String>) {
    let conversation = alice.open_conversation(bob).await;
    let text = "m".repeat(TEXT_BYTES);
    let mut ids = Vec::new();
    for _ in 0..COUNT {
        ids.push(alice.send_http(bob, &conversation, &text).await.id);
    }
    (conversation, ids)
}

/// A raw GET with a body limit well above the cap: the status and body.
async fn get_raw(app: &TestApp, user: &TestUser, path: &str) -> (u16, Vec<u8>) {
    let mut res = app
        .http()
        .get(format!("{}{path}", user.client.base_url()))
        .bearer_auth(user.token())
        .send()
        .await
        .unwrap();
    let body = res.body().limit(64 * 1024 * 1024).await.unwrap();
    (res.status().as_u16(), body.to_vec())
}

#[actix_web::test]
async fn history_pages_stop_before_4_mib_and_paging_sees_every_message_once() {
    let _measuring = measuring().await;
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let (conversation, ids) = large_messages(&alice, &bob).await;

    let (status, body) = get_raw(
        &app,
        &bob,
        &format!("/api/dm/messages/{conversation}?limit=100"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.len() < PAGE_CAP, "a page of {} bytes", body.len());
    let page: HistoryJson = serde_json::from_slice(&body).unwrap();
    assert!(page.has_more, "a page cut by bytes says has_more");
    assert!(
        (1..COUNT).contains(&page.messages.len()),
        "{} messages in the first page",
        page.messages.len()
    );
    assert_eq!(page.messages[0].id, ids[COUNT - 1], "newest first");
    assert_eq!(
        bob.open_json(&page.messages[0]),
        "m".repeat(TEXT_BYTES),
        "a page carries whole messages"
    );

    // Paging back with `before`, and forward with `after`, sees each
    // message once, in order.
    let (back, more) = bob.client.recent(&conversation, 0).await.unwrap();
    assert!(!more);
    let forward = bob.client.history_after(&conversation, 0).await.unwrap();
    for list in [&back, &forward] {
        assert_eq!(list.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(
            list.iter().map(|m| m.server_sequence).collect::<Vec<_>>(),
            (1..=COUNT as u64).collect::<Vec<_>>()
        );
    }

    // The same over WebSocket, paging back from the newest: the answer's
    // envelope stays below the cap.
    let ws = bob.ws().await;
    let mut before = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let answer = ws
            .request(Payload::DmHistoryRequest(dm::DmHistoryRequest {
                conversation_id: conversation.clone(),
                before_sequence: before,
                limit: 100,
                ..Default::default()
            }))
            .await
            .unwrap();
        let size = prost::Message::encoded_len(&answer);
        assert!(size < PAGE_CAP, "a WebSocket page of {size} bytes");
        let Some(Payload::DmHistoryResponse(page)) = answer.payload else {
            panic!("expected a history page: {answer:?}");
        };
        pages += 1;
        before = page.messages.last().map_or(before, |m| m.server_sequence);
        seen.extend(page.messages.into_iter().map(|m| m.id));
        if !page.has_more {
            break;
        }
    }
    seen.reverse();
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen, ids);
}

#[actix_web::test]
async fn offline_pages_stop_before_4_mib_and_hand_out_each_entry_once() {
    let _measuring = measuring().await;
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let (_, ids) = large_messages(&alice, &bob).await;

    let (status, body) = get_raw(&app, &bob, "/api/dm/offline").await;
    assert_eq!(status, 200);
    assert!(body.len() < PAGE_CAP, "a page of {} bytes", body.len());
    let first: OfflineJson = serde_json::from_slice(&body).unwrap();
    assert!(first.has_more, "a page cut by bytes says has_more");
    assert!((1..COUNT).contains(&first.messages.len()));

    // The rest over WebSocket, then HTTP, until has_more is false.
    let mut seen: Vec<String> = first.messages.iter().map(|m| m.id.clone()).collect();
    let ws = bob.ws().await;
    let answer = ws
        .request(Payload::DmOfflineRequest(dm::DmOfflineRequest { limit: 0 }))
        .await
        .unwrap();
    let size = prost::Message::encoded_len(&answer);
    assert!(size < PAGE_CAP, "a WebSocket page of {size} bytes");
    let Some(Payload::DmOfflineMessagesResponse(page)) = answer.payload else {
        panic!("expected an offline page: {answer:?}");
    };
    assert!(page.has_more);
    seen.extend(page.messages.into_iter().map(|m| m.id));
    seen.extend(
        bob.client
            .offline()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id),
    );

    assert_eq!(seen, ids, "every entry once, oldest first");
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), COUNT);
    let last = bob.client.offline_page(None).await.unwrap();
    assert!(last.messages.is_empty() && !last.has_more);
}
