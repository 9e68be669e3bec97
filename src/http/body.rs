//! [`BudgetedBody`]: a response body that holds its share of the answer
//! budget ([`crate::answers`]) until the connection has taken all of it.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use bytes::Bytes;

use crate::answers::AnswerPermit;

/// The most one poll hands the connection. actix-web asks for the next
/// chunk only once its write buffer has drained below its limit, so an
/// unread answer stays here, counted, rather than in a buffer nobody counts.
const CHUNK: usize = 64 * 1024;

pub struct BudgetedBody {
    rest: Bytes,
    size: u64,
    /// Given back when the last chunk has been taken (or the connection
    /// dropped the body).
    permit: Option<AnswerPermit>,
}

impl BudgetedBody {
    /// `body`, holding `permit` shrunk to its size.
    pub fn new(body: Bytes, mut permit: AnswerPermit) -> Self {
        permit.shrink_to(body.len());
        BudgetedBody {
            size: body.len() as u64,
            rest: body,
            permit: Some(permit),
        }
    }
}

impl MessageBody for BudgetedBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.size)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            // Asked again after the last chunk: the connection's buffer
            // has room, so nearly all of the answer has left.
            this.permit = None;
            return Poll::Ready(None);
        }
        let n = CHUNK.min(this.rest.len());
        Poll::Ready(Some(Ok(this.rest.split_to(n))))
    }
}
