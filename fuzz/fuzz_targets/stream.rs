//! Byte-stream frames (TCP, TLS, Unix sockets): arbitrary bytes read in chunks whose size is
//! the first byte never panic the decoder, never yield a message over the limit, and decode to
//! the same messages (or the same error) as the bytes read all at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lhttp_proto::stream::{Decoded, decode};

/// The default `limits.max_message_size`.
const MAX_MESSAGE: usize = 64 * 1024;

/// The messages (`None` for a heartbeat) of `chunks` read one after another, undecoded bytes
/// kept in front of the next chunk, and the error that ended reading, if any.
fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Option<Vec<u8>>>, bool) {
    let mut held = Vec::new();
    let mut got = Vec::new();
    for chunk in chunks {
        held.extend_from_slice(chunk);
        loop {
            let Ok((decoded, used)) = decode(&held, MAX_MESSAGE) else {
                return (got, true);
            };
            assert!(used <= held.len());
            let more = match decoded {
                Decoded::Message(m) => {
                    assert!(!m.is_empty() && m.len() <= MAX_MESSAGE);
                    got.push(Some(m.to_vec()));
                    true
                }
                Decoded::Heartbeat => {
                    got.push(None);
                    true
                }
                Decoded::Incomplete { frame_len } => {
                    assert!(frame_len.is_none_or(|len| len > held.len()));
                    false
                }
            };
            held.drain(..used);
            if !more {
                break;
            }
        }
    }
    (got, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, stream)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(read_size).max(1);
    assert_eq!(feed(stream.chunks(read_size)), feed([stream]));
});
