//! Watching users: a node follows the events of every user who has a
//! session on it, from the session's upgrade until its last session ends.

use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::{user_subject, ClusterNode, Watch, WatchGuard, LINGER, WATCH_TIMEOUT};
use crate::error::HubError;
use crate::model::Pubkey;
use crate::proto::cluster::presence::Kind;

impl ClusterNode {
    /// Watches `user` for as long as the guard lives: subscribes to their
    /// subject, announces them online and reads their conversations'
    /// baselines. Returns once pushes to them are complete from here on.
    pub async fn watch(self: &Arc<Self>, user: &Pubkey) -> Result<WatchGuard, HubError> {
        let (first, mut ready) = {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            match watches.get_mut(user) {
                Some(w) => {
                    w.count += 1;
                    (false, w.ready.subscribe())
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    watches.insert(
                        user.clone(),
                        Watch {
                            count: 1,
                            ready: tx,
                            reader: None,
                        },
                    );
                    (true, rx)
                }
            }
        };
        let guard = WatchGuard {
            node: self.clone(),
            user: user.clone(),
        };
        let started = if first {
            let result = self.start_watch(user).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "could not watch a user");
            }
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = watches.get_mut(user) {
                let ok = result.as_ref().is_ok();
                if let Ok(reader) = result {
                    w.reader = Some(reader);
                }
                let _ = w.ready.send(Some(ok));
                ok
            } else {
                false
            }
        } else {
            matches!(
                ready.wait_for(Option::is_some).await.as_deref(),
                Ok(Some(true))
            )
        };
        if started {
            Ok(guard)
        } else {
            // Dropping the guard unwatches.
            Err(HubError::Unavailable { retry_after: 1 })
        }
    }

    pub(super) async fn start_watch(
        self: &Arc<Self>,
        user: &Pubkey,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch(user);
        let nats = self.nats.clone();
        let subject = user_subject(user);
        let subscriber = self
            .spawn(async move {
                let subscribe = async {
                    let sub = nats.subscribe(subject).await.map_err(|e| e.to_string())?;
                    // The server has the subscription once the flush returns:
                    // what is committed after the baselines below reaches us.
                    nats.flush().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(sub)
                };
                tokio::time::timeout(WATCH_TIMEOUT, subscribe)
                    .await
                    .map_err(|_| "NATS did not confirm the subscription in time".to_owned())?
            })
            .await?;
        let reader =
            self.runtime
                .handle()
                .spawn(read_user(Arc::downgrade(self), user.clone(), subscriber));
        self.announce(Kind::Online, vec![user.to_string()]);
        let baselines = match self.store.sequences_of(user.clone()).await {
            Ok(b) => b,
            Err(e) => {
                reader.abort();
                anyhow::bail!("reading baselines: {e}");
            }
        };
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let ready = feeds.loaded(user, &baselines);
        self.hand_out(&feeds, ready);
        Ok(reader)
    }

    pub(super) fn unwatch(&self, user: &Pubkey) {
        let gone = {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = watches.get_mut(user) else {
                return;
            };
            w.count -= 1;
            if w.count > 0 {
                return;
            }
            watches.remove(user)
        };
        if let Some(reader) = gone.and_then(|w| w.reader) {
            // The subscription lingers: events published before the other
            // nodes hear that the user left still arrive, and go to the
            // offline queue (`on_user_events`) instead of nowhere.
            self.runtime.handle().spawn(async move {
                tokio::time::sleep(LINGER).await;
                reader.abort();
            });
        }
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwatch(user);
        self.recently_gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.clone(), Instant::now());
        self.announce(Kind::Offline, vec![user.to_string()]);
    }
}

async fn read_user(node: Weak<ClusterNode>, user: Pubkey, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        match node.seal.open(msg.subject.as_str(), &msg.payload) {
            Ok((_, payload)) => node.on_user_events(&user, &payload),
            Err(why) => node.rejected(why),
        }
    }
}
