//! The storage contract, checked on both engines.
//!
//! Every test here drives `united_hub::store::Store` directly (no HTTP, no
//! actors above the store) and runs twice: on the embedded SQLite store and
//! on PostgreSQL (a throw-away server per test). Actors, services and
//! handlers never know which engine answers, so both must behave the same:
//! a difference between them is a bug even if each looks right alone. The
//! PostgreSQL variants fail, never skip, when the server cannot start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;
use united_hub::db::{LoginOutcome, MessageWrite, Purged, Skipped};
use united_hub::error::HubError;
use united_hub::localcluster::LocalPostgres;
use united_hub::metrics::Metrics;
use united_hub::model::{now_ms, HistoryPage, Pubkey, StoredMessage, User};
use united_hub::store::Store;
use united_hub::Settings;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Harness: one store per test, on either engine.

/// What keeps a store's database alive for the length of a test.
enum Backing {
    Sqlite(#[allow(dead_code)] TempDir),
    Postgres(#[allow(dead_code)] LocalPostgres),
}

/// A store and its database. Fields drop in order: the store first.
struct Engine {
    store: Store,
    _backing: Backing,
}

impl Engine {
    /// SQLite in a new temporary data directory.
    async fn sqlite() -> Engine {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            database_url: None,
            ..Settings::default()
        };
        let store = open(&settings).await;
        assert_eq!(store.engine(), "sqlite");
        Engine {
            store,
            _backing: Backing::Sqlite(dir),
        }
    }

    /// PostgreSQL on a new local server; panics if it cannot start.
    async fn postgres() -> Engine {
        let pg =
            LocalPostgres::start().expect("PostgreSQL starts (see the error for what to install)");
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            database_url: Some(pg.url().parse().expect("a postgres URL")),
            jwt_secret_file: Some(pg.secret_file()),
            ..Settings::default()
        };
        let store = open(&settings).await;
        assert_eq!(store.engine(), "postgres");
        Engine {
            store,
            _backing: Backing::Postgres(pg),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.store.close();
    }
}

async fn open(settings: &Settings) -> Store {
    Store::open(settings, &Arc::new(Metrics::new()))
        .await
        .expect("the store opens")
        .store
}

/// `both_stores!(body, ...)`: for each, a module named like the `body`
/// function with the tests `sqlite` and `postgres`, each running
/// `body(&store)` on a fresh store of that engine inside an actix system.
macro_rules! both_stores {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[actix_web::test]
            async fn sqlite() {
                let engine = super::Engine::sqlite().await;
                super::$body(&engine.store).await;
            }

            #[actix_web::test]
            async fn postgres() {
                let engine = super::Engine::postgres().await;
                super::$body(&engine.store).await;
            }
        }
    )*};
}

both_stores!(
    login_registers_then_renames,
    refresh_tokens_rotate_once,
    challenges_are_taken_once,
    dm_keys_report_changes,
    conversations_are_created_once,
    group_commit,
    gap_after_the_stored_last_is_skipped,
    offline_queue_and_acks,
    purge_expired,
);

/// PostgreSQL only: a batch prepared from a stale view is refused.
#[actix_web::test]
async fn stale_batch_is_refused_postgres() {
    let engine = Engine::postgres().await;
    stale_batch_is_refused(&engine.store).await;
}

// ---------------------------------------------------------------------------
// Helpers

/// A pubkey no other test uses.
fn new_pubkey() -> Pubkey {
    let hex = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    Pubkey::parse(&hex).expect("64 hex characters")
}

/// A registered user.
async fn user(store: &Store, name: &str) -> Pubkey {
    let pubkey = new_pubkey();
    let outcome = store
        .login_user(pubkey.clone(), Some(name.to_owned()))
        .await
        .unwrap();
    assert!(matches!(outcome, LoginOutcome::User(_)), "{outcome:?}");
    pubkey
}

/// Two registered users with their names, in the normalised order a
/// conversation needs.
async fn pair<'n>(store: &Store, first: &'n str, second: &'n str) -> [(Pubkey, &'n str); 2] {
    let mut users = [
        (user(store, first).await, first),
        (user(store, second).await, second),
    ];
    users.sort();
    users
}

/// The conversation of two users, whatever their order.
async fn conversation(store: &Store, x: &Pubkey, y: &Pubkey) -> Uuid {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    store
        .create_conversation(a.clone(), b.clone())
        .await
        .unwrap()
        .0
        .id
}

/// A message with every field set to something recognisable; the payload
/// includes NUL and 0xff bytes, the display name non-ASCII characters.
fn message(conversation: Uuid, sender: &Pubkey, seq: u64) -> StoredMessage {
    let mut payload = vec![0u8, 0xff, 0x80, b'\n'];
    payload.extend((0..300u32).map(|i| (i * 7 + seq as u32) as u8));
    StoredMessage {
        id: Uuid::new_v4(),
        conversation_id: conversation,
        sender: sender.clone(),
        encrypted_payload: Bytes::from(payload),
        nonce: [seq as u8; 24],
        ephemeral_pubkey: Some([0xe0 ^ seq as u8; 32]),
        timestamp: 1_700_000_000_000 + seq,
        server_sequence: seq,
        sender_display_name: "Zoë 🦀".into(),
        // Later sequences are accepted later.
        created_at: now_ms() + seq,
    }
}

/// One message of a batch for `recipient`, queued offline if asked.
fn write(message: &StoredMessage, recipient: &Pubkey, offline_queued: bool) -> MessageWrite {
    MessageWrite {
        message: Arc::new(message.clone()),
        recipient: recipient.clone(),
        offline_queued,
    }
}

/// Runs one group commit.
async fn commit(store: &Store, batch: Vec<MessageWrite>) -> Vec<Result<(), Skipped>> {
    store.commit(batch).await.expect("the batch commits")
}

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.server_sequence).collect()
}

// ---------------------------------------------------------------------------
// Identity

async fn login_registers_then_renames(store: &Store) {
    let alice = new_pubkey();
    assert_eq!(
        store.login_user(alice.clone(), None).await.unwrap(),
        LoginOutcome::NeedsDisplayName,
        "an unknown key without a name cannot register"
    );
    assert_eq!(store.user(alice.clone()).await.unwrap(), None);

    let registered = User {
        public_key: alice.clone(),
        display_name: "Alice".into(),
    };
    assert_eq!(
        store
            .login_user(alice.clone(), Some("Alice".into()))
            .await
            .unwrap(),
        LoginOutcome::User(registered.clone())
    );
    assert_eq!(
        store.user(alice.clone()).await.unwrap(),
        Some(registered.clone())
    );
    assert_eq!(
        store.login_user(alice.clone(), None).await.unwrap(),
        LoginOutcome::User(registered),
        "a known user logs in without a name and keeps it"
    );

    let renamed = User {
        public_key: alice.clone(),
        display_name: "Alicia".into(),
    };
    assert_eq!(
        store
            .login_user(alice.clone(), Some("Alicia".into()))
            .await
            .unwrap(),
        LoginOutcome::User(renamed.clone())
    );
    assert_eq!(store.user(alice).await.unwrap(), Some(renamed));
}

async fn refresh_tokens_rotate_once(store: &Store) {
    let alice = user(store, "Alice").await;
    let expected = Some(User {
        public_key: alice.clone(),
        display_name: "Alice".into(),
    });
    let later = now_ms() + 60_000;

    store
        .store_refresh_token([1; 32], alice.clone(), later)
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token([1; 32], [2; 32], later)
            .await
            .unwrap(),
        expected
    );
    assert_eq!(
        store
            .rotate_refresh_token([1; 32], [3; 32], later)
            .await
            .unwrap(),
        None,
        "a rotated token is spent"
    );
    assert_eq!(
        store
            .rotate_refresh_token([2; 32], [4; 32], later)
            .await
            .unwrap(),
        None,
        "replaying the spent token revoked its family, the successor included"
    );
    store
        .store_refresh_token([7; 32], alice.clone(), later)
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token([7; 32], [8; 32], later)
            .await
            .unwrap(),
        expected,
        "another login's family is untouched"
    );
    assert_eq!(
        store
            .rotate_refresh_token([9; 32], [5; 32], later)
            .await
            .unwrap(),
        None,
        "an unknown token"
    );

    store
        .store_refresh_token([6; 32], alice, now_ms() - 1_000)
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token([6; 32], [7; 32], later)
            .await
            .unwrap(),
        None,
        "an expired token"
    );
    assert_eq!(
        store
            .rotate_refresh_token([7; 32], [8; 32], later)
            .await
            .unwrap(),
        None,
        "a refused rotation stores no successor"
    );
}

async fn challenges_are_taken_once(store: &Store) {
    let before = now_ms();
    let issued = store.issue_challenge(None).await.unwrap();
    assert!(issued.expires_at_ms > before, "{}", issued.expires_at_ms);
    let other = store.issue_challenge(None).await.unwrap();
    assert_ne!(other.id, issued.id);
    assert_ne!(other.bytes, issued.bytes);

    assert_eq!(store.take_challenge(issued.id).await.unwrap(), issued.bytes);
    let again = store.take_challenge(issued.id).await;
    assert!(
        matches!(again, Err(HubError::UnknownChallenge)),
        "a challenge is taken once: {again:?}"
    );
    let unknown = store.take_challenge(Uuid::new_v4()).await;
    assert!(
        matches!(unknown, Err(HubError::UnknownChallenge)),
        "{unknown:?}"
    );
    assert_eq!(store.take_challenge(other.id).await.unwrap(), other.bytes);
}

// ---------------------------------------------------------------------------
// Keys and conversations

async fn dm_keys_report_changes(store: &Store) {
    let alice = user(store, "Alice").await;
    assert_eq!(store.dm_key(alice.clone()).await.unwrap(), None);

    let (first, changed) = store.upsert_dm_key(alice.clone(), [1; 32]).await.unwrap();
    assert!(changed, "a first publish changes the key");
    assert_eq!(first.ed25519_pubkey, alice);
    assert_eq!(first.x25519_pubkey, [1; 32]);
    assert_eq!(
        store.dm_key(alice.clone()).await.unwrap(),
        Some(first.clone())
    );

    let (same, changed) = store.upsert_dm_key(alice.clone(), [1; 32]).await.unwrap();
    assert!(!changed, "the same key again changes nothing");
    assert_eq!(same, first, "and answers the stored key as it was");

    let (second, changed) = store.upsert_dm_key(alice.clone(), [2; 32]).await.unwrap();
    assert!(changed, "a new key replaces the old one");
    assert_eq!(second.x25519_pubkey, [2; 32]);
    assert!(second.published_at >= first.published_at);
    assert_eq!(store.dm_key(alice).await.unwrap(), Some(second));
    assert_eq!(store.dm_key(new_pubkey()).await.unwrap(), None);
}

async fn conversations_are_created_once(store: &Store) {
    let [(a, a_name), (b, b_name)] = pair(store, "Ann", "Bob").await;
    let carol = user(store, "Carol").await;
    let before = now_ms();

    let (ab, created) = store
        .create_conversation(a.clone(), b.clone())
        .await
        .unwrap();
    assert!(created, "a new pair");
    assert_eq!((&ab.participant_a, &ab.participant_b), (&a, &b));
    assert_eq!(
        (
            ab.participant_a_display_name.as_str(),
            ab.participant_b_display_name.as_str()
        ),
        (a_name, b_name)
    );
    assert_eq!(ab.last_message_at, 0, "no message yet");
    assert!(
        (before..=now_ms()).contains(&ab.created_at),
        "created now: {}",
        ab.created_at
    );

    let (again, created) = store
        .create_conversation(a.clone(), b.clone())
        .await
        .unwrap();
    assert!(!created, "the pair exists");
    assert_eq!(again, ab, "the same conversation, same id");

    let with_carol = conversation(store, &a, &carol).await;
    assert_ne!(with_carol, ab.id);

    assert_eq!(store.conversation(ab.id).await.unwrap(), Some(ab.clone()));
    assert_eq!(store.conversation(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(
        store.conversation_with_last_seq(ab.id).await.unwrap(),
        Some((ab.clone(), 0))
    );
    assert_eq!(
        store
            .conversation_with_last_seq(Uuid::new_v4())
            .await
            .unwrap(),
        None
    );

    let mut of_a: Vec<Uuid> = store
        .conversations_of(a.clone())
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    of_a.sort();
    let mut expected = vec![ab.id, with_carol];
    expected.sort();
    assert_eq!(of_a, expected);
    assert_eq!(store.conversations_of(b.clone()).await.unwrap(), vec![ab]);
    assert_eq!(store.conversations_of(new_pubkey()).await.unwrap(), vec![]);

    let mut partners = store.partners_of(a.clone()).await.unwrap();
    partners.sort();
    let mut expected = vec![b.clone(), carol.clone()];
    expected.sort();
    assert_eq!(partners, expected);
    assert_eq!(store.partners_of(b).await.unwrap(), vec![a.clone()]);
    assert_eq!(store.partners_of(carol).await.unwrap(), vec![a]);
}

// ---------------------------------------------------------------------------
// Messages

/// Two conversations in every batch: what one of them skips never stops the
/// other, and what is written reads back field for field.
async fn group_commit(store: &Store) {
    let [(a, _), (b, _)] = pair(store, "Ann", "Bob").await;
    let c = user(store, "Carol").await;
    let x = conversation(store, &a, &b).await;
    let y = conversation(store, &a, &c).await;

    // Contiguous sequences commit; X1 is queued offline for b, Y1 has no
    // ephemeral key.
    let x1 = message(x, &a, 1);
    let mut y1 = message(y, &c, 1);
    y1.ephemeral_pubkey = None;
    let x2 = message(x, &b, 2);
    let y2 = message(y, &a, 2);
    let results = commit(
        store,
        vec![
            write(&x1, &b, true),
            write(&y1, &a, false),
            write(&x2, &a, false),
            write(&y2, &c, false),
        ],
    )
    .await;
    assert_eq!(results, vec![Ok(()); 4]);
    assert_eq!(store.last_sequence(x).await.unwrap(), 2);
    assert_eq!(store.last_sequence(y).await.unwrap(), 2);

    // A break inside the batch: X5 does not follow X3, so it and X6 after it
    // are skipped; X3 before it and Y3 commit.
    let x3 = message(x, &a, 3);
    let x5 = message(x, &a, 5);
    let x6 = message(x, &a, 6);
    let y3 = message(y, &a, 3);
    let results = commit(
        store,
        vec![
            write(&x3, &b, false),
            write(&x5, &b, false),
            write(&y3, &c, false),
            write(&x6, &b, false),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            Ok(()),
            Err(Skipped::SequenceGap),
            Ok(()),
            Err(Skipped::SequenceGap)
        ]
    );
    assert_eq!(store.last_sequence(x).await.unwrap(), 3);
    assert_eq!(store.last_sequence(y).await.unwrap(), 3);
    assert_eq!(store.message(x5.id).await.unwrap(), None);
    assert_eq!(store.message(x6.id).await.unwrap(), None);

    // A resend of a stored id (with other content, at the next sequence) is
    // a duplicate and changes nothing; the message after it in X cannot
    // follow it, Y4 commits.
    let mut resend = message(x, &a, 4);
    resend.id = x1.id;
    let after_resend = message(x, &a, 5);
    let y4 = message(y, &c, 4);
    let results = commit(
        store,
        vec![
            write(&resend, &b, true),
            write(&after_resend, &b, false),
            write(&y4, &a, false),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![Err(Skipped::DuplicateId), Err(Skipped::SequenceGap), Ok(())]
    );
    assert_eq!(store.message(x1.id).await.unwrap(), Some(x1.clone()));
    assert_eq!(store.message(after_resend.id).await.unwrap(), None);
    assert_eq!(store.last_sequence(x).await.unwrap(), 3);
    assert_eq!(store.last_sequence(y).await.unwrap(), 4);

    // X resumes where it stopped.
    let x4 = message(x, &b, 4);
    let x5 = message(x, &a, 5);
    let results = commit(store, vec![write(&x4, &a, false), write(&x5, &b, false)]).await;
    assert_eq!(results, vec![Ok(()); 2]);
    assert_eq!(store.last_sequence(x).await.unwrap(), 5);
    assert_eq!(
        store
            .conversation_with_last_seq(x)
            .await
            .unwrap()
            .map(|(c, seq)| (c.last_message_at, seq)),
        Some((x5.created_at, 5))
    );

    // Every committed message reads back exactly.
    let xs = [&x1, &x2, &x3, &x4, &x5];
    let ys = [&y1, &y2, &y3, &y4];
    for m in xs.iter().chain(ys.iter()) {
        assert_eq!(store.message(m.id).await.unwrap().as_ref(), Some(*m));
    }
    assert_eq!(store.message(Uuid::new_v4()).await.unwrap(), None);

    // The most recently active conversation comes first.
    let order: Vec<Uuid> = store
        .conversations_of(a.clone())
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(order, vec![x, y]);

    // Only X1 was queued offline, for b: taken once, then delivered.
    let taken = store.take_offline(b.clone(), 1000).await.unwrap().messages;
    assert_eq!(taken, vec![x1.clone()]);
    assert_eq!(
        store.take_offline(b.clone(), 1000).await.unwrap().messages,
        vec![]
    );
    assert_eq!(
        store.take_offline(a.clone(), 1000).await.unwrap().messages,
        vec![]
    );
    assert_eq!(
        store.take_offline(c.clone(), 1000).await.unwrap().messages,
        vec![]
    );

    // History pages, newest first and oldest first; `has_more` is exact.
    let page = |p: HistoryPage, limit: u32| async move {
        let h = store.history(x, p, limit).await.unwrap();
        (seqs(&h.messages), h.has_more, h.messages)
    };
    let (newest, more, messages) = page(HistoryPage::Before(None), 2).await;
    assert_eq!((newest, more), (vec![5, 4], true));
    assert_eq!(messages, vec![x5.clone(), x4.clone()]);
    let older = page(HistoryPage::Before(Some(4)), 2).await;
    assert_eq!((older.0, older.1), (vec![3, 2], true));
    let exact = page(HistoryPage::Before(Some(3)), 2).await;
    assert_eq!(
        (exact.0, exact.1),
        (vec![2, 1], false),
        "exactly a page left"
    );
    let last = page(HistoryPage::Before(Some(2)), 2).await;
    assert_eq!((last.0, last.1), (vec![1], false));
    let none = page(HistoryPage::Before(Some(1)), 2).await;
    assert_eq!((none.0, none.1), (vec![], false));

    let (all, more, messages) = page(HistoryPage::After(0), 5).await;
    assert_eq!((all, more), (vec![1, 2, 3, 4, 5], false));
    assert_eq!(messages, xs.map(|m| m.clone()).to_vec());
    let first = page(HistoryPage::After(0), 4).await;
    assert_eq!((first.0, first.1), (vec![1, 2, 3, 4], true));
    let tail = page(HistoryPage::After(3), 2).await;
    assert_eq!((tail.0, tail.1), (vec![4, 5], false));
    let past = page(HistoryPage::After(5), 2).await;
    assert_eq!((past.0, past.1), (vec![], false));

    let y_history = store.history(y, HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(y_history.messages, ys.map(|m| m.clone()).to_vec());
    assert!(!y_history.has_more);
}

/// A batch whose first message of a conversation does not follow that
/// conversation's stored last sequence: that message and the rest of its
/// conversation are `SequenceGap`, the other conversation commits.
async fn gap_after_the_stored_last_is_skipped(store: &Store) {
    let [(a, _), (b, _)] = pair(store, "Ann", "Bob").await;
    let c = user(store, "Carol").await;
    let x = conversation(store, &a, &b).await;
    let y = conversation(store, &a, &c).await;
    let first = [message(x, &a, 1), message(x, &a, 2)];
    let results = commit(store, first.iter().map(|m| write(m, &b, false)).collect()).await;
    assert_eq!(results, vec![Ok(()); 2]);

    let x4 = message(x, &a, 4);
    let x5 = message(x, &a, 5);
    let y1 = message(y, &a, 1);
    let results = commit(
        store,
        vec![
            write(&x4, &b, true),
            write(&y1, &c, false),
            write(&x5, &b, true),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![Err(Skipped::SequenceGap), Ok(()), Err(Skipped::SequenceGap)],
        "X4 does not follow the stored X2"
    );
    assert_eq!(store.last_sequence(x).await.unwrap(), 2);
    assert_eq!(store.last_sequence(y).await.unwrap(), 1);
    assert_eq!(store.message(x4.id).await.unwrap(), None);
    assert_eq!(store.message(x5.id).await.unwrap(), None);
    assert_eq!(store.message(y1.id).await.unwrap(), Some(y1));
    assert_eq!(
        store.take_offline(b, 1000).await.unwrap().messages,
        vec![],
        "no offline entry for a skipped message"
    );
}

/// Two commits prepared from the same view (as two nodes would): the second
/// finds the conversation moved on and writes nothing of it.
async fn stale_batch_is_refused(store: &Store) {
    let [(a, _), (b, _)] = pair(store, "Ann", "Bob").await;
    let c = user(store, "Carol").await;
    let x = conversation(store, &a, &b).await;
    let y = conversation(store, &a, &c).await;

    let winner: Vec<StoredMessage> = (1..=3).map(|seq| message(x, &a, seq)).collect();
    let results = commit(store, winner.iter().map(|m| write(m, &b, false)).collect()).await;
    assert_eq!(results, vec![Ok(()); 3]);

    let loser: Vec<StoredMessage> = (1..=3).map(|seq| message(x, &b, seq)).collect();
    let y1 = message(y, &c, 1);
    let mut batch: Vec<MessageWrite> = loser.iter().map(|m| write(m, &a, true)).collect();
    batch.push(write(&y1, &a, false));
    let results = commit(store, batch).await;
    assert_eq!(
        results,
        vec![
            Err(Skipped::Stale),
            Err(Skipped::Stale),
            Err(Skipped::Stale),
            Ok(())
        ]
    );
    for m in &loser {
        assert_eq!(store.message(m.id).await.unwrap(), None);
    }
    assert_eq!(store.last_sequence(x).await.unwrap(), 3);
    let history = store.history(x, HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(history.messages, winner);
    assert_eq!(
        store.take_offline(a, 1000).await.unwrap().messages,
        vec![],
        "nothing queued"
    );
    assert_eq!(store.last_sequence(y).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------
// Offline queue

async fn offline_queue_and_acks(store: &Store) {
    let [(a, _), (b, _)] = pair(store, "Ann", "Bob").await;
    let x = conversation(store, &a, &b).await;
    let m1 = message(x, &a, 1);
    let m2 = message(x, &a, 2);
    let m3 = message(x, &a, 3);
    let results = commit(
        store,
        vec![
            write(&m1, &b, false),
            write(&m2, &b, true),
            write(&m3, &b, true),
        ],
    )
    .await;
    assert_eq!(results, vec![Ok(()); 3]);

    // A live push failed after the commit: queue M1 once.
    assert!(store.queue_offline(b.clone(), m1.id).await.unwrap());
    assert!(
        !store.queue_offline(b.clone(), m1.id).await.unwrap(),
        "already queued"
    );

    // Acks touch only the caller's undelivered entries.
    assert_eq!(
        store.ack_offline(a.clone(), vec![m2.id]).await.unwrap(),
        0,
        "not a's entry"
    );
    assert_eq!(
        store
            .ack_offline(b.clone(), vec![m2.id, Uuid::new_v4()])
            .await
            .unwrap(),
        1,
        "the unknown id is ignored"
    );
    assert_eq!(
        store.ack_offline(b.clone(), vec![m2.id]).await.unwrap(),
        0,
        "already delivered"
    );

    // Oldest entry first: M2 and M3 were queued by the commit, M1 after it.
    let taken = store.take_offline(b.clone(), 1000).await.unwrap().messages;
    assert_eq!(taken, vec![m3.clone(), m1.clone()]);
    assert_eq!(
        store.take_offline(b.clone(), 1000).await.unwrap().messages,
        vec![]
    );
    assert_eq!(
        store
            .ack_offline(b.clone(), vec![m1.id, m3.id])
            .await
            .unwrap(),
        0,
        "taken entries are delivered"
    );
    assert!(
        !store.queue_offline(b.clone(), m1.id).await.unwrap(),
        "a delivered entry is not queued again"
    );
    assert_eq!(store.take_offline(b, 1000).await.unwrap().messages, vec![]);
    assert_eq!(store.take_offline(a, 1000).await.unwrap().messages, vec![]);
}

async fn purge_expired(store: &Store) {
    let [(a, _), (b, _)] = pair(store, "Ann", "Bob").await;
    let x = conversation(store, &a, &b).await;
    let old = message(x, &a, 1);
    assert_eq!(
        commit(store, vec![write(&old, &b, true)]).await,
        vec![Ok(())]
    );
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_ms();
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    let new = message(x, &a, 2);
    assert_eq!(
        commit(store, vec![write(&new, &b, true)]).await,
        vec![Ok(())]
    );

    let later = now_ms() + 60_000;
    store
        .store_refresh_token([1; 32], a.clone(), now_ms() - 1)
        .await
        .unwrap();
    store
        .store_refresh_token([2; 32], a.clone(), later)
        .await
        .unwrap();

    // The entry queued before the cutoff and the expired token go.
    let interval = Duration::from_secs(60);
    assert_eq!(
        store.purge_expired(cutoff, interval).await.unwrap(),
        Some(Purged {
            offline_entries: 1,
            refresh_tokens: 1,
        })
    );

    // Right away again, with a cutoff after everything: SQLite is the whole
    // hub and purges on every call; on PostgreSQL a run happened within the
    // interval, so this one does nothing.
    let again = store
        .purge_expired(now_ms() + 1_000, interval)
        .await
        .unwrap();
    let left = store.take_offline(b.clone(), 1000).await.unwrap().messages;
    match store.engine() {
        "sqlite" => {
            assert_eq!(
                again,
                Some(Purged {
                    offline_entries: 1,
                    refresh_tokens: 0,
                })
            );
            assert_eq!(left, vec![], "everything was purged");
        }
        "postgres" => {
            assert_eq!(again, None, "another run happened within the interval");
            assert_eq!(left, vec![new], "only the old entry was purged");
        }
        other => panic!("unknown engine {other}"),
    }
    assert_eq!(store.take_offline(b, 1000).await.unwrap().messages, vec![]);

    // The live token survived, the expired one did not.
    assert!(store
        .rotate_refresh_token([2; 32], [3; 32], later)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .rotate_refresh_token([1; 32], [4; 32], later)
            .await
            .unwrap(),
        None
    );
    // A purged entry's message is still stored.
    assert_eq!(store.message(old.id).await.unwrap(), Some(old));
}
