//! What the in-process benches share: reading one framed message from an in-process pipe.

use bytes::{Buf, BytesMut};
use lhttp_proto::stream::{Decoded, decode};
use tokio::io::{AsyncReadExt, DuplexStream};

/// The next message's bytes from `pipe`, skipping heartbeats; `read` keeps what was read past
/// it. Frames may be up to `max_frame` bytes.
pub async fn next_message(
    pipe: &mut DuplexStream,
    read: &mut BytesMut,
    max_frame: usize,
) -> BytesMut {
    loop {
        let (decoded, used) = decode(read, max_frame).expect("the server frames well");
        match decoded {
            Decoded::Message(message) => {
                let start = message.as_ptr() as usize - read.as_ptr() as usize;
                let end = start + message.len();
                let mut frame = read.split_to(used);
                frame.truncate(end);
                frame.advance(start);
                return frame;
            }
            Decoded::Heartbeat => read.advance(used),
            Decoded::Incomplete { .. } => {
                read.advance(used);
                read.reserve(max_frame);
                let n = pipe.read_buf(read).await.expect("read");
                assert!(n > 0, "the server closed the connection");
            }
        }
    }
}
