//! Per-conversation delivery in sequence order, on one node.
//!
//! In a cluster, a conversation's messages reach a node from several places:
//! its own commits, every other node's NATS publications (which may arrive
//! in any order relative to each other, or not at all), and repairs read
//! from the database. `Feeds` keeps, per conversation with a participant
//! online here, the last sequence handed to this node's sessions, holds
//! anything that arrives early, and says what may be delivered now. So each
//! session sees a conversation's events once, in rising `server_sequence`
//! order, whoever committed them.
//!
//! The starting point (baseline) of a conversation is its last committed
//! sequence when the node began to watch one of its participants (the
//! participant's first session here), read *after* the node started to
//! watch them (it hears the bus from its start): everything committed later
//! is either published to this node or found by the repair poll. A
//! conversation that is not in that read was created later, so its baseline
//! is 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use crate::model::Pubkey;

/// One committed message on its way to this node's sessions.
#[derive(Clone, Debug)]
pub struct Event {
    pub conversation: Uuid,
    pub seq: u64,
    pub participant_a: Pubkey,
    pub participant_b: Pubkey,
    pub sender: Pubkey,
    pub message_id: Uuid,
    /// The recipient's offline entry was written with the message.
    pub offline_queued: bool,
    /// Committed by this node (it answered the sender).
    pub local: bool,
    /// Read back from the database by a repair.
    pub repaired: bool,
    /// The encoded `DmMessageEvent` envelope.
    pub envelope: Bytes,
}

impl Event {
    pub fn recipient(&self) -> &Pubkey {
        if self.sender == self.participant_a {
            &self.participant_b
        } else {
            &self.participant_a
        }
    }
}

struct Cursor {
    /// Last sequence delivered here; `None` until the baseline is known.
    delivered: Option<u64>,
    /// Arrived early: waits for the sequences before it.
    pending: BTreeMap<u64, Event>,
    a: Pubkey,
    b: Pubkey,
    /// Known to be behind the database: (the stored last sequence, since when).
    behind: Option<(u64, Instant)>,
}

/// A range to read from the database: sequences after `after`, up to `until`.
#[derive(Debug, PartialEq, Eq)]
pub struct Repair {
    pub conversation: Uuid,
    pub after: u64,
    pub until: u64,
    pub participant_a: Pubkey,
    pub participant_b: Pubkey,
}

/// Every operation costs what the user or the event concerns, never what the
/// node follows as a whole: the feeds' lock is held for each event
/// delivered, so a reconnect storm of thousands of sessions must not make
/// each upgrade walk every conversation (it did: 23% of the nodes' CPU
/// while 8,000 sessions connected to a 2-node cluster, issue 26).
#[derive(Default)]
pub struct Feeds {
    cursors: HashMap<Uuid, Cursor>,
    /// Watched users: `false` while their baselines load.
    users: HashMap<Pubkey, bool>,
    /// For each user, exactly the cursors that name them (as `a` or `b`):
    /// what `unwatch` may forget.
    by_user: HashMap<Pubkey, HashSet<Uuid>>,
    /// Cursors whose baseline is not known yet (`delivered` is `None`):
    /// what `loaded` may settle at 0.
    unsettled: HashSet<Uuid>,
}

impl Feeds {
    /// Starts watching `user` (its baselines are loading).
    pub fn watch(&mut self, user: &Pubkey) {
        self.users.insert(user.clone(), false);
    }

    /// Stops watching `user`; forgets conversations nobody here watches.
    /// Every cursor names a watched user, so only `user`'s can be orphaned.
    pub fn unwatch(&mut self, user: &Pubkey) {
        self.users.remove(user);
        let mine: Vec<Uuid> = self
            .by_user
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for id in mine {
            let Some(cursor) = self.cursors.get(&id) else {
                continue;
            };
            if self.users.contains_key(&cursor.a) || self.users.contains_key(&cursor.b) {
                continue;
            }
            if let Some(cursor) = self.cursors.remove(&id) {
                self.unindex(&cursor.a, &id);
                self.unindex(&cursor.b, &id);
            }
            self.unsettled.remove(&id);
        }
    }

    /// Whether `user` (a `Pubkey`, or its text) is watched here.
    pub fn is_watched<Q>(&self, user: &Q) -> bool
    where
        Pubkey: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.users.contains_key(user)
    }

    /// `user`'s baselines: every conversation of theirs with its last
    /// committed sequence. Returns what can be delivered now, in order.
    pub fn loaded(&mut self, user: &Pubkey, baselines: &[(Uuid, u64)]) -> Vec<Event> {
        self.users.insert(user.clone(), true);
        let mut ready = Vec::new();
        let mut seen = HashSet::new();
        for (id, last) in baselines {
            seen.insert(*id);
            match self.cursors.get_mut(id) {
                Some(cursor) => {
                    if cursor.delivered.is_none() {
                        cursor.delivered = Some(*last);
                        self.unsettled.remove(id);
                        drain(cursor, &mut ready);
                    }
                }
                None => {
                    // The pair is not known here yet; the first event fills
                    // it in (see `offer`).
                    self.cursors.insert(
                        *id,
                        Cursor {
                            delivered: Some(*last),
                            pending: BTreeMap::new(),
                            a: user.clone(),
                            b: user.clone(),
                            behind: None,
                        },
                    );
                    self.by_user.entry(user.clone()).or_default().insert(*id);
                }
            }
        }
        // Conversations that were waiting for this user's baselines and are
        // not among them were created after the read: they start at 0.
        let users = &self.users;
        self.unsettled.retain(|id| {
            let Some(cursor) = self.cursors.get_mut(id) else {
                return false;
            };
            let mine = &cursor.a == user || &cursor.b == user;
            let other = if &cursor.a == user {
                &cursor.b
            } else {
                &cursor.a
            };
            let other_loading = users.get(other) == Some(&false);
            if mine && !seen.contains(id) && !other_loading {
                cursor.delivered = Some(0);
                drain(cursor, &mut ready);
                return false;
            }
            true
        });
        ready
    }

    fn unindex(&mut self, user: &Pubkey, id: &Uuid) {
        if let Some(ids) = self.by_user.get_mut(user) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Takes one event; returns what can be delivered now, in order.
    pub fn offer(&mut self, event: Event) -> Vec<Event> {
        let mut ready = Vec::new();
        let cursor = match self.cursors.get_mut(&event.conversation) {
            Some(cursor) => cursor,
            None => {
                let a = self.users.get(&event.participant_a).copied();
                let b = self.users.get(&event.participant_b).copied();
                if a.is_none() && b.is_none() {
                    // Nobody here watches this conversation.
                    return ready;
                }
                // Not among the baselines of a loaded participant: the
                // conversation was created after they were read.
                let loading = a == Some(false) || b == Some(false);
                let baseline = if loading {
                    self.unsettled.insert(event.conversation);
                    None
                } else {
                    Some(0)
                };
                for user in [&event.participant_a, &event.participant_b] {
                    (self.by_user.entry(user.clone()).or_default()).insert(event.conversation);
                }
                self.cursors.entry(event.conversation).or_insert(Cursor {
                    delivered: baseline,
                    pending: BTreeMap::new(),
                    a: event.participant_a.clone(),
                    b: event.participant_b.clone(),
                    behind: None,
                })
            }
        };
        // A cursor made from baselines learns the pair from its first event.
        if cursor.a != event.participant_a || cursor.b != event.participant_b {
            cursor.a = event.participant_a.clone();
            cursor.b = event.participant_b.clone();
            for user in [&event.participant_a, &event.participant_b] {
                (self.by_user.entry(user.clone()).or_default()).insert(event.conversation);
            }
        }
        if cursor.delivered.is_some_and(|d| event.seq <= d) {
            return ready;
        }
        cursor.pending.entry(event.seq).or_insert(event);
        if cursor.delivered.is_some() {
            drain(cursor, &mut ready);
        }
        ready
    }

    /// Conversations whose stored last sequence should be compared.
    pub fn tracked(&self) -> Vec<Uuid> {
        self.cursors
            .iter()
            .filter(|(_, c)| c.delivered.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The database says `conversation` has committed up to `last`.
    pub fn observe(&mut self, conversation: &Uuid, last: u64) {
        let Some(cursor) = self.cursors.get_mut(conversation) else {
            return;
        };
        if cursor.delivered.is_some_and(|d| d < last) {
            let since = cursor.behind.map_or_else(Instant::now, |(_, t)| t);
            cursor.behind = Some((last.max(cursor.behind.map_or(0, |(l, _)| l)), since));
        }
    }

    /// Ranges that have been missing for at least `grace`: what NATS lost.
    pub fn repairs_due(&self, grace: Duration) -> Vec<Repair> {
        self.cursors
            .iter()
            .filter_map(|(id, c)| {
                let delivered = c.delivered?;
                let first_pending = c.pending.keys().next().copied();
                let gap_target = first_pending.map(|p| p - 1);
                let behind_target = c
                    .behind
                    .filter(|(_, since)| since.elapsed() >= grace)
                    .map(|(last, _)| last);
                // A gap before a held event counts once it is old enough too.
                let held_long = first_pending.is_some()
                    && c.behind.is_some_and(|(_, since)| since.elapsed() >= grace);
                let until = match (behind_target, gap_target) {
                    (Some(b), _) => b,
                    (None, Some(g)) if held_long => g,
                    _ => return None,
                };
                (until > delivered).then(|| Repair {
                    conversation: *id,
                    after: delivered,
                    until,
                    participant_a: c.a.clone(),
                    participant_b: c.b.clone(),
                })
            })
            .collect()
    }

    /// Marks conversations with events held behind a gap as behind, so that
    /// a gap that NATS never fills is repaired after the grace period.
    pub fn note_gaps(&mut self) {
        for cursor in self.cursors.values_mut() {
            if let (Some(d), Some(&first)) = (cursor.delivered, cursor.pending.keys().next()) {
                if first > d + 1 && cursor.behind.is_none() {
                    cursor.behind = Some((first - 1, Instant::now()));
                }
            }
        }
    }
}

/// Moves the contiguous run after `delivered` out of `pending`.
fn drain(cursor: &mut Cursor, ready: &mut Vec<Event>) {
    let Some(mut delivered) = cursor.delivered else {
        return;
    };
    // Anything at or below the baseline is old.
    while let Some(entry) = cursor.pending.first_entry() {
        if *entry.key() <= delivered {
            entry.remove();
        } else {
            break;
        }
    }
    while let Some(event) = cursor.pending.remove(&(delivered + 1)) {
        delivered += 1;
        ready.push(event);
    }
    cursor.delivered = Some(delivered);
    if cursor.behind.is_some_and(|(last, _)| delivered >= last) {
        cursor.behind = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (Pubkey, Pubkey) {
        (
            Pubkey::from_db("aa".repeat(32)),
            Pubkey::from_db("bb".repeat(32)),
        )
    }

    fn event(conversation: Uuid, seq: u64) -> Event {
        let (a, b) = users();
        Event {
            conversation,
            seq,
            participant_a: a.clone(),
            participant_b: b,
            sender: a,
            message_id: Uuid::new_v4(),
            offline_queued: false,
            local: false,
            repaired: false,
            envelope: Bytes::new(),
        }
    }

    fn seqs(ready: Vec<Event>) -> Vec<u64> {
        ready.into_iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_handed_out_in_order_once() {
        let (a, _) = users();
        let c = Uuid::new_v4();
        let mut feeds = Feeds::default();
        feeds.watch(&a);
        assert!(feeds.loaded(&a, &[(c, 4)]).is_empty());
        assert_eq!(seqs(feeds.offer(event(c, 4))), Vec::<u64>::new(), "old");
        assert_eq!(seqs(feeds.offer(event(c, 6))), Vec::<u64>::new(), "held");
        assert_eq!(seqs(feeds.offer(event(c, 7))), Vec::<u64>::new(), "held");
        assert_eq!(seqs(feeds.offer(event(c, 5))), vec![5, 6, 7]);
        assert_eq!(seqs(feeds.offer(event(c, 6))), Vec::<u64>::new(), "repeat");
        assert_eq!(seqs(feeds.offer(event(c, 8))), vec![8]);
    }

    #[test]
    fn events_wait_for_the_baseline_and_new_conversations_start_at_zero() {
        let (a, _) = users();
        let old = Uuid::new_v4();
        let new = Uuid::new_v4();
        let mut feeds = Feeds::default();
        feeds.watch(&a);
        // Both arrive while the baselines load.
        assert!(feeds.offer(event(old, 3)).is_empty());
        assert!(feeds.offer(event(new, 1)).is_empty());
        // `old` was at 2 when read; `new` did not exist yet.
        let ready = seqs(feeds.loaded(&a, &[(old, 2)]));
        assert_eq!(ready.len(), 2);
        assert!(ready.contains(&3) && ready.contains(&1));
        // A conversation first seen after loading starts at 0 too.
        let later = Uuid::new_v4();
        assert_eq!(seqs(feeds.offer(event(later, 2))), Vec::<u64>::new());
        assert_eq!(seqs(feeds.offer(event(later, 1))), vec![1, 2]);
    }

    #[test]
    fn gaps_and_lag_become_repairs_after_the_grace() {
        let (a, _) = users();
        let c = Uuid::new_v4();
        let d = Uuid::new_v4();
        let mut feeds = Feeds::default();
        feeds.watch(&a);
        feeds.loaded(&a, &[(c, 0), (d, 10)]);
        feeds.offer(event(c, 1));
        feeds.offer(event(c, 4));
        feeds.note_gaps();
        feeds.observe(&d, 12);
        let mut due = feeds.repairs_due(Duration::ZERO);
        due.sort_by_key(|r| r.after);
        assert_eq!(
            due.iter()
                .map(|r| (r.conversation, r.after, r.until))
                .collect::<Vec<_>>(),
            vec![(c, 1, 3), (d, 10, 12)]
        );
        assert!(
            feeds.repairs_due(Duration::from_secs(60)).is_empty(),
            "not before the grace period"
        );
        // Once delivered, nothing is due.
        feeds.offer(event(c, 2));
        feeds.offer(event(c, 3));
        feeds.offer(event(d, 11));
        feeds.offer(event(d, 12));
        assert!(feeds.repairs_due(Duration::ZERO).is_empty());
    }

    #[test]
    fn unwatching_forgets_conversations_nobody_here_follows() {
        let (a, _) = users();
        let c = Uuid::new_v4();
        let mut feeds = Feeds::default();
        feeds.watch(&a);
        feeds.loaded(&a, &[(c, 0)]);
        feeds.offer(event(c, 1));
        assert_eq!(feeds.tracked(), vec![c]);
        feeds.unwatch(&a);
        assert!(feeds.tracked().is_empty());
        assert!(feeds.offer(event(c, 2)).is_empty(), "not followed here");
    }

    /// Both participants here, leaving and coming back in turns: the
    /// conversation is followed while either is watched, and forgotten when
    /// the last one leaves, whatever the order.
    #[test]
    fn a_conversation_is_forgotten_only_when_both_participants_left() {
        let (a, b) = users();
        let c = Uuid::new_v4();
        let mut feeds = Feeds::default();
        for user in [&a, &b] {
            feeds.watch(user);
            feeds.loaded(user, &[(c, 0)]);
        }
        assert_eq!(seqs(feeds.offer(event(c, 1))), vec![1]);
        feeds.unwatch(&a);
        assert_eq!(feeds.tracked(), vec![c], "b still follows it");
        feeds.watch(&a);
        feeds.loaded(&a, &[(c, 1)]);
        feeds.unwatch(&b);
        assert_eq!(seqs(feeds.offer(event(c, 2))), vec![2], "a follows it");
        feeds.unwatch(&a);
        assert!(feeds.tracked().is_empty());
        assert!(feeds.offer(event(c, 3)).is_empty(), "not followed here");
        assert!(feeds.by_user.is_empty() && feeds.unsettled.is_empty());
    }

    /// An event for a conversation of a user whose baselines load waits; a
    /// second user's baselines do not settle it, its own user's do.
    #[test]
    fn only_a_participants_baselines_settle_a_waiting_conversation() {
        let (a, _) = users();
        let other = Pubkey::from_db("cc".repeat(32));
        let c = Uuid::new_v4();
        let mut feeds = Feeds::default();
        feeds.watch(&a);
        feeds.watch(&other);
        assert!(feeds.offer(event(c, 1)).is_empty(), "a is loading");
        assert!(feeds.loaded(&other, &[]).is_empty(), "not other's");
        assert_eq!(seqs(feeds.loaded(&a, &[])), vec![1], "new: starts at 0");
        assert!(feeds.unsettled.is_empty());
    }
}
