//! `united-hub demo`: a readable story of the hub at work, every step checked.
//!
//! With no flags it starts an embedded hub on a temporary data directory;
//! `--url` points it at a running one. The exit code is 0 only if every step
//! held.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

use super::{open_message, open_proto, short};
use crate::client::crypto::Identity;
use crate::client::{reconnect, HubClient, Incoming, WsClient};
use crate::proto::{dm, Payload};
use crate::{Application, Settings};

/// How long the demo waits for a push.
const PUSH_WAIT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// A running hub, e.g. http://127.0.0.1:1984 [default: an embedded one].
    #[arg(long)]
    url: Option<String>,
}

/// Prints steps and remembers whether all held.
struct Story {
    step: usize,
    failed: usize,
}

impl Story {
    fn say(&mut self, what: &str) {
        self.step += 1;
        println!("\n{}. {what}", self.step);
    }

    fn check<T>(&mut self, result: anyhow::Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed += 1;
                println!("   ✘ {e:#}");
                None
            }
        }
    }
}

fn ok(line: impl AsRef<str>) {
    println!("   ✔ {}", line.as_ref());
}

/// Runs the story; returns whether every step held.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let mut embedded = None;
    let url = match args.url {
        Some(url) => url,
        None => {
            let dir = tempfile::tempdir()?;
            let settings = Settings {
                bind: "127.0.0.1:0".parse()?,
                data_dir: dir.path().to_path_buf(),
                ..Settings::default()
            };
            let app = Application::build(settings).await?;
            let url = format!("http://127.0.0.1:{}", app.port());
            let handle = app.handle();
            actix_web::rt::spawn(app.run_until_stopped());
            println!(
                "Started an embedded hub at {url} (data in {})",
                dir.path().display()
            );
            embedded = Some((handle, dir));
            url
        }
    };
    let mut story = Story { step: 0, failed: 0 };
    let finished = play(&mut story, &url, embedded.as_ref().map(|(_, d)| d.path())).await;
    if let Err(e) = finished {
        story.failed += 1;
        println!("   ✘ the story stopped: {e:#}");
    }
    if let Some((handle, _dir)) = embedded {
        handle.shutdown().await;
    }
    println!();
    if story.failed == 0 {
        println!("All {} steps held.", story.step);
    } else {
        println!("{} of {} steps failed.", story.failed, story.step);
    }
    Ok(story.failed == 0)
}

/// Waits for the next message event on a socket.
async fn next_message(ws: &mut WsClient) -> anyhow::Result<dm::EncryptedDmMessage> {
    loop {
        match ws.next(PUSH_WAIT).await {
            Some(Incoming::Envelope(e)) => {
                if let Some(Payload::DmMessageEvent(e)) = e.payload {
                    return e.message.context("an event without a message");
                }
            }
            Some(Incoming::Closed(code)) => bail!("the socket closed ({code:?})"),
            None => bail!("no push within {PUSH_WAIT:?}"),
        }
    }
}

async fn play(
    story: &mut Story,
    url: &str,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    story.say("Alice and Bob create identities (Ed25519 key pairs, made on their devices)");
    let alice_id = Identity::generate();
    let bob_id = Identity::generate();
    ok(format!("Alice is {}…", short(&alice_id.public_key_hex())));
    ok(format!("Bob   is {}…", short(&bob_id.public_key_hex())));

    story.say("They log in: sign the hub's challenge, get tokens, publish X25519 keys");
    let mut alice = HubClient::new(url);
    let mut bob = HubClient::new(url);
    alice.login(&alice_id, Some("Alice")).await?;
    bob.login(&bob_id, Some("Bob")).await?;
    alice.publish_key(&alice_id.x25519_public()).await?;
    bob.publish_key(&bob_id.x25519_public()).await?;
    ok("both logged in; keys published (derived from the identities, the libsodium way)");

    story.say("Bob connects two devices: a phone and a laptop");
    let mut phone = connect(&bob).await?;
    let mut laptop = connect(&bob).await?;
    ok("two live WebSocket sessions");

    story.say("Alice opens a conversation with Bob");
    let (conversation, created) = alice.create_conversation(&bob_id.public_key_hex()).await?;
    story.check(if created {
        Ok(())
    } else {
        Err(anyhow::anyhow!("it already existed"))
    });
    ok(format!("conversation {}", conversation.id));

    story.say("Alice encrypts a message for Bob's key and sends it");
    let text = "Hi Bob! Lunch at noon? 🥪";
    let bob_key = alice.recipient_key(&bob_id.public_key_hex()).await?;
    let (sent, _) = alice
        .send_sealed(&alice_id, &bob_key, &conversation.id, text.as_bytes())
        .await?;
    ok(format!(
        "the hub committed it as #{} and answered 201",
        sent.server_sequence
    ));

    story.say("Bob's phone receives it live and decrypts it");
    if let Some(m) = story.check(next_message(&mut phone).await) {
        match open_proto(&bob_id, &m) {
            Ok(plain) if plain == text => ok(format!("phone: \"{plain}\"")),
            Ok(plain) => {
                story.check::<()>(Err(anyhow::anyhow!(
                    "decrypted to something else: {plain:?}"
                )));
            }
            Err(e) => {
                story.check::<()>(Err(e));
            }
        }
    }

    story.say("Bob's laptop sees it too");
    if let Some(m) = story.check(next_message(&mut laptop).await) {
        story.check(open_proto(&bob_id, &m).and_then(|p| {
            ensure!(p == text, "decrypted to {p:?}");
            ok(format!("laptop: \"{p}\""));
            Ok(())
        }));
    }
    let mut last_seen = HashMap::from([(conversation.id.clone(), sent.server_sequence)]);

    story.say("Bob goes offline; Alice sends three more");
    close(phone).await;
    close(laptop).await;
    let later = [
        "Are you there?",
        "I'll grab a table.",
        "Found one by the window.",
    ];
    for line in later {
        let (m, _) = alice
            .send_sealed(&alice_id, &bob_key, &conversation.id, line.as_bytes())
            .await?;
        ok(format!("#{} sent while Bob is away", m.server_sequence));
    }

    story.say("Bob reconnects and catches up, in order");
    let (_ws, missed) = reconnect(&mut bob, &mut last_seen).await?;
    let texts: Vec<String> = missed
        .iter()
        .map(|m| open_message(&bob_id, m).unwrap_or_else(|e| format!("<{e}>")))
        .collect();
    for (m, t) in missed.iter().zip(&texts) {
        ok(format!("#{}: \"{t}\"", m.server_sequence));
    }
    story.check(if texts == later {
        Ok(())
    } else {
        Err(anyhow::anyhow!("caught up {texts:?}"))
    });

    story.say("What the hub actually stored: ciphertext only");
    let history = bob.history(&conversation.id, "after=0").await?;
    for m in &history.messages {
        let shown: String = m.encrypted_payload.chars().take(32).collect();
        ok(format!(
            "#{} {}… ({} bytes base64)",
            m.server_sequence,
            shown,
            m.encrypted_payload.len()
        ));
    }
    if let Some(dir) = data_dir {
        let mut leaked = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            for plain in std::iter::once(text).chain(later) {
                if bytes.windows(plain.len()).any(|w| w == plain.as_bytes()) {
                    leaked.push(path.display().to_string());
                }
            }
        }
        story.check(if leaked.is_empty() {
            ok("no plaintext in any file of the hub's data directory");
            Ok(())
        } else {
            Err(anyhow::anyhow!("plaintext found in {leaked:?}"))
        });
    }
    Ok(())
}

async fn connect(client: &HubClient) -> anyhow::Result<WsClient> {
    let ws = WsClient::connect(&client.ws_url(), client.access_token().unwrap_or_default()).await?;
    // One answered request: the session is registered and gets every push.
    ws.call(Payload::DmConversationListRequest(
        dm::DmConversationListRequest {},
    ))
    .await?;
    Ok(ws)
}

/// Closes a socket and waits until the hub has let go of the session.
async fn close(mut ws: WsClient) {
    ws.close();
    while let Some(Incoming::Envelope(_)) = ws.next(PUSH_WAIT).await {}
}
