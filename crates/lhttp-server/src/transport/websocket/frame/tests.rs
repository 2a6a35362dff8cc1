use super::contract::feed;
use super::*;

use std::{
    io::Cursor,
    path::{Path, PathBuf},
};

use proptest::{collection::vec, prelude::*, sample::Index};
use tokio_tungstenite::tungstenite::protocol::frame::{
    CloseFrame, Frame, FrameHeader,
    coding::{CloseCode, Control, Data, OpCode},
};

/// The server's default `limits.max_message_size`.
const MAX: usize = 64 * 1024;

/// Four different bytes, so a mask applied from the wrong offset changes the result.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// RFC 6455 masking (section 5.3) one byte at a time: the reference for [`unmask`].
fn xor(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[i % 4])
        .collect()
}

/// A frame header as a client writes it: FIN, the opcode, the MASK bit, the length in the
/// shortest of its three encodings, then the mask.
fn client_header(fin: bool, opcode: u8, len: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    if len <= 125 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out
}

/// A whole client frame, its payload masked with `mask`.
fn masked_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = client_header(fin, opcode, payload.len(), mask);
    out.extend_from_slice(&xor(payload, mask));
    out
}

/// A whole client frame masked with [`MASK`].
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(fin, opcode, payload, MASK)
}

/// `frame` as tungstenite's client side writes it, masked with `mask`.
fn tungstenite_client(mut frame: Frame, mask: [u8; 4]) -> Vec<u8> {
    frame.header_mut().mask = Some(mask);
    let mut out = Vec::new();
    frame
        .format(&mut out)
        .expect("writing to a Vec does not fail");
    out
}

fn text(payload: impl AsRef<[u8]>) -> Incoming {
    Incoming::Text(Bytes::copy_from_slice(payload.as_ref()))
}

fn binary(payload: impl AsRef<[u8]>) -> Incoming {
    Incoming::Binary(Bytes::copy_from_slice(payload.as_ref()))
}

fn ping(payload: impl AsRef<[u8]>) -> Incoming {
    Incoming::Ping(Bytes::copy_from_slice(payload.as_ref()))
}

/// The items of `bytes`, which must end with a whole frame and break no rule.
fn decode_all(bytes: &[u8]) -> Vec<Incoming> {
    match feed(&mut Decoder::new(MAX), [bytes]) {
        (items, Ok(0)) => items,
        (items, end) => panic!("after {items:?}: {end:?}"),
    }
}

/// How a decoder for messages of at most `max` bytes refuses `bytes`.
fn violation(max: usize, bytes: &[u8]) -> Violation {
    match feed(&mut Decoder::new(max), [bytes]) {
        (_, Err(violation)) => violation,
        (items, Ok(left)) => panic!("accepted {items:?}, {left} bytes left undecoded"),
    }
}

/// Asserts that `bytes` break RFC 6455 in a way answered with 1002.
fn assert_protocol_error(bytes: &[u8]) {
    let violation = violation(MAX, bytes);
    assert!(
        matches!(violation, Violation::Protocol(_)),
        "{bytes:02x?}: {violation:?}"
    );
    assert_eq!(violation.close_code(), 1002);
}

#[test]
fn messages_of_every_length_encoding_decode_to_the_bytes_sent() {
    let largest = 100_000;
    for size in [0, 1, 7, 8, 9, 125, 126, 65535, 65536, largest] {
        let letters: Vec<u8> = (b'a'..=b'z').cycle().take(size).collect();
        // Every byte value, so not UTF-8 from the first 0x80 on.
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        for (kind, payload) in [(Data::Text, letters), (Data::Binary, bytes)] {
            let opcode = u8::from(OpCode::Data(kind));
            let wire = tungstenite_client(
                Frame::message(payload.clone(), OpCode::Data(kind), true),
                MASK,
            );
            // The other tests build frames with the helper: it must write what a client does.
            assert_eq!(
                wire,
                frame(true, opcode, &payload),
                "{kind:?}, {size} bytes"
            );
            let header = match size {
                0..=125 => 2 + 4,
                126..=65535 => 4 + 4,
                _ => 10 + 4,
            };
            assert_eq!(
                wire.len(),
                header + size,
                "{size} bytes: not the expected encoding"
            );
            assert_eq!(
                Decoder::new(largest).decode(&wire),
                Ok((
                    Some(if kind == Data::Text {
                        text(&payload)
                    } else {
                        binary(&payload)
                    }),
                    wire.len()
                )),
                "{kind:?}, {size} bytes"
            );
        }
    }
}

#[test]
fn unmask_matches_bytewise_xor_for_every_length_up_to_64() {
    for len in 0..=64 {
        // The payload starts anywhere in the read buffer, not only at an aligned address.
        for offset in 0..8 {
            for mask in [MASK, [0xff; 4], [1, 2, 3, 4]] {
                let original: Vec<u8> = (0..offset + len).map(|i| (i * 13 + 5) as u8).collect();
                let mut buf = original.clone();
                unmask(&mut buf[offset..], mask);
                assert_eq!(
                    buf[..offset],
                    original[..offset],
                    "bytes before the payload"
                );
                assert_eq!(
                    buf[offset..],
                    xor(&original[offset..], mask),
                    "{len} bytes at offset {offset}, mask {mask:02x?}"
                );
            }
        }
    }
}

/// Frames of a client session, each with what decoding it yields: every length encoding, a
/// fragmented message with a control frame inside it, and a close frame.
fn session() -> Vec<(Vec<u8>, Option<Incoming>)> {
    let bytes: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
    vec![
        (frame(true, opcode::TEXT, b"hello"), Some(text("hello"))),
        (
            frame(true, opcode::PING, b"are you there"),
            Some(ping("are you there")),
        ),
        (frame(true, opcode::BINARY, &bytes), Some(binary(&bytes))),
        (
            frame(false, opcode::TEXT, "frag".as_bytes()),
            Some(Incoming::Fragment),
        ),
        (frame(true, opcode::PONG, b"p"), Some(Incoming::Pong)),
        (
            frame(true, opcode::CONTINUATION, "mënted".as_bytes()),
            Some(text("fragmënted")),
        ),
        (frame(true, opcode::BINARY, &[]), Some(binary([]))),
        (
            frame(true, opcode::CLOSE, b"\x03\xe8bye"),
            Some(Incoming::Close(Some(1000))),
        ),
    ]
}

/// The frames' bytes, one after another.
fn concat(frames: &[(Vec<u8>, Option<Incoming>)]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|(bytes, _)| bytes.iter().copied())
        .collect()
}

#[test]
fn every_prefix_of_a_stream_yields_only_its_complete_frames() {
    let frames = session();
    let stream = concat(&frames);
    for k in 0..=stream.len() {
        let mut expected = Vec::new();
        let mut complete = 0;
        for (bytes, item) in &frames {
            if complete + bytes.len() > k {
                break;
            }
            complete += bytes.len();
            expected.extend(item.clone());
        }
        let (items, end) = feed(&mut Decoder::new(MAX), [&stream[..k]]);
        assert_eq!(items, expected, "first {k} bytes");
        // Every whole frame is used up, a fragment of a message included.
        assert_eq!(end, Ok(k - complete), "first {k} bytes");
    }
}

#[test]
fn a_stream_split_anywhere_decodes_to_the_same_messages() {
    let frames = session();
    let stream = concat(&frames);
    let expected: Vec<Incoming> = frames.into_iter().filter_map(|(_, item)| item).collect();
    for at in 0..=stream.len() {
        let (first, second) = stream.split_at(at);
        let decoded = feed(&mut Decoder::new(MAX), [first, second]);
        assert_eq!(decoded, (expected.clone(), Ok(0)), "split at {at}");
    }
    let byte_by_byte = feed(&mut Decoder::new(MAX), stream.chunks(1));
    assert_eq!(byte_by_byte, (expected, Ok(0)));
}

/// A message as a client sends it: where its payload is cut into fragments, whether a ping
/// goes between two fragments, and the mask of its frames.
#[derive(Debug, Clone)]
struct Sent {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<Index>,
    ping_between: bool,
    mask: [u8; 4],
}

fn sent() -> impl Strategy<Value = Sent> {
    // Up to 320 bytes of text and 400 of binary: both sides of the 7-bit length limit.
    let payload = prop_oneof![
        "\\PC{0,80}".prop_map(|text: String| (true, text.into_bytes())),
        vec(any::<u8>(), 0..400).prop_map(|bytes| (false, bytes)),
    ];
    (
        payload,
        vec(any::<Index>(), 0..4),
        any::<bool>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), cuts, ping_between, mask)| Sent {
            text,
            payload,
            cuts,
            ping_between,
            mask,
        })
}

impl Sent {
    /// The frames of the message, and what decoding them yields, in order.
    fn frames(&self, out: &mut Vec<u8>, expected: &mut Vec<Incoming>) {
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|cut| cut.index(self.payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(self.payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let opcode = match (i, self.text) {
                (0, true) => opcode::TEXT,
                (0, false) => opcode::BINARY,
                _ => opcode::CONTINUATION,
            };
            let last = i + 1 == cuts.len();
            out.extend(masked_frame(
                last,
                opcode,
                &self.payload[start..end],
                self.mask,
            ));
            if !last {
                expected.push(Incoming::Fragment);
            }
            if self.ping_between && !last {
                out.extend(masked_frame(true, opcode::PING, &[i as u8], self.mask));
                expected.push(ping([i as u8]));
            }
            start = end;
        }
        expected.push(if self.text {
            text(&self.payload)
        } else {
            binary(&self.payload)
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn messages_read_in_any_chunks_come_out_whole_and_in_order(
        messages in vec(sent(), 1..6),
        chunk_sizes in vec(1..200usize, 1..20),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for message in &messages {
            message.frames(&mut stream, &mut expected);
        }
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        for size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at((*size).min(rest.len()));
            chunks.push(chunk);
            rest = after;
        }
        prop_assert_eq!(feed(&mut Decoder::new(MAX), chunks), (expected, Ok(0)));
        // The fuzz target's checks hold on what real clients send.
        let mut input = vec![chunk_sizes[0] as u8];
        input.extend_from_slice(&stream);
        super::contract::websocket_frames(&input);
    }

    #[test]
    fn the_fuzz_target_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..300)) {
        super::contract::websocket_frames(&bytes);
    }
}

#[test]
fn text_in_one_to_eight_fragments_with_pings_and_pongs_between_reassembles() {
    let sentence = "Grüße, 世界! 🎉 lhttp";
    let bytes = sentence.as_bytes();
    for n in 1..=8 {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..n {
            // Even cuts, which land inside multi-byte characters for most `n`.
            let part = &bytes[i * bytes.len() / n..(i + 1) * bytes.len() / n];
            let kind = if i == 0 { Data::Text } else { Data::Continue };
            let last = i + 1 == n;
            // Each frame with a mask of its own, as a client draws one per frame.
            let mask = [i as u8, 0x5a, 0xa5, !(i as u8)];
            let fragment = Frame::message(part.to_vec(), OpCode::Data(kind), last);
            wire.extend(tungstenite_client(fragment, mask));
            if last {
                break;
            }
            expected.push(Incoming::Fragment);
            if i % 2 == 0 {
                wire.extend(tungstenite_client(Frame::ping(vec![i as u8; i]), mask));
                expected.push(ping(vec![i as u8; i]));
            } else {
                wire.extend(tungstenite_client(Frame::pong(b"pong".to_vec()), mask));
                expected.push(Incoming::Pong);
            }
        }
        expected.push(text(sentence));
        assert_eq!(decode_all(&wire), expected, "{n} fragments");
    }
}

#[test]
fn a_character_cut_between_two_fragments_is_accepted() {
    let sentence = "€𝄞ü";
    let bytes = sentence.as_bytes();
    for at in 0..=bytes.len() {
        let mut wire = frame(false, opcode::TEXT, &bytes[..at]);
        wire.extend(frame(true, opcode::CONTINUATION, &bytes[at..]));
        assert_eq!(
            decode_all(&wire),
            [Incoming::Fragment, text(sentence)],
            "cut at {at}"
        );
    }
}

/// Payloads that are not UTF-8: a byte that never is, an overlong encoding, a surrogate, a
/// character cut off at the end, a code point above U+10FFFF.
const NOT_UTF8: [&[u8]; 5] = [
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"ok \xe2\x82",
    b"\xf4\x90\x80\x80",
];

#[test]
fn a_text_message_that_is_not_utf8_is_1007() {
    for payload in NOT_UTF8 {
        let violation = violation(MAX, &frame(true, opcode::TEXT, payload));
        assert_eq!(violation, Violation::InvalidUtf8, "{payload:02x?}");
        assert_eq!(violation.close_code(), 1007);
    }
    // Fragments that are each the start of a character, and the message ends after them.
    let mut wire = frame(false, opcode::TEXT, b"\xe2");
    wire.extend(frame(true, opcode::CONTINUATION, b"\x82"));
    assert_eq!(violation(MAX, &wire), Violation::InvalidUtf8);
}

#[test]
fn a_binary_message_need_not_be_utf8() {
    for payload in NOT_UTF8 {
        assert_eq!(
            decode_all(&frame(true, opcode::BINARY, payload)),
            [binary(payload)]
        );
    }
}

#[test]
fn an_unmasked_frame_is_1002() {
    assert_protocol_error(b"\x81\x05hello");
    assert_protocol_error(b"\x89\x00");
}

#[test]
fn reserved_bits_are_1002() {
    for bit in [0x40, 0x20, 0x10] {
        let mut wire = frame(true, opcode::TEXT, b"hello");
        wire[0] |= bit;
        assert_protocol_error(&wire);
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    for reserved in (0x3..=0x7).chain(0xB..=0xF) {
        assert_protocol_error(&frame(true, reserved, b"hello"));
    }
}

#[test]
fn a_control_frame_over_125_bytes_is_1002_from_its_header() {
    for control in [opcode::CLOSE, opcode::PING, opcode::PONG] {
        assert_protocol_error(&client_header(true, control, 126, MASK));
    }
    let largest = [b'p'; 125];
    assert_eq!(
        decode_all(&frame(true, opcode::PING, &largest)),
        [ping(largest)]
    );
}

#[test]
fn a_fragmented_control_frame_is_1002() {
    for control in [opcode::CLOSE, opcode::PING, opcode::PONG] {
        assert_protocol_error(&frame(false, control, b""));
    }
}

#[test]
fn a_continuation_with_nothing_to_continue_is_1002() {
    assert_protocol_error(&frame(true, opcode::CONTINUATION, b"more"));
    // Not even right after a whole message.
    let mut wire = frame(true, opcode::TEXT, b"whole");
    wire.extend(frame(false, opcode::CONTINUATION, b"more"));
    assert_protocol_error(&wire);
}

#[test]
fn a_new_message_inside_a_fragmented_one_is_1002() {
    for new in [opcode::TEXT, opcode::BINARY] {
        let mut wire = frame(false, opcode::TEXT, b"frag");
        wire.extend(frame(true, new, b"new"));
        assert_protocol_error(&wire);
    }
}

/// Asserts that `header` alone, with no payload (or mask) after it, is refused as too big for
/// a decoder for messages of at most `max` bytes.
fn assert_too_big(max: usize, header: &[u8]) {
    let violation = violation(max, header);
    assert_eq!(violation, Violation::TooBig(max), "{header:02x?}");
    assert_eq!(violation.close_code(), 1009);
}

#[test]
fn a_message_over_the_limit_is_1009_from_its_header_alone() {
    // The length, in each of its encodings, is enough: the payload is never waited for.
    assert_too_big(100, &client_header(true, opcode::TEXT, 101, MASK)[..2]);
    assert_too_big(1000, &client_header(true, opcode::BINARY, 1001, MASK)[..4]);
    assert_too_big(
        1000,
        &client_header(false, opcode::TEXT, 1 << 40, MASK)[..10],
    );
    let largest = vec![b'x'; 1000];
    let wire = frame(true, opcode::BINARY, &largest);
    assert_eq!(
        feed(&mut Decoder::new(1000), [&wire[..]]),
        (vec![binary(&largest)], Ok(0))
    );
}

#[test]
fn fragments_over_the_limit_are_1009_when_the_fragment_crossing_it_starts() {
    let mut wire = frame(false, opcode::TEXT, b"abcdef");
    wire.extend(&client_header(true, opcode::CONTINUATION, 5, MASK)[..2]);
    assert_too_big(10, &wire);
    let mut wire = frame(false, opcode::TEXT, b"abcdef");
    wire.extend(frame(true, opcode::CONTINUATION, b"ghij"));
    assert_eq!(
        feed(&mut Decoder::new(10), [&wire[..]]),
        (vec![Incoming::Fragment, text("abcdefghij")], Ok(0))
    );
}

/// A 64-bit length field holding `len`, for a final binary frame.
fn header_with_64_bit_length(len: u64) -> Vec<u8> {
    let mut header = vec![0x80 | opcode::BINARY, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&MASK);
    header
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_is_1002() {
    // Section 5.2: "the most significant bit MUST be 0". Not a message that is too big (1009)
    // but a frame that is not RFC 6455 at all.
    assert_protocol_error(&header_with_64_bit_length(1 << 63 | 5));
}

#[test]
fn a_huge_length_never_panics_even_without_a_limit() {
    // `limits.max_message_size` is a `usize` a program embedding the server may set to
    // `usize::MAX`; then no length is too big, and the largest must not overflow the
    // decoder's arithmetic.
    let mut wire = header_with_64_bit_length(u64::MAX);
    wire.extend_from_slice(b"payload");
    let violation = Decoder::new(usize::MAX).decode(&wire);
    assert!(
        matches!(violation, Err(Violation::Protocol(_))),
        "{violation:?}"
    );
}

#[test]
fn a_close_frame_with_a_1_byte_payload_is_1002() {
    assert_protocol_error(&frame(true, opcode::CLOSE, b"\x03"));
}

#[test]
fn close_codes_a_client_may_send_are_accepted_and_others_are_1002() {
    for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        let close = Frame::close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        }));
        let wire = tungstenite_client(close, MASK);
        assert_eq!(decode_all(&wire), [Incoming::Close(Some(code))]);
    }
    // 1005, 1006 and 1015 stand for "no code", "no close frame" and "TLS failed": never sent.
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_protocol_error(&frame(true, opcode::CLOSE, &payload));
    }
}

#[test]
fn a_close_reason_that_is_not_utf8_is_1007() {
    for reason in NOT_UTF8 {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        let violation = violation(MAX, &frame(true, opcode::CLOSE, &payload));
        assert_eq!(violation, Violation::InvalidUtf8, "{reason:02x?}");
        assert_eq!(violation.close_code(), 1007);
    }
}

#[test]
fn an_empty_close_frame_has_no_code() {
    let wire = tungstenite_client(Frame::close(None), MASK);
    assert_eq!(decode_all(&wire), [Incoming::Close(None)]);
}

#[test]
fn a_ping_payload_comes_back_for_the_pong_and_a_pong_is_reported() {
    let mut wire = tungstenite_client(Frame::ping(b"are you there?".to_vec()), MASK);
    wire.extend(tungstenite_client(Frame::ping(Vec::new()), MASK));
    wire.extend(tungstenite_client(Frame::pong(b"yes".to_vec()), MASK));
    assert_eq!(
        decode_all(&wire),
        [ping("are you there?"), ping([]), Incoming::Pong]
    );
}

/// Reads one server frame off the front of `wire` with tungstenite's parser: its header, the
/// header's length and the payload.
fn read_server_frame(wire: &[u8]) -> (FrameHeader, usize, &[u8]) {
    let mut cursor = Cursor::new(wire);
    let (header, len) = FrameHeader::parse(&mut cursor)
        .expect("a valid header")
        .expect("a whole header");
    let header_len = cursor.position() as usize;
    let payload = &wire[header_len..header_len + len as usize];
    (header, header_len, payload)
}

#[test]
fn server_frames_read_back_with_tungstenite() {
    let longest_reason: &'static str = "r".repeat(123).leak();
    let mut frames = Vec::new();
    for len in [0, 125, 126, 65535, 65536] {
        frames.push(Outgoing::Text(Bytes::from(vec![b't'; len])));
        frames.push(Outgoing::Binary(Bytes::from(vec![0xfe; len])));
    }
    frames.extend([
        Outgoing::Close(1000, "bye"),
        Outgoing::Close(1001, ""),
        Outgoing::Close(1008, longest_reason),
        Outgoing::Ping,
        Outgoing::Pong(Bytes::from_static(b"are you there?")),
    ]);
    // One buffer for all, as the socket batches them.
    let mut wire = Vec::new();
    for frame in &frames {
        encode_outgoing(frame, &mut wire);
    }
    let mut at = 0;
    for frame in &frames {
        let (header, header_len, payload) = read_server_frame(&wire[at..]);
        let (opcode, expected) = match frame {
            Outgoing::Text(bytes) => (OpCode::Data(Data::Text), bytes.to_vec()),
            Outgoing::Binary(bytes) => (OpCode::Data(Data::Binary), bytes.to_vec()),
            Outgoing::Ping => (OpCode::Control(Control::Ping), Vec::new()),
            Outgoing::Pong(bytes) => (OpCode::Control(Control::Pong), bytes.to_vec()),
            Outgoing::Close(code, reason) => (
                OpCode::Control(Control::Close),
                [&code.to_be_bytes()[..], reason.as_bytes()].concat(),
            ),
        };
        let what = format!("{opcode:?}, {} bytes", expected.len());
        assert_eq!(header.opcode, opcode, "{what}");
        assert!(header.is_final, "{what}");
        assert!(!(header.rsv1 || header.rsv2 || header.rsv3), "{what}");
        // Section 5.1: a server must not mask.
        assert_eq!(header.mask, None, "{what}");
        assert_eq!(payload, expected, "{what}");
        assert_eq!(frame.len(), expected.len(), "{what}: len() is the payload");
        // Section 5.2: the shortest length encoding.
        let shortest = match expected.len() {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        assert_eq!(header_len, shortest, "{what}");
        at += header_len + payload.len();
    }
    assert_eq!(at, wire.len(), "bytes after the last frame");
}

/// The reasons of the server's close frames in `source`: the first string literal after
/// `Close(` or `close_frame(` on the same line.
fn close_reasons(source: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    for line in source.lines() {
        for call in ["Close(", "close_frame("] {
            for (at, _) in line.match_indices(call) {
                let rest = &line[at + call.len()..];
                let Some((_, literal)) = rest.split_once('"') else {
                    continue;
                };
                let mut reason = String::new();
                let mut escaped = false;
                for c in literal.chars() {
                    match c {
                        '"' if !escaped => break,
                        '\\' if !escaped => escaped = true,
                        c => {
                            reason.push(c);
                            escaped = false;
                        }
                    }
                }
                reasons.push(reason);
            }
        }
    }
    reasons
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_close_reason_the_server_sends_fits_in_a_control_frame() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut reasons = Vec::new();
    for file in files {
        // This file's own frames are made up for the tests.
        if file.ends_with("websocket/frame/tests.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("a readable source file");
        reasons.extend(close_reasons(&source));
    }
    // Guards the scan itself: the server closes connections for many reasons.
    assert!(reasons.len() >= 5, "only found {reasons:?}");
    for reason in &reasons {
        // The 2-byte code and the reason make the payload, at most 125 bytes.
        assert!(
            2 + reason.len() <= MAX_CONTROL_PAYLOAD,
            "too long: {reason:?}"
        );
    }
}

#[test]
fn a_message_in_fragments_is_reassembled_in_no_more_than_the_limit() {
    // 65,000 bytes in fragments of 4,000: doubling alone would end at 128 KiB.
    let mut decoder = Decoder::new(MAX);
    let pieces = 65_000usize.div_ceil(4_000);
    for i in 0..pieces {
        let len = 4_000.min(65_000 - i * 4_000);
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        let bytes = frame(i + 1 == pieces, opcode, &vec![7; len]);
        let (item, used) = decoder.decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        if i + 1 < pieces {
            assert_eq!(item, Some(Incoming::Fragment));
            assert!(
                decoder.fragments_capacity() <= MAX,
                "{}",
                decoder.fragments_capacity()
            );
        } else {
            assert_eq!(item, Some(binary(vec![7; 65_000])));
        }
    }
    assert!(!decoder.in_fragments());
}
