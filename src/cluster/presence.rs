//! Who is online on the other nodes of the cluster.
//!
//! Each node announces its users on `united.presence`: `ONLINE`/`OFFLINE`
//! when a user gets a first or loses a last session there, a full
//! `SNAPSHOT` every few seconds (and at once when another node says
//! `HELLO`), a `HEARTBEAT` every second and `BYE` when it stops. A node that
//! has not been heard from for [`NODE_TIMEOUT`] is taken as dead and its
//! users as gone. Snapshots repair lost deltas; the timeout repairs a killed
//! node.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::model::Pubkey;
use crate::proto::cluster::{presence::Kind, Presence};

/// A node silent for this long is dead: its users are offline.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Node {
    users: HashSet<Pubkey>,
    last_heard: Option<Instant>,
    /// A snapshot being received: its id and the users so far.
    incoming: Option<(u64, HashSet<Pubkey>)>,
}

#[derive(Default)]
pub struct RemotePresence {
    nodes: RwLock<HashMap<String, Node>>,
}

/// What the caller should do after a presence message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Nothing,
    /// A node we did not know: send it our snapshot.
    SendSnapshot,
}

impl RemotePresence {
    /// Whether `user` has a live session on another node.
    pub fn is_online(&self, user: &Pubkey) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.values().any(|n| n.users.contains(user))
    }

    /// Nodes currently known alive.
    pub fn node_count(&self) -> usize {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn apply(&self, msg: Presence) -> Reply {
        let kind = Kind::try_from(msg.kind).unwrap_or(Kind::Heartbeat);
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if kind == Kind::Bye {
            nodes.remove(&msg.node);
            return Reply::Nothing;
        }
        let known = nodes.contains_key(&msg.node);
        let node = nodes.entry(msg.node).or_default();
        node.last_heard = Some(Instant::now());
        let users = msg.users.into_iter().filter_map(|u| Pubkey::parse(&u).ok());
        match kind {
            Kind::Online => node.users.extend(users),
            Kind::Offline => {
                for user in users {
                    node.users.remove(&user);
                }
            }
            Kind::Snapshot => {
                let incoming = match node.incoming.take() {
                    Some((id, set)) if id == msg.snapshot => (id, set),
                    _ => (msg.snapshot, HashSet::new()),
                };
                let (id, mut set) = incoming;
                set.extend(users);
                if msg.last {
                    node.users = set;
                } else {
                    node.incoming = Some((id, set));
                }
            }
            Kind::Hello => return Reply::SendSnapshot,
            Kind::Heartbeat | Kind::Bye => {}
        }
        if known {
            Reply::Nothing
        } else {
            Reply::SendSnapshot
        }
    }

    /// Forgets nodes not heard from for [`NODE_TIMEOUT`]; returns their ids.
    pub fn expire(&self) -> Vec<String> {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let dead: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| n.last_heard.is_none_or(|t| t.elapsed() > NODE_TIMEOUT))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            nodes.remove(id);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(node: &str, kind: Kind, users: &[&Pubkey], snapshot: u64, last: bool) -> Presence {
        Presence {
            node: node.into(),
            kind: kind as i32,
            users: users.iter().map(|u| u.to_string()).collect(),
            snapshot,
            last,
        }
    }

    #[test]
    fn deltas_snapshots_and_bye() {
        let p = RemotePresence::default();
        let a = Pubkey::from_db("aa".repeat(32));
        let b = Pubkey::from_db("bb".repeat(32));
        assert_eq!(
            p.apply(msg("n1", Kind::Online, &[&a], 0, false)),
            Reply::SendSnapshot,
            "a new node gets our snapshot"
        );
        assert!(p.is_online(&a));
        assert_eq!(
            p.apply(msg("n1", Kind::Online, &[&b], 0, false)),
            Reply::Nothing
        );
        p.apply(msg("n1", Kind::Offline, &[&a], 0, false));
        assert!(!p.is_online(&a) && p.is_online(&b));
        // A snapshot in two parts replaces the set only when complete.
        p.apply(msg("n1", Kind::Snapshot, &[&a], 7, false));
        assert!(!p.is_online(&a), "not before the last part");
        p.apply(msg("n1", Kind::Snapshot, &[], 7, true));
        assert!(p.is_online(&a) && !p.is_online(&b));
        p.apply(msg("n1", Kind::Bye, &[], 0, false));
        assert!(!p.is_online(&a));
        assert_eq!(p.node_count(), 0);
    }
}
