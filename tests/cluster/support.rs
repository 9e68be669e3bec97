//! A local cluster for one test: PostgreSQL, NATS and N hub nodes in this
//! process, and users whose devices connect to whichever node a test picks.

use std::time::Duration;

use united_hub::client::{HubClient, WsClient};
use united_hub::localcluster::{LocalNats, LocalPostgres};
use united_hub::proto::{dm, Payload};
use united_hub::Settings;

use crate::helpers::*;

pub struct Cluster {
    pub pg: LocalPostgres,
    pub nats: LocalNats,
    pub nodes: Vec<TestApp>,
}

/// Settings of one node of the cluster: rate limits off, short timers.
pub fn node_settings(s: &mut Settings, pg: &LocalPostgres, nats: &LocalNats) {
    s.database_url = Some(pg.url().parse().expect("a postgres URL"));
    s.nats_url = Some(nats.url().parse().expect("a NATS URL"));
    s.jwt_secret_file = Some(pg.secret_file());
    s.auth_rate = 0;
    s.send_rate = 0;
}

/// PostgreSQL, NATS and `n` nodes, all started and healthy.
pub async fn cluster(n: usize) -> Cluster {
    let pg = LocalPostgres::start().expect("PostgreSQL starts");
    let nats = LocalNats::start().expect("nats-server starts");
    cluster_on(n, pg, nats).await
}

/// `n` nodes on the given PostgreSQL and NATS, started and healthy.
pub async fn cluster_on(n: usize, pg: LocalPostgres, nats: LocalNats) -> Cluster {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(spawn_app_with(|s| node_settings(s, &pg, &nats)).await);
    }
    let cluster = Cluster { pg, nats, nodes };
    cluster.wait_for_peers().await;
    cluster
}

impl Cluster {
    /// Waits until every node hears every other (presence is up).
    pub async fn wait_for_peers(&self) {
        let n = self.nodes.len();
        eventually("every node hears the others", || async {
            self.nodes
                .iter()
                .all(|node| node.state.cluster.as_ref().unwrap().peers() == n - 1)
        })
        .await;
    }

    /// A new user, logged in at `node`, key published.
    pub async fn user(&self, node: usize, name: &str) -> TestUser {
        self.nodes[node].user(name).await
    }

    /// `user`'s HTTP client pointed at `node`, with the same token.
    pub fn client_at(&self, user: &TestUser, node: usize) -> HubClient {
        let mut client = self.nodes[node].client();
        client.set_access_token(user.token());
        client
    }

    /// A session of `user` on `node` that has answered its first request.
    pub async fn ws_at(&self, user: &TestUser, node: usize) -> WsClient {
        let ws = WsClient::connect(&self.nodes[node].ws_url(), user.token())
            .await
            .expect("ws connect");
        ws.call(Payload::DmConversationListRequest(
            dm::DmConversationListRequest {},
        ))
        .await
        .expect("first request");
        ws
    }

    /// A direct connection to the cluster's database, for assertions.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.pg.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        actix_web::rt::spawn(connection);
        client
    }

    /// The stored sequences of a conversation, in order.
    pub async fn stored_sequences(&self, conversation: &str) -> Vec<i64> {
        let id: uuid::Uuid = conversation.parse().unwrap();
        self.db()
            .await
            .query(
                "SELECT server_sequence FROM dm_messages WHERE conversation_id = $1 \
                 ORDER BY server_sequence",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Offline-queue entries of `user`.
    pub async fn offline_entries(&self, user: &TestUser) -> i64 {
        self.db()
            .await
            .query_one(
                "SELECT COUNT(*) FROM dm_offline_queue WHERE recipient_pubkey = $1",
                &[&user.pubkey],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// Collects `n` message events from a session, in arrival order, waiting at
/// most `wait` for each.
pub async fn collect_messages(
    ws: &mut WsClient,
    n: usize,
    wait: Duration,
) -> Vec<dm::EncryptedDmMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match ws.next(wait).await {
            Some(united_hub::client::Incoming::Envelope(e)) => {
                if let Some(Payload::DmMessageEvent(e)) = e.payload {
                    out.push(e.message.unwrap());
                }
            }
            other => panic!("expected message {} of {n}, got {other:?}", out.len() + 1),
        }
    }
    out
}
