//! Watching users: a node follows the events of every user who has a
//! session on it, from the session's upgrade until its last session ends.
//! The node hears every event on the bus from its start; watching a user
//! is announcing them online and reading their conversations' baselines.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{ClusterNode, Watch, WatchGuard};
use crate::error::HubError;
use crate::model::Pubkey;
use crate::proto::cluster::presence::Kind;

impl ClusterNode {
    /// Watches `user` for as long as the guard lives: announces them online
    /// and reads their conversations' baselines. Returns once pushes to them
    /// are complete from here on.
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
                let ok = result.is_ok();
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

    /// Follows `user` from now on: the node already hears every event on
    /// [`super::EVENTS`], so what is committed after the baselines read here
    /// reaches the feeds (or the repair poll finds it).
    pub(super) async fn start_watch(self: &Arc<Self>, user: &Pubkey) -> anyhow::Result<()> {
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch(user);
        self.announce(Kind::Online, vec![user.to_string()]);
        let baselines = self
            .store
            .sequences_of(user.clone())
            .await
            .map_err(|e| anyhow::anyhow!("reading baselines: {e}"))?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let ready = feeds.loaded(user, &baselines);
        self.hand_out(&feeds, ready);
        Ok(())
    }

    /// Ends a session's watch; the last one stops following `user`. Events
    /// published before the other nodes hear that the user left still
    /// arrive, and go to the offline queue (`on_events`) instead of nowhere.
    pub(super) fn unwatch(&self, user: &Pubkey) {
        {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = watches.get_mut(user) else {
                return;
            };
            w.count -= 1;
            if w.count > 0 {
                return;
            }
            watches.remove(user);
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
