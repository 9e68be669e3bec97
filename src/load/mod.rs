//! `united-hub load`: drives a hub with many sessions and checks every push.
//!
//! Phases: register identities, open conversations, connect sessions, warm
//! up, measure, drain, verify. The run fails (exit code 1) on any lost,
//! duplicated or reordered message, any push to the wrong session, any
//! message that does not open (`--payload sealed`, the default: every message
//! is sealed with v2 and opened by every session that gets it, as real
//! clients would; see `traffic.rs`), and any send error other than the hub
//! asking to slow down (429/503).
//!
//! The hubs: one embedded child hub (the default), running hubs (`--url`,
//! once per node), or a local cluster it starts (`--cluster N`); see
//! `hub.rs`. With several nodes, each pair's two users are on different ones.
//!
//! Why it is this long: the run's documented flags (about 150 lines), then
//! its phases, one function each.

mod hub;
mod receive;
mod report;
mod sources;
mod traffic;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt as _};
use futures_util::FutureExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::crypto::Identity;
use crate::client::{HubClient, WsClient};
use crate::proto::{dm, Payload};
use receive::SessionCheck;
pub use report::Report;
use traffic::{Pacer, Pair, PairKeys, Sender, Stats, Template};
pub use traffic::{PayloadMode, Via};

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// A running hub; give it more than once (or comma-separated) for the
    /// nodes of a cluster, which then share the users and their devices
    /// [default: start one hub as a child process on a temporary directory].
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// The hub's process id, for memory figures of a `--url` hub that cannot
    /// be found by port; one per `--url`, in the same order.
    #[arg(long, value_delimiter = ',', requires = "url")]
    pub hub_pid: Vec<u32>,
    /// Start a local cluster of N nodes (children of this binary) on a
    /// throw-away PostgreSQL and nats-server, and load all of them.
    #[arg(long, value_name = "N", conflicts_with = "url", value_parser = clap::value_parser!(u16).range(1..))]
    pub cluster: Option<u16>,
    /// With --cluster: stop each node in turn during the measurement
    /// (SIGTERM) and start it again. Sessions of a stopping node move to
    /// another and catch up from history; senders go over HTTP and resend
    /// to the next node with the same id. The verdict still asks for every
    /// accepted message on every session, once, in order.
    #[arg(long, requires = "cluster")]
    pub rolling_restart: bool,
    /// Active conversations; each has one sender.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Identities to register [default: 2 × pairs + idle]; extra ones only log in.
    #[arg(long)]
    pub users: Option<usize>,
    /// Sessions (devices) per user of a pair; all of them must get every message.
    #[arg(long, default_value_t = 1)]
    pub sessions_per_user: usize,
    /// Extra sessions, each of its own user, that only listen.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Total messages per second; 0 sends as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Ciphertext bytes per message (sealed: at least 57, the 8-byte send
    /// time plus the 49 bytes v2 adds; the rest of the plaintext is padding).
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// What messages carry. `sealed`: each is sealed with v2 by its sender
    /// and opened by every session that gets it, so the run pays and reports
    /// the real client cost, and fails if one does not open. `random`: random
    /// bytes, never sealed or opened; for hub-only benchmarks, where the
    /// generator's crypto would take CPU from the hub or be the bottleneck.
    #[arg(long, value_enum, default_value = "sealed")]
    pub payload: PayloadMode,
    /// How senders send (pushes always arrive over WebSocket).
    #[arg(long, value_enum, default_value = "ws")]
    pub via: Via,
    /// Also write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Setup requests in flight (logins, creates, connects).
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Sessions each local address opens to one hub address before the next
    /// sessions connect from the next loopback address (127.0.0.2, .3, …;
    /// hubs on loopback only) [default: this machine's ephemeral ports less
    /// 1,000]. A hub elsewhere gets at most this many sessions per address.
    #[arg(long)]
    pub sessions_per_source: Option<usize>,
    /// Seconds to wait for every accepted message to arrive after sending stops.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

fn bar(args: &LoadArgs, len: u64, what: &str) -> ProgressBar {
    let target = if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .expect("a constant template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// A registered user with a logged-in client.
struct User {
    identity: Identity,
    client: HubClient,
}

/// One HTTP client for every user, so connections are pooled instead of one
/// kept alive per user (which would double the file descriptors of a run).
fn shared_http(args: &LoadArgs) -> awc::Client {
    let connector = crate::client::connector().limit(args.setup_concurrency.max(64) * 2);
    awc::Client::builder()
        .connector(connector)
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Which node each user and device uses. Pair i's sender logs in and
/// connects at node i mod N, its recipient at node (i + 1) mod N, so with
/// two nodes or more every conversation crosses nodes; each further device
/// of a user goes to the next node. Idle and extra users go round-robin.
#[derive(Clone, Copy)]
struct Placement {
    nodes: usize,
    pair_users: usize,
}

impl Placement {
    /// The node a user logs in at (and their first device connects to).
    fn home(&self, user: usize) -> usize {
        if user < self.pair_users {
            (user / 2 + user % 2) % self.nodes
        } else {
            (user - self.pair_users) % self.nodes
        }
    }

    fn device(&self, user: usize, device: usize) -> usize {
        (self.home(user) + device) % self.nodes
    }
}

async fn register(
    args: &LoadArgs,
    urls: &[String],
    placement: Placement,
    count: usize,
) -> anyhow::Result<Vec<User>> {
    let progress = bar(args, count as u64, "register");
    let http = shared_http(args);
    let users: Vec<anyhow::Result<User>> = stream::iter(0..count)
        .map(|i| {
            let progress = progress.clone();
            let http = http.clone();
            let url = &urls[placement.home(i)];
            async move {
                let identity = Identity::generate();
                let mut client = HubClient::with_http(url, http);
                // A hub with auth rate limits on asks us to slow down: do.
                loop {
                    match client.login(&identity, Some(&format!("load-{i}"))).await {
                        Ok(_) => break,
                        Err(e) if e.status() == Some(429) => {
                            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => return Err(e).with_context(|| format!("registering user {i}")),
                    }
                }
                progress.inc(1);
                Ok(User { identity, client })
            }
        })
        .buffered(args.setup_concurrency)
        .collect()
        .await;
    progress.finish();
    users.into_iter().collect()
}

async fn open_pairs(args: &LoadArgs, users: &[User]) -> anyhow::Result<Vec<Rc<Pair>>> {
    let progress = bar(args, args.pairs as u64, "open");
    let pairs: Vec<anyhow::Result<Rc<Pair>>> = stream::iter(0..args.pairs)
        .map(|i| {
            let progress = progress.clone();
            let (a, b) = (&users[2 * i], &users[2 * i + 1]);
            async move {
                let (conversation, _) = a
                    .client
                    .create_conversation(&b.identity.public_key_hex())
                    .await?;
                progress.inc(1);
                let keys = PairKeys::new(a.identity.clone(), b.identity.clone());
                Ok(Rc::new(Pair::new(i, conversation.id, keys)))
            }
        })
        .buffered(args.setup_concurrency)
        .collect()
        .await;
    progress.finish();
    pairs.into_iter().collect()
}

/// One connected session: its client (for sends) and what it must receive.
struct Session {
    ws: Rc<WsClient>,
    check: Rc<SessionCheck>,
}

/// One session to open: whose, on which node, for which pair.
struct Planned {
    user: usize,
    node: usize,
    pair: Option<Rc<Pair>>,
    recipient: bool,
    /// The local address to connect from (`plan_sources`); `None`: the
    /// system's choice.
    source: Option<IpAddr>,
}

async fn connect(
    args: &LoadArgs,
    users: &[User],
    ws_urls: &[String],
    failover: Option<(&[String], &awc::Client)>,
    plan: Vec<Planned>,
    stats: &Rc<Stats>,
    done: &Rc<Cell<bool>>,
) -> anyhow::Result<Vec<Session>> {
    let progress = bar(args, plan.len() as u64, "connect");
    // Hubs hand connections to their worker threads in turn. Connected in
    // plan order (each pair's sender, then its recipient), every sender would
    // land on the same worker of a two-worker hub, and so would every
    // conversation's actor (it starts where its first send comes from): one
    // worker busy, the other nearly idle. Real clients connect in no such
    // order, so the sessions connect in a shuffled one; they are returned in
    // plan order.
    let mut order: Vec<(usize, Planned)> = plan.into_iter().enumerate().collect();
    shuffle(&mut order, 0x5eed);
    let mut sessions: Vec<(usize, anyhow::Result<Session>)> = stream::iter(order)
        .map(|(at, planned)| {
            let progress = progress.clone();
            let client = &users[planned.user].client;
            let ws_url = &ws_urls[planned.node];
            let Planned {
                pair,
                recipient,
                node,
                source,
                ..
            } = planned;
            let failover = failover.map(|(urls, http)| {
                let failover = receive::Failover {
                    urls: urls.to_vec(),
                    http: http.clone(),
                    token: client.access_token().unwrap_or_default().to_owned(),
                };
                (Rc::new(failover), node)
            });
            async move {
                let mut ws = WsClient::connect_from(ws_url, client.access_token(), source).await?;
                // One answer: the session is registered and gets every later push.
                ws.call(Payload::DmConversationListRequest(
                    dm::DmConversationListRequest {},
                ))
                .await?;
                let events = ws.take_events().context("fresh client has its events")?;
                let check = Rc::new(SessionCheck {
                    pair,
                    recipient,
                    last_seq: Cell::new(0),
                    received: Cell::new(0),
                });
                actix_web::rt::spawn(receive::receive(
                    events,
                    check.clone(),
                    stats.clone(),
                    done.clone(),
                    args.payload,
                    failover,
                ));
                progress.inc(1);
                Ok(Session {
                    ws: Rc::new(ws),
                    check,
                })
            }
            .map(move |session| (at, session))
        })
        .buffered(args.setup_concurrency)
        .collect()
        .await;
    progress.finish();
    sessions.sort_unstable_by_key(|(at, _)| *at);
    sessions.into_iter().map(|(_, session)| session).collect()
}

/// Runs the whole load test and returns its report. On ctrl-c it stops
/// what it started (hub nodes, PostgreSQL, nats-server) and fails.
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    tokio::select! {
        report = run_load(args) => report,
        Ok(()) = tokio::signal::ctrl_c() => {
            anyhow::bail!("interrupted: stopped the hubs this run started")
        }
    }
}

/// Sets the local address each planned session connects from: each hub
/// address's sessions past one local address's share connect from further
/// loopback addresses (`sources`). Returns how many addresses that is (the
/// system's choice counts as one).
fn plan_sources(plan: &mut [Planned], ws_urls: &[String], per_source: usize) -> usize {
    let mut per_node = vec![0; ws_urls.len()];
    for planned in plan.iter_mut() {
        let index = per_node[planned.node];
        per_node[planned.node] += 1;
        planned.source = sources::is_loopback(&ws_urls[planned.node])
            .then(|| sources::source_for(index, per_source))
            .flatten();
    }
    let mut used: Vec<_> = plan.iter().map(|planned| planned.source).collect();
    used.sort_unstable();
    used.dedup();
    used.len()
}

/// Sessions one local address carries to one hub address.
fn per_source(args: &LoadArgs) -> usize {
    args.sessions_per_source
        .unwrap_or_else(|| sources::per_source(sources::ephemeral_ports()))
        .max(1)
}

/// File descriptors a run needs in this process: one socket per session,
/// and as many again for the hub's side when the hub is a child (it
/// inherits this limit), plus room for HTTP clients, files and the runtime.
fn descriptors_needed(args: &LoadArgs, hub_is_local: bool) -> u64 {
    let sessions = (2 * args.pairs * args.sessions_per_user + args.idle) as u64;
    let hub = if hub_is_local { sessions } else { 0 };
    sessions + hub + 256
}

/// Raises the soft `RLIMIT_NOFILE` to what the run needs (up to the hard
/// limit), or says, before anything starts, how to raise it. Running out
/// half-way showed as "Too many open files" after the hub had started.
fn ensure_descriptors(needed: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(()); // unknown: let the run try
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max >= needed {
        let raised = libc::rlimit {
            rlim_cur: needed,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            eprintln!(
                "load: raised the open-file limit from {} to {needed}",
                limit.rlim_cur
            );
            return Ok(());
        }
    }
    anyhow::bail!(
        "this run needs about {needed} open files (a socket per session, and the hub's side when \
         it runs here), but the limit is {} (hard limit {}): raise it first, for example with \
         `ulimit -n {needed}` in this shell (as root, or after raising the hard limit in \
         /etc/security/limits.conf), or ask for fewer sessions",
        limit.rlim_cur,
        limit.rlim_max
    )
}

async fn run_load(args: LoadArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.pairs > 0 || args.idle > 0,
        "nothing to do: give --pairs or --idle"
    );
    // Before any hub starts: a payload too small to seal is refused here, and
    // so is a run this process has too few file descriptors for.
    let template = Rc::new(Template::new(args.payload, args.payload_bytes)?);
    ensure_descriptors(descriptors_needed(&args, args.url.is_empty()))?;
    if !args.url.is_empty() {
        let sessions = 2 * args.pairs * args.sessions_per_user + args.idle;
        let per_node = sessions.div_ceil(args.url.len());
        sources::check(
            &args.url,
            &vec![per_node; args.url.len()],
            per_source(&args),
        )?;
    }
    anyhow::ensure!(
        !args.rolling_restart || args.via == Via::Http,
        "--rolling-restart sends over HTTP, which can resend to another node: add --via http"
    );
    let mut hub = match (args.cluster, args.url.is_empty()) {
        (Some(n), _) => hub::Target::cluster(n.into()).await?,
        (None, false) => hub::Target::attach(&args.url, &args.hub_pid).await?,
        (None, true) => hub::Target::embedded().await?,
    };
    let urls = hub.urls();
    let mut report = Report::new(&args, &hub);
    report.rss.before = hub.rss_kib();
    for (i, node) in hub.nodes.iter().enumerate() {
        match hub.nodes.len() {
            1 => eprintln!("load: hub at {} (pid {:?})", node.url, node.pid),
            n => eprintln!(
                "load: node {} of {n} at {} (pid {:?})",
                i + 1,
                node.url,
                node.pid
            ),
        }
    }

    let pair_users = 2 * args.pairs;
    let total_users = args.users.unwrap_or(0).max(pair_users + args.idle);
    let placement = Placement {
        nodes: urls.len(),
        pair_users,
    };
    let t = Instant::now();
    let users = register(&args, &urls, placement, total_users).await?;
    report.setup.register_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pairs = open_pairs(&args, &users).await?;
    report.setup.open_seconds = t.elapsed().as_secs_f64();
    report.rss.after_register = hub.rss_kib();

    let stats = Rc::new(Stats::new());
    let done = Rc::new(Cell::new(false));
    let mut plan = plan_sessions(&args, &pairs, placement, &mut report);
    report.sessions_per_node = vec![0; urls.len()];
    for planned in &plan {
        report.sessions_per_node[planned.node] += 1;
    }
    let http = shared_http(&args);
    let ws_urls: Vec<String> = urls
        .iter()
        .map(|url| HubClient::with_http(url, http.clone()).ws_url())
        .collect();
    report.source_addresses = plan_sources(&mut plan, &ws_urls, per_source(&args));
    let t = Instant::now();
    let failover = args.rolling_restart.then_some((urls.as_slice(), &http));
    let sessions = connect(&args, &users, &ws_urls, failover, plan, &stats, &done).await?;
    report.setup.connect_seconds = t.elapsed().as_secs_f64();
    report.sessions = sessions.len();
    report.rss.idle_connected = hub.rss_kib();

    start_senders(
        &args, &pairs, &sessions, &users, &urls, placement, &template, &stats, &done,
    );

    let progress = bar(&args, args.warmup, "warm up");
    for _ in 0..args.warmup {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        progress.inc(1);
    }
    progress.finish();

    let measured = measure(&args, &mut hub, &stats, &mut report).await?;

    drain(&args, &sessions, &stats).await;
    done.set(true);

    let progress = bar(&args, sessions.len() as u64, "verify");
    report.fill(
        &stats,
        &pairs,
        sessions.iter().map(|s| {
            progress.inc(1);
            s.check.as_ref()
        }),
        measured,
    );
    progress.finish();
    if hub.nodes.len() > 1 || hub.mode == hub::Mode::Cluster {
        report.bus = hub.bus_counters().await;
    }
    drop(sessions);
    drop(hub);
    Ok(report)
}

/// The sessions to open, pair by pair (the sender's devices, then the
/// recipient's), then the idle ones; counts them per node in `report`.
fn plan_sessions(
    args: &LoadArgs,
    pairs: &[Rc<Pair>],
    placement: Placement,
    report: &mut Report,
) -> Vec<Planned> {
    let mut plan = Vec::new();
    for pair in pairs {
        for (user, recipient) in [(2 * pair.index, false), (2 * pair.index + 1, true)] {
            for device in 0..args.sessions_per_user {
                plan.push(Planned {
                    user,
                    node: placement.device(user, device),
                    pair: Some(pair.clone()),
                    recipient,
                    source: None,
                });
            }
        }
        if placement.home(2 * pair.index) != placement.home(2 * pair.index + 1) {
            report.cross_node_pairs += 1;
        }
    }
    for i in 0..args.idle {
        let user = placement.pair_users + i;
        plan.push(Planned {
            user,
            node: placement.home(user),
            pair: None,
            recipient: false,
            source: None,
        });
    }
    plan
}

/// Starts one send loop per pair, on the first session (or the HTTP
/// client) of its sender.
#[allow(clippy::too_many_arguments)]
fn start_senders(
    args: &LoadArgs,
    pairs: &[Rc<Pair>],
    sessions: &[Session],
    users: &[User],
    urls: &[String],
    placement: Placement,
    template: &Rc<Template>,
    stats: &Rc<Stats>,
    done: &Rc<Cell<bool>>,
) {
    let pacer = (args.rate > 0).then(|| Rc::new(Pacer::new(args.rate)));
    stats.sending.set(true);
    for (pair, session) in pairs
        .iter()
        .zip(sessions.iter().step_by(2 * args.sessions_per_user))
    {
        let sender = match args.via {
            _ if args.rolling_restart => Sender::HttpFailover {
                client: RefCell::new(users[2 * pair.index].client.clone()),
                urls: urls.to_vec(),
                at: Cell::new(placement.home(2 * pair.index)),
                done: done.clone(),
            },
            Via::Ws => Sender::Ws(session.ws.clone()),
            Via::Http => Sender::Http(users[2 * pair.index].client.clone()),
        };
        actix_web::rt::spawn(traffic::send_loop(
            pair.clone(),
            Rc::new(sender),
            template.clone(),
            stats.clone(),
            args.window,
            pacer.clone(),
        ));
    }
}

/// The measurement: `--duration` seconds of sending, the figures that are
/// read while it runs, and `--rolling-restart`'s restarts.
async fn measure(
    args: &LoadArgs,
    hub: &mut hub::Target,
    stats: &Rc<Stats>,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let progress = bar(args, args.duration, "measure");
    stats.start_measuring();
    let measure_start = Instant::now();
    let cpu_start = (hub::own_cpu_seconds(), hub.cpu_seconds());
    let mut peak_rss = hub.rss_kib();
    // --rolling-restart: node k stops and starts again (k + 1) / (n + 1) of
    // the way through the measurement.
    let nodes = hub.nodes.len() as u64;
    let restart_at = |k: u64| (k + 1) * args.duration / (nodes + 1);
    for second in 0..args.duration {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let k = report.restarts as u64;
        if args.rolling_restart && k < nodes && second + 1 >= restart_at(k).max(1) {
            progress.suspend(|| eprintln!("load: restarting node {} of {nodes}", k + 1));
            (hub.nodes[k as usize].restart().await)
                .with_context(|| format!("restarting node {}", k + 1))?;
            report.restarts += 1;
        }
        peak_rss = peak_rss.max(hub.rss_kib());
        let secs = measure_start.elapsed().as_secs_f64();
        progress.set_message(format!(
            "{:.0} sent/s {:.0} pushed/s",
            stats.accepted_measured.get() as f64 / secs,
            stats.delivered_measured.get() as f64 / secs
        ));
        progress.inc(1);
    }
    stats.stop_measuring();
    let measured = measure_start.elapsed().as_secs_f64();
    let percent =
        |before: Option<f64>, after: Option<f64>| Some((after? - before?) / measured * 100.0);
    report.cpu.generator_percent = percent(cpu_start.0, hub::own_cpu_seconds());
    report.cpu.hub_percent = percent(cpu_start.1, hub.cpu_seconds());
    progress.finish();
    report.rss.under_load = peak_rss;
    stats.sending.set(false);

    Ok(measured)
}

/// Waits for every answered send and every push of it (at most
/// `--drain-timeout`), then a moment for duplicates.
async fn drain(args: &LoadArgs, sessions: &[Session], stats: &Rc<Stats>) {
    // Drain: every answered send, and every push of it.
    let progress = bar(args, stats.accepted.get(), "drain");
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    loop {
        let expected: u64 = sessions
            .iter()
            .filter_map(|s| s.check.pair.as_ref().map(|p| p.accepted_count.get()))
            .sum();
        let received: u64 = sessions.iter().map(|s| s.check.received.get()).sum();
        progress.set_length(expected);
        progress.set_position(received.min(expected));
        if stats.in_flight.get() == 0 && received >= expected {
            break;
        }
        if Instant::now() > deadline {
            stats.note(format!(
                "drain timed out: {received} of {expected} pushes arrived"
            ));
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish();
    // Anything that arrives now would be a duplicate; give it a moment.
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
}

/// Puts `items` in an order that depends only on `seed` (Fisher-Yates with
/// xorshift64*: a benchmark's placement is the same from run to run).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.max(1);
    for i in (1..items.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let j = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn shuffled_sessions_split_senders_between_two_round_robin_workers() {
        // Even entries are senders, as the plan is built.
        let mut plan: Vec<usize> = (0..2000).collect();
        shuffle(&mut plan, 0x5eed);
        let mut sorted = plan.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..2000).collect::<Vec<_>>(), "a permutation");
        // Position i goes to worker i % 2.
        let on_first = plan
            .iter()
            .enumerate()
            .filter(|(at, user)| *user % 2 == 0 && at % 2 == 0)
            .count();
        assert!(
            (450..=550).contains(&on_first),
            "{on_first} of 1000 senders on the first worker"
        );
        let mut again: Vec<usize> = (0..2000).collect();
        shuffle(&mut again, 0x5eed);
        assert_eq!(plan, again, "the same seed gives the same order");
    }
}
