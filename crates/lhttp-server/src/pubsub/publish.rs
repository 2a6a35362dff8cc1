//! Publishing: turning a message into the bytes each channel's subscribers receive.
//!
//! A subscriber receives the publisher's command, headers (in the publisher's order) and body,
//! with `publish` set to the one channel it came through, `subscribe`, `unsubscribe` and
//! `upstream` removed, and the `request-id` of a plain publish (not of a request) removed. The copy for a channel is encoded once and the same bytes are queued for
//! every subscriber of that channel.

use bytes::Bytes;
use lhttp_proto::{Message, PREFIX};
use serde::Serialize;

use lhttp_proto::names;

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
/// server may set them (a publisher must not be able to forge a queue delivery, nor a
/// history message's `offset` and `epoch`).
pub(crate) fn is_stripped(name: &str) -> bool {
    // By length first: this runs for every header of every published message, and most
    // headers (`publish`, `request-id`, an application's own) have no candidate of their length.
    let candidates: &[&str] = match name.len() {
        3 => &[names::ACK],
        5 => &[names::QUEUE, names::DRAIN, names::EPOCH],
        6 => &[names::CREDIT, names::OFFSET],
        8 => &[names::UPSTREAM],
        9 => &[names::SUBSCRIBE],
        11 => &[names::UNSUBSCRIBE, names::DELIVERY_ID],
        _ => &[],
    };
    candidates.iter().any(|n| name.eq_ignore_ascii_case(n))
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
    if extra.is_empty() && is_copy_for(message, channel) {
        // The usual case: a client published to one channel, in the canonical form. The bytes
        // it sent are the copy, shared rather than encoded again.
        if let Some(received) = message.as_received() {
            return received.clone();
        }
    }
    // The exact length first: `Bytes` takes a buffer that is exactly full as it is, and must
    // allocate a header of its own for one that is not.
    let line = |name: &str, value: &str| name.len() + 1 + value.len() + 2;
    let mut len = PREFIX.len() + message.command().len() + 2 + 2 + message.body().len();
    let mut has_publish = false;
    for (name, value, is_publish) in headers_for_channel(message, channel) {
        has_publish |= is_publish;
        len += line(name, value);
    }
    if !has_publish {
        len += line(names::PUBLISH, channel);
    }
    len += extra.iter().map(|(n, v)| line(n, v)).sum::<usize>();

    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(PREFIX);
    buf.extend_from_slice(message.command().as_bytes());
    buf.extend_from_slice(b"\r\n");
    let mut put = |name: &str, value: &str| {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b':');
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    };
    for (name, value, _) in headers_for_channel(message, channel) {
        put(name, value);
    }
    if !has_publish {
        put(names::PUBLISH, channel);
    }
    for (name, value) in extra {
        put(name, value);
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(message.body());
    debug_assert_eq!(buf.len(), len);
    Bytes::from(buf)
}

/// True when the copy for `channel` is `message` itself: [`headers_for_channel`] keeps every
/// header as it is (none stripped, the one `publish` header already naming just `channel`) and
/// has a `publish` header, so none is added.
fn is_copy_for(message: &Message, channel: &str) -> bool {
    let mut has_publish = false;
    let mut copy = headers_for_channel(message, channel);
    let unchanged = message.headers().iter().all(|header| match copy.next() {
        Some((name, value, is_publish)) => {
            has_publish |= is_publish;
            std::ptr::eq(name, header.name()) && value == header.value()
        }
        None => false,
    });
    unchanged && has_publish
}

fn is_request_id(name: &str) -> bool {
    name.len() == names::REQUEST_ID.len() && name.eq_ignore_ascii_case(names::REQUEST_ID)
}

fn is_publish(name: &str) -> bool {
    name.len() == names::PUBLISH.len() && name.eq_ignore_ascii_case(names::PUBLISH)
}

/// The headers of the copy for `channel`, in the publisher's order: stripped ones left out,
/// the first `publish` header set to `channel` (and marked true), later ones left out.
///
/// The `request-id` of a plain publish is left out too: it asked the server for an answer
/// (`ok` or `error`) and means nothing to subscribers; SDKs put one on every publish they
/// confirm, which would otherwise reach every subscriber. A request (with `reply-to`) keeps
/// it, so that whoever handles the request sees which one of the requester's it is.
fn headers_for_channel<'a>(
    message: &'a Message,
    channel: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str, bool)> {
    let mut wrote_publish = false;
    let is_request = message.headers().get(names::REPLY_TO).is_some();
    message.headers().iter().filter_map(move |header| {
        let name = header.name();
        if is_stripped(name) || (!is_request && is_request_id(name)) {
            return None;
        }
        if is_publish(name) {
            if wrote_publish {
                return None;
            }
            wrote_publish = true;
            return Some((name, channel, true));
        }
        Some((name, header.value(), false))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_server_headers_are_stripped_in_any_case() {
        for name in [
            "subscribe",
            "unsubscribe",
            "upstream",
            "queue",
            "delivery-id",
            "credit",
            "ack",
            "drain",
            "Subscribe",
            "DELIVERY-ID",
            "aCk",
        ] {
            assert!(is_stripped(name), "{name} must be stripped");
        }
        for name in [
            "publish",
            "request-id",
            "reply-to",
            "acks",
            "queues",
            "x",
            "",
        ] {
            assert!(!is_stripped(name), "{name} must be kept");
        }
    }

    #[test]
    fn a_canonical_message_to_one_channel_is_forwarded_as_it_came() {
        let wire = Bytes::from_static(b"LHTTP/1.0 chat\r\npublish:room\r\nk:v\r\n\r\nhi");
        let message = Message::parse(wire.clone()).unwrap();
        let copy = encode_for_channel(&message, "room");
        assert_eq!(copy, wire);
        assert_eq!(
            copy.as_ptr(),
            wire.as_ptr(),
            "the received bytes are shared, not copied"
        );
        // Anything that makes the copy differ is encoded: a header only the server may set, a
        // second channel, a sloppy form, extra headers.
        for (input, channel, expected) in [
            (
                &b"LHTTP/1.0 chat\r\npublish:room\r\ndelivery-id:7\r\n\r\nhi"[..],
                "room",
                &b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi"[..],
            ),
            (
                b"LHTTP/1.0 chat\r\npublish:room other\r\n\r\nhi",
                "room",
                b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi",
            ),
            (
                b"LHTTP/1.0 chat\npublish: room\n\nhi",
                "room",
                b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi",
            ),
        ] {
            let message = Message::parse(Bytes::from_static(input)).unwrap();
            assert_eq!(&encode_for_channel(&message, channel)[..], expected);
        }
        let with_extra = encode_for_channel_with(&message, "room", &[("queue", "g")]);
        assert_eq!(
            &with_extra[..],
            b"LHTTP/1.0 chat\r\npublish:room\r\nk:v\r\nqueue:g\r\n\r\nhi"
        );
    }

    #[test]
    fn the_copy_for_a_channel_names_only_that_channel() {
        let message = Message::parse(Bytes::from_static(
            b"LHTTP/1.0 chat\r\npublish:a b\r\nsubscribe:c\r\nk:v\r\n\r\nhi",
        ))
        .unwrap();
        assert_eq!(
            &encode_for_channel(&message, "b")[..],
            b"LHTTP/1.0 chat\r\npublish:b\r\nk:v\r\n\r\nhi"
        );
    }

    #[test]
    fn a_publish_confirmation_id_stays_with_the_publisher_but_a_request_keeps_its_id() {
        let publish = Message::parse(Bytes::from_static(
            b"LHTTP/1.0 chat\r\npublish:room\r\nRequest-Id:7\r\nk:v\r\n\r\nhi",
        ))
        .unwrap();
        assert_eq!(
            &encode_for_channel(&publish, "room")[..],
            b"LHTTP/1.0 chat\r\npublish:room\r\nk:v\r\n\r\nhi"
        );
        let request = Message::parse(Bytes::from_static(
            b"LHTTP/1.0 q\r\npublish:users\r\nreply-to:_inbox.n.r.k\r\nrequest-id:7\r\n\r\nid",
        ))
        .unwrap();
        assert_eq!(
            &encode_for_channel(&request, "users")[..],
            b"LHTTP/1.0 q\r\npublish:users\r\nreply-to:_inbox.n.r.k\r\nrequest-id:7\r\n\r\nid"
        );
    }
}
