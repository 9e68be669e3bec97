//! Reconnecting without missing anything.
//!
//! A client that was away connects its socket first (so new pushes are not
//! missed), then asks for its offline queue, then pages each conversation's
//! history `after` the last sequence it saw. Pushes that arrive meanwhile may
//! repeat what catch-up returns: deduplicate by message id.

use std::collections::{HashMap, HashSet};

use super::{ClientError, HubClient, WsClient};
use crate::json::MessageJson;
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
        let after = last_seen.get(&conversation.id).copied().unwrap_or(0);
        let page = client.history_after(&conversation.id, after).await?;
        if let Some(last) = page.last() {
            last_seen.insert(conversation.id.clone(), last.server_sequence);
        }
        for m in page {
            ids.insert(m.id.clone());
            out.push(m);
        }
    }
    // Queued messages that history did not return (at or below a sequence
    // the caller marked seen without having shown it) come last.
    out.extend(queued.into_iter().filter(|m| !ids.contains(&m.id)));
    Ok(out)
}

/// Opens a socket and waits until the hub has registered it (one answered
/// request), so that it gets every push from then on.
pub async fn connect_live(client: &mut HubClient) -> Result<WsClient, ClientError> {
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
    Ok(ws)
}

/// [`connect_live`], then [`catch_up`]. Returns the live socket and what was
/// missed.
pub async fn reconnect(
    client: &mut HubClient,
    last_seen: &mut HashMap<String, u64>,
) -> Result<(WsClient, Vec<MessageJson>), ClientError> {
    let ws = connect_live(client).await?;
    let missed = catch_up(client, last_seen).await?;
    Ok((ws, missed))
}
