//! The `united-hub` binary's people-facing commands: demo, identity, send.

use std::process::{Command, Output};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_united-hub");

/// Runs the binary off the test's thread (the hub's actors share it).
async fn run(args: Vec<String>) -> Output {
    actix_web::rt::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[actix_web::test]
async fn the_demo_runs_to_completion_and_says_so() {
    let out = run(args(&["demo"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("All 10 steps held."), "{stdout}");
    assert!(!stdout.contains('✘'), "{stdout}");
}

#[actix_web::test]
async fn the_demo_exit_code_reports_failure() {
    // Nothing listens on the discard port.
    let out = run(args(&["demo", "--url", "http://127.0.0.1:9"])).await;
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
}

#[actix_web::test]
async fn the_demo_runs_against_a_running_hub() {
    let app = spawn_app().await;
    let out = run(args(&["demo", "--url", &app.address])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[actix_web::test]
async fn a_person_sends_from_the_command_line() {
    let app = spawn_app().await;
    let bob = app.user("Bob").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.id");
    let file_arg = file.to_str().unwrap();

    let out = run(args(&[
        "identity", "new", "--name", "Alice", "--file", file_arg,
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = run(args(&[
        "identity", "new", "--name", "Alice", "--file", file_arg,
    ]))
    .await;
    assert!(
        !again.status.success(),
        "an identity is never overwritten silently"
    );

    let out = run(args(&[
        "send",
        "--identity",
        file_arg,
        "--to",
        &bob.pubkey,
        "--url",
        &app.address,
        "hello",
        "from",
        "a",
        "shell",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sent #1"));

    let inbox = bob.client.offline().await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(bob.open_json(&inbox[0]), "hello from a shell");
    assert_eq!(inbox[0].sender_display_name, "Alice");
}

#[actix_web::test]
async fn a_short_load_run_delivers_everything_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let out = run(args(&[
        "load",
        "--pairs",
        "50",
        "--sessions-per-user",
        "2",
        "--idle",
        "10",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--window",
        "4",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["sessions"], 210);
    assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
    for zero in ["lost", "duplicated", "anomalies", "errors"] {
        assert_eq!(report[zero], 0, "{zero}: {report}");
    }
    // Every accepted message reached all four sessions of its pair.
    assert_eq!(
        report["delivered"].as_u64().unwrap(),
        4 * report["accepted"].as_u64().unwrap()
    );
}

#[actix_web::test]
async fn load_runs_against_a_running_hub_over_http() {
    let app = spawn_app().await;
    let out = run(args(&[
        "load",
        "--url",
        &app.address,
        "--pairs",
        "5",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--via",
        "http",
        "--quiet",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("lost 0, duplicated 0, anomalies 0, errors 0"),
        "{stdout}"
    );
    assert!(stdout.contains("per session"), "{stdout}");
}

/// Needs PostgreSQL and nats-server: without them the run fails, and so does this test.
#[actix_web::test]
async fn load_starts_a_two_node_cluster_and_delivers_across_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let out = run(args(&[
        "load",
        "--cluster",
        "2",
        "--pairs",
        "10",
        "--sessions-per-user",
        "2",
        "--duration",
        "2",
        "--warmup",
        "1",
        "--window",
        "4",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("lost 0, duplicated 0, anomalies 0, errors 0"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["mode"], "cluster", "{report}");
    assert_eq!(report["nodes"], 2, "{report}");
    assert_eq!(report["sessions"], 40, "{report}");
    // Every pair's two users are on different nodes, and so are a user's two devices.
    assert_eq!(report["cross_node_pairs"], 10, "{report}");
    assert_eq!(report["sessions_per_node"], serde_json::json!([20, 20]));
    assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
    for zero in ["lost", "duplicated", "anomalies", "errors"] {
        assert_eq!(report[zero], 0, "{zero}: {report}");
    }
    // Every accepted message reached all four sessions of its pair.
    assert_eq!(
        report["delivered"].as_u64().unwrap(),
        4 * report["accepted"].as_u64().unwrap()
    );
    // Memory is the two nodes' sum.
    assert_eq!(report["rss"]["processes"], 2, "{report}");
    assert!(report["rss"]["idle_connected"].as_u64().unwrap() > 0);
}

#[actix_web::test]
async fn listen_prints_what_arrives_decrypted() {
    use std::io::{BufRead, BufReader};
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bob.id");
    let out = run(args(&[
        "identity",
        "new",
        "--name",
        "Bob",
        "--file",
        file.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let bob_pubkey = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pubkey: "))
        .unwrap()
        .to_owned();

    let mut child = Command::new(BIN)
        .args([
            "listen",
            "--identity",
            file.to_str().unwrap(),
            "--url",
            &app.address,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines from the listener, read on a plain thread.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = next_line(&mut rx).await.unwrap();
    assert!(first.starts_with("listening as Bob"), "{first}");

    // Bob is now registered, with his key published; Alice writes to him.
    let bob_key = alice.client.recipient_key(&bob_pubkey).await.unwrap();
    let (conversation, _) = alice.client.create_conversation(&bob_pubkey).await.unwrap();
    let sealed = united_hub::client::crypto::seal(
        &alice.identity,
        &bob_key,
        &conversation.id,
        b"are you listening?",
    )
    .unwrap();
    alice
        .client
        .send(&united_hub::client::send_body(
            None,
            &conversation.id,
            &sealed,
            now_ms(),
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(line) = next_line(&mut rx).await {
        let done = line.contains("Alice: are you listening?");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    // Live, or from the offline queue if it beat the listener's socket.
    assert!(
        seen.iter()
            .any(|l| l.ends_with("#1] Alice: are you listening?")),
        "{seen:?}"
    );
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .ok()
        .flatten()
}
