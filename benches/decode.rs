//! Decoding input records, as allread's processing thread does for every record it polls, and
//! encoding the `receipt_complete` records it produces. Prints nanoseconds per record (the
//! best of five passes), each record once (cold) and a thousand records over and over (warm);
//! asserts nothing about speed.
//!
//!     cargo bench --bench decode
//!     cargo bench --bench decode -- 2000000     # records per case (default 1,000,000)
//!
//! Cases, each over records shaped as `allread sim` writes them (serde_json's compact form):
//! reads (`read_events`), messages with a body (`sent_at` an RFC 3339 string), joins; then
//! the same reads with a space after every `:` and `,`, as a hand-written client may send.

use std::hint::black_box;
use std::time::Instant;

use allread::codec::{decode_input, encode_receipt, encode_receipt_into, format_millis, DecodeLimits};
use allread::receipts::{Id, ReceiptComplete};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EPOCH: i64 = 1_795_860_000_000;

/// One case: its name, the topic its records come from, how to make record `i`, and whether
/// to space the JSON out.
type Case = (&'static str, &'static str, Box<dyn Fn(usize) -> serde_json::Value>, bool);

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let read = |i: usize| {
        json!({"room_id": format!("r{}", i % 1000), "user_id": format!("u{}_{}", i % 1000, i % 10),
            "message_id": format!("m{}_{}", i % 1000, i / 1000), "read_at": EPOCH + i as i64})
    };
    let cases: [Case; 4] = [
        ("read", "read_events", Box::new(read), false),
        (
            "message",
            "chatroom_r7",
            Box::new(|i| {
                json!({"type": "message", "message_id": format!("m{}_{}", i % 1000, i / 1000),
                    "sender_id": format!("u{}_{}", i % 1000, i % 10), "sent_at": format_millis(EPOCH + i as i64),
                    "body": "simulated"})
            }),
            false,
        ),
        (
            "join",
            "chatroom_r7",
            Box::new(
                |i| json!({"type": "join", "user_id": format!("u{}_{}", i % 1000, i % 10), "at": EPOCH + i as i64}),
            ),
            false,
        ),
        ("read, spaced", "read_events", Box::new(read), true),
    ];
    let limits = DecodeLimits::default();
    println!("decode: {n} records per case");
    for (name, topic, make, spaced) in cases {
        let records: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let text = serde_json::to_string(&make(i)).expect("JSON");
                if spaced {
                    text.replace(':', ": ").replace(',', ", ").into_bytes()
                } else {
                    text.into_bytes()
                }
            })
            .collect();
        // The best of 5 passes: this machine's single passes differ by a third.
        let decode_all = |records: &[Vec<u8>], times: usize| {
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    for _ in 0..times {
                        for r in records {
                            black_box(
                                decode_input(topic, "read_events", "chatroom_", black_box(r), &limits)
                                    .expect("decodes"),
                            );
                        }
                    }
                    started.elapsed().as_nanos() as f64 / (records.len() * times) as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        // Cold: every record once, as polled records come (out of the CPU's caches). Warm: the
        // first 1,000 over and over, the decoder's own work.
        let cold = decode_all(&records, 1);
        let warm = decode_all(&records[..1000.min(n)], n / 1000.min(n));
        println!("  {name:<13} cold {cold:6.1}, warm {warm:6.1} ns/record ({} bytes each)", records[0].len());
    }
    encode(n);
}

/// Encoding receipts shaped as the benchmark chat's: the best of five passes over `n`.
fn encode(n: usize) {
    let receipts: Vec<ReceiptComplete> = (0..n)
        .map(|i| ReceiptComplete {
            room_id: Id::from(format!("r{}", i % 1000).as_str()),
            message_id: Id::from(format!("m{}_{}", i % 1000, i / 1000).as_str()),
            sender_id: Id::from(format!("u{}_{}", i % 1000, i % 10).as_str()),
            seq: (i / 1000 + 1) as u64,
            sent_at: EPOCH + i as i64,
            completed_at: EPOCH + i as i64 + 250,
            required_readers: 9,
        })
        .collect();
    // Each into a new vector, and all into one (as allread's producer does: librdkafka copies).
    let best = |into_one: bool| {
        let mut buffer = Vec::new();
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for r in &receipts {
                    if into_one {
                        encode_receipt_into(&mut buffer, black_box(r));
                        black_box(&buffer);
                    } else {
                        black_box(encode_receipt(black_box(r)));
                    }
                }
                started.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (new, one) = (best(false), best(true));
    println!("encode: {n} receipts ({} bytes each)", encode_receipt(&receipts[0]).len());
    println!("  receipt       {new:6.1} ns/record, each into a new vector; {one:6.1} into one");
}
