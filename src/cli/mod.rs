//! The `united-hub` subcommands other than the server itself: the demo and
//! the commands for people (`identity`, `send`, `listen`, `history`, `chat`).
//! They seal only to keys that pass the key check, and never print the bytes
//! of a message that does not verify.

pub mod chat;
pub mod demo;
pub mod history;
pub mod interactive;
mod term;

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::client::crypto::{Identity, Role};
use crate::client::{check_peer_key, ClientError, HubClient, Reading};
use crate::json::{ConversationJson, MessageJson};
use crate::model::Pubkey;
use crate::proto::dm::DmKeyRotatedEvent;

/// The default hub a CLI command talks to.
pub const DEFAULT_URL: &str = "http://127.0.0.1:1984";

/// An identity file: the Ed25519 seed and the display name. Mode 0600.
#[derive(Serialize, Deserialize)]
pub struct IdentityFile {
    pub seed: String,
    pub display_name: String,
}

impl IdentityFile {
    pub fn load(path: &Path) -> anyhow::Result<(Identity, String)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the identity file {}", path.display()))?;
        let file: IdentityFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an identity file", path.display()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.seed, &mut seed)
            .context("the seed must be 64 hex characters")?;
        Ok((Identity::from_seed(&seed), file.display_name))
    }

    /// Writes a new identity file with mode 0600; refuses to overwrite unless `force`.
    pub fn create(
        path: &Path,
        identity: &Identity,
        display_name: &str,
        force: bool,
    ) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .with_context(|| format!("creating {} (use --force to replace it)", path.display()))?;
        let body = IdentityFile {
            seed: hex::encode(identity.seed()),
            display_name: display_name.to_owned(),
        };
        file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
        file.write_all(b"\n")?;
        Ok(())
    }
}

/// The nodes a command may talk to (`--url a,b,c`): the first that answers
/// at start, then the next one each time a connection is lost, round and
/// round. One URL is one node, or a proxy in front of several.
#[derive(Clone, Debug)]
pub struct Nodes {
    urls: Vec<String>,
    at: usize,
}

impl Nodes {
    pub fn new(urls: &[String]) -> anyhow::Result<Nodes> {
        anyhow::ensure!(!urls.is_empty(), "--url names no hub");
        Ok(Nodes {
            urls: urls.to_vec(),
            at: 0,
        })
    }

    pub fn current(&self) -> &str {
        &self.urls[self.at]
    }

    /// Moves `client` to the next node (the same one when there is one);
    /// whether it moved.
    pub fn next(&mut self, client: &mut HubClient) -> bool {
        if self.urls.len() < 2 {
            return false;
        }
        self.at = (self.at + 1) % self.urls.len();
        client.switch_to(self.urls[self.at].clone());
        true
    }

    /// Whether the last move brought the client back to the first node.
    pub fn round_done(&self) -> bool {
        self.at == 0
    }

    /// Signs in at the first node that answers.
    pub async fn sign_in(&mut self, id: &Identity, name: &str) -> anyhow::Result<HubClient> {
        let mut last = None;
        for _ in 0..self.urls.len() {
            match sign_in(self.current(), id, name).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
            self.at = (self.at + 1) % self.urls.len();
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("--url names no hub")))
    }
}

/// Logs in (registering on first use) and publishes the identity's X25519 key.
pub async fn sign_in(url: &str, id: &Identity, name: &str) -> anyhow::Result<HubClient> {
    let mut client = HubClient::new(url);
    client
        .login(id, Some(name))
        .await
        .with_context(|| format!("logging in to {url}"))?;
    client
        .publish_key(&id.x25519_public())
        .await
        .context("publishing our key")?;
    Ok(client)
}

/// A pubkey given on the command line, normalised to lower case.
pub fn parse_peer(pubkey: &str) -> anyhow::Result<String> {
    Pubkey::parse(pubkey.trim())
        .map(|p| p.to_string())
        .map_err(|_| anyhow::anyhow!("{pubkey:?} is not a pubkey (64 hex characters)"))
}

/// The peer's X25519 key after the key check, with errors a person can act on.
pub async fn peer_key(client: &HubClient, peer: &str) -> anyhow::Result<[u8; 32]> {
    client
        .checked_recipient_key(peer)
        .await
        .map_err(|e| match e {
            ClientError::KeySubstituted { .. } => anyhow::Error::new(e),
            e if e.status() == Some(404) => anyhow::anyhow!(
                "{peer} is not on this hub or has not published a key yet \
                 (they need to sign in once, e.g. with `united-hub listen`)"
            ),
            e => anyhow::Error::new(e).context(format!("fetching the key of {peer}")),
        })
}

/// Checks the peer's key, finds or creates the conversation, and sends `text`
/// sealed to the checked key: nothing reaches the hub if the check fails.
pub async fn send_text(
    client: &HubClient,
    id: &Identity,
    peer: &str,
    text: &str,
) -> anyhow::Result<MessageJson> {
    let key = peer_key(client, peer).await?;
    let (conversation, _) = client
        .create_conversation(peer)
        .await
        .with_context(|| format!("opening the conversation with {peer}"))?;
    let (stored, _) = client
        .send_sealed(id, &key, &conversation.id, text.as_bytes())
        .await
        .context("sending")?;
    Ok(stored)
}

/// One message as a line for people: `[how #seq] name: text`. A v1 message
/// is marked unauthenticated, and one that does not verify is marked and
/// shown without any of its bytes. `peer` names the other side of our own
/// messages when the output mixes conversations.
pub fn render(how: &str, m: &MessageJson, reading: &Reading, peer: Option<&str>) -> String {
    let tag = match how {
        "" => format!("#{}", m.server_sequence),
        how => format!("{how} #{}", m.server_sequence),
    };
    let name = printable(&m.sender_display_name);
    match reading {
        Reading::Verified {
            text,
            role: Role::Sender,
        } => match peer {
            Some(peer) => format!("[{tag}] {name} (you) → {}: {}", printable(peer), printable(text)),
            None => format!("[{tag}] {name} (you): {}", printable(text)),
        },
        Reading::Verified {
            text,
            role: Role::Recipient,
        } => format!("[{tag}] {name}: {}", printable(text)),
        Reading::Unauthenticated { text } => format!(
            "[{tag}] {name} [unauthenticated: v1, the sender is only the hub's word]: {}",
            printable(text)
        ),
        Reading::Unverifiable { reason } => format!(
            "[{tag}] {name} [unverified]: this message could not be verified and is not shown ({reason})"
        ),
    }
}

/// Text from others with its control characters escaped, so that a message
/// cannot move the cursor, clear the screen or fake a line of its own.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What to tell a person about a `DmKeyRotatedEvent`: a note if the new key
/// is the one derived from its identity, a warning (`Err`) if it is not.
pub fn key_rotation_note(me: &Identity, event: &DmKeyRotatedEvent) -> Result<String, String> {
    let who = short(&event.user_pubkey);
    let Ok(key) = <[u8; 32]>::try_from(&event.new_x25519_pubkey[..]) else {
        return Err(format!(
            "WARNING: the hub announced a malformed key for {who}"
        ));
    };
    if event.user_pubkey == me.public_key_hex() {
        return if key == me.x25519_public() {
            Ok("(your key was published)".into())
        } else {
            Err(
                "WARNING: a key that is not yours was published under your identity: \
                 someone else can sign in as you"
                    .into(),
            )
        };
    }
    match check_peer_key(&event.user_pubkey, &key) {
        Ok(()) => Ok(format!(
            "({who} published a new key; it matches their identity)"
        )),
        Err(e) => Err(format!(
            "WARNING: {e}; nothing more will be sent to {who} until its key checks out"
        )),
    }
}

/// The other participant of a conversation: display name and pubkey.
pub fn other_side(me: &Identity, c: &ConversationJson) -> (String, String) {
    if c.participant_a_pubkey == me.public_key_hex() {
        (
            c.participant_b_display_name.clone(),
            c.participant_b_pubkey.clone(),
        )
    } else {
        (
            c.participant_a_display_name.clone(),
            c.participant_a_pubkey.clone(),
        )
    }
}

/// The first characters of a pubkey, for people.
pub fn short(pubkey: &str) -> &str {
    &pubkey[..pubkey.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> MessageJson {
        MessageJson {
            id: "m".into(),
            conversation_id: "c".into(),
            sender_pubkey: "p".into(),
            encrypted_payload: String::new(),
            nonce: String::new(),
            ephemeral_pubkey: None,
            timestamp: 1,
            server_sequence: 7,
            sender_display_name: name.into(),
        }
    }

    #[test]
    fn text_from_others_cannot_drive_the_terminal() {
        let reading = Reading::Verified {
            text: "hi\x1b[2J\r\n[#8] Alice: fake".into(),
            role: Role::Recipient,
        };
        let line = render("live", &message("Mallory\x07"), &reading, None);
        assert_eq!(
            line,
            r"[live #7] Mallory\u{7}: hi\u{1b}[2J\r\n[#8] Alice: fake"
        );
    }

    #[test]
    fn what_does_not_verify_is_marked_and_v1_is_flagged() {
        let unverified = Reading::Unverifiable {
            reason: "tampered".into(),
        };
        assert!(render("", &message("Alice"), &unverified, None)
            .starts_with("[#7] Alice [unverified]: "));
        let v1 = Reading::Unauthenticated { text: "old".into() };
        let line = render("", &message("Alice"), &v1, None);
        assert!(line.contains("[unauthenticated") && line.ends_with(": old"));
        let mine = Reading::Verified {
            text: "sent".into(),
            role: Role::Sender,
        };
        assert_eq!(
            render("", &message("Bob"), &mine, Some("Alice")),
            "[#7] Bob (you) → Alice: sent"
        );
    }
}
