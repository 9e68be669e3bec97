//! `united-hub demo`: a readable story of the hub at work, every step checked.
//!
//! With no flags it starts an embedded hub on a temporary data directory;
//! `--url` points it at a running one. The exit code is 0 only if every step
//! held.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{send_text, short};
use crate::client::crypto::{self, Identity, Role};
use crate::client::{
    connect_live, read_json, read_proto, reconnect, send_body, ClientError, HubClient, Incoming,
    Reading, WsClient,
};
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

/// The demo's words, checked for in the hub's files at the end.
const TEXT: &str = "Hi Bob! Lunch at noon? 🥪";
const LATER: [&str; 3] = [
    "Are you there?",
    "I'll grab a table.",
    "Found one by the window.",
];
const OWN: &str = "On my way, 5 minutes.";
const FORGED: &str = "Change of plan: leave the key under the mat.";

/// Who plays, and what they share.
struct Cast {
    url: String,
    alice_id: Identity,
    bob_id: Identity,
    alice: HubClient,
    bob: HubClient,
    conversation: String,
    /// Bob's X25519 key, once Alice's client has checked it.
    bob_key: [u8; 32],
}

/// The story, act by act; each checks what it shows.
async fn play(
    story: &mut Story,
    url: &str,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (mut cast, mut phone, mut laptop) = meet(story, url).await?;
    let last_seen = first_message(story, &mut cast, &mut phone, &mut laptop).await?;
    let mut bob_ws = away_and_back(story, &mut cast, phone, laptop, last_seen).await?;
    alices_second_device(story, &mut cast, &mut bob_ws).await?;
    a_forged_message(story, &mut cast, &mut bob_ws).await?;
    a_substituted_key(story, &cast).await?;
    what_the_hub_stored(story, &cast, data_dir).await
}

/// Identities, logins, Bob's two devices, the conversation.
async fn meet(story: &mut Story, url: &str) -> anyhow::Result<(Cast, WsClient, WsClient)> {
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
    let phone = connect_live(&mut bob).await?;
    let laptop = connect_live(&mut bob).await?;
    ok("two live WebSocket sessions");

    story.say("Alice opens a conversation with Bob");
    let (conversation, created) = alice.create_conversation(&bob_id.public_key_hex()).await?;
    story.check(if created {
        Ok(())
    } else {
        Err(anyhow::anyhow!("it already existed"))
    });
    ok(format!("conversation {}", conversation.id));
    let cast = Cast {
        url: url.to_owned(),
        alice_id,
        bob_id,
        alice,
        bob,
        conversation: conversation.id,
        bob_key: [0; 32],
    };
    Ok((cast, phone, laptop))
}

/// Alice checks Bob's key and writes; both of Bob's devices read it.
async fn first_message(
    story: &mut Story,
    cast: &mut Cast,
    phone: &mut WsClient,
    laptop: &mut WsClient,
) -> anyhow::Result<HashMap<String, u64>> {
    story.say(
        "Alice checks Bob's published key against his identity, seals a message to it, sends it",
    );
    cast.bob_key = cast
        .alice
        .checked_recipient_key(&cast.bob_id.public_key_hex())
        .await?;
    ok("Bob's published key is the one derived from his identity");
    let (sent, _) = cast
        .alice
        .send_sealed(
            &cast.alice_id,
            &cast.bob_key,
            &cast.conversation,
            TEXT.as_bytes(),
        )
        .await?;
    ok(format!(
        "the hub committed it as #{} and answered 201",
        sent.server_sequence
    ));

    story.say("Bob's phone receives it live, decrypts it and verifies it is from Alice");
    if let Some(m) = story.check(next_message(phone).await) {
        story.check(
            expect(&read_proto(&cast.bob_id, &m), Role::Recipient, TEXT).map(|()| {
                ok(format!("phone: \"{TEXT}\" (from Alice, verified)"));
            }),
        );
    }

    story.say("Bob's laptop sees it too");
    if let Some(m) = story.check(next_message(laptop).await) {
        story.check(
            expect(&read_proto(&cast.bob_id, &m), Role::Recipient, TEXT).map(|()| {
                ok(format!("laptop: \"{TEXT}\""));
            }),
        );
    }
    Ok(HashMap::from([(
        cast.conversation.clone(),
        sent.server_sequence,
    )]))
}

/// Bob goes away, Alice writes on, Bob comes back and catches up.
async fn away_and_back(
    story: &mut Story,
    cast: &mut Cast,
    phone: WsClient,
    laptop: WsClient,
    mut last_seen: HashMap<String, u64>,
) -> anyhow::Result<WsClient> {
    story.say("Bob goes offline; Alice sends three more");
    close(phone).await;
    close(laptop).await;
    for line in LATER {
        let (m, _) = cast
            .alice
            .send_sealed(
                &cast.alice_id,
                &cast.bob_key,
                &cast.conversation,
                line.as_bytes(),
            )
            .await?;
        ok(format!("#{} sent while Bob is away", m.server_sequence));
    }

    story.say("Bob reconnects and catches up, in order");
    let (bob_ws, missed) = reconnect(&mut cast.bob, &mut last_seen).await?;
    let texts: Vec<String> = missed
        .iter()
        .map(|m| match read_json(&cast.bob_id, m) {
            Reading::Verified { text, .. } => text,
            other => format!("<{other:?}>"),
        })
        .collect();
    for (m, t) in missed.iter().zip(&texts) {
        ok(format!("#{}: \"{t}\"", m.server_sequence));
    }
    story.check(if texts == LATER {
        Ok(())
    } else {
        Err(anyhow::anyhow!("caught up {texts:?}"))
    });
    Ok(bob_ws)
}

/// Alice's second device reads her own message, live and from history.
async fn alices_second_device(
    story: &mut Story,
    cast: &mut Cast,
    bob_ws: &mut WsClient,
) -> anyhow::Result<()> {
    story.say(
        "Alice signs in on a second device and sends from the first: \
         the second reads her own message, live and from history",
    );
    let mut alice_laptop = HubClient::new(&cast.url);
    alice_laptop.login(&cast.alice_id, None).await?;
    let mut alice_laptop_ws = connect_live(&mut alice_laptop).await?;
    cast.alice
        .send_sealed(
            &cast.alice_id,
            &cast.bob_key,
            &cast.conversation,
            OWN.as_bytes(),
        )
        .await?;
    if let Some(m) = story.check(next_message(&mut alice_laptop_ws).await) {
        story.check(
            expect(&read_proto(&cast.alice_id, &m), Role::Sender, OWN).map(|()| {
                ok(format!(
                    "Alice's laptop, live: \"{OWN}\" (her own, verified)"
                ));
            }),
        );
    }
    let newest = alice_laptop.history(&cast.conversation, "limit=1").await?;
    story.check(
        newest
            .messages
            .first()
            .context("an empty history")
            .and_then(|m| expect(&read_json(&cast.alice_id, m), Role::Sender, OWN))
            .map(|()| ok(format!("Alice's laptop, from history: \"{OWN}\""))),
    );
    if let Some(m) = story.check(next_message(bob_ws).await) {
        story.check(
            expect(&read_proto(&cast.bob_id, &m), Role::Recipient, OWN).map(|()| {
                ok(format!("Bob: \"{OWN}\" (from Alice, verified)"));
            }),
        );
    }
    Ok(())
}

/// A message sealed by a third identity under Alice's account: refused.
async fn a_forged_message(
    story: &mut Story,
    cast: &mut Cast,
    bob_ws: &mut WsClient,
) -> anyhow::Result<()> {
    story.say(
        "The hub forges a message \"from Alice\": sealed by Mallory, \
         sent under Alice's account",
    );
    let mallory = Identity::generate();
    let sealed = crypto::seal(
        &mallory,
        &cast.bob_key,
        &cast.conversation,
        FORGED.as_bytes(),
    )?;
    let (stored, _) = cast
        .alice
        .send(&send_body(
            None,
            &cast.conversation,
            &sealed,
            crate::model::now_ms(),
        ))
        .await?;
    story.check(if stored.sender_pubkey == cast.alice_id.public_key_hex() {
        ok(format!(
            "the hub attributes #{} to Alice",
            stored.server_sequence
        ));
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "the hub attributed it to {}",
            stored.sender_pubkey
        ))
    });
    if let Some(m) = story.check(next_message(bob_ws).await) {
        story.check(match read_proto(&cast.bob_id, &m) {
            Reading::Unverifiable { reason } => {
                ok(format!(
                    "Bob's client refuses it as unverified ({reason}); none of it is shown"
                ));
                Ok(())
            }
            other => Err(anyhow::anyhow!("Bob's client accepted it: {other:?}")),
        });
    }
    Ok(())
}

/// A published key not derived from its identity: nothing is sent.
async fn a_substituted_key(story: &mut Story, cast: &Cast) -> anyhow::Result<()> {
    story.say(
        "The hub substitutes a key: what Carol's account publishes is not \
         derived from her identity",
    );
    let carol_id = Identity::generate();
    let mut carol = HubClient::new(&cast.url);
    carol.login(&carol_id, Some("Carol")).await?;
    carol
        .publish_key(&Identity::generate().x25519_public())
        .await?;
    let carol_pubkey = carol_id.public_key_hex();
    match send_text(&cast.alice, &cast.alice_id, &carol_pubkey, "Hi Carol!").await {
        Ok(m) => {
            story.check::<()>(Err(anyhow::anyhow!(
                "Alice's client sent #{} to the substituted key",
                m.server_sequence
            )));
        }
        Err(e) => {
            let caught = matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::KeySubstituted { .. })
            );
            story.check(if caught {
                ok(format!("Alice's client refuses: {e:#}"));
                Ok(())
            } else {
                Err(e.context("refused, but not by the key check"))
            });
        }
    }
    let carols = carol.conversations().await?;
    story.check(if carols.is_empty() {
        ok("nothing was sent: Carol has no conversation at all");
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "Carol has {} conversation(s)",
            carols.len()
        ))
    });
    Ok(())
}

/// Ciphertext only, in the hub's answers and in its files.
async fn what_the_hub_stored(
    story: &mut Story,
    cast: &Cast,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    story.say("What the hub actually stored: the version, Bob's key, then ciphertext only");
    let history = cast.bob.history(&cast.conversation, "after=0").await?;
    for m in &history.messages {
        // A v2 payload is 0x02, the recipient's key, then the ciphertext.
        let payload = B64.decode(&m.encrypted_payload)?;
        let (head, ct) = payload.split_at(payload.len().min(33));
        ok(format!(
            "#{} {}… | {}… ({} bytes)",
            m.server_sequence,
            hex::encode(&head[..head.len().min(7)]),
            hex::encode(&ct[..ct.len().min(12)]),
            payload.len()
        ));
    }
    if let Some(dir) = data_dir {
        let mut leaked = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            for plain in [TEXT, OWN, FORGED].into_iter().chain(LATER) {
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

/// Checks that a message verified (v2), from the expected side, with `text`.
fn expect(reading: &Reading, role: Role, text: &str) -> anyhow::Result<()> {
    match reading {
        Reading::Verified { text: got, role: r } if *r == role && got == text => Ok(()),
        Reading::Verified { text: got, role: r } => {
            bail!("verified, but as {r:?} with {got:?}")
        }
        other => bail!("not verified: {other:?}"),
    }
}

/// Closes a socket and waits until the hub has let go of the session.
async fn close(mut ws: WsClient) {
    ws.close();
    while let Some(Incoming::Envelope(_)) = ws.next(PUSH_WAIT).await {}
}
