//! Issue 25: `united-hub migrate` moves a hub between engines. A hub on
//! SQLite with users, keys, a conversation, history, offline entries and
//! refresh tokens is copied to PostgreSQL by the binary; a hub on the copy
//! serves every user as before (old tokens, offline entries, history,
//! the next sequence), and the copy goes back to SQLite the same way.
//! The tool refuses a target that holds data (unless `--replace`) and a
//! source that is not there, and writes nothing then.

use std::process::{Command, Output};
use std::sync::Arc;

use united_hub::client::{send_body, HubClient};
use united_hub::localcluster::LocalPostgres;

use crate::helpers::*;

fn migrate(from: &str, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args(["migrate", "--from", from, "--to", to, "--batch", "7"])
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[actix_web::test]
async fn a_sqlite_hub_moves_to_postgres_and_back_with_everything_it_held() {
    // A hub on SQLite: Alice wrote to Bob while he was away, both ways
    // before that; Carol only registered.
    let sqlite = spawn_app_with(|s| {
        s.auth_rate = 0;
        s.send_rate = 0;
    })
    .await;
    let alice = sqlite.user("Alice").await;
    let bob = sqlite.user("Bob").await;
    let _carol = sqlite.user("Carol").await;
    let conversation = alice.open_conversation(&bob).await;
    for i in 0..5 {
        alice.send_http(&bob, &conversation, &format!("a{i}")).await;
        bob.send_http(&alice, &conversation, &format!("b{i}")).await;
    }
    // Bob reads what is queued for him so far; the next 20 stay queued.
    assert_eq!(bob.client.offline().await.unwrap().len(), 5);
    for i in 0..20 {
        alice
            .send_http(&bob, &conversation, &format!("queued {i}"))
            .await;
    }
    let history = alice.client.history_after(&conversation, 0).await.unwrap();
    assert_eq!(history.len(), 30);
    let alice_refresh = alice.client.refresh_token().unwrap().to_owned();
    let bob_access = bob.token().to_owned();
    let secret = sqlite.dir.path().join("jwt_secret");
    let dir = sqlite.stop().await;
    let data = dir.path().to_str().unwrap().to_owned();

    // SQLite -> PostgreSQL.
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let out = migrate(&data, &pg.url());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dm_messages"),
        "progress per table: {stderr}"
    );
    assert!(stderr.contains("hold the same data"), "{stderr}");
    assert!(
        text(&out.stdout).contains("dm_messages\t30"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !stderr.contains("secret") && !stderr.contains(&pg.url()),
        "the URL is shown without its password: {stderr}"
    );

    // A hub on the copy, with the SQLite hub's JWT key.
    let on_pg = spawn_app_with(|s| {
        s.database_url = Some(pg.url().parse().unwrap());
        s.jwt_secret_file = Some(secret.clone());
        s.auth_rate = 0;
        s.send_rate = 0;
    })
    .await;
    let mut alice_there = HubClient::new(&on_pg.address);
    alice_there
        .refresh(&alice_refresh)
        .await
        .expect("Alice's refresh token still works");
    let mut bob_there = HubClient::new(&on_pg.address);
    bob_there.set_access_token(bob_access);
    let queued = bob_there.offline().await.expect("Bob's access token works");
    assert_eq!(queued.len(), 20, "every queued entry came along, once");
    let texts: Vec<String> = queued.iter().map(|m| bob.open_json(m)).collect();
    assert_eq!(
        texts,
        (0..20).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
    let moved = alice_there.history_after(&conversation, 0).await.unwrap();
    assert_eq!(moved, history, "the history is the same, byte for byte");
    assert_eq!(
        alice_there.recipient_key(&bob.pubkey).await.unwrap(),
        bob.identity.x25519_public(),
        "Bob's published key came along"
    );
    // The conversation goes on at the next sequence.
    // While a hub node runs on it, the database is not copied.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = migrate(&pg.url(), elsewhere.path().join("d").to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("connections of running hub nodes"),
        "{}",
        text(&out.stderr)
    );
    let sealed = alice.seal(&bob, &conversation, "after the move");
    let body = send_body(None, &conversation, &sealed, now_ms());
    let (next, _) = alice_there.send(&body).await.unwrap();
    assert_eq!(next.server_sequence, 31);
    on_pg.stop().await;

    // PostgreSQL -> a new SQLite data directory, and a hub on it. The
    // stopped node's sessions end within moments.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("data");
    let mut out = migrate(&pg.url(), back_dir.to_str().unwrap());
    for _ in 0..50 {
        if !text(&out.stderr).contains("running hub nodes") {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
        out = migrate(&pg.url(), back_dir.to_str().unwrap());
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::copy(&secret, back_dir.join("jwt_secret")).unwrap();
    let on_sqlite = spawn_app_in(Arc::new(back), |s| {
        s.data_dir = back_dir.clone();
        s.auth_rate = 0;
    })
    .await;
    let mut alice_back = HubClient::new(&on_sqlite.address);
    alice_back.set_access_token(alice_there.access_token().unwrap());
    let all = alice_back.history_after(&conversation, 0).await.unwrap();
    assert_eq!(all.len(), 31);
    assert_eq!(&all[..30], &history[..]);
    assert_eq!(alice.open_json(&all[30]), "after the move");
}

#[actix_web::test]
async fn migrate_refuses_a_target_with_data_unless_told_and_a_missing_source() {
    let first = spawn_app().await;
    first.user("Alice").await;
    // Not while a hub runs on the source (this test's process runs it).
    let busy = tempfile::tempdir().unwrap();
    let out = migrate(
        first.dir.path().to_str().unwrap(),
        busy.path().join("d").to_str().unwrap(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("a hub (pid {}) runs on", std::process::id())),
        "{}",
        text(&out.stderr)
    );
    let first_dir = first.stop().await;
    let second = spawn_app().await;
    second.user("Bob").await;
    second.user("Carol").await;
    let second_dir = second.stop().await;
    let before = std::fs::read(second_dir.path().join("united.db")).unwrap();

    let out = migrate(
        first_dir.path().to_str().unwrap(),
        second_dir.path().to_str().unwrap(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("already holds data (2 users")
            && stderr.contains("--replace")
            && stderr.contains("nothing was written"),
        "{stderr}"
    );
    let after = std::fs::read(second_dir.path().join("united.db")).unwrap();
    assert_eq!(before, after, "the target is untouched");

    // Told to, it deletes what the target held and copies.
    let out = Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args(["migrate", "--replace", "--from"])
        .arg(first_dir.path())
        .arg("--to")
        .arg(second_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--replace: deleted the target's"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("users\t1"),
        "{}",
        text(&out.stdout)
    );
    let db = rusqlite::Connection::open(second_dir.path().join("united.db")).unwrap();
    let users: i64 = db
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 1, "only the source's user is left");

    let nowhere = tempfile::tempdir().unwrap();
    let missing = nowhere.path().join("no-such-dir");
    let out = migrate(missing.to_str().unwrap(), nowhere.path().to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("there is no hub database"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists(), "no empty database was made");

    let same = first_dir.path().to_str().unwrap();
    let out = migrate(same, same);
    assert!(text(&out.stderr).contains("the same data directory"));
}
