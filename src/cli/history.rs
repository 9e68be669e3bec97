//! `united-hub history`: one conversation, decrypted, both sides.
//!
//! ```text
//! united-hub history --identity alice.id --with <bob's pubkey> --limit 100
//! ```

use std::path::PathBuf;

use anyhow::Context as _;

use super::{other_side, parse_peer, printable, render, short, sign_in, IdentityFile, DEFAULT_URL};
use crate::client::read_json_in;

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Your identity file.
    #[arg(long)]
    identity: PathBuf,
    /// The other person's pubkey (64 hex characters).
    #[arg(long = "with", value_name = "PUBKEY")]
    peer: String,
    /// The hub.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// How many of the latest messages to print; 0 prints them all.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// Prints the latest `--limit` messages with the peer, oldest first, each
/// verified (or marked) as `listen` shows them.
pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let peer = parse_peer(&args.peer)?;
    let client = sign_in(&args.url, &id, &name).await?;
    // Looked up, not created: reading history has no side effects.
    let conversation = client
        .conversations()
        .await
        .context("listing conversations")?
        .into_iter()
        .find(|c| other_side(&id, c).1 == peer)
        .ok_or_else(|| anyhow::anyhow!("there is no conversation with {peer} yet"))?;
    let (messages, older) = client
        .recent(&conversation.id, args.limit)
        .await
        .context("reading the history")?;
    println!(
        "conversation with {} ({}…): {} message(s){}",
        printable(&other_side(&id, &conversation).0),
        short(&peer),
        messages.len(),
        if older {
            ", older ones not shown (--limit 0 prints all)"
        } else {
            ""
        }
    );
    for m in &messages {
        println!("{}", render("", m, &read_json_in(&id, m, &peer), None));
    }
    Ok(())
}
