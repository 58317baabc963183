//! The `receipt_complete` record: `{room_id, message_id, sender_id, seq, sent_at,
//! completed_at, required_readers}`, times as RFC 3339 UTC, keyed by room id.
//!
//! Written by hand, not through serde: the benchmark's chat encodes a receipt for every ten
//! input events, and serde's way (two `String`s for the times through chrono's formatter, then the object)
//! took 2.7% of the processing thread, this 1.7% (`perf`, BENCHMARKS.md, 5 December, a ninth
//! session). It gives byte for byte what serde_json gives for the same fields (a property
//! test below).

use super::time::format_millis;
use crate::receipts::{Millis, ReceiptComplete};

/// The record's value; its key is the room id.
pub fn encode_receipt(r: &ReceiptComplete) -> Vec<u8> {
    let mut out = Vec::new();
    encode_receipt_into(&mut out, r);
    out
}

/// [`encode_receipt`] into `out`, which it clears first: a producer that copies each value
/// reuses one buffer for all its receipts, without an allocation each.
pub fn encode_receipt_into(out: &mut Vec<u8>, r: &ReceiptComplete) {
    out.clear();
    let ids = r.room_id.len() + r.message_id.len() + r.sender_id.len();
    out.reserve(ids + 160);
    out.extend_from_slice(b"{\"room_id\":");
    json_string(out, &r.room_id);
    out.extend_from_slice(b",\"message_id\":");
    json_string(out, &r.message_id);
    out.extend_from_slice(b",\"sender_id\":");
    json_string(out, &r.sender_id);
    out.extend_from_slice(b",\"seq\":");
    digits(out, r.seq, 1);
    out.extend_from_slice(b",\"sent_at\":");
    json_time(out, r.sent_at);
    out.extend_from_slice(b",\"completed_at\":");
    json_time(out, r.completed_at);
    out.extend_from_slice(b",\"required_readers\":");
    digits(out, u64::from(r.required_readers), 1);
    out.push(b'}');
}

/// `v` in decimal, zero-padded to `width` digits (at most 20). `core::fmt` with padding was
/// most of the time encoding took.
fn digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i.min(buf.len() - width)..]);
}

/// `s` as a JSON string: as it is between quotes when nothing in it needs escaping (ids
/// almost never do), else escaped by serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Epoch milliseconds as a JSON string of [`format_millis`]'s form,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, computed here for the years 0 to 9999 and left to
/// `format_millis` (chrono) outside them.
fn json_time(out: &mut Vec<u8>, ms: Millis) {
    /// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in epoch milliseconds.
    const FIRST: Millis = -62_167_219_200_000;
    const END: Millis = 253_402_300_800_000;
    if !(FIRST..END).contains(&ms) {
        out.push(b'"');
        out.extend_from_slice(format_millis(ms).as_bytes());
        out.push(b'"');
        return;
    }
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let (secs, milli) = (ms_of_day / 1000, ms_of_day % 1000);
    // Every field has its width here, so the digits go into their places in one array that is
    // appended whole: appended field by field, each field's copy of its variable length was a
    // call to `memcpy` (14 a receipt). All of them non-negative: the year from 0, the rest
    // from Euclid's remainders.
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let fields = [
        (year, 1, 4),
        (month, 6, 2),
        (day, 9, 2),
        (secs / 3600, 12, 2),
        (secs / 60 % 60, 15, 2),
        (secs % 60, 18, 2),
        (milli, 21, 3),
    ];
    for (v, at, width) in fields {
        let mut v = v as u64;
        for place in text[at..at + width].iter_mut().rev() {
            *place = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    out.extend_from_slice(&text);
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;

    /// The encoding before it was written by hand: serde_json over these fields.
    fn by_serde(r: &ReceiptComplete) -> Vec<u8> {
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
        serde_json::to_vec(&Wire {
            room_id: &r.room_id,
            message_id: &r.message_id,
            sender_id: &r.sender_id,
            seq: r.seq,
            sent_at: format_millis(r.sent_at),
            completed_at: format_millis(r.completed_at),
            required_readers: r.required_readers,
        })
        .unwrap()
    }

    fn receipt(
        ids: [&str; 3],
        seq: u64,
        sent_at: Millis,
        completed_at: Millis,
        required_readers: u32,
    ) -> ReceiptComplete {
        ReceiptComplete {
            room_id: ids[0].into(),
            message_id: ids[1].into(),
            sender_id: ids[2].into(),
            seq,
            sent_at,
            completed_at,
            required_readers,
        }
    }

    #[test]
    fn a_receipt_is_the_spec_s_object_with_its_times_in_utc() {
        let r = receipt(["12345", "m1", "alice"], 7, 1_795_860_000_000, 1_795_860_000_250, 2);
        assert_eq!(
            String::from_utf8(encode_receipt(&r)).unwrap(),
            r#"{"room_id":"12345","message_id":"m1","sender_id":"alice","seq":7,"sent_at":"2026-11-28T10:00:00.000Z","completed_at":"2026-11-28T10:00:00.250Z","required_readers":2}"#
        );
    }

    #[test]
    fn times_at_the_edges_of_the_calendar_and_of_the_fast_path_read_as_chrono_writes_them() {
        let edges = [
            0,
            -1,
            1,
            86_399_999,
            86_400_000,
            951_782_400_000, // 2000-02-29
            -62_167_219_200_000,
            -62_167_219_200_001,
            253_402_300_799_999,
            253_402_300_800_000,
            i64::MIN,
            i64::MAX,
        ];
        for ms in edges {
            let r = receipt(["r", "m", "s"], 1, ms, ms, 1);
            assert_eq!(String::from_utf8(encode_receipt(&r)), String::from_utf8(by_serde(&r)), "at {ms}");
        }
    }

    #[test]
    fn receipts_encoded_into_one_buffer_are_each_as_encoded_alone() {
        let (a, b) = (receipt(["a-long-room", "m1", "alice"], 7, 0, 1, 2), receipt(["r", "m2", "bob"], 8, 3, 4, 1));
        let mut buffer = Vec::new();
        encode_receipt_into(&mut buffer, &a);
        assert_eq!(buffer, encode_receipt(&a));
        encode_receipt_into(&mut buffer, &b);
        assert_eq!(buffer, encode_receipt(&b), "the buffer holds the second receipt alone");
    }

    proptest! {
        #[test]
        fn a_receipt_is_encoded_byte_for_byte_as_serde_json_encodes_it(
            room in any::<String>(),
            message in "[a-z0-9\"\\\\\u{0}-\u{1f}\u{7f}é]{0,12}",
            sender in any::<String>(),
            seq in any::<u64>(),
            sent_at in any::<i64>(),
            completed_at in -70_000_000_000_000i64..260_000_000_000_000,
            required_readers in any::<u32>(),
        ) {
            let r = receipt([&room, &message, &sender], seq, sent_at, completed_at, required_readers);
            prop_assert_eq!(String::from_utf8(encode_receipt(&r)).unwrap(), String::from_utf8(by_serde(&r)).unwrap());
        }
    }
}
