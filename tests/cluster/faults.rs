//! What each fault may and may not do (contract section 7).

use std::time::Duration;

use futures_util::future::join_all;
use united_hub::localcluster::{LocalNats, LocalPostgres};
use united_hub::proto::Payload;

use crate::helpers::*;
use crate::support::*;

#[actix_web::test]
async fn three_nodes_starting_at_once_migrate_an_empty_database_once() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    let (a, b, c) = tokio::join!(
        spawn_app_with(|s| node_settings(s, &pg, &nats)),
        spawn_app_with(|s| node_settings(s, &pg, &nats)),
        spawn_app_with(|s| node_settings(s, &pg, &nats)),
    );
    let applied: Vec<u32> = [&a, &b, &c].iter().map(|n| n.migrations_applied).collect();
    assert_eq!(
        applied.iter().sum::<u32>(),
        united_hub::db::postgres::LATEST,
        "each migration ran exactly once: {applied:?}"
    );
    let cluster = Cluster {
        pg,
        nats,
        nodes: vec![a, b, c],
    };
    let versions: Vec<i32> = cluster
        .db()
        .await
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=united_hub::db::postgres::LATEST as i32).collect::<Vec<_>>()
    );
    // And the cluster works: a user of node 2 talks to a user of node 0.
    cluster.wait_for_peers().await;
    let alice = cluster.user(2, "Alice").await;
    let bob = cluster.user(0, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    assert_eq!(
        alice
            .send_http(&bob, &conversation, "hi")
            .await
            .server_sequence,
        1
    );
}

#[actix_web::test]
async fn while_postgres_is_down_sends_are_503_and_afterwards_everything_works() {
    let mut c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = c.ws_at(&bob, 1).await;
    alice.send_http(&bob, &conversation, "before").await;
    assert_eq!(next_message(&mut bob_ws).await.server_sequence, 1);

    c.pg.stop().expect("PostgreSQL stops");
    let sealed = alice.seal(&bob, &conversation, "during");
    let body = united_hub::client::send_body(None, &conversation, &sealed, now_ms());
    let err = alice.client.send(&body).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err:?}");
    assert_eq!(err.code(), Some("unavailable"));
    // Over WebSocket too, with a retry hint.
    let answer = bob_ws
        .request(send_request(
            None,
            &conversation,
            &bob.seal(&alice, &conversation, "ws during"),
        ))
        .await
        .unwrap();
    match answer.payload {
        Some(Payload::Error(e)) => {
            assert_eq!((e.code, e.error_code.as_str()), (503, "unavailable"));
            assert!(e.retry_after >= 1);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // The raw response carries Retry-After, and /healthz says 503.
    let res = c.nodes[0]
        .http()
        .post(c.nodes[0].url("/api/dm/messages"))
        .bearer_auth(alice.token())
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let health = c.nodes[1]
        .http()
        .get(c.nodes[1].url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);

    c.pg.start_again().expect("PostgreSQL starts again");
    // Without restarting the nodes: sends work again, in sequence.
    let mut after = None;
    for _ in 0..100 {
        match alice.client.send(&body).await {
            Ok((m, _)) => {
                after = Some(m);
                break;
            }
            Err(_) => actix_web::rt::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let after = after.expect("sends work again once PostgreSQL is back");
    assert_eq!(after.server_sequence, 2, "the failed sends left no gap");
    assert_eq!(next_message(&mut bob_ws).await.server_sequence, 2);
    assert_eq!(c.stored_sequences(&conversation).await, vec![1, 2]);
    eventually("healthz is 200 again", || async {
        c.nodes[1]
            .http()
            .get(c.nodes[1].url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

#[actix_web::test]
async fn a_nats_restart_during_traffic_leaves_no_live_session_missing_a_message() {
    let mut c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = c.ws_at(&bob, 1).await;
    let mut alice_ws = c.ws_at(&alice, 1).await;
    let gauge = |name: &'static str| {
        let node = &c.nodes[1];
        async move { metric_value(&node.metrics().await, name) }
    };
    eventually("the bus gauges show a connected pair", || async {
        gauge("united_cluster_bus_connected").await == 1.0
            && gauge("united_cluster_peers").await == 1.0
    })
    .await;

    // 300 sends from node 0, with NATS restarted in the middle.
    let sender = alice.client.clone();
    let sends = async {
        let mut seqs = Vec::new();
        for i in 0..300 {
            let sealed = alice.seal(&bob, &conversation, &format!("m{i}"));
            let body = united_hub::client::send_body(None, &conversation, &sealed, now_ms());
            seqs.push(sender.send(&body).await.expect("send").0.server_sequence);
            if i % 10 == 0 {
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
        }
        seqs
    };
    let restart = async {
        actix_web::rt::time::sleep(Duration::from_millis(150)).await;
        c.nats.stop();
        // Without NATS a node says so on /healthz (while it goes on
        // committing sends).
        eventually("healthz is 503 without NATS", || async {
            c.nodes[1]
                .http()
                .get(c.nodes[1].url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 503)
        })
        .await;
        eventually("the bus gauge says disconnected", || async {
            gauge("united_cluster_bus_connected").await == 0.0
        })
        .await;
        c.nats.start_again().expect("NATS starts again");
    };
    let (seqs, ()) = tokio::join!(sends, restart);
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());

    // Both sessions on node 1 get all 300, once, in order.
    for ws in [&mut bob_ws, &mut alice_ws] {
        let got = collect_messages(ws, 300, Duration::from_secs(10)).await;
        assert_eq!(
            got.iter().map(|m| m.server_sequence).collect::<Vec<_>>(),
            (1..=300).collect::<Vec<u64>>()
        );
    }
    eventually("node 1 is healthy again", || async {
        c.nodes[1].state.cluster.as_ref().unwrap().bus_connected()
            && gauge("united_cluster_bus_connected").await == 1.0
    })
    .await;
}

#[actix_web::test]
async fn the_janitor_purges_once_per_interval_for_the_whole_cluster() {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    let configure = |s: &mut united_hub::Settings| {
        node_settings(s, &pg, &nats);
        s.janitor_interval = 1;
        s.offline_ttl = 1;
    };
    let nodes = join_all((0..3).map(|_| spawn_app_with(configure))).await;
    let c = Cluster { pg, nats, nodes };
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    alice.send_http(&bob, &conversation, "to be purged").await;
    eventually("the entry is purged", || async {
        c.offline_entries(&bob).await == 0
    })
    .await;
    // Three nodes tick every second, but the purge runs at most once per
    // interval for the whole cluster: over the next few seconds the runs of
    // all nodes together stay near the seconds elapsed, never three times
    // that (a slow machine makes fewer, not more).
    let before = total(&c, "united_janitor_runs_total").await;
    let started = std::time::Instant::now();
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let runs = total(&c, "united_janitor_runs_total").await - before;
    let ticks_per_node = started.elapsed().as_secs_f64();
    assert!(runs >= 1.0, "the purge still runs");
    assert!(
        runs <= ticks_per_node * 1.15 + 1.0,
        "{runs} purges in {ticks_per_node:.1} s across 3 nodes"
    );
    assert_eq!(
        total(&c, "united_offline_purged_total").await,
        1.0,
        "one entry, purged once"
    );
}

async fn total(c: &Cluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for node in &c.nodes {
        sum += metric_value(&node.metrics().await, name);
    }
    sum
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn while_nats_is_down_a_session_opens_and_gets_other_nodes_messages_from_the_database() {
    let mut c = cluster(2).await;
    let alice = c.user(0, "Alice").await;
    let bob = c.user(1, "Bob").await;
    let conversation = bob.open_conversation(&alice).await;
    c.nats.stop();
    eventually("node 0 sees NATS gone", || async {
        !c.nodes[0].state.cluster.as_ref().unwrap().bus_connected()
    })
    .await;

    // The upgrade needs the database, not the bus: it goes through.
    let mut alice_ws = c.ws_at(&alice, 0).await;
    // Bob writes through node 1, which cannot tell node 0: node 0's repair
    // poll reads the message from the database and pushes it.
    bob.send_http(&alice, &conversation, "through the database")
        .await;
    let got = collect_messages(&mut alice_ws, 1, Duration::from_secs(10)).await;
    assert_eq!(alice.open_proto(&got[0]), "through the database");
    c.nats.start_again().expect("NATS starts again");
}
