//! Protobuf types generated from `proto/` by `build.rs` (never committed).
//!
//! These are wire types: they are built at the edge (the session actor, the
//! fan-out encoder) and never kept in actor state.

/// `united.dm`: conversations, encrypted messages, keys and their requests.
pub mod dm {
    include!(concat!(env!("OUT_DIR"), "/united.dm.rs"));
}

/// `united.ws`: the `Envelope` every WebSocket frame carries.
pub mod ws {
    include!(concat!(env!("OUT_DIR"), "/united.ws.rs"));
}

/// `united.cluster`: what the nodes of a cluster publish to each other.
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/united.cluster.rs"));
}

pub use ws::envelope::Payload;
pub use ws::Envelope;

/// Encodes a server-initiated event once; every session gets the same bytes.
pub fn encode_event(payload: Payload) -> bytes::Bytes {
    encode_envelope(String::new(), payload)
}

/// Encodes one envelope.
pub fn encode_envelope(request_id: String, payload: Payload) -> bytes::Bytes {
    use prost::Message as _;
    Envelope {
        request_id,
        payload: Some(payload),
    }
    .encode_to_vec()
    .into()
}
