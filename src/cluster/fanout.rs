//! Fan-out between nodes: what a node publishes after a group commit or a
//! key rotation, and what it does with what the others publish (hands it
//! to its sessions in order, or queues it for a user who is offline).

use bytes::Bytes;
use prost::Message as _;
use uuid::Uuid;

use super::feed::{Event, Feeds};
use super::sealing::Rejected;
use super::{ClusterNode, EVENTS, EVENTS_PART, RECENTLY_GONE};
use crate::model::{Pubkey, StoredMessage};
use crate::proto::cluster::{ClusterEvent, ClusterEvents};
use crate::store::commit::AppendMessage;

impl ClusterNode {
    /// Publishes what a group commit wrote and concerns a user online on
    /// another node: one NATS message for the whole commit (more for a very
    /// large one, [`EVENTS_PART`]), whichever users and nodes it reaches.
    pub fn publish_committed(&self, appends: &[&AppendMessage]) {
        let mut events = Vec::new();
        for append in appends {
            let write = &append.write;
            let m = &write.message;
            if !self.presence.is_online(&m.sender) && !self.presence.is_online(&write.recipient) {
                continue;
            }
            let (a, b) = if m.sender < write.recipient {
                (&m.sender, &write.recipient)
            } else {
                (&write.recipient, &m.sender)
            };
            events.push(ClusterEvent {
                envelope: append.event.clone(),
                conversation_id: Bytes::copy_from_slice(m.conversation_id.as_bytes()),
                server_sequence: m.server_sequence,
                participant_a: a.to_string(),
                participant_b: b.to_string(),
                sender: m.sender.to_string(),
                offline_queued: write.offline_queued,
                message_id: Bytes::copy_from_slice(m.id.as_bytes()),
                to: Vec::new(),
            });
        }
        self.publish_events(events);
    }

    /// Publishes an event outside any conversation's sequence (a key
    /// rotation, a new conversation) for `users`' sessions on other nodes.
    ///
    /// Whether they are online elsewhere is not asked: such an event is
    /// rare, no repair reads it back, and a session that opened on another
    /// node a moment ago is not in this node's presence yet. Every node
    /// hears it and pushes it to the sessions it has of `users`.
    pub fn publish_event(&self, users: &[Pubkey], envelope: Bytes) {
        let to: Vec<String> = users.iter().map(Pubkey::to_string).collect();
        if to.is_empty() {
            return;
        }
        self.publish_events(vec![ClusterEvent {
            envelope,
            to,
            ..ClusterEvent::default()
        }]);
    }

    /// Publishes `events` in order, in parts of about [`EVENTS_PART`] bytes.
    fn publish_events(&self, events: Vec<ClusterEvent>) {
        self.metrics.cluster.published.inc_by(events.len() as u64);
        for part in parts(events, EVENTS_PART) {
            let msg = ClusterEvents {
                node: self.id.clone(),
                events: part,
            };
            self.publish(EVENTS.into(), msg.encode_to_vec().into());
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

    /// Whether `user` (a `Pubkey`, or its text) left this node within
    /// [`RECENTLY_GONE`].
    pub(super) fn recently_gone<Q>(&self, user: &Q) -> bool
    where
        Pubkey: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.recently_gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .is_some_and(|t| t.elapsed() < RECENTLY_GONE)
    }

    /// What another node published on [`EVENTS`]: each event goes to the
    /// feeds if a participant is watched here, and to the offline queue if
    /// its recipient left this node a moment ago and is nowhere now. The
    /// envelopes share `payload` (decoded from `Bytes`, not copied).
    pub(super) fn on_events(&self, payload: Bytes) {
        let Ok(batch) = ClusterEvents::decode(payload) else {
            self.rejected(Rejected::Malformed);
            return;
        };
        self.metrics
            .cluster
            .received
            .inc_by(batch.events.len() as u64);
        for event in batch.events {
            if event.conversation_id.is_empty() {
                for user in event.to.iter().filter_map(|u| Pubkey::parse(u).ok()) {
                    self.registry.push(&user, &event.envelope);
                }
                continue;
            }
            // Most events of a cluster of three nodes or more concern
            // nobody here: look the participants up by their text first, and
            // parse only what this node acts on.
            let watched = {
                let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
                feeds.is_watched(event.participant_a.as_str())
                    || feeds.is_watched(event.participant_b.as_str())
            };
            if !watched {
                // The recipient left this node a moment ago; the sender's
                // node still thought them online. Nobody took the push:
                // queue it, unless they are back somewhere.
                let recipient = if event.sender == event.participant_a {
                    &event.participant_b
                } else {
                    &event.participant_a
                };
                if !event.offline_queued && self.recently_gone(recipient.as_str()) {
                    let (Ok(recipient), Ok(message_id)) = (
                        Pubkey::parse(recipient),
                        Uuid::from_slice(&event.message_id),
                    ) else {
                        self.rejected(Rejected::Malformed);
                        continue;
                    };
                    if !self.registry.is_online(&recipient) && !self.presence.is_online(&recipient)
                    {
                        self.queue_offline(recipient, message_id);
                    }
                }
                continue;
            }
            let (Ok(conversation), Ok(message_id), Ok(a), Ok(b), Ok(sender)) = (
                Uuid::from_slice(&event.conversation_id),
                Uuid::from_slice(&event.message_id),
                Pubkey::parse(&event.participant_a),
                Pubkey::parse(&event.participant_b),
                Pubkey::parse(&event.sender),
            ) else {
                self.rejected(Rejected::Malformed);
                continue;
            };
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

/// Splits `events` into runs of about `budget` encoded bytes, in order; an
/// event larger than `budget` goes alone.
fn parts(events: Vec<ClusterEvent>, budget: usize) -> Vec<Vec<ClusterEvent>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut size = 0;
    for event in events {
        let len = event.encoded_len();
        if !part.is_empty() && size + len > budget {
            parts.push(std::mem::take(&mut part));
            size = 0;
        }
        size += len;
        part.push(event);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: usize) -> ClusterEvent {
        ClusterEvent {
            envelope: Bytes::from(vec![7; bytes]),
            ..ClusterEvent::default()
        }
    }

    #[test]
    fn parts_keep_the_order_and_the_budget_and_a_large_event_goes_alone() {
        let sizes = [100, 100, 100, 1000, 100, 50, 50];
        let events: Vec<ClusterEvent> = sizes.iter().map(|&n| event(n)).collect();
        let parts = parts(events, 300);
        let got: Vec<Vec<usize>> = parts
            .iter()
            .map(|p| p.iter().map(|e| e.envelope.len()).collect())
            .collect();
        assert_eq!(
            got,
            vec![vec![100, 100], vec![100], vec![1000], vec![100, 50, 50]]
        );
        for part in &parts {
            let size: usize = part.iter().map(|e| e.encoded_len()).sum();
            assert!(part.len() == 1 || size <= 300, "{size} bytes in {part:?}");
        }
        assert!(super::parts(Vec::new(), 300).is_empty());
    }
}
