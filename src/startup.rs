//! `Application`: builds the hub from `Settings`, binds its own listener (so
//! tests can use port 0) and runs until stopped.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::actors::claims::IdClaims;
use crate::actors::conversation::ConversationHandles;
use crate::actors::directory::ConversationDirectory;
use crate::actors::janitor::{JanitorActor, StopJanitor};
use crate::actors::registry::{SessionLimits, SessionRegistry};
use crate::actors::session::SessionContext;
use crate::auth::JwtKeys;
use crate::cluster::{ClusterNode, NatsSettings};
use crate::config::Settings;
use crate::http;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::service::auth::AuthService;
use crate::service::dm::DmService;
use crate::state::AppState;
use crate::store::commit::CommitListener;
use crate::store::{Opened, Store};
use crate::tls::Certificate;

/// The kernel send buffer of every accepted connection. Linux would grow it
/// to 4 MiB for a peer that stops reading; fixed here, a stalled WebSocket
/// holds at most this in the kernel plus `--session-buffer-bytes` in the
/// hub before it is cut off (1013). Ample for chat traffic.
const SOCKET_SEND_BUFFER: usize = 256 * 1024;

/// Socket options of every accepted connection: the fixed send buffer, and
/// `TCP_USER_TIMEOUT` of `--idle-timeout`. A peer that stops reading stops
/// the hub's writes to it, and then its session actor is no longer run (so
/// neither its idle timer nor a 1013 close could act); the kernel aborts
/// such a connection once written data has waited that long, which ends the
/// session and frees its place in the per-user and per-IP caps.
fn configure_socket(conn: &dyn std::any::Any, user_timeout: Duration) {
    let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket.set_send_buffer_size(SOCKET_SEND_BUFFER) {
        tracing::debug!(error = %e, "could not set the send buffer size");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_user_timeout(Some(user_timeout)) {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
}

/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Application {
    port: u16,
    server: Server,
    state: Arc<AppState>,
    janitor: Addr<JanitorActor>,
    migrations_applied: u32,
    /// The TLS certificate, when the hub serves TLS itself.
    certificate: Option<Arc<Certificate>>,
}

/// Stops a running `Application` gracefully; cheap to clone.
#[derive(Clone)]
pub struct AppHandle {
    server: ServerHandle,
    state: Arc<AppState>,
    janitor: Addr<JanitorActor>,
    certificate: Option<Arc<Certificate>>,
}

impl AppHandle {
    /// Reads `--tls-cert` and `--tls-key` again (SIGHUP): later handshakes
    /// present the new pair. A pair that does not load leaves the old one
    /// in place and is logged. Without TLS, nothing to do.
    pub fn reload_tls(&self) {
        let Some(certificate) = &self.certificate else {
            tracing::info!("SIGHUP: no --tls-cert to reload");
            return;
        };
        match certificate.reload() {
            Ok(()) => tracing::info!("reloaded the TLS certificate"),
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "the TLS certificate was not reloaded; the old one stays"
            ),
        }
    }

    /// Stops accepting, closes every session with 1001 once its in-flight
    /// requests have answered, waits for in-flight HTTP requests, and returns
    /// when the server has stopped.
    pub async fn shutdown(&self) {
        tracing::info!("shutting down");
        self.state.registry.close_all();
        self.server.stop(true).await;
        self.janitor.do_send(StopJanitor);
        self.state.dm.conversations.clear();
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        self.state.store.close();
        tracing::info!("stopped");
    }
}

impl Application {
    /// Opens (and migrates) the database, starts the actors and binds.
    /// Must run inside an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(SessionRegistry::new(
            metrics.clone(),
            SessionLimits {
                bytes_per_session: settings.session_buffer_bytes,
                sessions_per_user: settings.max_sessions_per_user,
                connections_per_ip: settings.max_connections_per_ip,
            },
        ));
        let Opened {
            store,
            migrations_applied,
            jwt_secret,
        } = Store::open(&settings, &metrics).await?;
        let cluster = join_cluster(&settings, &jwt_secret, &store, &registry, &metrics).await?;
        let limits = Arc::new(RateLimits::new(&settings));
        let janitor = JanitorActor::new(
            store.clone(),
            metrics.clone(),
            limits.clone(),
            settings.janitor_interval(),
            Duration::from_secs(settings.offline_ttl),
        )
        .start();
        let state = wire(
            settings,
            store,
            registry,
            cluster,
            limits,
            metrics,
            &jwt_secret,
        );
        let (server, port, certificate) = serve(&state, migrations_applied)?;
        Ok(Application {
            port,
            server,
            state,
            janitor,
            migrations_applied,
            certificate,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shared state, for tools and tests that look inside a running hub.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// How many migrations this start applied (0 on a current database).
    pub fn migrations_applied(&self) -> u32 {
        self.migrations_applied
    }

    pub fn handle(&self) -> AppHandle {
        AppHandle {
            server: self.server.handle(),
            state: self.state.clone(),
            janitor: self.janitor.clone(),
            certificate: self.certificate.clone(),
        }
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Cluster mode (`--nats-url`): joins the bus; `None` on one node.
async fn join_cluster(
    settings: &Settings,
    jwt_secret: &[u8],
    store: &Store,
    registry: &Arc<SessionRegistry>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<ClusterNode>>> {
    let Some(nats) = &settings.nats_url else {
        return Ok(None);
    };
    let bus = NatsSettings {
        url: nats.clone(),
        ca_file: settings.nats_ca_file.clone(),
    };
    let node = ClusterNode::start(
        &bus,
        jwt_secret,
        store.clone(),
        registry.clone(),
        metrics.clone(),
    )
    .await?;
    Ok(Some(node))
}

/// The conversation actors' directory, the services and the sessions'
/// context, each with only what it uses, and the HTTP edge around them.
fn wire(
    settings: Settings,
    store: Store,
    registry: Arc<SessionRegistry>,
    cluster: Option<Arc<ClusterNode>>,
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
    jwt_secret: &[u8],
) -> Arc<AppState> {
    let appender = store.appender(cluster.clone().map(|node| node as Arc<dyn CommitListener>));
    let conversations = Arc::new(
        ConversationDirectory::new(ConversationHandles {
            store: store.clone(),
            appender,
            registry: registry.clone(),
            claims: Arc::new(IdClaims::default()),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            on_stop: Arc::new(|_, _| {}),
        })
        .with_send_timeout(Duration::from_secs(settings.send_timeout)),
    );
    let jwt = Arc::new(JwtKeys::new(jwt_secret, settings.access_token_ttl));
    let dm = Arc::new(DmService {
        store: store.clone(),
        limits: limits.clone(),
        conversations: conversations.clone(),
        answers: Arc::new(crate::answers::AnswerBudget::new(
            settings.answer_bytes_per_user,
            settings.answer_bytes_per_node,
            Some(metrics.answers.clone()),
        )),
        registry: registry.clone(),
        cluster: cluster.clone(),
        max_payload_bytes: settings.max_payload_bytes,
    });
    let auth = Arc::new(AuthService {
        store: store.clone(),
        jwt: jwt.clone(),
        conversations,
        refresh_token_ttl: settings.refresh_token_ttl,
    });
    let sessions = Arc::new(SessionContext {
        dm: dm.clone(),
        jwt: jwt.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        ping_interval: settings.ping_interval(),
        idle_timeout: settings.idle_timeout(),
        max_frame_bytes: settings.max_frame_bytes,
        session_buffer: settings.session_buffer,
    });
    Arc::new(AppState {
        auth,
        dm,
        sessions,
        store,
        registry,
        jwt,
        limits,
        metrics,
        cluster,
        settings,
    })
}

/// Binds `--bind` (with TLS when asked) and starts the HTTP server: the
/// server, its port, and the certificate SIGHUP reloads.
fn serve(
    state: &Arc<AppState>,
    migrations_applied: u32,
) -> anyhow::Result<(Server, u16, Option<Arc<Certificate>>)> {
    let settings = &state.settings;
    let listener =
        TcpListener::bind(settings.bind).with_context(|| format!("binding {}", settings.bind))?;
    let port = listener.local_addr()?.port();
    let data = web::Data::from(state.clone());
    let dm = web::Data::from(state.dm.clone());
    let mut server = HttpServer::new(move || {
        let data = data.clone();
        App::new()
            .app_data(data.clone())
            .app_data(dm.clone())
            .wrap(from_fn(http::access_log))
            .configure(|cfg| http::configure(cfg, &data))
    })
    .on_connect({
        let user_timeout = settings.idle_timeout();
        move |conn, _| configure_socket(conn, user_timeout)
    })
    // Nagle's algorithm would hold a small frame written right after
    // another (a send's answer after its echo push) until the peer acks
    // the first, and peers delay acks by up to 40 ms.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
    if let Some(workers) = settings.workers {
        server = server.workers(workers.max(1));
    }
    let mut certificate = None;
    let scheme = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let loaded = Certificate::load(cert, key)?;
            server = server.listen_rustls_0_23(listener, loaded.server_config()?)?;
            certificate = Some(loaded);
            "https"
        }
        _ => {
            server = server.listen(listener)?;
            "http"
        }
    };
    let addr = format!("{}:{port}", settings.bind.ip());
    match &settings.database_url {
        None => tracing::info!(
            scheme,
            addr,
            data_dir = %settings.data_dir.display(),
            migrations_applied,
            "united-hub listening"
        ),
        Some(url) => tracing::info!(
            scheme,
            addr,
            database = %url,
            cluster = state.cluster.is_some(),
            migrations_applied,
            "united-hub listening"
        ),
    }
    Ok((server.run(), port, certificate))
}
