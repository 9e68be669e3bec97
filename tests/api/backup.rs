//! Issue 25: `united-hub backup` copies the embedded database while the hub
//! runs and takes messages; `united-hub restore` puts the copy in place,
//! and a hub on it has a gap-free prefix of every conversation, each
//! message opening to what was sent. Neither overwrites anything.

use std::process::{Command, Output};
use std::sync::Arc;

use united_hub::client::HubClient;

use crate::helpers::*;

fn hub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args(args)
        .env_remove("UNITED_DATABASE_URL")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[actix_web::test]
async fn a_backup_taken_while_messages_flow_restores_to_a_gap_free_prefix() {
    let app = spawn_app_with(|s| s.send_rate = 0).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    for i in 0..50 {
        alice
            .send_http(&bob, &conversation, &format!("before {i}"))
            .await;
    }
    let data = app.dir.path().to_str().unwrap().to_owned();
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("united.backup");
    let target = file.to_str().unwrap().to_owned();
    let backup = actix_web::rt::task::spawn_blocking(move || {
        hub(&["backup", "--data-dir", &data, "--to", &target])
    });
    // Messages keep flowing while the backup runs.
    let mut sent = 50;
    while !backup.is_finished() || sent < 100 {
        alice
            .send_http(&bob, &conversation, &format!("during {sent}"))
            .await;
        sent += 1;
    }
    let out = backup.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("MiB"), "progress: {stderr}");
    assert!(stderr.contains("checked, 2 users"), "{stderr}");
    // The running hub made the copy, step by step through its writer.
    assert!(
        stderr.contains("made by the hub that runs on the database"),
        "{stderr}"
    );
    for left in [
        "united.db-backup",
        "united.db-backup-request",
        "united.db-backup-status",
    ] {
        assert!(!app.dir.path().join(left).exists(), "{left} is left");
    }
    assert!(
        !out_dir.path().join("united.backup.partial").exists(),
        "no partial file is left"
    );
    let secret = std::fs::read(app.dir.path().join("jwt_secret")).unwrap();
    let token = alice.token().to_owned();
    let _ = app.stop().await;

    // A second backup to the same file is refused, and the file kept.
    let before = std::fs::read(&file).unwrap();
    let out = hub(&[
        "backup",
        "--data-dir",
        out_dir.path().to_str().unwrap(),
        "--to",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Restore into a new directory and run a hub on it.
    let restored = Arc::new(tempfile::tempdir().unwrap());
    let out = hub(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(restored.path().join("jwt_secret"), secret).unwrap();
    let out = hub(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("exists"),
        "a restore over a database is refused: {}",
        text(&out.stderr)
    );
    let again = spawn_app_in(restored, |_| {}).await;
    let mut client = HubClient::new(&again.address);
    client.set_access_token(token);
    let history = client.history_after(&conversation, 0).await.unwrap();
    let seqs: Vec<u64> = history.iter().map(|m| m.server_sequence).collect();
    assert!(
        seqs.len() >= 50,
        "at least what was sent before: {}",
        seqs.len()
    );
    assert!(seqs.len() <= sent, "{} of {sent}", seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    for (i, m) in history.iter().enumerate() {
        let want = if i < 50 {
            format!("before {i}")
        } else {
            format!("during {i}")
        };
        assert_eq!(bob.open_json(m), want);
    }
}

#[actix_web::test]
async fn backup_refuses_postgres_and_a_missing_database_with_a_way_forward() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("x.backup");
    let out = hub(&[
        "backup",
        "--database-url",
        "postgres://hub:Secret99@127.0.0.1:1/hub",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!stderr.contains("Secret99"), "{stderr}");
    let out = hub(&[
        "backup",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(text(&out.stderr).contains("there is no hub database"));
    assert!(!to.exists());
}

/// A data directory with a database and a hub marker that names a live
/// process that is no hub (`sleep`): it takes no backup request.
fn stand_in_hub() -> (tempfile::TempDir, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(dir.path().join("united.db"))
        .unwrap()
        .execute_batch("CREATE TABLE users (x); CREATE TABLE dm_messages (x);")
        .unwrap();
    let stand_in = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(dir.path().join("united.db-hub"), stand_in.id().to_string()).unwrap();
    (dir, stand_in)
}

/// `united-hub backup` of `dir` to `to`, on a blocking thread.
fn backup_in(
    dir: &tempfile::TempDir,
    to: &std::path::Path,
) -> actix_web::rt::task::JoinHandle<Output> {
    let (data, to) = (dir.path().to_owned(), to.to_owned());
    actix_web::rt::task::spawn_blocking(move || {
        hub(&[
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ])
    })
}

/// A hub that does not take the request (here a process that is no hub,
/// as an older hub would be) gets a clear error after a bounded wait, and
/// nothing is written.
#[actix_web::test]
async fn a_hub_that_does_not_take_the_request_is_named_and_nothing_is_written() {
    let (dir, mut not_a_hub) = stand_in_hub();
    let to = dir.path().join("x.backup");
    let out = backup_in(&dir, &to).await.unwrap();
    let _ = not_a_hub.kill();
    let _ = not_a_hub.wait();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("the hub (pid {}) on", not_a_hub.id()))
            && stderr.contains("did not take the backup request"),
        "{stderr}"
    );
    assert!(!to.exists());
    assert!(!dir.path().join("united.db-backup-request").exists());
}

/// A hub that stops in the middle of a copy (here a stand-in that took the
/// request and reported progress, then died) ends the command with a clear
/// error, not a wait without end, and nothing is left at the target.
#[actix_web::test]
async fn a_hub_that_stops_during_the_copy_ends_the_command_with_an_error() {
    let (dir, mut stand_in) = stand_in_hub();
    let to = dir.path().join("x.backup");
    let command = backup_in(&dir, &to);
    // Take the request as the hub would, and report a copy under way.
    let request = dir.path().join("united.db-backup-request");
    let mut asker = None;
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(&request) {
            asker = text.lines().next().map(str::to_owned);
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let asker = asker.expect("the command asked the hub");
    std::fs::remove_file(&request).unwrap();
    std::fs::write(
        dir.path().join("united.db-backup-status"),
        format!("{asker}\ncopying 4096 8192\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("x.backup.partial"), b"half").unwrap();
    actix_web::rt::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = stand_in.kill();
    let _ = stand_in.wait();

    let out = command.await.unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stopped before the backup was done"),
        "{stderr}"
    );
    assert!(!to.exists());
    assert!(!dir.path().join("x.backup.partial").exists());
}
