//! The load report: a table for people, the same data as JSON.

use std::fmt;

use serde::Serialize;

use super::hub::{Mode, Target};
use super::receive::SessionCheck;
use super::traffic::{Pair, PayloadMode, Stats, Via};
use super::LoadArgs;

#[derive(Serialize, Debug, Default)]
pub struct Setup {
    pub register_seconds: f64,
    pub open_seconds: f64,
    pub connect_seconds: f64,
}

#[derive(Serialize, Debug, Default)]
pub struct Memory {
    /// What the figures cover: one hub process, the sum of several, or
    /// nothing (a hub's process is unknown, so memory is omitted).
    pub scope: String,
    /// Hub processes summed in each figure (0: no figures).
    pub processes: usize,
    /// The hubs' RSS in KiB at each point (absent when it cannot be read).
    pub before: Option<u64>,
    pub after_register: Option<u64>,
    pub idle_connected: Option<u64>,
    pub under_load: Option<u64>,
    /// (idle_connected - after_register) / sessions.
    pub per_session_kib: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The second of the measurement whose sends had the highest push p99.
#[derive(Serialize, Debug, Default)]
pub struct WorstSecond {
    /// Seconds from the start of the measurement.
    pub second: usize,
    pub latency: Latency,
}

/// What the generator's own crypto cost (sealed payloads only): what real
/// clients would pay for the same messages. Times are measured around each
/// call on the generator's one thread, so they are its CPU time unless the
/// machine is oversubscribed (then they include preemption); they cover the
/// whole run (warm-up, measurement and drain).
#[derive(Serialize, Debug, Default)]
pub struct ClientCrypto {
    pub scheme: String,
    pub sealed: u64,
    pub seal_seconds: f64,
    pub seal_us_mean: f64,
    /// Pushes opened and read (every delivered one, when all is well).
    pub opened: u64,
    /// Time spent opening, failed attempts included.
    pub open_seconds: f64,
    pub open_us_mean: f64,
    /// Pushes that did not open as v2 from their sender (also anomalies).
    pub open_failures: u64,
}

/// CPU use during the measurement, in percent of one core.
#[derive(Serialize, Debug, Default)]
pub struct Cpu {
    /// This process (one thread does the generator's work, so 100 is its limit).
    pub generator_percent: Option<f64>,
    /// The hubs' processes, summed (absent when one is unknown).
    pub hub_percent: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    /// How the hubs were found: "embedded" (one child hub on SQLite),
    /// "urls" (`--url`), "cluster" (`--cluster N`: children on PostgreSQL + NATS).
    pub mode: Mode,
    /// Hub nodes loaded.
    pub nodes: usize,
    /// The first node's URL.
    pub url: String,
    /// Every node's URL.
    pub urls: Vec<String>,
    /// Sessions connected to each node, in the order of `urls`.
    pub sessions_per_node: Vec<usize>,
    /// Local addresses the sessions connected from (`sources.rs`).
    pub source_addresses: usize,
    /// Pairs whose two users are on different nodes.
    pub cross_node_pairs: usize,
    /// Nodes restarted in turn during the run (`--rolling-restart`).
    pub restarts: usize,
    /// Sessions a node closed that moved to another and caught up.
    pub reconnects: u64,
    pub pairs: usize,
    pub sessions: usize,
    pub idle: usize,
    pub sessions_per_user: usize,
    pub rate: u64,
    pub window: usize,
    pub duration_seconds: f64,
    pub payload_bytes: usize,
    /// "sealed" (v2, opened by every session) or "random" (hub-only).
    pub payload: PayloadMode,
    pub via: Via,
    pub setup: Setup,
    pub accepted: u64,
    pub accepted_per_second: f64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    /// Send → the recipient's push, from each send's scheduled time.
    pub latency: Latency,
    /// Send → the hub's answer to the sender, from the same time.
    pub answer_latency: Latency,
    /// How late sends left against their schedule: the generator's own lag.
    pub send_lag: Latency,
    pub worst_second: Option<WorstSecond>,
    /// The slowest push of each second of the measurement, in ms (JSON only):
    /// says when a stall happened, against the run's other events.
    pub max_ms_by_second: Vec<f64>,
    /// When the measurement's second 0 began (ms since the Unix epoch).
    pub measured_from_unix_ms: Option<u64>,
    pub refused: u64,
    pub errors: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub anomalies: u64,
    pub samples: Vec<String>,
    /// Sealed payloads only.
    pub crypto: Option<ClientCrypto>,
    pub cpu: Cpu,
    pub rss: Memory,
    /// The nodes' cluster counters from `/metrics`, summed (several nodes only).
    pub bus: Option<std::collections::BTreeMap<String, u64>>,
    pub ok: bool,
}

impl Report {
    pub fn new(args: &LoadArgs, hub: &Target) -> Self {
        let urls = hub.urls();
        let nodes = urls.len();
        let (scope, processes) = match (hub.knows_every_pid(), nodes, hub.mode) {
            (false, _, _) => (
                "omitted: the process of a hub is unknown (--hub-pid)".to_owned(),
                0,
            ),
            (true, 1, _) => ("the hub process".to_owned(), 1),
            (true, n, Mode::Cluster) => (
                format!("sum of the {n} node processes (PostgreSQL and nats-server not included)"),
                n,
            ),
            (true, n, _) => (format!("sum of the {n} hub processes"), n),
        };
        Report {
            mode: hub.mode,
            nodes,
            url: urls.first().cloned().unwrap_or_default(),
            urls,
            sessions_per_node: Vec::new(),
            source_addresses: 0,
            cross_node_pairs: 0,
            restarts: 0,
            reconnects: 0,
            pairs: args.pairs,
            sessions: 0,
            idle: args.idle,
            sessions_per_user: args.sessions_per_user,
            rate: args.rate,
            window: args.window,
            duration_seconds: 0.0,
            payload_bytes: args.payload_bytes,
            payload: args.payload,
            via: args.via,
            setup: Setup::default(),
            accepted: 0,
            accepted_per_second: 0.0,
            delivered: 0,
            delivered_per_second: 0.0,
            latency: Latency::default(),
            answer_latency: Latency::default(),
            send_lag: Latency::default(),
            worst_second: None,
            max_ms_by_second: Vec::new(),
            measured_from_unix_ms: None,
            refused: 0,
            errors: 0,
            lost: 0,
            duplicated: 0,
            anomalies: 0,
            samples: Vec::new(),
            crypto: None,
            cpu: Cpu::default(),
            rss: Memory {
                scope,
                processes,
                ..Memory::default()
            },
            bus: None,
            ok: false,
        }
    }

    pub fn fill<'a>(
        &mut self,
        stats: &Stats,
        pairs: &[std::rc::Rc<Pair>],
        sessions: impl Iterator<Item = &'a SessionCheck>,
        measured_seconds: f64,
    ) {
        self.duration_seconds = measured_seconds;
        self.accepted = stats.accepted.get();
        self.accepted_per_second = stats.accepted_measured.get() as f64 / measured_seconds;
        self.delivered = stats.delivered.get();
        self.delivered_per_second = stats.delivered_measured.get() as f64 / measured_seconds;
        self.refused = stats.refused.get();
        self.errors = stats.errors.get();
        self.anomalies = stats.anomalies.get();
        for pair in pairs {
            self.duplicated += pair.duplicate_answers.get();
            if !pair.accepted_gap_free() {
                self.anomalies += 1;
                stats.note(format!(
                    "pair {}: the accepted sequences have a gap",
                    pair.index
                ));
            }
        }
        for s in sessions {
            let Some(pair) = &s.pair else { continue };
            let expected = pair.accepted_count.get();
            let got = s.received.get();
            self.lost += expected.saturating_sub(got);
            self.duplicated += got.saturating_sub(expected);
        }
        self.latency = Latency::of(&stats.latency_us.borrow());
        self.answer_latency = Latency::of(&stats.answer_us.borrow());
        self.send_lag = Latency::of(&stats.send_lag_us.borrow());
        self.worst_second = stats
            .per_second_us
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .max_by_key(|(_, h)| h.value_at_quantile(0.99))
            .map(|(second, h)| WorstSecond {
                second,
                latency: Latency::of(h),
            });
        self.measured_from_unix_ms = stats.measure_from_unix_ms.get();
        self.max_ms_by_second = stats
            .per_second_us
            .borrow()
            .iter()
            .map(|h| h.max() as f64 / 1000.0)
            .collect();
        if let (Some(idle), Some(base)) = (self.rss.idle_connected, self.rss.after_register) {
            if self.sessions > 0 {
                self.rss.per_session_kib = Some((idle as f64 - base as f64) / self.sessions as f64);
            }
        }
        if self.payload == PayloadMode::Sealed {
            let mean_us = |time: std::time::Duration, n: u64| {
                if n == 0 {
                    0.0
                } else {
                    time.as_secs_f64() * 1e6 / n as f64
                }
            };
            let opens = stats.opened.get() + stats.open_failures.get();
            self.crypto = Some(ClientCrypto {
                scheme: "united-hub dm v2".into(),
                sealed: stats.sealed.get(),
                seal_seconds: stats.seal_time.get().as_secs_f64(),
                seal_us_mean: mean_us(stats.seal_time.get(), stats.sealed.get()),
                opened: stats.opened.get(),
                open_seconds: stats.open_time.get().as_secs_f64(),
                open_us_mean: mean_us(stats.open_time.get(), opens),
                open_failures: stats.open_failures.get(),
            });
        }
        self.samples = stats.samples.borrow().clone();
        self.reconnects = stats.reconnects.get();
        self.ok = self.lost == 0 && self.duplicated == 0 && self.anomalies == 0 && self.errors == 0;
    }
}

fn kib(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via = match self.via {
            Via::Ws => "ws",
            Via::Http => "http",
        };
        match self.mode {
            Mode::Embedded => writeln!(f, "united-hub load report (embedded hub at {})", self.url)?,
            mode => writeln!(
                f,
                "united-hub load report ({}: {} node{} at {})",
                mode.name(),
                self.nodes,
                if self.nodes == 1 { "" } else { "s" },
                self.urls.join(", ")
            )?,
        }
        if self.nodes > 1 {
            let spread: Vec<String> = self
                .sessions_per_node
                .iter()
                .map(usize::to_string)
                .collect();
            writeln!(
                f,
                "  nodes        {} nodes; sessions per node {}; {} of {} pairs across nodes",
                self.nodes,
                spread.join(" / "),
                self.cross_node_pairs,
                self.pairs
            )?;
        }
        if self.source_addresses > 1 {
            writeln!(
                f,
                "  sources      sessions connected from {} local addresses (127.0.0.1, then 127.0.0.2 …)",
                self.source_addresses
            )?;
        }
        if self.restarts > 0 {
            writeln!(
                f,
                "  restarts     {} nodes restarted in turn (SIGTERM, then started again); {} sessions moved to another node and caught up",
                self.restarts, self.reconnects
            )?;
        }
        writeln!(f, "  scenario     {} pairs × {} sessions/user + {} idle = {} sessions; via {via}; window {}; rate {}; {} B payload",
            self.pairs, self.sessions_per_user, self.idle, self.sessions, self.window,
            if self.rate == 0 { "max".into() } else { format!("{}/s", self.rate) }, self.payload_bytes)?;
        writeln!(f, "  payload      {}", self.payload.describe())?;
        writeln!(
            f,
            "  setup        register {:.1} s, open {:.1} s, connect {:.1} s",
            self.setup.register_seconds, self.setup.open_seconds, self.setup.connect_seconds
        )?;
        writeln!(
            f,
            "  throughput   {:.0} accepted/s, {:.0} pushes/s over {:.1} s ({} accepted in all)",
            self.accepted_per_second,
            self.delivered_per_second,
            self.duration_seconds,
            self.accepted
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, l: &Latency, what: &str| {
            writeln!(f, "  {label:<12} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} samples, {what})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples)
        };
        line(f, "latency", &self.latency, "send → recipient's push")?;
        line(f, "answer", &self.answer_latency, "send → the hub's answer")?;
        line(
            f,
            "send lag",
            &self.send_lag,
            "sends late against their schedule",
        )?;
        if let Some(w) = &self.worst_second {
            writeln!(
                f,
                "  worst second {} s into the run: push p99 {:.2} ms, max {:.2} ms ({} samples)",
                w.second, w.latency.p99_ms, w.latency.max_ms, w.latency.samples
            )?;
        }
        if let Some(c) = &self.crypto {
            writeln!(
                f,
                "  crypto       sealed {} ({:.1} µs each, {:.2} s), opened {} ({:.1} µs each, {:.2} s), failed to open {}",
                c.sealed,
                c.seal_us_mean,
                c.seal_seconds,
                c.opened,
                c.open_us_mean,
                c.open_seconds,
                c.open_failures
            )?;
        }
        let pct = |p: Option<f64>| p.map_or("n/a".into(), |p| format!("{p:.0}%"));
        writeln!(
            f,
            "  cpu          generator {}, hub {} of one core while measuring",
            pct(self.cpu.generator_percent),
            pct(self.cpu.hub_percent)
        )?;
        writeln!(
            f,
            "  hub memory   before {}, registered {}, connected {}, under load {}, per session {} ({})",
            kib(self.rss.before),
            kib(self.rss.after_register),
            kib(self.rss.idle_connected),
            kib(self.rss.under_load),
            self.rss
                .per_session_kib
                .map_or("n/a".into(), |k| format!("{k:.1} KiB")),
            self.rss.scope
        )?;
        if let Some(bus) = &self.bus {
            let get = |name: &str| bus.get(name).copied().unwrap_or(0);
            writeln!(
                f,
                "  bus          published {}, received {}, repaired from the database {}, publish dropped {}, slow consumer {}, sequence retries {}",
                get("cluster_events_published_total"),
                get("cluster_events_received_total"),
                get("cluster_events_repaired_total"),
                get("cluster_publish_dropped_total"),
                get("cluster_slow_consumer_total"),
                get("sequence_retries_total")
            )?;
        }
        writeln!(
            f,
            "  checks       lost {}, duplicated {}, anomalies {}, errors {}, refused (429/503) {}",
            self.lost, self.duplicated, self.anomalies, self.errors, self.refused
        )?;
        for s in &self.samples {
            writeln!(f, "    - {s}")?;
        }
        write!(
            f,
            "  verdict      {}",
            match (self.ok, self.payload) {
                (true, PayloadMode::Sealed) => "OK: every accepted message reached every session of both sides once, in order, and opened there",
                (true, PayloadMode::Random) => "OK: every accepted message reached every session of both sides once, in order",
                (false, _) => "FAILED",
            }
        )
    }
}
