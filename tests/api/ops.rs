//! Health, errors for unknown routes and methods, restart.

use serde_json::Value;

use crate::helpers::*;

#[actix_web::test]
async fn healthz_answers_ok_and_503_when_the_database_is_stuck() {
    let app = spawn_app().await;
    let mut res = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    // Another process holds the write lock: the writer cannot answer.
    let blocker = app.db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    // (An answer is reused for a second.)
    eventually("healthz says 503", || async {
        let res = app.http().get(app.url("/healthz")).send().await.unwrap();
        res.status().as_u16() == 503 && res.headers().contains_key("retry-after")
    })
    .await;
    blocker.execute_batch("ROLLBACK").unwrap();
    eventually("healthz recovers", || async {
        let res = app.http().get(app.url("/healthz")).send().await.unwrap();
        res.status().as_u16() == 200
    })
    .await;
}

#[actix_web::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;
    let mut res = app.http().get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let mut res = app
        .http()
        .delete(app.url("/api/dm/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[actix_web::test]
async fn extractor_failures_are_json() {
    let app = spawn_app().await;
    let user = app.user("Ext").await;
    // Malformed JSON.
    let mut res = app
        .http()
        .post(app.url("/api/dm/conversations"))
        .bearer_auth(user.token())
        .insert_header(("content-type", "application/json"))
        .send_body("{oops")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    // Wrong content type.
    let mut res = app
        .http()
        .post(app.url("/api/dm/conversations"))
        .bearer_auth(user.token())
        .insert_header(("content-type", "text/plain"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    // Body too large.
    let huge = format!("{{\"recipient_pubkey\": \"{}\"}}", "a".repeat(1 << 20));
    let mut res = app
        .http()
        .post(app.url("/api/dm/conversations"))
        .bearer_auth(user.token())
        .insert_header(("content-type", "application/json"))
        .send_body(huge)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Bad query.
    let mut res = app
        .http()
        .get(app.url(&format!(
            "/api/dm/messages/{}?limit=abc",
            uuid::Uuid::new_v4()
        )))
        .bearer_auth(user.token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[actix_web::test]
async fn a_restart_keeps_users_and_does_not_migrate_twice() {
    let app = spawn_app().await;
    assert_eq!(app.migrations_applied, united_hub::db::migrations::LATEST);
    let user = app.user("Persistent").await;
    let dir = app.stop().await;

    let app = spawn_app_in(dir, |_| {}).await;
    assert_eq!(app.migrations_applied, 0, "the schema was already current");
    let mut client = app.client();
    let again = client
        .login(&user.identity, None)
        .await
        .expect("known user, no name needed");
    assert_eq!(again.user.display_name, "Persistent");
    // The old access token is still valid: the secret file was reused.
    let mut old = app.client();
    old.set_access_token(user.token());
    old.conversations()
        .await
        .expect("token signed before the restart");
}

/// The value of the sample `name` (labels included) in a `/metrics` text, 0
/// when it is absent.
fn value_of(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn metrics_count_what_happens_and_name_nobody() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;
    alice.send_http(&bob, &conversation, "counted").await;
    next_message(&mut bob_ws).await;
    let text = app.metrics().await;
    for line in [
        "united_live_sessions 1",
        "united_messages_accepted_total 1",
        "united_pushes_total 1",
        "united_offline_queued_total 0",
        "united_offline_purged_total 0",
        "united_write_batch_size_count 1",
        "united_commit_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("united_request_seconds_count{route=\"/api/dm/messages\",status=\"201\"} 1"),
        "{text}"
    );
    // Each hop of the send and of the push is timed once (issue 13).
    for stage in [
        "to_actor",
        "batch_wait",
        "writer_wait",
        "in_commit",
        "back_to_actor",
        "total",
    ] {
        let line = format!("united_send_stage_seconds_count{{stage=\"{stage}\"}} 1");
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
    let pushes = "united_send_stage_seconds_count{stage=\"to_session\"}";
    assert_eq!(value_of(&text, pushes), 1.0, "one push reached one session");
    // The checkpointer copied the message's pages and flushed them.
    eventually("the checkpointer reports its passes", || async {
        let text = app.metrics().await;
        value_of(&text, "united_checkpoint_seconds_count{mode=\"passive\"}") >= 1.0
            && value_of(&text, "united_checkpoint_seconds_count{mode=\"sync\"}") >= 1.0
    })
    .await;
    // Aggregates only: no key, id or name.
    for secret in [
        alice.pubkey.as_str(),
        bob.pubkey.as_str(),
        conversation.as_str(),
        "Alice",
    ] {
        assert!(!text.contains(secret), "metrics mention {secret}");
    }
}

/// Issue 9: `/healthz` needs no login, so it must be cheap. Hammered from 8
/// connections while two users exchange messages, it puts at most one check
/// a second on the writer (its answer is reused), the writer's queue stays
/// at one or two (`united_writer_pending`), and every send commits.
#[actix_web::test]
async fn a_hammered_healthz_neither_queues_on_the_writer_nor_slows_sends() {
    use std::cell::Cell;
    use std::rc::Rc;
    let app = spawn_app_with(|s| s.send_rate = 0).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let done = Rc::new(Cell::new(false));
    let checks = Rc::new(Cell::new(0u64));
    let most_pending = Rc::new(Cell::new(0.0f64));

    let hammer = (0..8).map(|_| {
        let (done, checks, app) = (done.clone(), checks.clone(), &app);
        async move {
            let http = awc::Client::default();
            while !done.get() {
                let res = http.get(app.url("/healthz")).send().await.unwrap();
                assert_eq!(res.status().as_u16(), 200);
                checks.set(checks.get() + 1);
            }
        }
    });
    let sampler = {
        let (done, most_pending, app) = (done.clone(), most_pending.clone(), &app);
        async move {
            while !done.get() {
                let text = app.metrics().await;
                let pending: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("united_writer_pending "))
                    .and_then(|v| v.parse().ok())
                    .expect("the writer_pending gauge");
                most_pending.set(most_pending.get().max(pending));
                actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    let traffic = {
        let done = done.clone();
        let (alice, bob, conversation) = (&alice, &bob, &conversation);
        async move {
            for i in 0..100 {
                let (ta, tb) = (format!("a{i}"), format!("b{i}"));
                let (a, b) = tokio::join!(
                    alice.send_http(bob, conversation, &ta),
                    bob.send_http(alice, conversation, &tb)
                );
                assert!(a.server_sequence > 0 && b.server_sequence > 0);
            }
            done.set(true);
        }
    };
    tokio::join!(futures_util::future::join_all(hammer), sampler, traffic);
    assert!(
        checks.get() > 100,
        "the hammer ran ({} checks)",
        checks.get()
    );
    assert!(
        most_pending.get() <= 2.0,
        "the writer's queue reached {}",
        most_pending.get()
    );
    let stored = app
        .sql_i64(
            "SELECT COUNT(*) FROM dm_messages WHERE CAST(conversation_id AS TEXT) = $1",
            Some(&conversation),
        )
        .await;
    assert_eq!(stored, vec![200]);
}

/// One data directory serves one hub: a second process on it is refused
/// and says which process holds it; once the first stops cleanly, the
/// directory is free again.
#[actix_web::test]
async fn a_second_hub_on_the_same_data_directory_is_refused() {
    let mut first = ProcessHub::start(&[]).await;
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(first.dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("another hub (pid {})", first.child.id())),
        "{stderr}"
    );
    // SIGTERM: the first stops cleanly and lets the directory go.
    let pid = first.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(first.child.wait().unwrap().success());
    assert!(!first.dir.path().join("united.db-hub").exists());
}

/// `united_offline_oldest_age_seconds` tells how long the oldest
/// undelivered entry has waited, at each janitor run; 0 once it is fetched.
#[actix_web::test]
async fn the_offline_queue_age_is_a_metric() {
    let app = spawn_app_with(|s| s.janitor_interval = 1).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    alice
        .send_http(&bob, &conversation, "while Bob is away")
        .await;
    let age = || async {
        let text = app.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix("united_offline_oldest_age_seconds "))
            .map(|v| v.trim().parse::<f64>().unwrap())
    };
    eventually("the entry's age shows", || async {
        age().await.is_some_and(|a| a >= 1.0)
    })
    .await;
    assert_eq!(bob.client.offline().await.unwrap().len(), 1);
    eventually("a fetched entry no longer counts", || async {
        age().await == Some(0.0)
    })
    .await;
}
