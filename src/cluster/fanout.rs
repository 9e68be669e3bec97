//! Fan-out between nodes: what a node publishes after a group commit or a
//! key rotation, and what it does with what the others publish (hands it
//! to its sessions in order, or queues it for a user who is offline).

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;
use uuid::Uuid;

use super::feed::{Event, Feeds};
use super::{user_subject, ClusterNode, RECENTLY_GONE};
use crate::model::{Pubkey, StoredMessage};
use crate::proto::cluster::{ClusterEvent, ClusterEvents};
use crate::store::commit::AppendMessage;

impl ClusterNode {
    /// Publishes what a group commit wrote to the users concerned who are
    /// online on another node: one NATS message per user per batch.
    pub fn publish_committed(&self, appends: &[&AppendMessage]) {
        let mut by_user: HashMap<&Pubkey, Vec<ClusterEvent>> = HashMap::new();
        for append in appends {
            let write = &append.write;
            let m = &write.message;
            let to_sender = self.presence.is_online(&m.sender);
            let to_recipient = self.presence.is_online(&write.recipient);
            if !to_sender && !to_recipient {
                continue;
            }
            let (a, b) = if m.sender < write.recipient {
                (&m.sender, &write.recipient)
            } else {
                (&write.recipient, &m.sender)
            };
            let event = ClusterEvent {
                envelope: append.event.clone(),
                conversation_id: Bytes::copy_from_slice(m.conversation_id.as_bytes()),
                server_sequence: m.server_sequence,
                participant_a: a.to_string(),
                participant_b: b.to_string(),
                sender: m.sender.to_string(),
                offline_queued: write.offline_queued,
                message_id: Bytes::copy_from_slice(m.id.as_bytes()),
            };
            if to_sender {
                by_user.entry(&m.sender).or_default().push(event.clone());
            }
            if to_recipient {
                by_user.entry(&write.recipient).or_default().push(event);
            }
        }
        for (user, events) in by_user {
            self.metrics.cluster.published.inc_by(events.len() as u64);
            let msg = ClusterEvents {
                node: self.id.clone(),
                events,
            };
            self.publish(user_subject(user), msg.encode_to_vec().into());
        }
    }

    /// Publishes an event outside any conversation's sequence (a key
    /// rotation, a new conversation) to `users` online on other nodes.
    pub fn publish_event(&self, users: &[Pubkey], envelope: Bytes) {
        for user in users.iter().filter(|u| self.presence.is_online(u)) {
            self.metrics.cluster.published.inc();
            let msg = ClusterEvents {
                node: self.id.clone(),
                events: vec![ClusterEvent {
                    envelope: envelope.clone(),
                    ..ClusterEvent::default()
                }],
            };
            self.publish(user_subject(user), msg.encode_to_vec().into());
        }
    }

    /// A message this node committed: delivered here in order with the rest.
    pub fn deliver_local(
        &self,
        message: &StoredMessage,
        recipient: &Pubkey,
        offline_queued: bool,
        envelope: Bytes,
    ) {
        let (a, b) = if message.sender < *recipient {
            (message.sender.clone(), recipient.clone())
        } else {
            (recipient.clone(), message.sender.clone())
        };
        self.offer(Event {
            conversation: message.conversation_id,
            seq: message.server_sequence,
            participant_a: a,
            participant_b: b,
            sender: message.sender.clone(),
            message_id: message.id,
            offline_queued,
            local: true,
            repaired: false,
            envelope,
        });
    }

    pub(super) fn offer(&self, event: Event) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let ready = feeds.offer(event);
        self.hand_out(&feeds, ready);
    }

    /// Pushes events to this node's sessions, in order (the feeds lock is
    /// held, so nothing else can interleave), with the offline fallback.
    pub(super) fn hand_out(&self, feeds: &Feeds, ready: Vec<Event>) {
        for event in ready {
            let recipient = event.recipient().clone();
            let pushed = self.registry.push(&recipient, &event.envelope);
            self.registry.push(&event.sender, &event.envelope);
            // Cheap checks first: this runs for every event delivered here.
            if pushed.delivered == 0
                && !event.offline_queued
                && !event.repaired
                && (event.local || feeds.is_watched(&recipient) || self.recently_gone(&recipient))
                && !self.registry.is_online(&recipient)
                && !self.presence.is_online(&recipient)
            {
                // Nobody anywhere took it: the recipient's offline queue.
                self.queue_offline(recipient, event.message_id);
            }
        }
    }

    pub(super) fn queue_offline(&self, recipient: Pubkey, id: Uuid) {
        self.metrics.offline_queued.inc();
        let store = self.store.clone();
        self.runtime.handle().spawn(async move {
            if let Err(e) = store.queue_offline(recipient, id).await {
                tracing::error!(error = %e, message = %id, "offline fallback failed");
            }
        });
    }

    pub(super) fn recently_gone(&self, user: &Pubkey) -> bool {
        self.recently_gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .is_some_and(|t| t.elapsed() < RECENTLY_GONE)
    }

    pub(super) fn on_user_events(&self, user: &Pubkey, payload: &[u8]) {
        let Ok(batch) = ClusterEvents::decode(payload) else {
            tracing::warn!("undecodable cluster event");
            return;
        };
        self.metrics
            .cluster
            .received
            .inc_by(batch.events.len() as u64);
        for event in batch.events {
            if event.conversation_id.is_empty() {
                self.registry.push(user, &event.envelope);
                continue;
            }
            let (Ok(conversation), Ok(message_id), Ok(a), Ok(b), Ok(sender)) = (
                Uuid::from_slice(&event.conversation_id),
                Uuid::from_slice(&event.message_id),
                Pubkey::parse(&event.participant_a),
                Pubkey::parse(&event.participant_b),
                Pubkey::parse(&event.sender),
            ) else {
                tracing::warn!("malformed cluster event");
                continue;
            };
            let watched = {
                let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
                feeds.is_watched(&a) || feeds.is_watched(&b)
            };
            if !watched {
                // The user left this node a moment ago; the sender's node
                // still thought them here. Nobody took the push: queue it,
                // unless they are back somewhere.
                let recipient = if sender == a { &b } else { &a };
                if recipient == user
                    && !event.offline_queued
                    && self.recently_gone(user)
                    && !self.registry.is_online(user)
                    && !self.presence.is_online(user)
                {
                    self.queue_offline(user.clone(), message_id);
                }
                continue;
            }
            self.offer(Event {
                conversation,
                seq: event.server_sequence,
                participant_a: a,
                participant_b: b,
                sender,
                message_id,
                offline_queued: event.offline_queued,
                local: false,
                repaired: false,
                envelope: event.envelope,
            });
        }
    }
}
