//! Reconnecting without missing anything.
//!
//! A client that was away connects its socket first (so new pushes are not
//! missed), then asks for its offline queue, then pages each conversation's
//! history `after` the last sequence it saw. Pushes that arrive meanwhile may
//! repeat what catch-up returns: deduplicate by message id.

use std::collections::{HashMap, HashSet};

use super::{ClientError, HubClient, WsClient};
use crate::json::MessageJson;
use crate::model::MAX_HISTORY_LIMIT;
use crate::proto::{dm, Payload};

/// Everything the client has not seen, once each, ordered by conversation and
/// sequence. `last_seen` maps conversation id → highest sequence seen (absent:
/// nothing seen); it is updated.
///
/// The offline queue is fetched first, which marks it delivered; history
/// `after` the last seen sequence then covers every conversation completely,
/// the offline entries included.
pub async fn catch_up(
    client: &HubClient,
    last_seen: &mut HashMap<String, u64>,
) -> Result<Vec<MessageJson>, ClientError> {
    let queued = client.offline().await?;
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for conversation in client.conversations().await? {
        let mut after = last_seen.get(&conversation.id).copied().unwrap_or(0);
        loop {
            let page = client
                .history(
                    &conversation.id,
                    &format!("after={after}&limit={MAX_HISTORY_LIMIT}"),
                )
                .await?;
            for m in page.messages {
                after = after.max(m.server_sequence);
                ids.insert(m.id.clone());
                out.push(m);
            }
            if !page.has_more {
                break;
            }
        }
        if after > 0 {
            last_seen.insert(conversation.id.clone(), after);
        }
    }
    // Anything queued that history did not return (it cannot happen while the
    // queue only holds messages of the caller's conversations) is kept too.
    out.extend(queued.into_iter().filter(|m| !ids.contains(&m.id)));
    Ok(out)
}

/// Opens a socket, waits until the hub has registered it (one answered
/// request), then catches up. Returns the live socket and what was missed.
pub async fn reconnect(
    client: &mut HubClient,
    last_seen: &mut HashMap<String, u64>,
) -> Result<(WsClient, Vec<MessageJson>), ClientError> {
    client.refresh_if_needed().await?;
    let token = client
        .access_token()
        .ok_or_else(|| ClientError::Transport("not logged in".into()))?
        .to_owned();
    let ws = WsClient::connect(&client.ws_url(), &token).await?;
    ws.call(Payload::DmConversationListRequest(
        dm::DmConversationListRequest {},
    ))
    .await?;
    let missed = catch_up(client, last_seen).await?;
    Ok((ws, missed))
}
