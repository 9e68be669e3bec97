//! Golden Envelopes for the page's hand-written protobuf codec
//! (web/proto.js): each one encoded here by prost, with the value the page
//! must decode it to (every field present, defaults included, bytes as
//! `{"hex": ...}`), and must encode back to the same bytes.

use serde_json::{json, Value};
use united_hub::proto::dm;
use united_hub::proto::ws::{AuthRequest, AuthResponse, ErrorResponse};
use united_hub::proto::{Envelope, Payload};

use prost::Message as _;

/// How many envelopes `envelopes_json` holds.
pub const COUNT: usize = 11;

fn b(hex_bytes: &[u8]) -> Value {
    json!({ "hex": hex::encode(hex_bytes) })
}

fn seq(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start.wrapping_add(i as u8)).collect()
}

fn message(n: u8, display_name: &str) -> (dm::EncryptedDmMessage, Value) {
    let m = dm::EncryptedDmMessage {
        id: format!("7d1f6c1e-0000-4000-8000-00000000000{n}"),
        conversation_id: "0b1e9a7e-5d1c-4a55-9a3e-1c2d3e4f5a6b".into(),
        sender_pubkey: "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8".into(),
        encrypted_payload: seq(n, 200).into(),
        nonce: seq(0x64, 24).into(),
        ephemeral_pubkey: if n == 0 { vec![] } else { seq(0x90, 32) }.into(),
        timestamp: 1_764_000_000_123 + u64::from(n),
        server_sequence: 300 * u64::from(n),
        sender_display_name: display_name.into(),
    };
    let v = json!({
        "id": m.id,
        "conversation_id": m.conversation_id,
        "sender_pubkey": m.sender_pubkey,
        "encrypted_payload": b(&m.encrypted_payload),
        "nonce": b(&m.nonce),
        "ephemeral_pubkey": b(&m.ephemeral_pubkey),
        "timestamp": m.timestamp,
        "server_sequence": m.server_sequence,
        "sender_display_name": m.sender_display_name,
    });
    (m, v)
}

fn conversation(n: u64) -> (dm::DmConversation, Value) {
    let c = dm::DmConversation {
        id: format!("3c0e2f1a-1111-4222-8333-44445555666{n}"),
        participant_a_pubkey: "11".repeat(32),
        participant_b_pubkey: "ee".repeat(32),
        participant_a_display_name: "Alice".into(),
        participant_b_display_name: "Zoë 👋".into(),
        created_at: 1_764_000_000_000,
        last_message_at: if n == 0 { 0 } else { 1_764_000_999_999 },
        last_message_preview: String::new(),
    };
    let v = json!({
        "id": c.id,
        "participant_a_pubkey": c.participant_a_pubkey,
        "participant_b_pubkey": c.participant_b_pubkey,
        "participant_a_display_name": c.participant_a_display_name,
        "participant_b_display_name": c.participant_b_display_name,
        "created_at": c.created_at,
        "last_message_at": c.last_message_at,
        "last_message_preview": "",
    });
    (c, v)
}

/// The golden file: `[{"name", "hex", "envelope"}]`.
pub fn envelopes_json() -> String {
    let (m1, v1) = message(1, "Alice");
    let (m2, v2) = message(2, "Zoë 👋");
    let (m0, v0) = message(0, "");
    let (c0, cv0) = conversation(0);
    let (c1, cv1) = conversation(1);
    let send = dm::DmSendRequest {
        id: "5b0c6c4e-9a8f-4e55-8d1a-2b3c4d5e6f70".into(),
        conversation_id: m1.conversation_id.clone(),
        encrypted_payload: m1.encrypted_payload.clone(),
        nonce: m1.nonce.clone(),
        ephemeral_pubkey: m1.ephemeral_pubkey.clone(),
        timestamp: m1.timestamp,
    };
    let cases: Vec<(&str, &str, Payload, Value)> = vec![
        (
            "send request",
            "7",
            Payload::DmSendRequest(send.clone()),
            json!({"dm_send_request": {
                "id": send.id, "conversation_id": send.conversation_id,
                "encrypted_payload": b(&send.encrypted_payload), "nonce": b(&send.nonce),
                "ephemeral_pubkey": b(&send.ephemeral_pubkey), "timestamp": send.timestamp,
            }}),
        ),
        (
            "message event",
            "",
            Payload::DmMessageEvent(dm::DmMessageEvent {
                message: Some(m2.clone()),
            }),
            json!({"dm_message_event": {"message": v2.clone()}}),
        ),
        (
            "send response without ephemeral key",
            "r9",
            Payload::DmSendResponse(dm::DmSendResponse { message: Some(m0) }),
            json!({"dm_send_response": {"message": v0}}),
        ),
        (
            "history response",
            "12345",
            Payload::DmHistoryResponse(dm::DmHistoryResponse {
                messages: vec![m2, m1],
                has_more: true,
            }),
            json!({"dm_history_response": {"messages": [v2, v1], "has_more": true}}),
        ),
        (
            "conversation list response",
            "2",
            Payload::DmConversationListResponse(dm::DmConversationListResponse {
                conversations: vec![c1.clone(), c0],
            }),
            json!({"dm_conversation_list_response": {"conversations": [cv1.clone(), cv0]}}),
        ),
        (
            "empty conversation list request",
            "1",
            Payload::DmConversationListRequest(dm::DmConversationListRequest {}),
            json!({"dm_conversation_list_request": {}}),
        ),
        (
            "conversation created event",
            "",
            Payload::DmConversationCreatedEvent(dm::DmConversationCreatedEvent {
                conversation: Some(c1),
            }),
            json!({"dm_conversation_created_event": {"conversation": cv1}}),
        ),
        (
            "error with retry",
            "8",
            Payload::Error(ErrorResponse {
                code: 429,
                message: "slow down".into(),
                request_id: "8".into(),
                error_code: "rate_limited".into(),
                retry_after: 3,
            }),
            json!({"error": {"code": 429, "message": "slow down", "request_id": "8",
                "error_code": "rate_limited", "retry_after": 3}}),
        ),
        (
            "auth request",
            "99",
            Payload::AuthRequest(AuthRequest {
                access_token: "eyJhbGciOiJIUzI1NiJ9.e30.sig".into(),
            }),
            json!({"auth_request": {"access_token": "eyJhbGciOiJIUzI1NiJ9.e30.sig"}}),
        ),
        (
            "auth response",
            "99",
            Payload::AuthResponse(AuthResponse {
                expires_at: 1_764_000_900,
            }),
            json!({"auth_response": {"expires_at": 1_764_000_900u64}}),
        ),
        (
            "key rotated event",
            "",
            Payload::DmKeyRotatedEvent(dm::DmKeyRotatedEvent {
                user_pubkey: "ab".repeat(32),
                new_x25519_pubkey: seq(0xf0, 32).into(),
                timestamp: 1,
            }),
            json!({"dm_key_rotated_event": {"user_pubkey": "ab".repeat(32),
                "new_x25519_pubkey": b(&seq(0xf0, 32)), "timestamp": 1}}),
        ),
    ];
    assert_eq!(cases.len(), COUNT);
    let out: Vec<Value> = cases
        .into_iter()
        .map(|(name, request_id, payload, mut expected)| {
            let env = Envelope {
                request_id: request_id.into(),
                payload: Some(payload),
            };
            let bytes = env.encode_to_vec();
            // The Rust side reads its own golden bytes back.
            assert_eq!(Envelope::decode(&bytes[..]).unwrap(), env, "{name}");
            expected["request_id"] = json!(request_id);
            json!({"name": name, "hex": hex::encode(bytes), "envelope": expected})
        })
        .collect();
    serde_json::to_string_pretty(&out).unwrap()
}
