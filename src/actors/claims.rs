//! `IdClaims`: client-chosen message ids in flight on this node.
//!
//! A message id is unique across the hub. Claiming it before a sequence is
//! assigned makes the same id sent twice at once a clean 409 (or a wait for
//! the first copy) instead of a second insert. Across nodes the database's
//! primary key and the commit's duplicate check take over.

use std::collections::HashSet;
use std::sync::Mutex;

use uuid::Uuid;

#[derive(Default)]
pub struct IdClaims {
    ids: Mutex<HashSet<Uuid>>,
}

impl IdClaims {
    /// `false` if the id is already claimed.
    pub fn claim(&self, id: Uuid) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    pub fn release(&self, id: &Uuid) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}
