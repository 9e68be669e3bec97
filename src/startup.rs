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
use crate::actors::db_executor::DbExecutor;
use crate::actors::directory::{ConversationDirectory, IdClaims};
use crate::actors::janitor::{JanitorActor, StopJanitor};
use crate::actors::registry::SessionRegistry;
use crate::actors::write_batcher::WriteBatcher;
use crate::auth::{load_or_create_secret, ChallengeStore, JwtKeys};
use crate::config::Settings;
use crate::db::{self, migrations};
use crate::http;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::state::AppState;

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
        drop(
            self.state
                .checkpointer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        tracing::info!("stopped");
    }
}

impl Application {
    /// Opens (and migrates) the database, starts the actors and binds.
    /// Must run inside an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
        let secret = load_or_create_secret(&settings.jwt_secret_path())?;
        let path = db::db_path(&settings.data_dir);
        let mut writer_conn =
            db::open_writer(&path).with_context(|| format!("opening {}", path.display()))?;
        let migrations_applied = migrations::migrate(&mut writer_conn).context("migrating")?;
        let pool = db::open_pool(&path).context("opening the read pool")?;
        let checkpointer =
            Checkpointer::start(path.clone()).context("starting the checkpointer")?;
        let metrics = Arc::new(Metrics::new());

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
        let batcher = WriteBatcher::new(writer.clone()).start();

        let state = Arc::new(AppState {
            pool,
            writer,
            batcher,
            registry: SessionRegistry::new(metrics.clone()),
            conversations: ConversationDirectory::default(),
            claims: IdClaims::default(),
            jwt: JwtKeys::new(&secret, settings.access_token_ttl),
            limits: RateLimits::new(&settings),
            challenges: ChallengeStore::new(Duration::from_secs(settings.challenge_ttl)),
            metrics,
            checkpointer: Mutex::new(Some(checkpointer)),
            settings,
        });
        let janitor = JanitorActor::new(state.clone()).start();

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
        tracing::info!(
            addr = %format!("{}:{port}", state.settings.bind.ip()),
            data_dir = %state.settings.data_dir.display(),
            migrations_applied,
            "united-hub listening"
        );
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
