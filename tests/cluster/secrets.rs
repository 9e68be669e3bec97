//! Issue 23, item 4 (contract §8): no password of `--database-url`, whether
//! in the URL's user info or as `?password=`, appears in the log at any
//! level, when the hub starts on PostgreSQL and when it cannot reach it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use united_hub::localcluster::{free_port, LocalPostgres};

use crate::helpers::wait_healthy;

const SECRETS: [&str; 4] = [
    "UserinfoSecret1",
    "QuerySecret2",
    "UnreachableSecret3",
    "UnreachableSecret4",
];

/// Starts the binary with `url` and every log on; the log file's path.
fn start(
    url: &str,
    secret: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
) -> (std::process::Child, std::path::PathBuf) {
    let log = dir.join("hub.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_united-hub"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(["--database-url", url])
        .arg("--jwt-secret-file")
        .arg(secret)
        .env("RUST_LOG", "trace")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("the hub starts");
    (child, log)
}

fn assert_no_secret(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "the log holds {secret}:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    text
}

#[actix_web::test]
async fn no_database_password_reaches_the_log() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let plain = pg.url();
    let with_userinfo = plain.replace("postgres@", "postgres:UserinfoSecret1@");
    let with_param = format!("{plain}?password=QuerySecret2&application_name=hub");
    for url in [with_userinfo, with_param] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (mut child, log) = start(&url, &pg.secret_file(), dir.path(), port);
        wait_healthy(&format!("http://127.0.0.1:{port}")).await;
        let _ = child.kill();
        let _ = child.wait();
        let text = assert_no_secret(&log);
        assert!(
            text.contains(&format!("127.0.0.1:{}/", pg.port())),
            "the log names the database's host and port:\n{text}"
        );
    }

    // A database that cannot be reached: the hub gives up and says where it
    // tried, without the password.
    let dir = tempfile::tempdir().unwrap();
    let unreachable = format!(
        "postgres://hub:UnreachableSecret3@127.0.0.1:{}/united?password=UnreachableSecret4",
        free_port()
    );
    let (mut child, log) = start(&unreachable, &pg.secret_file(), dir.path(), free_port());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the hub did not give up");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let text = assert_no_secret(&log);
    assert!(text.contains("127.0.0.1"), "the error says where:\n{text}");
}
