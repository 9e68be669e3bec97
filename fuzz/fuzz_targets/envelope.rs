//! Arbitrary bytes as a WebSocket frame: decode the Envelope, classify it,
//! and validate the request exactly as a session does before running it.
//! Any input must end in a request or an error, never a panic.
//!
//!     cargo fuzz run envelope --sanitizer none -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use united_hub::config::defaults::MAX_PAYLOAD_BYTES;
use united_hub::service::ws::{decode_frame, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok((_request_id, payload)) = decode_frame(bytes::Bytes::copy_from_slice(data)) {
        let _ = parse(payload, MAX_PAYLOAD_BYTES);
    }
});
