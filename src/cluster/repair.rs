//! Repair: core NATS is at-most-once, so every second a node compares the
//! stored `last_seq` of the conversations it follows with what it
//! delivered, and reads what is missing from the database.

use super::feed::{Event, Repair};
use super::{ClusterNode, REPAIR_GRACE};
use crate::model::HistoryPage;
use crate::proto;

impl ClusterNode {
    /// Compares delivered sequences with the database.
    pub(super) async fn poll(&self) {
        let tracked = self
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tracked();
        for chunk in tracked.chunks(1000) {
            match self.store.last_sequences(chunk.to_vec()).await {
                Ok(lasts) => {
                    let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
                    for (id, last) in lasts {
                        feeds.observe(&id, last);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "repair poll failed");
                    return;
                }
            }
        }
    }

    /// Reads what NATS did not bring and delivers it.
    pub(super) async fn repair(&self) {
        let due = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            feeds.note_gaps();
            feeds.repairs_due(REPAIR_GRACE)
        };
        for repair in due {
            if let Err(e) = self.repair_one(repair).await {
                tracing::warn!(error = %e, "repair failed");
            }
        }
    }

    pub(super) async fn repair_one(&self, repair: Repair) -> Result<(), crate::db::DbError> {
        let (a, b) = if repair.participant_a == repair.participant_b {
            // A cursor made from baselines that has seen no event yet.
            match self.store.conversation(repair.conversation).await? {
                Some(c) => (c.participant_a, c.participant_b),
                None => return Ok(()),
            }
        } else {
            (repair.participant_a, repair.participant_b)
        };
        let limit = (repair.until - repair.after).min(100) as u32;
        let page = self
            .store
            .history(repair.conversation, HistoryPage::After(repair.after), limit)
            .await?;
        self.metrics
            .cluster
            .repaired
            .inc_by(page.messages.len() as u64);
        if !page.messages.is_empty() {
            tracing::debug!(
                conversation = %repair.conversation,
                messages = page.messages.len(),
                "repaired events that NATS did not bring"
            );
        }
        for m in page.messages {
            self.offer(Event {
                conversation: m.conversation_id,
                seq: m.server_sequence,
                participant_a: a.clone(),
                participant_b: b.clone(),
                sender: m.sender.clone(),
                message_id: m.id,
                offline_queued: true,
                local: false,
                repaired: true,
                envelope: proto::message_event(&m),
            });
        }
        Ok(())
    }
}
