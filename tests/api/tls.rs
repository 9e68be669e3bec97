//! Issue 25, item 3: the hub serves HTTPS and `wss://` itself
//! (`--tls-cert`, `--tls-key`), with a certificate the test makes; the
//! reference client trusts the test's CA (`client::trust_ca_pem`) and does
//! everything over TLS: login, keys, sends, history, and live pushes on a
//! WebSocket.

use std::time::Duration;

use united_hub::client::trust_ca_pem;

use crate::helpers::*;

#[actix_web::test]
async fn everything_works_over_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    trust_ca_pem(ca.as_bytes()).unwrap();
    let app = spawn_app_with(|s| {
        s.tls_cert = Some(cert.clone());
        s.tls_key = Some(key.clone());
    })
    .await;
    assert!(app.address.starts_with("https://"));
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let mut bob_ws = bob.live_ws().await;
    assert!(bob.client.ws_url().starts_with("wss://"));
    let conversation = alice.open_conversation(&bob).await;
    alice.send_http(&bob, &conversation, "over TLS").await;
    let pushed = loop {
        let env = next_envelope(&mut bob_ws).await;
        if let Some(united_hub::proto::Payload::DmMessageEvent(e)) = env.payload {
            break e.message.unwrap();
        }
    };
    assert_eq!(bob.open_proto(&pushed), "over TLS");
    let history = bob.client.history(&conversation, "after=0").await.unwrap();
    assert_eq!(history.messages.len(), 1);

    // Plain HTTP to the TLS port gets no answer it could use.
    let plain = app.address.replacen("https", "http", 1);
    let res = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(
        res.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served on the TLS port"
    );
}

#[actix_web::test]
async fn a_bad_certificate_or_key_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = certificates(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = certificates(other.path());
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (cert, key, says) in [
        (&cert, &other_key, "do not make a pair"),
        (&not_pem, &other_key, "holds no certificate"),
        (&cert, &not_pem, "not a PEM private key"),
    ] {
        let settings = united_hub::Settings {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..united_hub::Settings::default()
        };
        let err = united_hub::Application::build(settings)
            .await
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains(says), "{err:#}");
    }
}

/// The command-line client over TLS: `send`, then `history`, with the
/// test's CA given in `UNITED_CA_FILE`.
#[actix_web::test]
async fn the_command_line_client_talks_to_a_tls_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    trust_ca_pem(ca.as_bytes()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let app = spawn_app_with(|s| {
        s.tls_cert = Some(cert.clone());
        s.tls_key = Some(key.clone());
    })
    .await;
    let bob = app.user("Bob").await;
    let alice_file = dir.path().join("alice.id");
    let bin = env!("CARGO_BIN_EXE_united-hub");
    let run = |args: Vec<String>, ca: bool| {
        let ca_file = ca_file.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(bin);
            cmd.args(&args).env_remove("UNITED_CA_FILE");
            if ca {
                cmd.env("UNITED_CA_FILE", &ca_file);
            }
            cmd.output().unwrap()
        })
    };
    let path = alice_file.to_str().unwrap().to_owned();
    let made = run(
        ["identity", "new", "--name", "Alice", "--file", &path]
            .map(String::from)
            .to_vec(),
        false,
    )
    .await
    .unwrap();
    assert!(made.status.success());
    let send = [
        "send",
        "--identity",
        &path,
        "--to",
        &bob.pubkey,
        "--url",
        &app.address,
        "over",
        "TLS",
    ]
    .map(String::from)
    .to_vec();
    // Without the CA the client refuses the hub's certificate.
    let refused = run(send.clone(), false).await.unwrap();
    assert!(!refused.status.success());
    let sent = run(send, true).await.unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let inbox = bob.client.offline().await.unwrap();
    assert_eq!(bob.open_json(&inbox[0]), "over TLS");
    let history = run(
        [
            "history",
            "--identity",
            &path,
            "--with",
            &bob.pubkey,
            "--url",
            &app.address,
        ]
        .map(String::from)
        .to_vec(),
        true,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&history.stdout);
    assert!(out.contains("over TLS"), "{out}");
}

/// A client that trusts only `ca` (PEM).
fn client_trusting(ca: &str) -> awc::Client {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .timeout(Duration::from_secs(5))
        .finish()
}

/// Whether `url` answers 200 on a new connection (a new handshake) from
/// a client that trusts only `ca`.
async fn healthy_for(ca: &str, url: &str) -> bool {
    client_trusting(ca)
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// SIGHUP reads the certificate files again: a renewed pair is presented
/// to new connections without a restart; a broken one is refused and the
/// pair in use stays.
#[actix_web::test]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    let files = tempfile::tempdir().unwrap();
    let (ca_a, cert, key) = certificates(files.path());
    let renewed = tempfile::tempdir().unwrap();
    let (ca_b, cert_b, key_b) = certificates(renewed.path());
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut child = ProcessHub::spawn(
        data.path(),
        port,
        &["--tls-cert", cert_arg, "--tls-key", key_arg],
    );
    let url = format!("https://127.0.0.1:{port}/healthz");
    let (trusts_a, trusts_b) = (ca_a.as_str(), ca_b.as_str());
    eventually("the hub answers over TLS", || healthy_for(trusts_a, &url)).await;
    assert!(!healthy_for(trusts_b, &url).await);

    let hangup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    hangup(child.id());
    eventually("the renewed certificate is presented", || {
        healthy_for(trusts_b, &url)
    })
    .await;
    assert!(!healthy_for(trusts_a, &url).await, "the old one is gone");

    std::fs::write(&cert, "not a certificate").unwrap();
    hangup(child.id());
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the hub keeps running");
    assert!(
        healthy_for(trusts_b, &url).await,
        "a broken pair leaves the one in use"
    );
    let _ = child.kill();
    let _ = child.wait();
}
