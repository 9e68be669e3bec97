//! `/openapi.json` stays true: it documents exactly the routes the hub
//! serves, and every documented operation, called for real, answers with one
//! of its documented statuses.

use std::collections::BTreeSet;

use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn document(app: &TestApp) -> Value {
    let mut res = app
        .http()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn the_document_lists_exactly_the_served_routes() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    // The route table, read from its source.
    let source = include_str!("../../src/http/mod.rs");
    let served: BTreeSet<String> = source
        .split("resource(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(documented, served);

    // A method a path does not serve is a 405 whose Allow lists the documented ones.
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let url = app.url(
            &path
                .replace("{pubkey}", &"ab".repeat(32))
                .replace("{conversation_id}", &uuid::Uuid::new_v4().to_string()),
        );
        let res = app.http().request(Method::PATCH, url).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 405, "PATCH {path}");
        let allow: BTreeSet<String> = res
            .headers()
            .get("Allow")
            .unwrap()
            .to_str()
            .unwrap()
            .split(", ")
            .map(str::to_owned)
            .collect();
        let methods: BTreeSet<String> = operations
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        assert_eq!(allow, methods, "Allow of {path}");
    }
}

#[actix_web::test]
async fn every_documented_operation_answers_as_documented() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let conversation = alice.open_conversation(&bob).await;
    let sent = alice.send_http(&bob, &conversation, "doc").await;
    let challenge = app.client().challenge().await.unwrap();

    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, op) in operations.as_object().unwrap() {
            let url_path = path
                .replace("{pubkey}", &bob.pubkey)
                .replace("{conversation_id}", &conversation);
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/api/auth/verify") => Some(json!({
                    "public_key": alice.pubkey, "challenge_id": challenge.challenge_id,
                    "signature": "00".repeat(64)})),
                ("post", "/api/auth/refresh") => Some(json!({"refresh_token": "unknown"})),
                ("post", "/api/dm/keys") => {
                    Some(json!({"x25519_pubkey": hex::encode(alice.identity.x25519_public())}))
                }
                ("post", "/api/dm/conversations") => Some(json!({"recipient_pubkey": bob.pubkey})),
                ("post", "/api/dm/messages") => Some(
                    serde_json::to_value(united_hub::client::send_body(
                        None,
                        &conversation,
                        &alice.seal(&bob, &conversation, "x"),
                        now_ms(),
                    ))
                    .unwrap(),
                ),
                ("post", "/api/dm/offline/ack") => Some(json!({"message_ids": [sent.id]})),
                ("post", _) => None,
                _ => None,
            };
            let secured = op.get("security").is_some();
            let documented: BTreeSet<String> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let request = |auth: bool| {
                let mut req = app.http().request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&url_path),
                );
                if auth {
                    req = req.bearer_auth(alice.token());
                }
                if path == "/ws" {
                    // A plain GET: not an upgrade, but it must still authenticate first.
                    req = req.insert_header(("X-Probe", "1"));
                }
                req
            };
            let status = match &body {
                Some(b) => request(true).send_json(b).await.unwrap().status().as_u16(),
                None => request(true).send().await.unwrap().status().as_u16(),
            };
            let allowed = documented.contains(&status.to_string());
            assert!(
                allowed,
                "{method} {path} answered {status}, documented {documented:?}"
            );
            if secured {
                let status = request(false).send().await.unwrap().status().as_u16();
                assert_eq!(status, 401, "{method} {path} without a token");
                assert!(
                    documented.contains("401"),
                    "{method} {path} does not document its 401"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 17);
}
