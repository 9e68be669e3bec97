//! Login challenges, WebSocket tickets, users and refresh tokens.

use deadpool_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::db::rows::{self, Rotation};
use crate::db::{DbError, LoginOutcome};
use crate::model::{Pubkey, User};
use crate::tickets::TicketHolder;

/// Why a challenge was not stored.
pub enum ChallengeRefused {
    /// The client already holds `cap` live challenges; the oldest expires
    /// at this time (ms).
    OverCap { oldest_expires_at: u64 },
}

/// Stores a challenge, unless `owner` (a client key's hash) already holds
/// `cap` live ones. Concurrent requests of one client may overshoot the cap
/// by how many run at once: the count and the insert are one statement but
/// not serialised per client.
pub async fn insert_challenge(
    client: &Client,
    id: Uuid,
    challenge: &[u8; 32],
    expires_at: u64,
    owner: Option<&[u8]>,
    cap: i64,
    now: u64,
) -> Result<Result<(), ChallengeRefused>, DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO auth_challenges (id, challenge, expires_at, client) \
             SELECT $1, $2, $3, $4 \
             WHERE $4::bytea IS NULL OR (SELECT COUNT(*) FROM auth_challenges \
                 WHERE client = $4 AND expires_at > $5) < $6",
        )
        .await?;
    let inserted = client
        .execute(
            &stmt,
            &[
                &id,
                &&challenge[..],
                &(expires_at as i64),
                &owner,
                &(now as i64),
                &cap,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let oldest: Option<i64> = client
        .query_one(
            "SELECT MIN(expires_at) FROM auth_challenges WHERE client = $1 AND expires_at > $2",
            &[&owner, &(now as i64)],
        )
        .await?
        .get(0);
    Ok(Err(ChallengeRefused::OverCap {
        oldest_expires_at: oldest.map_or(now, |t| t as u64),
    }))
}

/// Removes a challenge and returns its bytes and expiry, if it existed.
pub async fn take_challenge(client: &Client, id: Uuid) -> Result<Option<([u8; 32], u64)>, DbError> {
    let stmt = client
        .prepare_cached("DELETE FROM auth_challenges WHERE id = $1 RETURNING challenge, expires_at")
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    Ok(Some((
        rows::fixed::<_, 32>(&row, 0, "stored challenge has the wrong length")?,
        row.try_get::<_, i64>(1)? as u64,
    )))
}

/// Purges expired challenges and WebSocket tickets; returns how many.
pub async fn purge_challenges(client: &Client, now: u64) -> Result<u64, DbError> {
    let now = now as i64;
    let challenges = client
        .execute(
            "DELETE FROM auth_challenges WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
    let tickets = client
        .execute("DELETE FROM ws_tickets WHERE expires_at <= $1", &[&now])
        .await?;
    Ok(challenges + tickets)
}

/// Stores a WebSocket ticket's hash, unless its user already holds `cap`
/// live ones; says whether it was stored.
pub async fn insert_ticket(
    client: &Client,
    hash: &[u8; 32],
    holder: &TicketHolder,
    expires_at: u64,
    cap: i64,
    now: u64,
) -> Result<bool, DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO ws_tickets (ticket_hash, user_pubkey, token_expires_at, expires_at) \
             SELECT $1, $2, $3, $4 \
             WHERE (SELECT COUNT(*) FROM ws_tickets WHERE user_pubkey = $2 AND expires_at > $5) < $6",
        )
        .await?;
    let inserted = client
        .execute(
            &stmt,
            &[
                &&hash[..],
                &holder.user.as_str(),
                &(holder.token_expires_at as i64),
                &(expires_at as i64),
                &(now as i64),
                &cap,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Removes a ticket and returns what it stood for, if it was live.
pub async fn take_ticket(
    client: &Client,
    hash: &[u8; 32],
    now: u64,
) -> Result<Option<TicketHolder>, DbError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM ws_tickets WHERE ticket_hash = $1 \
             RETURNING user_pubkey, token_expires_at, expires_at",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&&hash[..]]).await? else {
        return Ok(None);
    };
    if row.try_get::<_, i64>(2)? <= now as i64 {
        return Ok(None);
    }
    Ok(Some(TicketHolder {
        user: Pubkey::from_db(row.try_get(0)?),
        token_expires_at: row.try_get::<_, i64>(1)? as u64,
    }))
}

pub async fn user(client: &impl GenericClient, pubkey: &Pubkey) -> Result<Option<User>, DbError> {
    let stmt = client
        .prepare_cached("SELECT public_key, display_name FROM users WHERE public_key = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&pubkey.as_str()]).await?;
    row.map(|r| {
        Ok(User {
            public_key: Pubkey::from_db(r.try_get(0)?),
            display_name: r.try_get(1)?,
        })
    })
    .transpose()
}

pub async fn login_user(
    client: &Client,
    pubkey: &Pubkey,
    display_name: Option<&str>,
    now: u64,
) -> Result<LoginOutcome, DbError> {
    let Some(name) = display_name else {
        return Ok(match user(client, pubkey).await? {
            Some(user) => LoginOutcome::User(user),
            None => LoginOutcome::NeedsDisplayName,
        });
    };
    let stmt = client
        .prepare_cached(
            "INSERT INTO users (public_key, display_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (public_key) DO UPDATE SET display_name = $2, updated_at = $3",
        )
        .await?;
    client
        .execute(&stmt, &[&pubkey.as_str(), &name, &(now as i64)])
        .await?;
    Ok(LoginOutcome::User(User {
        public_key: pubkey.clone(),
        display_name: name.to_owned(),
    }))
}

/// Stores a login's first refresh token, the start of a new family.
pub async fn insert_refresh_token(
    client: &Client,
    hash: &[u8; 32],
    user: &Pubkey,
    now: u64,
    expires_at: u64,
) -> Result<(), DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &&hash[..],
                &user.as_str(),
                &(now as i64),
                &(expires_at as i64),
                &Uuid::new_v4().to_string(),
            ],
        )
        .await?;
    Ok(())
}

/// Consumes a live refresh token and stores its successor (same family),
/// atomically; an already used token revokes its family (see SQLite's
/// `writes::rotate_refresh_token`).
pub async fn rotate_refresh_token(
    client: &mut Client,
    old_hash: &[u8; 32],
    new_hash: &[u8; 32],
    now: u64,
    expires_at: u64,
) -> Result<Option<User>, DbError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT user_pubkey, family, used, expires_at FROM refresh_tokens \
             WHERE token_hash = $1 FOR UPDATE",
            &[&&old_hash[..]],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (owner, family, used, expiry): (String, String, bool, i64) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    match rows::rotation(used, expiry, now) {
        Rotation::RevokeFamily => {
            let revoked = tx
                .execute("DELETE FROM refresh_tokens WHERE family = $1", &[&family])
                .await?;
            tx.commit().await?;
            tracing::warn!(
                revoked,
                "a rotated refresh token was used again; its family is revoked"
            );
            return Ok(None);
        }
        Rotation::Refuse => return Ok(None),
        Rotation::Rotate => {}
    }
    tx.execute(
        "UPDATE refresh_tokens SET used = true WHERE token_hash = $1",
        &[&&old_hash[..]],
    )
    .await?;
    let owner = Pubkey::from_db(owner);
    let found = user(&tx, &owner).await?;
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &&new_hash[..],
            &owner.as_str(),
            &(now as i64),
            &(expires_at as i64),
            &family,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(found)
}
