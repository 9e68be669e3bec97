//! The `united-hub` subcommands other than the server itself: the demo, a
//! small chat CLI for people, and (later) the load generator.

pub mod chat;
pub mod demo;

use std::path::Path;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::client::crypto::{self, Identity, Sealed};
use crate::json::MessageJson;

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

/// Opens a message to or from `me`, from its JSON form.
pub fn open_message(me: &Identity, m: &MessageJson) -> anyhow::Result<String> {
    let sealed = Sealed {
        ciphertext: B64.decode(&m.encrypted_payload)?,
        nonce: B64
            .decode(&m.nonce)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad nonce"))?,
        ephemeral_pubkey: B64
            .decode(m.ephemeral_pubkey.as_deref().unwrap_or_default())?
            .try_into()
            .map_err(|_| anyhow::anyhow!("no ephemeral key"))?,
    };
    let mut sender = [0u8; 32];
    hex::decode_to_slice(&m.sender_pubkey, &mut sender)?;
    let opened = crypto::open(me, &sealed, &m.conversation_id, &sender)?;
    Ok(String::from_utf8_lossy(&opened.plaintext).into_owned())
}

/// Opens a message to or from `me`, from its protobuf form.
pub fn open_proto(
    me: &Identity,
    m: &crate::proto::dm::EncryptedDmMessage,
) -> anyhow::Result<String> {
    open_message(me, &MessageJson::from_proto(m))
}

/// The first characters of a pubkey, for people.
pub fn short(pubkey: &str) -> &str {
    &pubkey[..pubkey.len().min(12)]
}
