//! The JSON Schemas in `topology/schemas/` and the codec agree: on every example, the
//! schema accepts exactly what the decoder accepts, and what the encoder writes is valid.

use allread::codec::{decode_read_event, decode_room_event, encode_receipt, DecodeLimits};
use allread::receipts::ReceiptComplete;
use serde_json::Value;

fn validator(file: &str) -> jsonschema::Validator {
    let path = format!("{}/topology/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options().should_validate_formats(true).build(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (record, valid?) for a room topic whose room is "r1".
const ROOM_EXAMPLES: &[(&str, bool)] = &[
    (
        r#"{"type":"message","room_id":"r1","message_id":"m1","sender_id":"alice","sent_at":"2026-11-28T10:00:00Z","body":"hi"}"#,
        true,
    ),
    (r#"{"type":"message","message_id":"m1","sender_id":"alice","sent_at":1795860000000}"#, true),
    (r#"{"type":"message","message_id":7,"sender_id":8,"sent_at":1795860000000.0}"#, true),
    (
        r#"{"type":"message","message_id":"m1","sender_id":"alice","sent_at":"2026-11-28T10:00:00.123+05:30","extra":[1,2]}"#,
        true,
    ),
    (r#"{"type":"join","user_id":"bob","at":"2026-11-28T10:00:00Z"}"#, true),
    (r#"{"type":"leave","room_id":"r1","user_id":"bob","at":0}"#, true),
    (r#"{"type":"message","message_id":"m1","sender_id":"alice"}"#, false),
    (r#"{"type":"message","message_id":"","sender_id":"alice","sent_at":1}"#, false),
    (r#"{"type":"message","message_id":"m1","sender_id":null,"sent_at":1}"#, false),
    (r#"{"type":"message","message_id":"m1","sender_id":"a","sent_at":1.5}"#, false),
    (r#"{"type":"message","message_id":"m1","sender_id":"a","sent_at":"noon"}"#, false),
    (r#"{"type":"join","user_id":"bob"}"#, false),
    (r#"{"type":"join","user_id":["bob"],"at":1}"#, false),
    (r#"{"type":"typing","user_id":"bob","at":1}"#, false),
    (r#"{"user_id":"bob","at":1}"#, false),
    (r#"{"type":"leave","room_id":true,"user_id":"bob","at":1}"#, false),
    (r#"[{"type":"join"}]"#, false),
    (r#""join""#, false),
];

const READ_EXAMPLES: &[(&str, bool)] = &[
    (r#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":"2026-11-28T10:00:00Z"}"#, true),
    (r#"{"room_id":12345,"user_id":"bob","message_id":"m1","read_at":5,"scope":"message"}"#, true),
    (r#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":5,"scope":"up_to","device":"ios"}"#, true),
    (r#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":5,"scope":"all"}"#, false),
    (r#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":5,"scope":null}"#, false),
    (r#"{"room_id":"r1","user_id":"bob","read_at":5}"#, false),
    (r#"{"user_id":"bob","message_id":"m1","read_at":5}"#, false),
    (r#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":"5"}"#, false),
    (r#"{"room_id":"r1","user_id":{},"message_id":"m1","read_at":5}"#, false),
    (r#"17"#, false),
];

#[test]
fn room_event_schema_and_decoder_agree() {
    let schema = validator("room_event.schema.json");
    for (json, valid) in ROOM_EXAMPLES {
        let value: Value = serde_json::from_str(json).unwrap();
        let decoded = decode_room_event(json.as_bytes(), Some("r1"), &DecodeLimits::default());
        assert_eq!(schema.is_valid(&value), *valid, "schema on {json}");
        assert_eq!(decoded.is_ok(), *valid, "decoder on {json}: {decoded:?}");
    }
}

#[test]
fn read_event_schema_and_decoder_agree() {
    let schema = validator("read_event.schema.json");
    for (json, valid) in READ_EXAMPLES {
        let value: Value = serde_json::from_str(json).unwrap();
        let decoded = decode_read_event(json.as_bytes(), &DecodeLimits::default());
        assert_eq!(schema.is_valid(&value), *valid, "schema on {json}");
        assert_eq!(decoded.is_ok(), *valid, "decoder on {json}: {decoded:?}");
    }
}

#[test]
fn encoded_receipts_match_their_schema() {
    let schema = validator("receipt_complete.schema.json");
    let r = ReceiptComplete {
        room_id: "12345".into(),
        message_id: "m1".into(),
        sender_id: "alice".into(),
        seq: 1,
        sent_at: 1_795_860_000_000,
        completed_at: 1_795_860_000_250,
        required_readers: 2,
    };
    let value: Value = serde_json::from_slice(&encode_receipt(&r)).unwrap();
    assert!(schema.is_valid(&value), "{value}");
    assert_eq!(value["sent_at"], "2026-11-28T10:00:00.000Z");
    assert_eq!(value["completed_at"], "2026-11-28T10:00:00.250Z");
    let mut extra = value.clone();
    extra["body"] = "hello".into();
    assert!(!schema.is_valid(&extra), "no field beyond the spec's");
}
