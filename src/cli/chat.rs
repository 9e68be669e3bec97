//! `united-hub identity`, `send` and `listen`: the hub from two terminals.
//!
//! ```text
//! united-hub identity new --name Alice --file alice.id
//! united-hub identity new --name Bob --file bob.id
//! united-hub listen --identity bob.id                       # terminal 1
//! united-hub send --identity alice.id --to <bob's pubkey> "hi"   # terminal 2
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::{open_message, open_proto, short, IdentityFile, DEFAULT_URL};
use crate::client::crypto::Identity;
use crate::client::{HubClient, Incoming, WsClient};
use crate::proto::{dm, Payload};

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
    /// The hub.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// The message.
    #[arg(required = true)]
    text: Vec<String>,
}

#[derive(clap::Args)]
pub struct ListenArgs {
    /// Your identity file.
    #[arg(long)]
    identity: PathBuf,
    /// The hub.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
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

/// Logs in (registering on first use) and publishes the identity's X25519 key.
async fn sign_in(url: &str, id: &Identity, name: &str) -> anyhow::Result<HubClient> {
    let mut client = HubClient::new(url);
    client
        .login(id, Some(name))
        .await
        .with_context(|| format!("logging in to {url}"))?;
    client.publish_key(&id.x25519_public()).await?;
    Ok(client)
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let client = sign_in(&args.url, &id, &name).await?;
    let to = args.to.to_ascii_lowercase();
    let recipient_key = client
        .recipient_key(&to)
        .await
        .context("the recipient has not published a key yet (have them run `listen` once)")?;
    let (conversation, _) = client.create_conversation(&to).await?;
    let text = args.text.join(" ");
    let (stored, _) = client
        .send_sealed(&id, &recipient_key, &conversation.id, text.as_bytes())
        .await?;
    println!(
        "sent #{} to {} ({} bytes of ciphertext)",
        stored.server_sequence,
        short(&to),
        text.len() + 16
    );
    Ok(())
}

pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let (id, name) = IdentityFile::load(&args.identity)?;
    let mut client = sign_in(&args.url, &id, &name).await?;
    println!("listening as {name} ({})", id.public_key_hex());
    loop {
        client.refresh_if_needed().await?;
        let token = client.access_token().unwrap_or_default().to_owned();
        let mut ws = WsClient::connect(&client.ws_url(), &token).await?;
        ws.call(Payload::DmConversationListRequest(
            dm::DmConversationListRequest {},
        ))
        .await?;
        for m in client.offline().await? {
            print_message(
                &id,
                "while away",
                &open_message(&id, &m),
                &m.sender_display_name,
                m.server_sequence,
            );
        }
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
                            if m.sender_pubkey == id.public_key_hex() {
                                continue;
                            }
                            print_message(&id, "live", &open_proto(&id, &m), &m.sender_display_name, m.server_sequence);
                        }
                        Some(Payload::DmConversationCreatedEvent(_)) => println!("(a new conversation was opened)"),
                        Some(Payload::DmKeyRotatedEvent(e)) => println!("({} published a new key)", short(&e.user_pubkey)),
                        _ => {}
                    },
                    Some(Incoming::Closed(code)) => {
                        println!("(disconnected: {code:?}; reconnecting)");
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

fn print_message(_me: &Identity, how: &str, text: &anyhow::Result<String>, from: &str, seq: u64) {
    match text {
        Ok(text) => println!("[{how} #{seq}] {from}: {text}"),
        Err(e) => println!("[{how} #{seq}] {from}: (cannot decrypt: {e})"),
    }
}
