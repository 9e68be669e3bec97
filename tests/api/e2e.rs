//! `united-hub dm v2` over the real hub, through the reference client: every
//! device of a user reads both sides of a conversation, a message the hub
//! could have forged is never shown, and a key the hub substituted is refused
//! before anything is sealed to it.

use united_hub::client::crypto::{self, Identity, Role};
use united_hub::client::{
    check_peer_key, connect_live, read_json, read_proto, send_body, ClientError, HubClient,
    Incoming, Reading, WsClient,
};
use united_hub::proto::Payload;

use crate::helpers::*;

/// Another device of `user`: a second login of the same identity, with its
/// own registered session.
async fn second_device(app: &TestApp, user: &TestUser) -> (HubClient, WsClient) {
    let mut client = app.client();
    client.login(&user.identity, None).await.expect("login");
    let ws = connect_live(&mut client).await.expect("a live session");
    (client, ws)
}

fn verified(text: &str, role: Role) -> Reading {
    Reading::Verified {
        text: text.to_owned(),
        role,
    }
}

/// Asserts that a message is refused and that nothing of `secret` leaks
/// through what the client would show.
fn assert_unverifiable(reading: &Reading, secret: &str) {
    assert!(
        matches!(reading, Reading::Unverifiable { .. }),
        "{reading:?}"
    );
    assert_eq!(reading.verified_text(), None);
    assert!(!format!("{reading:?}").contains(secret), "{reading:?}");
}

#[actix_web::test]
async fn every_device_of_alice_reads_what_she_sent_and_bob_reads_it_too() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut phone = alice.live_ws().await;
    let (laptop, mut laptop_ws) = second_device(&app, &alice).await;
    let mut bob_ws = bob.live_ws().await;

    let key = alice
        .client
        .checked_recipient_key(&bob.pubkey)
        .await
        .unwrap();
    let text = "typed on my phone";
    let (sent, _) = alice
        .client
        .send_sealed(&alice.identity, &key, &conversation, text.as_bytes())
        .await
        .unwrap();

    // Live, on both of Alice's sessions: her own message, verified.
    let pushed = next_message(&mut phone).await;
    assert_eq!(
        read_proto(&alice.identity, &pushed),
        verified(text, Role::Sender)
    );
    let pushed = next_message(&mut laptop_ws).await;
    assert_eq!(pushed.id, sent.id);
    assert_eq!(
        read_proto(&alice.identity, &pushed),
        verified(text, Role::Sender)
    );
    // From history, on the second device.
    let history = laptop.history(&conversation, "after=0").await.unwrap();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(
        read_json(&alice.identity, &history.messages[0]),
        verified(text, Role::Sender)
    );
    // And Bob, as its recipient.
    let pushed = next_message(&mut bob_ws).await;
    assert_eq!(
        read_proto(&bob.identity, &pushed),
        verified(text, Role::Recipient)
    );

    // Bob answers: the laptop reads both sides of the conversation, in order.
    let bob_key = bob
        .client
        .checked_recipient_key(&alice.pubkey)
        .await
        .unwrap();
    bob.client
        .send_sealed(&bob.identity, &bob_key, &conversation, b"read you")
        .await
        .unwrap();
    let pushed = next_message(&mut laptop_ws).await;
    assert_eq!(
        read_proto(&alice.identity, &pushed),
        verified("read you", Role::Recipient)
    );
    let (both, older) = laptop.recent(&conversation, 0).await.unwrap();
    assert!(!older);
    let readings: Vec<Reading> = both.iter().map(|m| read_json(&alice.identity, m)).collect();
    assert_eq!(
        readings,
        [
            verified(text, Role::Sender),
            verified("read you", Role::Recipient)
        ]
    );
}

#[actix_web::test]
async fn a_message_the_hub_could_have_forged_is_reported_unverified_and_not_shown() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let mut bob_ws = bob.live_ws().await;
    let mut alice_ws = alice.live_ws().await;

    // Mallory seals to Bob's real key, and the body goes out with Alice's
    // token: the hub attributes it to Alice, as a malicious hub could.
    let mallory = Identity::generate();
    let secret = "wire the money tonight";
    let sealed = crypto::seal(
        &mallory,
        &bob.identity.x25519_public(),
        &conversation,
        secret.as_bytes(),
    )
    .unwrap();
    let (stored, _) = alice
        .client
        .send(&send_body(None, &conversation, &sealed, now_ms()))
        .await
        .unwrap();
    assert_eq!(stored.sender_pubkey, alice.pubkey);

    assert_unverifiable(
        &read_proto(&bob.identity, &next_message(&mut bob_ws).await),
        secret,
    );
    assert_unverifiable(&read_json(&bob.identity, &stored), secret);
    // Alice's own devices do not take it for hers either.
    assert_unverifiable(
        &read_proto(&alice.identity, &next_message(&mut alice_ws).await),
        secret,
    );
    let history = bob.client.history(&conversation, "after=0").await.unwrap();
    assert_unverifiable(&read_json(&bob.identity, &history.messages[0]), secret);

    // A genuine message of Alice's, moved to another conversation by the
    // hub, does not verify there either.
    let carol = app.user("Carol").await;
    let other = bob.open_conversation(&carol).await;
    let mut moved = alice
        .send_http(&bob, &conversation, "for this conversation only")
        .await;
    moved.conversation_id = other;
    assert_unverifiable(
        &read_json(&bob.identity, &moved),
        "for this conversation only",
    );
}

#[actix_web::test]
async fn a_v1_message_is_shown_marked_unauthenticated() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let sealed = crypto::seal_v1_with(
        b"from an old client",
        &bob.identity.x25519_public(),
        &conversation,
        &alice.identity.public_key(),
        [7; 32],
        [9; 24],
    )
    .unwrap();
    let (stored, _) = alice
        .client
        .send(&send_body(None, &conversation, &sealed, now_ms()))
        .await
        .unwrap();
    let reading = read_json(&bob.identity, &stored);
    assert_eq!(
        reading,
        Reading::Unauthenticated {
            text: "from an old client".into()
        }
    );
    assert_eq!(reading.verified_text(), None);
}

#[actix_web::test]
async fn a_substituted_key_is_refused_before_anything_is_sealed() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let carol = app.user("Carol").await;
    // Honest keys pass.
    assert_eq!(
        alice
            .client
            .checked_recipient_key(&bob.pubkey)
            .await
            .unwrap(),
        bob.identity.x25519_public()
    );
    // Alice and Carol already talk; Alice's session hears Carol's key change.
    alice.open_conversation(&carol).await;
    let mut alice_ws = alice.live_ws().await;

    // Carol's account publishes a key that is not her identity's derivation
    // (what a hub substituting its own key would hand out).
    let substitute = Identity::generate().x25519_public();
    carol.client.publish_key(&substitute).await.unwrap();
    assert_eq!(
        alice.client.recipient_key(&carol.pubkey).await.unwrap(),
        substitute
    );
    let err = alice
        .client
        .checked_recipient_key(&carol.pubkey)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::KeySubstituted { peer } if *peer == carol.pubkey),
        "{err:?}"
    );
    assert!(err.to_string().contains("key substitution"), "{err}");

    // The rotation event carries the same key, and the same check refuses it.
    let event = loop {
        match alice_ws.next(std::time::Duration::from_secs(10)).await {
            Some(Incoming::Envelope(e)) => {
                if let Some(Payload::DmKeyRotatedEvent(e)) = e.payload {
                    break e;
                }
            }
            other => panic!("expected the key rotation, got {other:?}"),
        }
    };
    assert_eq!(event.user_pubkey, carol.pubkey);
    let key: [u8; 32] = event.new_x25519_pubkey[..].try_into().unwrap();
    assert!(matches!(
        check_peer_key(&event.user_pubkey, &key),
        Err(ClientError::KeySubstituted { .. })
    ));

    // A pubkey that is not one is refused as such, before any request.
    assert!(matches!(
        alice.client.checked_recipient_key("not a key").await,
        Err(ClientError::Crypto(crypto::CryptoError::BadPublicKey))
    ));
}

#[actix_web::test]
async fn history_pages_back_as_far_as_asked_and_forward_to_the_end() {
    let app = spawn_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    // More than one page (100) of history.
    for n in 1..=130 {
        alice.send_http(&bob, &conversation, &format!("{n}")).await;
    }
    let texts = |messages: &[united_hub::json::MessageJson]| -> Vec<String> {
        messages.iter().map(|m| bob.open_json(m)).collect()
    };
    let all: Vec<String> = (1..=130).map(|n| n.to_string()).collect();

    let (messages, older) = bob.client.recent(&conversation, 0).await.unwrap();
    assert_eq!(texts(&messages), all);
    assert!(!older);
    let (messages, older) = bob.client.recent(&conversation, 105).await.unwrap();
    assert_eq!(texts(&messages), all[25..]);
    assert!(older);
    let (messages, older) = bob.client.recent(&conversation, 130).await.unwrap();
    assert_eq!(messages.len(), 130);
    assert!(!older);

    let after = bob.client.history_after(&conversation, 20).await.unwrap();
    assert_eq!(texts(&after), all[20..]);
}
