//! `IdClaims`: client-chosen message ids in flight on this node.
//!
//! A message id is unique across the hub. Claiming it before a sequence is
//! assigned makes the same id sent twice at once a clean 409 (or a wait for
//! the first copy) instead of a second insert. Across nodes the database's
//! primary key and the commit's duplicate check take over.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Default)]
pub struct IdClaims {
    ids: Mutex<HashSet<Uuid>>,
}

/// A claimed id, released when dropped: on every path, a panic included.
pub struct Claim {
    claims: Arc<IdClaims>,
    id: Uuid,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.release(&self.id);
    }
}

impl IdClaims {
    /// Claims `id` until the returned guard is dropped; `None` if it is
    /// already claimed.
    pub fn claim_guard(self: &Arc<Self>, id: Uuid) -> Option<Claim> {
        self.claim(id).then(|| Claim {
            claims: self.clone(),
            id,
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_released_when_its_guard_drops() {
        let claims = Arc::new(IdClaims::default());
        let id = Uuid::new_v4();
        let guard = claims.claim_guard(id).expect("free");
        assert!(claims.claim_guard(id).is_none(), "taken");
        drop(guard);
        assert!(claims.claim_guard(id).is_some(), "free again");
    }
}
