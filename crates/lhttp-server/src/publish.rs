//! Publishing: turning a message into the bytes each channel's subscribers receive.
//!
//! A subscriber receives the publisher's command, headers (in the publisher's order) and body,
//! with `publish` set to the one channel it came through and `subscribe`, `unsubscribe` and
//! `upstream` removed. The copy for a channel is encoded once and the same bytes are queued for
//! every subscriber of that channel.

use bytes::{BufMut, Bytes, BytesMut};
use lhttp_proto::{Message, PREFIX};
use serde::Serialize;

use crate::builtin::names;

/// What a publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Channels the message was published to.
    pub channels: usize,
    /// Local subscribers it was queued for, over all channels.
    pub deliveries: usize,
    /// Queue groups that took it (handed to a member, or waiting for one). Left out of the
    /// JSON answer of `POST /publish` when 0, so that plain pub/sub sees the original shape.
    #[serde(skip_serializing_if = "is_zero")]
    pub queued: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Headers a subscriber never sees: they acted on the publisher's connection, or only the
/// server may set them (a publisher must not be able to forge a queue delivery).
pub(crate) fn is_stripped(name: &str) -> bool {
    [
        names::SUBSCRIBE,
        names::UNSUBSCRIBE,
        names::UPSTREAM,
        names::QUEUE,
        names::DELIVERY_ID,
        names::CREDIT,
        names::ACK,
        names::DRAIN,
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Encodes the copy of `message` that subscribers of `channel` receive.
pub(crate) fn encode_for_channel(message: &Message, channel: &str) -> Bytes {
    encode_for_channel_with(message, channel, &[])
}

/// [`encode_for_channel`] with `extra` headers after the publisher's (the server's own, such
/// as a queue delivery's `queue` and `delivery-id`).
pub(crate) fn encode_for_channel_with(
    message: &Message,
    channel: &str,
    extra: &[(&str, &str)],
) -> Bytes {
    let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 3).sum();
    let mut buf = BytesMut::with_capacity(message.encoded_len() + channel.len() + extra_len);
    buf.put_slice(PREFIX);
    buf.put_slice(message.command().as_bytes());
    buf.put_slice(b"\r\n");
    let mut wrote_publish = false;
    for header in message.headers() {
        let name = header.name();
        if is_stripped(name) {
            continue;
        }
        let value = if name.eq_ignore_ascii_case(names::PUBLISH) {
            if wrote_publish {
                continue;
            }
            wrote_publish = true;
            channel
        } else {
            header.value()
        };
        buf.put_slice(name.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    if !wrote_publish {
        buf.put_slice(names::PUBLISH.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(channel.as_bytes());
        buf.put_slice(b"\r\n");
    }
    for (name, value) in extra {
        buf.put_slice(name.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
    buf.put_slice(message.body());
    buf.freeze()
}
