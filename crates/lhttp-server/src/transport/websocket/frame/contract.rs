//! The decoder's contract, checked on every decode: driven by the fuzz target `websocket`
//! (through [`crate::fuzz_support`]) and by the decoder's unit tests.
use super::{Decoder, Incoming, Violation};

/// The default `limits.max_message_size`: the fuzzer drives the decoder a default server runs.
const MAX_MESSAGE: usize = 64 * 1024;

/// Largest payload of a control frame (RFC 6455, section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Decodes `data[1..]` as the bytes a WebSocket client sent, read the way a connection reads
/// its socket: `data[0]` bytes at a time (all at once for 0), the bytes a decode did not use
/// kept in front of the next read. Panics if the decoder breaks its contract: it uses more
/// bytes than it has, yields an item out of no bytes, yields nothing while a whole frame
/// waits, yields a message over the limit, a control payload over 125 bytes or a close code
/// no client may send, or decodes differently from the same bytes read all at once.
pub fn websocket_frames(data: &[u8]) {
    let Some((&read_size, stream)) = data.split_first() else {
        return;
    };
    let read_size = match read_size {
        0 => stream.len().max(1),
        n => usize::from(n),
    };
    let read_in_chunks = feed(&mut Decoder::new(MAX_MESSAGE), stream.chunks(read_size));
    let read_at_once = feed(&mut Decoder::new(MAX_MESSAGE), [stream]);
    assert_eq!(
        read_in_chunks, read_at_once,
        "{read_size}-byte reads decode differently"
    );
}

/// What `decoder` made of `chunks` read one after another, the bytes a decode did not use kept
/// in front of the next chunk as the socket keeps them: the items, then the violation that
/// ended the connection or the number of bytes left undecoded. Checks the contract of
/// [`Decoder::decode`] on every call (also used by the decoder's unit tests).
pub(crate) fn feed<'a>(
    decoder: &mut Decoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Incoming>, Result<usize, Violation>) {
    let mut pending = Vec::new();
    let mut items = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            let (item, used) = match decoder.decode(&pending) {
                Ok(decoded) => decoded,
                // The connection is closed: nothing after a violation is read.
                Err(violation) => return (items, Err(violation)),
            };
            assert!(
                used <= pending.len(),
                "used {used} of {} bytes",
                pending.len()
            );
            pending.drain(..used);
            let Some(item) = item else {
                // What is left is the start of a frame, which yields nothing until more bytes
                // arrive: otherwise the connection would wait for bytes it already has.
                assert_eq!(decoder.decode(&pending), Ok((None, 0)), "{pending:02x?}");
                break;
            };
            assert!(used > 0, "{item:?} out of no bytes");
            check(&item, decoder.max_message());
            items.push(item);
        }
    }
    (items, Ok(pending.len()))
}

/// Checks what RFC 6455 and the limit say of one decoded item.
fn check(item: &Incoming, max_message: usize) {
    match item {
        Incoming::Text(message) => {
            assert!(message.len() <= max_message, "{}", message.len());
            assert!(
                std::str::from_utf8(message).is_ok(),
                "text message not UTF-8"
            );
        }
        Incoming::Binary(message) => assert!(message.len() <= max_message, "{}", message.len()),
        Incoming::Ping(payload) => assert!(payload.len() <= MAX_CONTROL_PAYLOAD),
        Incoming::Pong | Incoming::Close(None) | Incoming::Fragment => {}
        // Section 7.4: registered codes a client may send, and the private range.
        Incoming::Close(Some(code)) => assert!(
            matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
            "close code {code}"
        ),
    }
}
