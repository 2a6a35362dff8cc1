//! `Message::parse` on arbitrary bytes: never panics, and whatever it accepts re-encodes to
//! bytes of the announced length that parse back to an equal message.

#![no_main]

use bytes::Bytes;
use lhttp_proto::{Limits, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let wire = msg.to_bytes();
    assert_eq!(wire.len(), msg.encoded_len());
    // Re-encoding normalizes line endings to CRLF and always writes the blank line, so it may
    // grow the message past the default size limit: re-parse without one.
    let unlimited = Limits {
        max_size: usize::MAX,
        ..Limits::default()
    };
    let again = Message::parse_with(wire, &unlimited).expect("re-encoded message must parse");
    assert_eq!(again, msg);
    let _ = msg.parts();
});
