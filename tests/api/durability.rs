//! What survives: restarts, the janitor's purge, and what never reaches disk.

use std::collections::HashSet;
use std::time::Duration;

use united_hub::client::send_body;

use crate::helpers::*;

#[actix_web::test]
async fn every_answered_message_survives_a_restart_and_sequences_resume() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let ws = alice.live_ws().await;
    let mut answered = Vec::new();
    for i in 0..20 {
        answered.push(
            alice
                .send_http(&bob, &conversation, &format!("http {i}"))
                .await
                .id,
        );
        let sealed = alice.seal(&bob, &conversation, &format!("ws {i}"));
        let united_hub::proto::Payload::DmSendResponse(r) = ws
            .call(send_request(None, &conversation, &sealed))
            .await
            .unwrap()
        else {
            panic!()
        };
        answered.push(r.message.unwrap().id);
    }
    drop(ws);
    let dir = app.stop().await;

    let app = spawn_app_in(dir, |_| {}).await;
    let mut bob_client = app.client();
    bob_client.login(&bob.identity, None).await.unwrap();
    let history = bob_client
        .history(&conversation, "after=0&limit=100")
        .await
        .unwrap();
    let ids: Vec<_> = history.messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, answered, "all 40, in the order they were answered");
    assert_eq!(bob.open_json(&history.messages[39]), "ws 19");

    // The conversation's actor starts from the stored sequence: no reuse.
    let mut alice_client = app.client();
    alice_client.login(&alice.identity, None).await.unwrap();
    let sealed = alice.seal(&bob, &conversation, "after restart");
    let (next, _) = alice_client
        .send(&send_body(None, &conversation, &sealed, now_ms()))
        .await
        .unwrap();
    assert_eq!(next.server_sequence, 41);
}

#[actix_web::test]
async fn the_janitor_purges_old_offline_entries_and_keeps_history() {
    let app = spawn_app_with(|s| {
        s.offline_ttl = 1;
        s.janitor_interval = 1;
    })
    .await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    for i in 0..3 {
        alice.send_http(&bob, &conversation, &format!("{i}")).await;
    }
    let queued = || async {
        let n: i64 = app
            .db()
            .query_row("SELECT COUNT(*) FROM dm_offline_queue", [], |r| r.get(0))
            .unwrap();
        n
    };
    assert_eq!(queued().await, 3);
    eventually("the janitor purges", || async { queued().await == 0 }).await;

    assert!(bob.client.offline().await.unwrap().is_empty());
    let history = bob.client.history(&conversation, "").await.unwrap();
    assert_eq!(history.messages.len(), 3, "messages stay in history");
    // The janitor counts once its purge has committed, a moment after the
    // rows are gone.
    eventually("the purge is counted", || async {
        app.metrics()
            .await
            .contains("united_offline_purged_total 3")
    })
    .await;
}

#[actix_web::test]
async fn the_janitor_keeps_fresh_entries() {
    let app = spawn_app_with(|s| s.janitor_interval = 1).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let sent = alice.send_http(&bob, &conversation, "keep me").await;
    // Two janitor runs pass (the default TTL is 30 days).
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    let offline = bob.client.offline().await.unwrap();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].id, sent.id);
}

#[actix_web::test]
async fn no_plaintext_reaches_the_data_directory() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let marker = "PLAINTEXT-MARKER-7d1e0c";
    let ws = alice.live_ws().await;
    for i in 0..20 {
        alice
            .send_http(&bob, &conversation, &format!("{marker} http {i}"))
            .await;
        let sealed = alice.seal(&bob, &conversation, &format!("{marker} ws {i}"));
        ws.call(send_request(None, &conversation, &sealed))
            .await
            .unwrap();
    }
    // Bob can read them: they were real messages.
    let history = bob.client.history(&conversation, "limit=1").await.unwrap();
    assert!(bob.open_json(&history.messages[0]).starts_with(marker));
    drop(ws);
    let files = app.data_files();
    assert!(files.iter().any(|(name, _)| name == "united.db"));
    for (name, bytes) in &files {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{name} contains the plaintext marker"
        );
    }
}

#[actix_web::test]
async fn the_checkpointer_moves_committed_pages_into_the_database_file() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let db_size = || {
        std::fs::metadata(app.dir.path().join("united.db"))
            .unwrap()
            .len()
    };
    let before = db_size();
    let big = "y".repeat(4096);
    for _ in 0..200 {
        alice.send_http(&bob, &conversation, &big).await;
    }
    // The writer never checkpoints on commit; the checkpointer thread does.
    eventually("the database file takes the pages", || async {
        db_size() > before + 500 * 1024
    })
    .await;
}

/// Criterion 3 (SQLite): the migration creates the seed's four DM tables, with the
/// uniqueness the contract needs.
#[actix_web::test]
async fn migration_creates_the_dm_tables() {
    let app = spawn_app().await;
    let db = app.db();
    let tables: HashSet<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in [
        "users",
        "refresh_tokens",
        "dm_public_keys",
        "dm_conversations",
        "dm_messages",
        "dm_message_order",
        "dm_message_order_state",
        "dm_offline_queue",
    ] {
        assert!(tables.contains(t), "missing table {t}");
    }
    db.execute_batch(
        "INSERT INTO users VALUES ('a', 'A', 0, 0), ('b', 'B', 0, 0);
         INSERT INTO dm_conversations (id, participant_a, participant_b, created_at) VALUES ('c', 'a', 'b', 0);
         INSERT INTO dm_messages (id, conversation_id, sender_pubkey, encrypted_payload, nonce, timestamp, server_sequence, created_at)
             VALUES ('m1', 'c', 'a', x'00', x'00', 1, 1, 0);",
    )
    .unwrap();
    // (conversation, sequence) is unique in the conversation order, which
    // the writer fills in batches (src/db/order.rs).
    db.execute(
        "INSERT INTO dm_message_order VALUES ('c', 1, (SELECT rowid FROM dm_messages WHERE id = 'm1'))",
        [],
    )
    .unwrap();
    let dup_seq = db.execute("INSERT INTO dm_message_order VALUES ('c', 1, 2)", []);
    assert!(
        dup_seq.is_err(),
        "PRIMARY KEY(conversation_id, server_sequence)"
    );
    let dup_pair = db.execute(
        "INSERT INTO dm_conversations (id, participant_a, participant_b, created_at) VALUES ('d', 'a', 'b', 0)",
        [],
    );
    assert!(dup_pair.is_err(), "UNIQUE(participant_a, participant_b)");
}
