//! Cluster mode: several nodes of the hub on one PostgreSQL, with NATS
//! (core pub/sub) carrying events between them.
//!
//! - **Fan-out.** After a group commit, the node publishes the batch's
//!   events that concern a user online on another node in one message (a
//!   very large batch in several) on `united.events`, which every node
//!   subscribes to from its start. Each node keeps the events of the users
//!   it holds sessions of. One message a commit rather than one a user: the
//!   bus's work per message is that of a commit, not of a send.
//! - **Order.** Every `DmMessageEvent` a node hands to its sessions, its own
//!   or another node's, goes through [`feed::Feeds`]: once per session, in
//!   `server_sequence` order per conversation.
//! - **Repair.** Core NATS is at-most-once: a node killed between commit and
//!   publish, a NATS restart or a slow consumer loses events. Every second a
//!   node compares the stored `last_seq` of the conversations it follows with
//!   what it delivered, and reads what is missing from the database after a
//!   short grace period. The database, not NATS, is the truth.
//! - **Presence.** "Online" is a live session on any node
//!   ([`presence::RemotePresence`]), so the offline-queue rule holds for the
//!   cluster as a whole.
//!
//! NATS I/O runs on a runtime of its own (`united-bus`), like the database's.
//!
//! Here: the node, its start, the bus and presence, and the tasks that read
//! and write NATS. `fanout` publishes and delivers events, `watching`
//! follows the users with a session here, `repair` reads what the bus lost.

mod fanout;
pub mod feed;
pub mod presence;
mod repair;
pub mod sealing;
mod watching;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use self::feed::Feeds;
use self::presence::{RemotePresence, Reply};
use self::sealing::{BusSeal, Rejected};
use crate::actors::registry::SessionRegistry;
use crate::config::NatsUrl;
use crate::metrics::Metrics;
use crate::model::Pubkey;
use crate::proto::cluster::{presence::Kind, Presence};
use crate::runtime::OwnedRuntime;
use crate::store::commit::{AppendMessage, CommitListener};
use crate::store::Store;

/// The presence subject.
const PRESENCE: &str = "united.presence";
/// The events subject: every node publishes its commits' events there and
/// hears every other node's.
const EVENTS: &str = "united.events";
/// About how many bytes of events one bus message carries (NATS refuses
/// messages over its `max_payload`, 1 MiB by default).
const EVENTS_PART: usize = 256 * 1024;
/// Heartbeats, node expiry and the repair poll.
const TICK: Duration = Duration::from_millis(250);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a gap may wait for NATS before it is read from the database.
const REPAIR_GRACE: Duration = Duration::from_millis(500);
/// A user who left this node this recently still counts for the offline
/// fallback of events published while they were leaving.
const RECENTLY_GONE: Duration = Duration::from_secs(10);
/// Users per presence message.
const SNAPSHOT_PART: usize = 2000;
/// Publications waiting for NATS, in number and in bytes; past either they
/// are dropped (`united_cluster_publish_dropped_total`): the repair poll
/// reads a dropped commit's messages, the next snapshot (5 s) corrects
/// dropped presence. A publication is a whole group commit's events
/// (up to [`EVENTS_PART`]), so NATS down for a while must not hold them all.
const OUTBOX: usize = 4096;
const OUTBOX_BYTES: usize = 64 * 1024 * 1024;
/// Messages the NATS client holds for one subscription (async-nats' default
/// is 65,536, which whole commits of events would make gigabytes) and
/// commands it holds for the server (its default 2,048). Past them it drops
/// and reports a slow consumer; the repair poll reads what was lost.
const SUBSCRIPTION_CAPACITY: usize = 1024;
const CLIENT_CAPACITY: usize = 256;

/// How this node reaches NATS: `--nats-url` and `--nats-ca-file`.
pub struct NatsSettings {
    pub url: NatsUrl,
    pub ca_file: Option<PathBuf>,
}

impl NatsSettings {
    /// Credentials and TLS as the settings ask.
    fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = self.url.credentials() {
            options = options.user_and_password(user.to_owned(), password.to_owned());
        }
        if let Some(ca) = &self.ca_file {
            anyhow::ensure!(
                ca.is_file(),
                "--nats-ca-file {} is not a readable file",
                ca.display()
            );
            options = options.add_root_certificates(ca.clone());
        }
        if self.url.tls() {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// The servers, without credentials.
    fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        self.url
            .servers()
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| anyhow::anyhow!("--nats-url: {s} is not a server address: {e}"))
            })
            .collect()
    }
}

/// One watched user: how many sessions, and whether the watch started.
struct Watch {
    count: usize,
    /// `None` while loading, then whether the watch started.
    ready: watch::Sender<Option<bool>>,
}

/// A number of bytes that may be taken and given back from any thread.
struct Budget {
    left: AtomicUsize,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Budget {
            left: AtomicUsize::new(bytes),
        }
    }

    /// Takes `n` bytes if that many are left.
    fn take(&self, n: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

pub struct ClusterNode {
    id: String,
    runtime: OwnedRuntime,
    nats: async_nats::Client,
    store: Store,
    registry: Arc<SessionRegistry>,
    metrics: Arc<Metrics>,
    presence: RemotePresence,
    feeds: Mutex<Feeds>,
    watches: Mutex<HashMap<Pubkey, Watch>>,
    recently_gone: Mutex<HashMap<Pubkey, Instant>>,
    outbox: mpsc::Sender<(String, Bytes)>,
    /// Bytes in the outbox.
    outbox_bytes: Arc<Budget>,
    snapshot_id: AtomicU64,
    /// Seals what this node publishes, checks what it receives.
    seal: Arc<BusSeal>,
}

/// Keeps a user watched while a session of theirs lives; unwatches on drop.
pub struct WatchGuard {
    node: Arc<ClusterNode>,
    user: Pubkey,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.node.unwatch(&self.user);
    }
}

impl CommitListener for ClusterNode {
    fn committed(&self, appends: &[&AppendMessage]) {
        self.publish_committed(appends);
    }
}

impl ClusterNode {
    /// Connects to NATS and starts presence, the publisher and the repair
    /// loop. Fails if NATS cannot be reached at start. Every message on the
    /// bus is sealed with a key derived from `secret`, the cluster's shared
    /// secret ([`sealing`]).
    pub async fn start(
        bus: &NatsSettings,
        secret: &[u8],
        store: Store,
        registry: Arc<SessionRegistry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<ClusterNode>> {
        use anyhow::Context as _;
        let runtime = OwnedRuntime::new("united-bus", 1).context("starting the bus runtime")?;
        let id = Uuid::new_v4().simple().to_string();
        let slot: Arc<OnceLock<Weak<ClusterNode>>> = Arc::new(OnceLock::new());
        let events = slot.clone();
        let options = bus
            .options()
            .context("--nats-url")?
            .name(format!("united-hub {}", &id[..8]))
            .no_echo()
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .client_capacity(CLIENT_CAPACITY)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(3))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let node = events.get().and_then(Weak::upgrade);
                async move {
                    if let Some(node) = node {
                        node.on_bus_event(event);
                    }
                }
            });
        let servers = bus.servers()?;
        let nats = runtime
            .handle()
            .spawn(async move { options.connect(servers).await })
            .await
            .context("the NATS task failed")?
            .with_context(|| format!("connecting to NATS at {}", bus.url))?;
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let seal = Arc::new(BusSeal::new(secret, id.clone()));
        let node = Arc::new(ClusterNode {
            id,
            runtime,
            nats,
            store,
            registry,
            metrics,
            presence: RemotePresence::default(),
            feeds: Mutex::new(Feeds::default()),
            watches: Mutex::new(HashMap::new()),
            recently_gone: Mutex::new(HashMap::new()),
            outbox,
            outbox_bytes: Arc::new(Budget::new(OUTBOX_BYTES)),
            snapshot_id: AtomicU64::new(1),
            seal,
        });
        let _ = slot.set(Arc::downgrade(&node));

        let nats = node.nats.clone();
        let (presence, events) = node
            .spawn(async move {
                let presence = nats.subscribe(PRESENCE).await?;
                let events = nats.subscribe(EVENTS).await?;
                // The server has both subscriptions once the flush returns.
                nats.flush().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((presence, events))
            })
            .await
            .context("subscribing to presence and events")?;
        let handle = node.runtime.handle();
        handle.spawn(publisher(
            node.nats.clone(),
            node.seal.clone(),
            outgoing,
            node.outbox_bytes.clone(),
        ));
        handle.spawn(read_presence(Arc::downgrade(&node), presence));
        handle.spawn(read_events(Arc::downgrade(&node), events));
        handle.spawn(ticker(Arc::downgrade(&node)));
        node.announce(Kind::Hello, Vec::new());
        tracing::info!(node = %&node.id[..8], "joined the cluster");
        Ok(node)
    }

    /// Runs a NATS future on the bus runtime and waits for it from here.
    async fn spawn<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.runtime
            .handle()
            .spawn(fut)
            .await
            .map_err(|e| anyhow::anyhow!("bus task failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Whether NATS is connected (for `/healthz`).
    pub fn bus_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether `user` has a live session on another node.
    pub fn online_elsewhere(&self, user: &Pubkey) -> bool {
        self.presence.is_online(user)
    }

    /// Nodes this one hears from.
    pub fn peers(&self) -> usize {
        self.presence.node_count()
    }

    fn on_bus_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                tracing::info!("NATS connected");
                self.metrics.cluster.bus_connected.set(1);
                // Peers answer HELLO with their snapshots; ours goes out too.
                self.announce(Kind::Hello, Vec::new());
                self.send_snapshot();
            }
            async_nats::Event::Disconnected => {
                self.metrics.cluster.bus_connected.set(0);
                tracing::warn!("NATS disconnected");
            }
            async_nats::Event::SlowConsumer(_) => {
                self.metrics.cluster.slow_consumer.inc();
                tracing::warn!(
                    "NATS dropped events for a slow subscription; the repair poll reads them back"
                );
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    /// Counts and logs a bus message that failed the check, without its
    /// payload (which names users).
    fn rejected(&self, why: Rejected) {
        self.metrics
            .cluster
            .rejected
            .with_label_values(&[why.label()])
            .inc();
        tracing::warn!(
            reason = why.label(),
            "dropped a bus message that failed the cluster's check"
        );
    }

    // -- publishing ------------------------------------------------------------

    fn publish(&self, subject: String, payload: Bytes) {
        let len = payload.len();
        if !self.outbox_bytes.take(len) {
            self.metrics.cluster.publish_dropped.inc();
            return;
        }
        if self.outbox.try_send((subject, payload)).is_err() {
            self.outbox_bytes.give_back(len);
            self.metrics.cluster.publish_dropped.inc();
        }
    }

    fn announce(&self, kind: Kind, users: Vec<String>) {
        let msg = Presence {
            node: self.id.clone(),
            kind: kind as i32,
            users,
            snapshot: 0,
            last: false,
        };
        self.publish(PRESENCE.into(), msg.encode_to_vec().into());
    }

    fn send_snapshot(&self) {
        let users: Vec<String> = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|u| u.to_string())
            .collect();
        let id = self.snapshot_id.fetch_add(1, Ordering::Relaxed);
        let mut parts: Vec<Vec<String>> = users.chunks(SNAPSHOT_PART).map(<[_]>::to_vec).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let n = parts.len();
        for (i, users) in parts.into_iter().enumerate() {
            let msg = Presence {
                node: self.id.clone(),
                kind: Kind::Snapshot as i32,
                users,
                snapshot: id,
                last: i + 1 == n,
            };
            self.publish(PRESENCE.into(), msg.encode_to_vec().into());
        }
    }

    /// Says goodbye on the bus (at shutdown), so peers forget this node's
    /// users at once instead of after the node timeout.
    pub async fn leave(&self) {
        self.announce(Kind::Bye, Vec::new());
        let nats = self.nats.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.spawn(async move { nats.flush().await }),
        )
        .await;
    }
}

/// Seals and publishes the outbox in order (so counters leave in order).
async fn publisher(
    nats: async_nats::Client,
    seal: Arc<BusSeal>,
    mut outgoing: mpsc::Receiver<(String, Bytes)>,
    bytes: Arc<Budget>,
) {
    while let Some((subject, payload)) = outgoing.recv().await {
        bytes.give_back(payload.len());
        let frame = seal.seal(&subject, payload);
        if let Err(e) = nats.publish(subject, frame).await {
            tracing::warn!(error = %e, "NATS publish failed; the repair poll covers it");
        }
    }
}

async fn read_presence(node: Weak<ClusterNode>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        let (sender, payload) = match node.seal.open(msg.subject.as_str(), msg.payload.clone()) {
            Ok(opened) => opened,
            Err(why) => {
                node.rejected(why);
                continue;
            }
        };
        let Ok(presence) = Presence::decode(payload) else {
            node.rejected(Rejected::Malformed);
            continue;
        };
        // A node speaks only for itself.
        if presence.node != sender {
            node.rejected(Rejected::Malformed);
            continue;
        }
        if presence.node == node.id {
            continue;
        }
        if node.presence.apply(presence) == Reply::SendSnapshot {
            node.send_snapshot();
        }
    }
}

async fn read_events(node: Weak<ClusterNode>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        match node.seal.open(msg.subject.as_str(), msg.payload.clone()) {
            // NATS does not echo a node's own messages: this is a replay.
            Ok((sender, _)) if sender == node.id => node.rejected(Rejected::Replayed),
            Ok((_, payload)) => node.on_events(payload),
            Err(why) => node.rejected(why),
        }
    }
}

async fn ticker(node: Weak<ClusterNode>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = Instant::now();
    let mut last_snapshot = Instant::now();
    let mut last_poll = Instant::now();
    loop {
        interval.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        (node.metrics.cluster.bus_connected).set(node.bus_connected() as i64);
        (node.metrics.cluster.peers).set(node.peers() as i64);
        if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            last_heartbeat = Instant::now();
            node.announce(Kind::Heartbeat, Vec::new());
            for dead in node.presence.expire() {
                tracing::warn!(node = %dead.get(..8).unwrap_or(&dead), "a node went silent; its users count as offline");
            }
            node.recently_gone
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, t| t.elapsed() < RECENTLY_GONE);
        }
        if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            last_snapshot = Instant::now();
            node.send_snapshot();
        }
        if last_poll.elapsed() >= POLL_EVERY {
            last_poll = Instant::now();
            node.poll().await;
        }
        node.repair().await;
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn a_budget_gives_what_is_left_and_takes_back_what_is_returned() {
        let budget = Budget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "only 40 left");
        assert!(budget.take(40));
        assert!(!budget.take(1));
        budget.give_back(60);
        assert!(budget.take(60));
        assert!(!budget.take(1));
    }
}
