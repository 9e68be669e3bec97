//! The memory held for answers a client has not read yet, bounded per user
//! and for the whole node (contract §8, "Pages are capped in bytes too").
//!
//! A history or offline page can be 4 MiB ([`MAX_PAGE_BYTES`]). A client
//! that asks for one and never reads would otherwise keep it in the hub's
//! memory for as long as its socket stays open, and a few hundred such
//! sockets ran a node out of memory. So every page request first reserves
//! the most a page can take, from its user's budget and then from the
//! node's; once the answer is encoded the reservation shrinks to the answer's
//! size ([`AnswerPermit::shrink_to`]), and it is given back when the
//! transport has handed the answer's last byte to the socket: the HTTP body
//! ([`crate::http::body::BudgetedBody`]) or the WebSocket's outbound stream.
//!
//! A request that finds no room waits up to [`WAIT`] for earlier answers to
//! drain (a pipelining client that reads is only slowed), then gets 429
//! `rate_limited`. One user can hold at most its own budget; the node's
//! budget caps what many users together can hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::HubError;
use crate::model::Pubkey;

pub use crate::model::MAX_PAGE_BYTES;

/// How long a request waits for room before it gets 429.
pub const WAIT: Duration = Duration::from_secs(5);

/// Counts of the node's budget, for `/metrics`.
#[derive(Clone)]
pub struct BudgetMetrics {
    /// Bytes reserved for answers not yet handed to a socket.
    pub pending_bytes: IntGauge,
    /// Requests that found no room within [`WAIT`] (answered 429).
    pub refused: IntCounter,
}

pub struct AnswerBudget {
    /// `None` when the node-wide cap is off.
    node: Option<Arc<Semaphore>>,
    /// Bytes one user may hold; 0 turns the per-user cap off.
    per_user: usize,
    /// The users holding or waiting for part of their budget. An entry is
    /// removed when its last permit is dropped.
    users: Arc<Mutex<HashMap<Pubkey, Arc<Semaphore>>>>,
    wait: Duration,
    metrics: Option<BudgetMetrics>,
}

impl AnswerBudget {
    /// A budget of `per_user` bytes for each user and `per_node` for all of
    /// them together; 0 turns either cap off.
    pub fn new(per_user: usize, per_node: usize, metrics: Option<BudgetMetrics>) -> Self {
        AnswerBudget {
            node: (per_node > 0).then(|| Arc::new(Semaphore::new(per_node))),
            per_user,
            users: Arc::default(),
            wait: WAIT,
            metrics,
        }
    }

    /// The same with another wait before 429 (for tests).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Reserves [`MAX_PAGE_BYTES`] for one page `user` is about to read;
    /// waits for room, then gives up with 429.
    pub async fn reserve_page(&self, user: &Pubkey) -> Result<AnswerPermit, HubError> {
        let bytes = MAX_PAGE_BYTES;
        let user_semaphore = (self.per_user > 0).then(|| {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users
                .entry(user.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
                .clone()
        });
        // The user's slot is made before waiting, so a wait that times out
        // still cleans its entry up when `UserSlot` drops.
        let mut permit = AnswerPermit {
            user: user_semaphore.map(|semaphore| UserSlot {
                user: user.clone(),
                users: self.users.clone(),
                semaphore,
                permit: None,
            }),
            node: None,
            metrics: self.metrics.clone(),
            bytes: 0,
        };
        let acquire = async {
            if let Some(slot) = permit.user.as_mut() {
                slot.permit = Some(acquire(&slot.semaphore, bytes).await?);
            }
            if let Some(node) = &self.node {
                permit.node = Some(acquire(node, bytes).await?);
            }
            Some(())
        };
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Some(())) => {
                permit.bytes = bytes;
                if let Some(m) = &self.metrics {
                    m.pending_bytes.add(bytes as i64);
                }
                Ok(permit)
            }
            _ => {
                if let Some(m) = &self.metrics {
                    m.refused.inc();
                }
                Err(HubError::RateLimited { retry_after: 1 })
            }
        }
    }

    /// Users with an entry in the per-user map (for tests: entries must not
    /// outlive their permits).
    pub fn users_held(&self) -> usize {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

async fn acquire(semaphore: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(bytes).ok()?;
    semaphore.clone().acquire_many_owned(n).await.ok()
}

/// One user's share of a reservation; the user's map entry goes when the
/// last share of it does.
struct UserSlot {
    user: Pubkey,
    users: Arc<Mutex<HashMap<Pubkey, Arc<Semaphore>>>>,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this slot's: nobody else holds or waits.
        if Arc::strong_count(&self.semaphore) == 2 {
            users.remove(&self.user);
        }
    }
}

/// Bytes reserved for one answer; given back when dropped.
pub struct AnswerPermit {
    user: Option<UserSlot>,
    node: Option<OwnedSemaphorePermit>,
    metrics: Option<BudgetMetrics>,
    bytes: usize,
}

impl AnswerPermit {
    /// Keeps `bytes` of the reservation (the encoded answer's size) and
    /// gives the rest back at once.
    pub fn shrink_to(&mut self, bytes: usize) {
        let bytes = bytes.max(1);
        if bytes >= self.bytes {
            return;
        }
        let give_back = self.bytes - bytes;
        if let Some(slot) = self.user.as_mut() {
            if let Some(p) = slot.permit.as_mut() {
                drop(p.split(give_back));
            }
        }
        if let Some(p) = self.node.as_mut() {
            drop(p.split(give_back));
        }
        if let Some(m) = &self.metrics {
            m.pending_bytes.sub(give_back as i64);
        }
        self.bytes = bytes;
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for AnswerPermit {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.pending_bytes.sub(self.bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> Pubkey {
        Pubkey::parse(&hex::encode([n; 32])).unwrap()
    }

    #[actix_web::test]
    async fn one_user_holds_at_most_its_budget_and_others_are_unaffected() {
        let budget = AnswerBudget::new(2 * MAX_PAGE_BYTES, 3 * MAX_PAGE_BYTES, None)
            .with_wait(Duration::from_millis(50));
        let a1 = budget.reserve_page(&user(1)).await.unwrap();
        let _a2 = budget.reserve_page(&user(1)).await.unwrap();
        assert!(matches!(
            budget.reserve_page(&user(1)).await,
            Err(HubError::RateLimited { retry_after: 1 })
        ));
        // The node has room for one more page: another user gets it.
        let b1 = budget.reserve_page(&user(2)).await.unwrap();
        // The node is full now, so a third user waits and gives up.
        assert!(budget.reserve_page(&user(3)).await.is_err());
        drop(b1);
        let _c1 = budget.reserve_page(&user(3)).await.unwrap();
        // Giving a page back lets the same user in again.
        drop(a1);
        assert!(budget.reserve_page(&user(1)).await.is_ok());
    }

    #[actix_web::test]
    async fn a_shrunk_permit_gives_the_rest_back_and_entries_go_with_their_permits() {
        let budget =
            AnswerBudget::new(MAX_PAGE_BYTES, 0, None).with_wait(Duration::from_millis(50));
        let mut small = budget.reserve_page(&user(1)).await.unwrap();
        small.shrink_to(1000);
        assert_eq!(small.bytes(), 1000);
        // A full page no longer fits beside the 1000 bytes.
        assert!(budget.reserve_page(&user(1)).await.is_err());
        drop(small);
        let page = budget.reserve_page(&user(1)).await.unwrap();
        assert_eq!(budget.users_held(), 1);
        drop(page);
        assert_eq!(budget.users_held(), 0, "no entry outlives its permits");
    }

    #[actix_web::test]
    async fn a_waiting_request_gets_in_when_an_answer_drains() {
        let budget =
            Arc::new(AnswerBudget::new(MAX_PAGE_BYTES, 0, None).with_wait(Duration::from_secs(10)));
        let first = budget.reserve_page(&user(1)).await.unwrap();
        let waiting = {
            let budget = budget.clone();
            actix_web::rt::spawn(async move { budget.reserve_page(&user(1)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        assert!(waiting.await.unwrap());
    }
}
