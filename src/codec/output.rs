//! The `receipt_complete` record: `{room_id, message_id, sender_id, seq, sent_at,
//! completed_at, required_readers}`, times as RFC 3339 UTC, keyed by room id.

use serde::Serialize;

use super::time::format_millis;
use crate::receipts::ReceiptComplete;

#[derive(Serialize)]
struct Wire<'a> {
    room_id: &'a str,
    message_id: &'a str,
    sender_id: &'a str,
    seq: u64,
    sent_at: String,
    completed_at: String,
    required_readers: u32,
}

/// The record's value; its key is the room id.
pub fn encode_receipt(r: &ReceiptComplete) -> Vec<u8> {
    let wire = Wire {
        room_id: &r.room_id,
        message_id: &r.message_id,
        sender_id: &r.sender_id,
        seq: r.seq,
        sent_at: format_millis(r.sent_at),
        completed_at: format_millis(r.completed_at),
        required_readers: r.required_readers,
    };
    serde_json::to_vec(&wire).expect("serializing plain strings and numbers cannot fail")
}
