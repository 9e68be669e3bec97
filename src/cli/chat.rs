//! `united-hub identity`, `send` and `listen`: the hub from two terminals.
//!
//! ```text
//! united-hub identity new --name Alice --file alice.id
//! united-hub identity new --name Bob --file bob.id
//! united-hub listen --identity bob.id                       # terminal 1
//! united-hub send --identity alice.id --to <bob's pubkey> "hi"   # terminal 2
//! ```
//!
//! `united-hub chat` (in `interactive.rs`) does both in one terminal, for one
//! conversation; `united-hub history` prints one conversation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{
    key_rotation_note, other_side, parse_peer, render, send_text, short, IdentityFile, Nodes,
    DEFAULT_URL,
};
use crate::client::crypto::Identity;
use crate::client::{read_json, read_json_in, reconnect, ClientError, HubClient, Incoming};
use crate::json::MessageJson;
use crate::proto::Payload;

#[derive(clap::Subcommand)]
pub enum IdentityCommand {
    /// Create a new identity file (Ed25519 seed, mode 0600).
    New {
        /// Your display name.
        #[arg(long)]
        name: String,
        /// Where to write it.
        #[arg(long)]
        file: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print an identity's public keys.
    Show {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct SendArgs {
    /// Your identity file.
    #[arg(long)]
    identity: PathBuf,
    /// The recipient's pubkey (64 hex characters).
    #[arg(long)]
    to: String,
    /// The hub: one URL, or several nodes of a cluster, comma-separated
    /// (the first that answers is used).
    #[arg(long, default_value = DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
    /// The message.
    #[arg(required = true)]
    text: Vec<String>,
}

#[derive(clap::Args)]
pub struct ListenArgs {
    /// Your identity file.
    #[arg(long)]
    identity: PathBuf,
    /// The hub: one URL, or several nodes of a cluster, comma-separated;
    /// after a lost connection the next one is tried.
    #[arg(long, default_value = DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
}

pub fn identity(cmd: IdentityCommand) -> anyhow::Result<()> {
    match cmd {
        IdentityCommand::New { name, file, force } => {
            crate::model::parse_display_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let id = Identity::generate();
            IdentityFile::create(&file, &id, name.trim(), force)?;
            println!("created {} (mode 0600)", file.display());
            println!("pubkey: {}", id.public_key_hex());
        }
        IdentityCommand::Show { file } => {
            let (id, name) = IdentityFile::load(&file)?;
            println!("name:   {name}");
            println!("pubkey: {}", id.public_key_hex());
            println!("x25519: {}", hex::encode(id.x25519_public()));
        }
    }
    Ok(())
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let to = parse_peer(&args.to)?;
    let client = Nodes::new(&args.url)?.sign_in(&id, &name).await?;
    let text = args.text.join(" ");
    let stored = send_text(&client, &id, &to, &text).await?;
    let ciphertext_len = B64
        .decode(&stored.encrypted_payload)
        .map_or(0, |bytes| bytes.len());
    println!(
        "sent #{} to {} ({ciphertext_len} bytes of ciphertext)",
        stored.server_sequence,
        short(&to),
    );
    Ok(())
}

/// Prints what arrives in every conversation, both sides (our own messages
/// from other devices too), from the moment it starts: what came while away
/// (the offline queue) first, then live pushes. After a disconnect it catches
/// up `after` the last sequence it showed of each conversation.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let mut nodes = Nodes::new(&args.url)?;
    let mut client = nodes.sign_in(&id, &name).await?;
    let mut last_seen = newest_sequences(&client).await?;
    // From here on, every message is shown: live or caught up.
    println!("listening as {name} ({})", id.public_key_hex());
    let mut how = "while away";
    let mut said_unreachable = false;
    loop {
        let (mut ws, missed) = match reconnect(&mut client, &mut last_seen).await {
            Ok(connected) => connected,
            // Unreachable, or a node on its way down (503): another node,
            // or the same one again a moment later.
            Err(e) if matches!(e, ClientError::Transport(_)) || e.status() == Some(503) => {
                if !std::mem::replace(&mut said_unreachable, true) {
                    println!("(cannot reach {}: {e}; retrying)", nodes.current());
                }
                // The next node at once; the same one, or the first again
                // after a round, a moment later (not a busy loop when every
                // node is down).
                let moved = nodes.next(&mut client);
                let wait = if moved && !nodes.round_done() {
                    50
                } else {
                    1000
                };
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            Err(e) => return Err(e).context("connecting"),
        };
        said_unreachable = false;
        let mut peers = peer_names(&client, &id).await?;
        for m in &missed {
            show(&id, how, m, &peers);
        }
        how = "caught up";
        loop {
            // Near its expiry the token is refreshed and handed to the open
            // session in band, so the hub does not close it (4001).
            if client.refresh_if_needed().await? {
                let token = client.access_token().unwrap_or_default().to_owned();
                ws.authenticate(&token).await?;
            }
            tokio::select! {
                event = ws.next(Duration::from_secs(30)) => match event {
                    Some(Incoming::Envelope(envelope)) => match envelope.payload {
                        Some(Payload::DmMessageEvent(e)) => {
                            let Some(m) = e.message else { continue };
                            let m = MessageJson::from_proto(&m);
                            // Catch-up may already have shown it.
                            let seen = last_seen.entry(m.conversation_id.clone()).or_default();
                            if m.server_sequence > *seen {
                                *seen = m.server_sequence;
                                show(&id, "live", &m, &peers);
                            }
                        }
                        Some(Payload::DmConversationCreatedEvent(_)) => {
                            println!("(a new conversation was opened)");
                            peers = peer_names(&client, &id).await?;
                        }
                        Some(Payload::DmKeyRotatedEvent(e)) => {
                            let (Ok(line) | Err(line)) = key_rotation_note(&id, &e);
                            println!("{line}");
                        }
                        _ => {}
                    },
                    Some(Incoming::Closed(code)) => {
                        let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                        // A node that closed us is likely going away: the
                        // next one, if there is one.
                        nodes.next(&mut client);
                        println!("(disconnected{code}; reconnecting to {})", nodes.current());
                        break;
                    }
                    // Quiet for 30 s: the loop checks the token.
                    None => {}
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The newest sequence of each conversation: `listen` starts there, leaving
/// older messages to `history` (the offline queue still brings those that
/// came while away).
async fn newest_sequences(client: &HubClient) -> anyhow::Result<HashMap<String, u64>> {
    let mut newest = HashMap::new();
    for conversation in client.conversations().await? {
        let (latest, _) = client.recent(&conversation.id, 1).await?;
        if let Some(m) = latest.last() {
            newest.insert(conversation.id, m.server_sequence);
        }
    }
    Ok(newest)
}

/// The other side (display name and public key) of each of our conversations.
async fn peer_names(
    client: &HubClient,
    me: &Identity,
) -> anyhow::Result<HashMap<String, (String, String)>> {
    Ok(client
        .conversations()
        .await?
        .iter()
        .map(|c| (c.id.clone(), other_side(me, c)))
        .collect())
}

/// Prints a message; in a conversation we know, only one sealed by us or
/// its peer verifies ([`read_json_in`]).
fn show(me: &Identity, how: &str, m: &MessageJson, peers: &HashMap<String, (String, String)>) {
    let (reading, peer) = match peers.get(&m.conversation_id) {
        Some((name, key)) => (read_json_in(me, m, key), Some(name.as_str())),
        None => (read_json(me, m), None),
    };
    println!("{}", render(how, m, &reading, peer));
}
