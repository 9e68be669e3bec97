//! `Application`: builds the hub from `Settings`, binds its own listener (so
//! tests can use port 0) and runs until stopped.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, SyncArbiter};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::actors::checkpointer::Checkpointer;
use crate::actors::claims::IdClaims;
use crate::actors::conversation::ConversationHandles;
use crate::actors::db_executor::DbExecutor;
use crate::actors::directory::ConversationDirectory;
use crate::actors::janitor::{JanitorActor, StopJanitor};
use crate::actors::registry::SessionRegistry;
use crate::actors::write_batcher::WriteBatcher;
use crate::auth::{load_or_create_secret, JwtKeys};
use crate::cluster::ClusterNode;
use crate::config::Settings;
use crate::db::{self, migrations};
use crate::http;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::state::AppState;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Application {
    port: u16,
    server: Server,
    state: Arc<AppState>,
    janitor: Addr<JanitorActor>,
    migrations_applied: u32,
}

/// Stops a running `Application` gracefully; cheap to clone.
#[derive(Clone)]
pub struct AppHandle {
    server: ServerHandle,
    state: Arc<AppState>,
    janitor: Addr<JanitorActor>,
}

impl AppHandle {
    /// Stops accepting, closes every session with 1001 once its in-flight
    /// requests have answered, waits for in-flight HTTP requests, and returns
    /// when the server has stopped.
    pub async fn shutdown(&self) {
        tracing::info!("shutting down");
        self.state.registry.close_all();
        self.server.stop(true).await;
        self.janitor.do_send(StopJanitor);
        self.state.conversations.clear();
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        self.state.store.close();
        tracing::info!("stopped");
    }
}

/// Opens the embedded SQLite store in `--data-dir`, migrated, with its
/// writer and checkpointer started. Returns it, the migrations applied and
/// the JWT key.
fn open_sqlite(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Store, u32, Vec<u8>)> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let secret = load_or_create_secret(&settings.jwt_secret_path())?;
    let path = db::db_path(&settings.data_dir);
    let mut writer_conn =
        db::open_writer(&path).with_context(|| format!("opening {}", path.display()))?;
    let applied = migrations::migrate(&mut writer_conn).context("migrating")?;
    let pool = db::open_pool(&path).context("opening the read pool")?;
    let checkpointer = Checkpointer::start(path.clone()).context("starting the checkpointer")?;
    let writer = {
        let slot = Mutex::new(Some(writer_conn));
        let metrics = metrics.clone();
        SyncArbiter::start(1, move || {
            let conn = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                // The factory runs again only if the writer thread is
                // restarted; the first connection was checked above.
                .unwrap_or_else(|| db::open_writer(&path).expect("reopening the writer"));
            DbExecutor::new(conn, metrics.clone())
        })
    };
    let store = SqliteStore::new(
        pool,
        writer,
        Duration::from_secs(settings.challenge_ttl),
        checkpointer,
    );
    Ok((Store::Sqlite(Arc::new(store)), applied, secret))
}

/// Connects to PostgreSQL (`--database-url`), migrated. The JWT key is
/// `--jwt-secret-file` if given, else the one the cluster shares in the
/// database (made by the first node).
async fn open_postgres(
    settings: &Settings,
    url: &crate::config::DatabaseUrl,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<PgStore>, u32, Vec<u8>)> {
    let (store, applied) = PgStore::connect(
        url.expose(),
        Duration::from_secs(settings.challenge_ttl),
        metrics.clone(),
    )
    .await
    .with_context(|| format!("opening {url}"))?;
    let secret = match &settings.jwt_secret_file {
        Some(path) => load_or_create_secret(path)?,
        None => {
            let generated = crate::auth::new_secret();
            store
                .jwt_secret(generated)
                .await
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .context("reading the cluster's JWT key")?
        }
    };
    Ok((store, applied, secret))
}

impl Application {
    /// Opens (and migrates) the database, starts the actors and binds.
    /// Must run inside an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(SessionRegistry::new(metrics.clone()));
        let (store, migrations_applied, secret, cluster) = match &settings.database_url {
            None => {
                anyhow::ensure!(
                    settings.nats_url.is_none(),
                    "--nats-url needs --database-url: the nodes of a cluster share one PostgreSQL database"
                );
                let (store, applied, secret) = open_sqlite(&settings, &metrics)?;
                (store, applied, secret, None)
            }
            Some(url) => {
                let (pg, applied, secret) = open_postgres(&settings, url, &metrics).await?;
                let cluster = match &settings.nats_url {
                    Some(nats) => Some(
                        ClusterNode::start(nats, pg.clone(), registry.clone(), metrics.clone())
                            .await?,
                    ),
                    None => None,
                };
                (Store::Postgres(pg), applied, secret, cluster)
            }
        };
        let batcher = WriteBatcher::with_target(store.commit_target())
            .publishing_to(cluster.clone())
            .start();
        let conversations = ConversationDirectory::new(ConversationHandles {
            store: store.clone(),
            batcher,
            registry: registry.clone(),
            claims: Arc::new(IdClaims::default()),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            on_stop: Arc::new(|_, _| {}),
        });
        let limits = Arc::new(RateLimits::new(&settings));
        let janitor = JanitorActor::new(
            store.clone(),
            metrics.clone(),
            limits.clone(),
            settings.janitor_interval(),
            Duration::from_secs(settings.offline_ttl),
        )
        .start();
        let state = Arc::new(AppState {
            store,
            registry,
            conversations,
            jwt: JwtKeys::new(&secret, settings.access_token_ttl),
            limits,
            metrics,
            cluster,
            settings,
        });

        let listener = TcpListener::bind(state.settings.bind)
            .with_context(|| format!("binding {}", state.settings.bind))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::from(state.clone());
        let mut server = HttpServer::new(move || {
            let data = data.clone();
            App::new()
                .app_data(data.clone())
                .wrap(from_fn(http::access_log))
                .configure(|cfg| http::configure(cfg, &data))
        })
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
        if let Some(workers) = state.settings.workers {
            server = server.workers(workers.max(1));
        }
        let server = server.listen(listener)?.run();
        match &state.settings.database_url {
            None => tracing::info!(
                addr = %format!("{}:{port}", state.settings.bind.ip()),
                data_dir = %state.settings.data_dir.display(),
                migrations_applied,
                "united-hub listening"
            ),
            Some(url) => tracing::info!(
                addr = %format!("{}:{port}", state.settings.bind.ip()),
                database = %url,
                cluster = state.cluster.is_some(),
                migrations_applied,
                "united-hub listening"
            ),
        }
        Ok(Application {
            port,
            server,
            state,
            janitor,
            migrations_applied,
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
        }
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
