//! Identity: challenge, verify, refresh, tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use united_hub::client::crypto::Identity;
use united_hub::json::VerifyBody;

use crate::helpers::*;

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let mut res = app
        .http()
        .post(app.url(path))
        .send_json(&body)
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[actix_web::test]
async fn login_registers_then_logs_in_again() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let mut client = app.client();

    let first = client.login(&id, Some("  Ada  ")).await.unwrap();
    assert_eq!(first.token_type, "Bearer");
    assert_eq!(first.expires_in, 900);
    assert_eq!(first.user.public_key, id.public_key_hex());
    assert_eq!(first.user.display_name, "Ada", "stored trimmed");

    // A later login needs no display name; one given renames.
    let again = client.login(&id, None).await.unwrap();
    assert_eq!(again.user.display_name, "Ada");
    let renamed = client.login(&id, Some("Ada L.")).await.unwrap();
    assert_eq!(renamed.user.display_name, "Ada L.");

    let me = client.user(&id.public_key_hex()).await.unwrap();
    assert_eq!(me.display_name, "Ada L.");
    // Upper-case hex is accepted and normalised.
    let upper = client
        .user(&id.public_key_hex().to_uppercase())
        .await
        .unwrap();
    assert_eq!(upper.public_key, id.public_key_hex());
    let unknown = client.user(&"ab".repeat(32)).await.unwrap_err();
    assert_eq!(unknown.status(), Some(404));
}

/// Answers a fresh challenge with a signature over `message(challenge)`.
async fn verify_with(
    app: &TestApp,
    id: &Identity,
    sign: impl Fn(&[u8; 32]) -> [u8; 64],
    display_name: Option<&str>,
) -> (u16, Value) {
    let challenge = app.client().challenge().await.unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&challenge.challenge, &mut bytes).unwrap();
    let body = VerifyBody {
        public_key: id.public_key_hex(),
        challenge_id: challenge.challenge_id,
        signature: hex::encode(sign(&bytes)),
        display_name: display_name.map(str::to_owned),
    };
    post_json(app, "/api/auth/verify", serde_json::to_value(body).unwrap()).await
}

#[actix_web::test]
async fn a_wrong_signature_is_refused() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let other = Identity::generate();
    let (status, body) = verify_with(&app, &id, |c| other.sign_login(c), Some("x")).await;
    assert_eq!((status, error_code(&body)), (401, "bad_signature"));
}

#[actix_web::test]
async fn a_signature_without_the_prefix_is_refused() {
    use ed25519_dalek::{Signer, SigningKey};
    let app = spawn_app().await;
    let id = Identity::generate();
    let key = SigningKey::from_bytes(&id.seed());
    let (status, body) = verify_with(&app, &id, |c| key.sign(c).to_bytes(), Some("x")).await;
    assert_eq!((status, error_code(&body)), (401, "bad_signature"));
    // The same key with the prefix works: the prefix was the only difference.
    let (status, _) = verify_with(&app, &id, |c| id.sign_login(c), Some("x")).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_challenge_is_consumed_by_its_first_attempt() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let client = app.client();
    let challenge = client.challenge().await.unwrap();

    // A failed attempt consumes it...
    let wrong = Identity::generate();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(&challenge.challenge, &mut bytes).unwrap();
    let bad = VerifyBody {
        public_key: id.public_key_hex(),
        challenge_id: challenge.challenge_id.clone(),
        signature: hex::encode(wrong.sign_login(&bytes)),
        display_name: Some("x".into()),
    };
    let (status, _) = post_json(
        &app,
        "/api/auth/verify",
        serde_json::to_value(&bad).unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // ...so the right answer afterwards is too late.
    let err = client.verify(&id, &challenge, Some("x")).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some("unknown_challenge"))
    );

    // And a successful one cannot be replayed.
    let fresh = client.challenge().await.unwrap();
    client.verify(&id, &fresh, Some("x")).await.unwrap();
    let replay = client.verify(&id, &fresh, None).await.unwrap_err();
    assert_eq!(replay.code(), Some("unknown_challenge"));
}

#[actix_web::test]
async fn an_expired_challenge_is_refused() {
    let app = spawn_app_with(|s| s.challenge_ttl = 0).await;
    let id = Identity::generate();
    let client = app.client();
    let challenge = client.challenge().await.unwrap();
    let err = client.verify(&id, &challenge, Some("x")).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some("challenge_expired"))
    );
}

#[actix_web::test]
async fn an_unknown_challenge_is_refused() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let body = json!({
        "public_key": id.public_key_hex(),
        "challenge_id": uuid::Uuid::new_v4().to_string(),
        "signature": "00".repeat(64),
        "display_name": "x",
    });
    let (status, body) = post_json(&app, "/api/auth/verify", body).await;
    assert_eq!((status, error_code(&body)), (401, "unknown_challenge"));
}

#[actix_web::test]
async fn a_first_login_needs_a_display_name() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let (status, body) = verify_with(&app, &id, |c| id.sign_login(c), None).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    for bad in ["   ", "a\u{1}b", &"x".repeat(65)] {
        let (status, body) = verify_with(&app, &id, |c| id.sign_login(c), Some(bad)).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_request"),
            "{bad:?}"
        );
    }
    // Nothing was registered by the refusals.
    let (status, body) = verify_with(&app, &id, |c| id.sign_login(c), None).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
}

#[actix_web::test]
async fn malformed_verify_bodies_are_400() {
    let app = spawn_app().await;
    let cases = [
        json!({"public_key": "zz", "challenge_id": uuid::Uuid::new_v4().to_string(), "signature": "00".repeat(64)}),
        json!({"public_key": "ab".repeat(32), "challenge_id": "nope", "signature": "00".repeat(64)}),
        json!({"public_key": "ab".repeat(32), "challenge_id": uuid::Uuid::new_v4().to_string(), "signature": "00"}),
        json!({"public_key": "ab".repeat(32)}),
    ];
    for body in cases {
        let (status, answer) = post_json(&app, "/api/auth/verify", body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_request"),
            "{body}"
        );
    }
}

#[actix_web::test]
async fn refresh_rotates_and_the_old_token_dies() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let mut client = app.client();
    let first = client.login(&id, Some("Rita")).await.unwrap();

    let second = client.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.user.public_key, id.public_key_hex());
    client
        .conversations()
        .await
        .expect("the new access token works");

    let reused = client.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(
        (reused.status(), reused.code()),
        (Some(401), Some("invalid_refresh_token"))
    );
    let garbage = client.refresh("not-a-token").await.unwrap_err();
    assert_eq!(garbage.code(), Some("invalid_refresh_token"));
}

/// The OAuth 2.0 security BCP: presenting an already rotated refresh token
/// (someone replays a stolen one) revokes its whole family, the newest
/// token included; other logins (other families) are untouched.
#[actix_web::test]
async fn a_replayed_rotated_refresh_token_revokes_its_family() {
    let app = spawn_app().await;
    let id = Identity::generate();
    let mut phone = app.client();
    let mut laptop = app.client();
    let first = phone.login(&id, Some("Rita")).await.unwrap();
    let other_family = laptop.login(&id, None).await.unwrap();
    let second = phone.refresh(&first.refresh_token).await.unwrap();
    let third = phone.refresh(&second.refresh_token).await.unwrap();

    // The thief replays the first token: refused, and the family dies.
    let replay = phone.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Some("invalid_refresh_token"));
    let newest = phone.refresh(&third.refresh_token).await.unwrap_err();
    assert_eq!(
        newest.code(),
        Some("invalid_refresh_token"),
        "the newest token of the family is revoked too"
    );
    // The laptop's login is another family.
    laptop
        .refresh(&other_family.refresh_token)
        .await
        .expect("another family still works");
}

fn secret(app: &TestApp) -> Vec<u8> {
    app.jwt_secret.clone()
}

fn forge(app: &TestApp, alg: Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(&secret(app)),
    )
    .unwrap()
}

async fn status_with_token(app: &TestApp, token: &str) -> (u16, Value) {
    let mut res = app
        .http()
        .get(app.url("/api/dm/conversations"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[actix_web::test]
async fn bad_tokens_get_401_json() {
    let app = spawn_app().await;
    let user = app.user("Tok").await;
    let now = now_ms() / 1000;
    let sub = user.pubkey.clone();
    let (ok, _) = status_with_token(&app, user.token()).await;
    assert_eq!(ok, 200);

    let expired = forge(
        &app,
        Algorithm::HS256,
        json!({"sub": sub, "iat": now - 100, "exp": now - 10, "iss": "united-hub"}),
    );
    let (status, body) = status_with_token(&app, &expired).await;
    assert_eq!((status, error_code(&body)), (401, "token_expired"));

    let mut tampered = user.token().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let payload = {
        use base64::Engine as _;
        let claims = json!({"sub": sub, "iat": now, "exp": now + 600, "iss": "united-hub"});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let hs512 = forge(
        &app,
        Algorithm::HS512,
        json!({"sub": sub, "iat": now, "exp": now + 600, "iss": "united-hub"}),
    );
    let no_exp = forge(
        &app,
        Algorithm::HS256,
        json!({"sub": sub, "iat": now, "iss": "united-hub"}),
    );
    let wrong_iss = forge(
        &app,
        Algorithm::HS256,
        json!({"sub": sub, "iat": now, "exp": now + 600, "iss": "evil"}),
    );
    let wrong_type = forge(
        &app,
        Algorithm::HS256,
        json!({"sub": 42, "iat": now, "exp": now + 600, "iss": "united-hub"}),
    );
    let bad_sub = forge(
        &app,
        Algorithm::HS256,
        json!({"sub": "alice", "iat": now, "exp": now + 600, "iss": "united-hub"}),
    );
    for (name, token) in [
        ("tampered", tampered.as_str()),
        ("alg none", alg_none.as_str()),
        ("HS512", hs512.as_str()),
        ("no exp", no_exp.as_str()),
        ("wrong iss", wrong_iss.as_str()),
        ("wrong claim type", wrong_type.as_str()),
        ("sub not a pubkey", bad_sub.as_str()),
        ("garbage", "garbage"),
    ] {
        let (status, body) = status_with_token(&app, token).await;
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{name}");
    }
    let mut res = app
        .http()
        .get(app.url("/api/dm/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(error_code(&body), "unauthorized");
}
