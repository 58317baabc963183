//! JSON codecs: input records to [`Event`](crate::receipts::Event)s, and `receipt_complete`
//! records to JSON. The JSON Schemas in `topology/schemas/` describe the same shapes.

pub mod input;
pub mod output;
mod time;

pub use input::{decode_input, decode_input_of, decode_read_event, decode_room_event, DecodeError, DecodeLimits};
pub use output::{encode_receipt, encode_receipt_into};
pub use time::{format_millis, parse_time_str};
