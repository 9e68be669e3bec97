//! Prometheus metrics: aggregate figures only, never a key, id or name.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the hub exports, registered in its own registry (so several
/// hubs in one test process do not collide).
pub struct Metrics {
    registry: Registry,
    pub live_sessions: IntGauge,
    pub messages_accepted: IntCounter,
    pub pushes: IntCounter,
    pub pushes_failed: IntCounter,
    pub offline_queued: IntCounter,
    pub offline_purged: IntCounter,
    /// Writes waiting for the SQLite writer, besides group commits.
    pub writer_pending: IntGauge,
    /// Group commits waiting for the SQLite writer.
    pub writer_commits_pending: IntGauge,
    /// How long a read waited for a pooled SQLite connection.
    pub pool_wait_seconds: Histogram,
    /// Purges this node ran (in a cluster, one node's per interval).
    pub janitor_runs: IntCounter,
    pub write_batch_size: Histogram,
    pub commit_seconds: Histogram,
    /// WAL checkpoints by mode (`passive`, `restart`), timed.
    pub checkpoint_seconds: HistogramVec,
    /// Frames in the WAL at the last checkpoint.
    pub wal_frames: IntGauge,
    pub request_seconds: HistogramVec,
    /// Cluster mode: the bus between the nodes.
    pub cluster: ClusterMetrics,
    /// Age of the oldest undelivered offline entry, at the janitor's last run.
    pub offline_oldest_age_seconds: IntGauge,
    /// Messages assigned again because another node committed their
    /// sequence first (or an earlier message of the batch failed).
    pub sequence_retries: IntCounter,
    /// Where a send spends its time, hop by hop.
    pub stages: SendStages,
    /// Bytes reserved for history and offline answers not yet handed to a
    /// socket, and page requests that found no room (`answers`).
    pub answers: crate::answers::BudgetMetrics,
}

/// The hops of one send, each a histogram of `united_send_stage_seconds`
/// (label `stage`), so a slow message shows where it waited.
pub struct SendStages {
    /// From the request to the conversation actor taking it (directory
    /// lookup and the actor's mailbox).
    pub to_actor: Histogram,
    /// From the actor's append to the batch that carries it being taken
    /// from the queue (waiting for the commit before it).
    pub batch_wait: Histogram,
    /// SQLite: from a commit job being queued in the writer's lane to the
    /// writer starting it.
    pub writer_wait: Histogram,
    /// The group commit, per message. SQLite: the transaction on the
    /// writer thread. PostgreSQL: from the batch leaving the batcher to its
    /// result reaching the batcher again.
    pub in_commit: Histogram,
    /// From the commit's end to the conversation actor handling its results.
    pub back_to_actor: Histogram,
    /// The whole send, request to answer.
    pub total: Histogram,
    /// From a push being made to the recipient's session taking it, before
    /// it is written to the socket (every push, not only of sends).
    pub to_session: Histogram,
    /// A WebSocket request, from its frame decoded to its answer queued
    /// for the socket (every request; at load, nearly all are sends).
    pub ws_request: Histogram,
}

/// Registers `metric` (built from constant, valid definitions) in
/// `registry` and returns it.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("metric definitions are constant and valid");
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

/// The answer budget's gauge and counter (`crate::answers`).
fn answer_metrics(registry: &Registry) -> crate::answers::BudgetMetrics {
    crate::answers::BudgetMetrics {
        pending_bytes: register(
            registry,
            IntGauge::new(
                "answer_pending_bytes",
                "Bytes reserved for history and offline answers not yet handed to a socket",
            ),
        ),
        refused: register(
            registry,
            IntCounter::new(
                "answers_refused_total",
                "History and offline requests refused (429) because the answer budget was full",
            ),
        ),
    }
}

/// The bus between the nodes (cluster mode; zero on one node).
pub struct ClusterMetrics {
    /// Events published to other nodes.
    pub published: IntCounter,
    /// Events received from other nodes.
    pub received: IntCounter,
    /// Messages read back from the database because NATS did not bring them.
    pub repaired: IntCounter,
    /// Publications dropped because NATS was too far behind.
    pub publish_dropped: IntCounter,
    /// NATS slow-consumer events.
    pub slow_consumer: IntCounter,
    /// 1 while this node's NATS connection is up.
    pub bus_connected: IntGauge,
    /// Other nodes this one hears from.
    pub peers: IntGauge,
    /// Bus messages dropped because they failed the check (label `reason`:
    /// malformed, bad_mac, stale, replayed).
    pub rejected: prometheus::IntCounterVec,
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> Self {
        macro_rules! register {
            ($metric:expr) => {
                register(registry, $metric)
            };
        }
        ClusterMetrics {
            published: register!(IntCounter::new(
                "cluster_events_published_total",
                "Events published to other nodes"
            )),
            received: register!(IntCounter::new(
                "cluster_events_received_total",
                "Events received from other nodes"
            )),
            repaired: register!(IntCounter::new(
                "cluster_events_repaired_total",
                "Messages read back from the database because the bus lost them"
            )),
            publish_dropped: register!(IntCounter::new(
                "cluster_publish_dropped_total",
                "Publications dropped while the bus was too far behind"
            )),
            rejected: register!(prometheus::IntCounterVec::new(
                Opts::new(
                    "cluster_rejected_total",
                    "Bus messages dropped because they failed the cluster's check"
                ),
                &["reason"]
            )),
            slow_consumer: register!(IntCounter::new(
                "cluster_slow_consumer_total",
                "Times NATS dropped events for a slow subscription"
            )),
            bus_connected: register!(IntGauge::new(
                "cluster_bus_connected",
                "1 while this node's NATS connection is up (cluster mode)"
            )),
            peers: register!(IntGauge::new(
                "cluster_peers",
                "Other nodes this node hears from (cluster mode)"
            )),
        }
    }
}

impl SendStages {
    fn new(registry: &Registry) -> Self {
        let vec = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new("send_stage_seconds", "Time of one send, hop by hop").buckets(
                    vec![
                        0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
                    ],
                ),
                &["stage"],
            ),
        );
        let stage = |name: &str| vec.with_label_values(&[name]);
        SendStages {
            to_actor: stage("to_actor"),
            batch_wait: stage("batch_wait"),
            writer_wait: stage("writer_wait"),
            in_commit: stage("in_commit"),
            back_to_actor: stage("back_to_actor"),
            total: stage("total"),
            to_session: stage("to_session"),
            ws_request: stage("ws_request"),
        }
    }
}

impl Metrics {
    /// Every metric of the node, registered under `united_`: one field
    /// each, in the order of docs/operations.md's table.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("united".into()), None)
            .expect("a constant prefix is a valid registry");
        macro_rules! register {
            ($metric:expr) => {
                register(&registry, $metric)
            };
        }
        Metrics {
            live_sessions: register!(IntGauge::new("live_sessions", "Open WebSocket sessions")),
            messages_accepted: register!(IntCounter::new(
                "messages_accepted_total",
                "Messages committed and answered"
            )),
            pushes: register!(IntCounter::new(
                "pushes_total",
                "Events handed to a session's outbound buffer"
            )),
            pushes_failed: register!(IntCounter::new(
                "pushes_failed_total",
                "Events a session could not take (closed or too slow)"
            )),
            offline_queued: register!(IntCounter::new(
                "offline_queued_total",
                "Offline-queue entries written"
            )),
            offline_purged: register!(IntCounter::new(
                "offline_purged_total",
                "Offline-queue entries purged by the janitor"
            )),
            writer_pending: register!(IntGauge::new(
                "writer_pending",
                "Writes waiting for the SQLite writer, besides group commits"
            )),
            writer_commits_pending: register!(IntGauge::new(
                "writer_commits_pending",
                "Group commits waiting for the SQLite writer"
            )),
            pool_wait_seconds: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "db_pool_wait_seconds",
                    "Time a read waited for a pooled SQLite connection"
                )
                .buckets(vec![0.0001, 0.001, 0.01, 0.1, 1.0])
            )),
            janitor_runs: register!(IntCounter::new(
                "janitor_runs_total",
                "Purges this node ran"
            )),
            write_batch_size: register!(Histogram::with_opts(
                HistogramOpts::new("write_batch_size", "Messages per group commit").buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0
                ])
            )),
            commit_seconds: register!(Histogram::with_opts(
                HistogramOpts::new("commit_seconds", "Time of one group commit").buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0
                ])
            )),
            checkpoint_seconds: register!(HistogramVec::new(
                HistogramOpts::new("checkpoint_seconds", "Time of one WAL checkpoint").buckets(
                    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0]
                ),
                &["mode"]
            )),
            wal_frames: register!(IntGauge::new(
                "wal_frames",
                "Frames in the SQLite WAL at the last checkpoint"
            )),
            request_seconds: register!(HistogramVec::new(
                HistogramOpts::from(Opts::new(
                    "request_seconds",
                    "HTTP request latency by route pattern"
                ))
                .buckets(vec![
                    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
                ]),
                &["route", "status"]
            )),
            offline_oldest_age_seconds: register!(IntGauge::new(
                "offline_oldest_age_seconds",
                "Age of the oldest undelivered offline entry at the janitor's last run (0: none)"
            )),
            sequence_retries: register!(IntCounter::new(
                "sequence_retries_total",
                "Messages assigned a sequence again after losing theirs"
            )),
            cluster: ClusterMetrics::new(&registry),
            answers: answer_metrics(&registry),
            stages: SendStages::new(&registry),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
