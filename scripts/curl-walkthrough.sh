#!/usr/bin/env bash
# The README's walk-through, runnable: two users log in with curl and openssl,
# publish X25519 keys, open a conversation and exchange a message.
#
#   cargo run --release &          # a hub on 127.0.0.1:1984
#   scripts/curl-walkthrough.sh    # or: HUB=http://host:port scripts/curl-walkthrough.sh
#
# Needs curl, jq, xxd and OpenSSL 3 (for Ed25519 and X25519 keys). curl cannot
# encrypt, so the "ciphertext" here is random bytes: the hub cannot tell the
# difference, which is the point. Real clients use `united-hub send` or the
# reference client (docs/encryption.md).
set -euo pipefail
HUB=${HUB:-http://127.0.0.1:1984}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
json=(-H 'content-type: application/json')

# login NAME -> prints the access token; keys stay in $work/NAME.*
login() {
  local name=$1
  openssl genpkey -algorithm ed25519 -out "$work/$name.pem" 2>/dev/null
  local pub
  pub=$(openssl pkey -in "$work/$name.pem" -pubout -outform DER | tail -c 32 | xxd -p -c 64)
  echo "$pub" > "$work/$name.pub"
  local ch id hexch sig
  ch=$(curl -sf -X POST "$HUB/api/auth/challenge")
  id=$(jq -r .challenge_id <<<"$ch")
  hexch=$(jq -r .challenge <<<"$ch")
  # The signature covers "united-hub auth v1\n" followed by the 32 challenge bytes.
  { printf 'united-hub auth v1\n'; xxd -r -p <<<"$hexch"; } > "$work/$name.msg"
  sig=$(openssl pkeyutl -sign -inkey "$work/$name.pem" -rawin -in "$work/$name.msg" | xxd -p -c 128)
  curl -sf "$HUB/api/auth/verify" "${json[@]}" \
    -d "{\"public_key\":\"$pub\",\"challenge_id\":\"$id\",\"signature\":\"$sig\",\"display_name\":\"$name\"}" |
    jq -r .access_token
}

echo "== log in Alice and Bob"
ALICE=$(login Alice)
BOB=$(login Bob)
ALICE_PUB=$(cat "$work/Alice.pub")
BOB_PUB=$(cat "$work/Bob.pub")
echo "Alice is $ALICE_PUB"
echo "Bob   is $BOB_PUB"

echo "== Bob publishes an X25519 key"
openssl genpkey -algorithm x25519 -out "$work/bob-x.pem" 2>/dev/null
BOB_X=$(openssl pkey -in "$work/bob-x.pem" -pubout -outform DER | tail -c 32 | xxd -p -c 64)
curl -sf "$HUB/api/dm/keys" "${json[@]}" -H "Authorization: Bearer $BOB" \
  -d "{\"x25519_pubkey\":\"$BOB_X\"}" | jq .

echo "== Alice fetches it and opens a conversation"
curl -sf "$HUB/api/dm/keys/$BOB_PUB" -H "Authorization: Bearer $ALICE" | jq -c .
curl -sf "$HUB/api/dm/conversations" "${json[@]}" -H "Authorization: Bearer $ALICE" \
  -d "{\"recipient_pubkey\":\"$BOB_PUB\"}" > "$work/conv.json"
jq -c . "$work/conv.json"
CONV=$(jq -r .id "$work/conv.json")

echo "== Alice sends (Bob has no live session, so it is queued for him too)"
PAYLOAD=$(head -c 48 /dev/urandom | base64 -w0)
NONCE=$(head -c 24 /dev/urandom | base64 -w0)
EPH=$(head -c 32 /dev/urandom | base64 -w0)
MSG_ID=$(cat /proc/sys/kernel/random/uuid)
TS=$(date +%s%3N)
curl -sf -w '\nHTTP %{http_code}\n' "$HUB/api/dm/messages" "${json[@]}" -H "Authorization: Bearer $ALICE" \
  -d "{\"id\":\"$MSG_ID\",\"conversation_id\":\"$CONV\",\"encrypted_payload\":\"$PAYLOAD\",\"nonce\":\"$NONCE\",\"ephemeral_pubkey\":\"$EPH\",\"timestamp\":$TS}"

echo "== the same id again is an idempotent resend (200, nothing delivered twice)"
curl -s -o /dev/null -w 'HTTP %{http_code}\n' "$HUB/api/dm/messages" "${json[@]}" -H "Authorization: Bearer $ALICE" \
  -d "{\"id\":\"$MSG_ID\",\"conversation_id\":\"$CONV\",\"encrypted_payload\":\"$PAYLOAD\",\"nonce\":\"$NONCE\",\"ephemeral_pubkey\":\"$EPH\",\"timestamp\":$TS}"

echo "== Bob lists conversations, reads history and his offline queue"
curl -sf "$HUB/api/dm/conversations" -H "Authorization: Bearer $BOB" | jq -c '.conversations[] | {id, last_message_at}'
curl -sf "$HUB/api/dm/messages/$CONV?limit=10" -H "Authorization: Bearer $BOB" | jq -c '{has_more, seqs: [.messages[].server_sequence]}'
curl -sf "$HUB/api/dm/offline" -H "Authorization: Bearer $BOB" | jq -c '[.messages[].id]'
curl -sf "$HUB/api/dm/offline" -H "Authorization: Bearer $BOB" | jq -c '[.messages[].id]'
curl -sf "$HUB/api/dm/offline/ack" "${json[@]}" -H "Authorization: Bearer $BOB" -d "{\"message_ids\":[\"$MSG_ID\"]}"
echo
echo "== a stranger gets 403"
EVE=$(login Eve)
curl -s -w '\nHTTP %{http_code}\n' "$HUB/api/dm/messages/$CONV" -H "Authorization: Bearer $EVE"
