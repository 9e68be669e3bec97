//! Issue 23, item 5 (contract §8): the cluster's trust boundary.
//! - Someone who can publish on NATS (they hold its credentials) but not
//!   the cluster's secret can push no event to a session and change no
//!   node's idea of who is online; a genuine message replayed is dropped.
//! - NATS with a user and password, and over TLS with a private CA.
//! - PostgreSQL over TLS, checked against the test's CA (`verify-full`).
//! - A node refuses to start without `--jwt-secret-file`, and the JWT key
//!   is not in the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use prost::Message as _;
use united_hub::cluster::sealing::BusSeal;
use united_hub::localcluster::{LocalNats, LocalPostgres, NatsOptions};
use united_hub::proto::cluster::{presence::Kind, ClusterEvent, ClusterEvents, Presence};
use united_hub::proto::{self, dm, Payload};
use united_hub::{Application, Settings};

use crate::helpers::*;
use crate::support::*;

const NATS_USER: (&str, &str) = ("hub", "bus-password");

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM
/// files in `dir`: (ca.pem, server.crt, server.key).
fn certificates(dir: &Path, ca_name: &str) -> (PathBuf, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    (ca_path, cert.pem(), key.serialize_pem())
}

/// A cluster whose NATS asks for a user and password.
async fn cluster_with_nats_login(n: usize) -> Cluster {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start_with(NatsOptions {
        user: Some((NATS_USER.0.into(), NATS_USER.1.into())),
        tls: None,
    })
    .expect("nats-server starts");
    cluster_on(n, pg, nats).await
}

/// Someone with NATS's credentials but not the cluster's secret.
async fn intruder(c: &Cluster) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(NATS_USER.0.into(), NATS_USER.1.into())
        .connect(format!("127.0.0.1:{}", c.nats.port()))
        .await
        .expect("the intruder reaches NATS")
}

/// Bus messages node `node` dropped, all reasons together.
async fn rejected(c: &Cluster, node: usize) -> f64 {
    c.nodes[node]
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("united_cluster_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_web::test]
async fn someone_on_nats_without_the_secret_can_neither_push_nor_fake_presence() {
    let c = cluster_with_nats_login(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let carol = c.user(0, "Carol").await;
    let mut alice_ws = c.ws_at(&alice, 0).await;
    let nats = intruder(&c).await;

    // A new conversation from "Bank Support (verified)", in the bus's own
    // format: as it is, and sealed with a key the intruder made up.
    let bank = united_hub::client::crypto::Identity::generate().public_key_hex();
    let (a, b) = if bank < alice.pubkey {
        (bank.clone(), alice.pubkey.clone())
    } else {
        (alice.pubkey.clone(), bank.clone())
    };
    let envelope = proto::encode_event(Payload::DmConversationCreatedEvent(
        dm::DmConversationCreatedEvent {
            conversation: Some(dm::DmConversation {
                id: uuid::Uuid::new_v4().to_string(),
                participant_a_pubkey: a,
                participant_b_pubkey: b,
                participant_a_display_name: "Bank Support (verified)".into(),
                participant_b_display_name: "Bank Support (verified)".into(),
                ..Default::default()
            }),
        },
    ));
    let events = ClusterEvents {
        node: "0123456789abcdef0123456789abcdef".into(),
        events: vec![ClusterEvent {
            envelope,
            to: vec![alice.pubkey.clone()],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let made_up = BusSeal::new(
        b"a secret the intruder made up, 32 bytes or more",
        "0123456789abcdef0123456789abcdef".into(),
    );
    let subject = "united.events".to_owned();
    nats.publish(subject.clone(), events.clone().into())
        .await
        .unwrap();
    nats.publish(subject.clone(), made_up.seal(&subject, events.into()))
        .await
        .unwrap();

    // Bob has no session anywhere: "online on a node" would keep his
    // messages out of his offline queue.
    let presence = Presence {
        node: "0123456789abcdef0123456789abcdef".into(),
        kind: Kind::Online as i32,
        users: vec![bob.pubkey.clone()],
        ..Default::default()
    }
    .encode_to_vec();
    nats.publish("united.presence", presence.clone().into())
        .await
        .unwrap();
    nats.publish(
        "united.presence",
        made_up.seal("united.presence", presence.into()),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();

    eventually("node 0 dropped all four", || async {
        rejected(&c, 0).await >= 4.0
    })
    .await;
    assert_silent(&mut alice_ws, Duration::from_millis(500)).await;
    for node in &c.nodes {
        let cluster = node.state.cluster.as_ref().unwrap();
        let bob_key = united_hub::model::Pubkey::parse(&bob.pubkey).unwrap();
        assert!(!cluster.online_elsewhere(&bob_key), "presence unchanged");
    }
    // So a message to Bob is queued for him, as for anyone offline.
    let conversation = carol.open_conversation(&bob).await;
    carol.send_http(&bob, &conversation, "are you there?").await;
    assert_eq!(c.offline_entries(&bob).await, 1);
    let metrics = c.nodes[0].metrics().await;
    assert!(
        metrics.contains("united_cluster_rejected_total{reason=\"malformed\"}")
            && metrics.contains("united_cluster_rejected_total{reason=\"bad_mac\"}"),
        "counted by reason"
    );
}

#[actix_web::test]
async fn a_genuine_bus_message_replayed_is_dropped() {
    let c = cluster_with_nats_login(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let mut alice_ws = c.ws_at(&alice, 0).await;
    let nats = intruder(&c).await;
    let subject = "united.events".to_owned();
    let mut tap = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();

    // Bob writes through node 1, which tells node 0 over the bus.
    let conversation = bob.open_conversation(&alice).await;
    bob.send_http(&alice, &conversation, "only once").await;
    let got = collect_messages(&mut alice_ws, 1, Duration::from_secs(10)).await;
    assert_eq!(alice.open_proto(&got[0]), "only once");

    // The intruder saw the sealed frames and plays them back.
    let mut frames = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), tap.next()).await {
        frames.push(msg.payload);
    }
    assert!(
        frames.len() >= 2,
        "the conversation and the message went over the bus"
    );
    let before = rejected(&c, 0).await;
    let before_own = rejected(&c, 1).await;
    for frame in &frames {
        nats.publish(subject.clone(), frame.clone()).await.unwrap();
    }
    nats.flush().await.unwrap();
    eventually("node 0 dropped every replay", || async {
        rejected(&c, 0).await >= before + frames.len() as f64
    })
    .await;
    // Every node hears the events subject: node 1 gets its own frames back
    // and drops them too (NATS never echoes a node's own messages to it).
    eventually("node 1 dropped its own frames played back", || async {
        rejected(&c, 1).await >= before_own + frames.len() as f64
    })
    .await;
    assert_silent(&mut alice_ws, Duration::from_millis(500)).await;
    assert!(c.nodes[0]
        .metrics()
        .await
        .contains("united_cluster_rejected_total{reason=\"replayed\"}"));
}

#[actix_web::test]
async fn nodes_talk_over_nats_with_tls_and_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "nats-ca");
    let (cert_path, key_path) = (dir.path().join("nats.crt"), dir.path().join("nats.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start_with(NatsOptions {
        user: Some((NATS_USER.0.into(), NATS_USER.1.into())),
        tls: Some((cert_path, key_path)),
    })
    .expect("nats-server starts with TLS");
    assert!(nats.url().starts_with("tls://"));

    // Without the CA the node cannot trust the server, and says so.
    let mut settings = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("refused"),
        ..Settings::default()
    };
    node_settings(&mut settings, &pg, &nats);
    let err = Application::build(settings).await.err().expect("refused");
    assert!(format!("{err:#}").contains("NATS"), "{err:#}");

    two_nodes_talk(pg, nats, |s| s.nats_ca_file = Some(ca.clone()), "over TLS").await;
}

/// Two nodes on `pg` and `nats`, `configure`d beyond `node_settings`: a
/// message from a user of node 1 reaches a session on node 0 over the bus.
async fn two_nodes_talk(
    pg: LocalPostgres,
    nats: LocalNats,
    configure: impl Fn(&mut Settings),
    text: &str,
) {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            spawn_app_with(|s| {
                node_settings(s, &pg, &nats);
                configure(s);
            })
            .await,
        );
    }
    let c = Cluster { pg, nats, nodes };
    c.wait_for_peers().await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let mut alice_ws = c.ws_at(&alice, 0).await;
    let conversation = bob.open_conversation(&alice).await;
    bob.send_http(&alice, &conversation, text).await;
    let got = collect_messages(&mut alice_ws, 1, Duration::from_secs(10)).await;
    assert_eq!(alice.open_proto(&got[0]), text);
}

#[actix_web::test]
async fn postgres_over_tls_is_checked_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "pg-ca");
    let (other_ca, _, _) = certificates(dir.path(), "other-ca");
    let pg = LocalPostgres::start_with_tls(&cert, &key).expect("PostgreSQL starts with ssl=on");
    let url = |mode: &str, root: &Path| {
        format!("{}?sslmode={mode}&sslrootcert={}", pg.url(), root.display())
    };

    // Signed by another CA: refused, and the error says why.
    let settings = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("refused"),
        database_url: Some(url("verify-full", &other_ca).parse().unwrap()),
        jwt_secret_file: Some(pg.secret_file()),
        ..Settings::default()
    };
    let err = Application::build(settings).await.err().expect("refused");
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );

    // Signed by the right one, for the host connected to: the node serves,
    // and every connection it holds is encrypted.
    let app = spawn_app_with(|s| {
        s.database_url = Some(url("verify-full", &ca).parse().unwrap());
        s.jwt_secret_file = Some(pg.secret_file());
    })
    .await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    assert_eq!(
        alice
            .send_http(&bob, &conversation, "x")
            .await
            .server_sequence,
        1
    );
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let row = db
        .query_one(
            "SELECT COUNT(*), COALESCE(bool_and(s.ssl), false) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'united-hub'",
            &[],
        )
        .await
        .unwrap();
    let (connections, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(
        connections > 0 && all_tls,
        "{connections} connections, all TLS: {all_tls}"
    );
}

#[actix_web::test]
async fn a_cluster_node_needs_the_secret_file_and_the_key_stays_out_of_the_database() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    let base = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(pg.url().parse().unwrap()),
        ..Settings::default()
    };
    let err = Application::build(base.clone())
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("--jwt-secret-file"), "{err:#}");
    // A file that is not there is not made up: nodes must share one.
    let missing = dir.path().join("no-such-secret");
    let err = Application::build(Settings {
        jwt_secret_file: Some(missing.clone()),
        ..base.clone()
    })
    .await
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("no-such-secret"), "{err:#}");
    assert!(!missing.exists());

    let app = spawn_app_with(|s| {
        s.database_url = Some(pg.url().parse().unwrap());
        s.jwt_secret_file = Some(pg.secret_file());
    })
    .await;
    app.user("Alice").await;
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let stored: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM cluster_secrets WHERE name = 'jwt'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "no JWT key in the database");
}

#[actix_web::test]
async fn several_nats_urls_are_one_nats_cluster_and_a_dead_one_is_skipped() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start_with(NatsOptions {
        user: Some((NATS_USER.0.into(), NATS_USER.1.into())),
        tls: None,
    })
    .expect("nats-server starts");
    let dead = united_hub::localcluster::free_port();
    let urls = format!(
        "nats://{}:{}@127.0.0.1:{dead},{}",
        NATS_USER.0,
        NATS_USER.1,
        nats.url()
    );
    two_nodes_talk(
        pg,
        nats,
        |s| s.nats_url = Some(urls.parse().unwrap()),
        "through the live server",
    )
    .await;
}
