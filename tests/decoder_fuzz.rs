//! Fuzz-style tests of the decoders: arbitrary bytes, and arbitrary mutations of valid
//! records, always give `Ok` or a typed error, never a panic.

use allread::codec::{decode_read_event, decode_room_event, DecodeError, DecodeLimits};
use proptest::prelude::*;

const VALID: &[&[u8]] = &[
    br#"{"type":"message","room_id":"r1","message_id":"m1","sender_id":"alice","sent_at":"2026-11-28T10:00:00Z","body":"hi"}"#,
    br#"{"type":"join","user_id":"bob","at":1795860000000}"#,
    br#"{"room_id":"r1","user_id":"bob","message_id":"m1","read_at":5,"scope":"message"}"#,
];

fn check(bytes: &[u8], limits: &DecodeLimits) {
    for result in [
        decode_room_event(bytes, Some("r1"), limits),
        decode_room_event(bytes, None, limits),
        decode_read_event(bytes, limits),
    ] {
        if let Err(e) = result {
            assert!(DecodeError::KINDS.contains(&e.kind()));
            assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&bytes, &DecodeLimits::default());
        check(&bytes, &DecodeLimits { max_record_bytes: 50, max_id_bytes: 3 });
    }

    #[test]
    fn mutated_records_never_panic(which in 0..3usize, edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6)) {
        let mut bytes = VALID[which].to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        check(&bytes, &DecodeLimits::default());
    }

    #[test]
    fn arbitrary_json_text_never_panics(s in r#"\{("[a-z_]{1,10}":("[^"\\]{0,8}"|-?[0-9]{1,20}(\.[0-9]+)?|true|null|\[\]|\{\}),?){0,8}\}"#) {
        check(s.as_bytes(), &DecodeLimits::default());
    }
}

#[test]
fn valid_examples_decode() {
    assert!(decode_room_event(VALID[0], Some("r1"), &DecodeLimits::default()).is_ok());
    assert!(decode_room_event(VALID[1], Some("r1"), &DecodeLimits::default()).is_ok());
    assert!(decode_read_event(VALID[2], &DecodeLimits::default()).is_ok());
}
