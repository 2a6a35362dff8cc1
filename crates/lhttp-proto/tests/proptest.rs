//! Properties: what the builder makes survives encode and parse; the parser never panics and
//! what it accepts re-encodes to the same message; multipart bodies survive the same way.
//!
//! 256 cases per property by default; set `PROPTEST_CASES` for a longer run.

use bytes::Bytes;
use lhttp_proto::{Limits, Message, MultipartBuilder, multipart::parse_parts};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Commands: printable ASCII without space, plus some multi-byte characters.
fn command() -> impl Strategy<Value = String> {
    "[!-~é中]{1,12}"
}

/// Header names: like commands, without `:`.
fn name() -> impl Strategy<Value = String> {
    "[!-9;-~é]{1,10}"
}

/// Header values: spaces, colons and tabs anywhere, including at the ends (trimmed on append).
fn value() -> impl Strategy<Value = String> {
    "[ -~\té☕]{0,24}"
}

/// Bodies: arbitrary bytes mixed with line endings and header-like text.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"k:v\r\n".to_vec()),
        Just(b"LHTTP/1.0 x\r\n".to_vec()),
    ];
    prop::collection::vec(chunk, 0..8).prop_map(|chunks| chunks.concat())
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), value()), 0..8)
}

/// Input built from grammar fragments, so that many cases get past the start line.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just(&b"LHTTP/1.0 "[..]),
        Just(&b"\r\n"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"\t"[..]),
        Just(&b"a"[..]),
        Just(&b"Bc"[..]),
        Just(&b"multipart:0 3"[..]),
        Just(&b"\xff"[..]),
        Just(&b"\x00"[..]),
        Just("é".as_bytes()),
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|f| {
        let mut out = b"LHTTP/1.0 ".to_vec();
        out.extend(f.concat());
        out
    })
}

fn build(command: &str, headers: &[(String, String)], body: &[u8]) -> Message {
    let mut builder = Message::builder(command.to_owned());
    for (n, v) in headers {
        builder = builder.header(n.clone(), v.clone());
    }
    builder
        .body(Bytes::copy_from_slice(body))
        .build()
        .expect("valid by construction")
}

/// A parsed message re-encodes to bytes that parse to an equal message, `encoded_len` tells
/// the truth, and the received bytes are offered for forwarding only when they are exactly
/// that encoding.
fn check_reencode(msg: &Message) -> Result<(), TestCaseError> {
    let again = msg.to_bytes();
    prop_assert_eq!(again.len(), msg.encoded_len());
    if let Some(received) = msg.as_received() {
        prop_assert_eq!(received, &again);
    }
    let reparsed = Message::parse(again);
    prop_assert_eq!(reparsed.as_ref(), Ok(msg));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn built_messages_round_trip(
        command in command(),
        headers in headers(),
        body in body(),
    ) {
        let msg = build(&command, &headers, &body);
        let wire = msg.to_bytes();
        prop_assert_eq!(wire.len(), msg.encoded_len());
        let parsed = Message::parse(wire.clone()).unwrap();
        prop_assert_eq!(&parsed, &msg);
        // Canonical bytes are forwarded as they came, unless trimming changed a value.
        prop_assert_eq!(parsed.as_received().is_some(), parsed.to_bytes() == wire);
        check_reencode(&parsed)?;
        prop_assert_eq!(parsed.command(), command.as_str());
        prop_assert_eq!(&parsed.body()[..], &body[..]);
        let got: Vec<(&str, &str)> =
            parsed.headers().iter().map(|h| (h.name(), h.value())).collect();
        let want: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.trim_matches([' ', '\t'])))
            .collect();
        prop_assert_eq!(got, want);
    }

    /// The same message written by a sloppy peer (bare LF, blanks around names and values)
    /// parses to the same message.
    #[test]
    fn sloppy_writing_parses_the_same(
        command in command(),
        headers in headers(),
        body in body(),
        pad in prop::collection::vec("[ \t]{0,2}", 32),
        lf_only in any::<bool>(),
    ) {
        let msg = build(&command, &headers, &body);
        let eol = if lf_only { "\n" } else { "\r\n" };
        let mut wire = format!("LHTTP/1.0 {command}{eol}").into_bytes();
        for (i, h) in msg.headers().iter().enumerate() {
            let (a, b) = (&pad[(2 * i) % 32], &pad[(2 * i + 1) % 32]);
            wire.extend(format!("{a}{}{b}:{b}{}{a}{eol}", h.name(), h.value()).into_bytes());
        }
        wire.extend(eol.as_bytes());
        wire.extend(&body);
        let parsed = Message::parse(Bytes::from(wire));
        prop_assert_eq!(parsed.as_ref(), Ok(&msg));
        check_reencode(&parsed.unwrap())?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = Message::parse(Bytes::from(input)) {
            check_reencode(&msg)?;
        }
    }

    #[test]
    fn arbitrary_bytes_after_prefix_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"LHTTP/1.0 ".to_vec();
        bytes.extend(input);
        if let Ok(msg) = Message::parse(Bytes::from(bytes)) {
            check_reencode(&msg)?;
        }
    }

    #[test]
    fn near_valid_input_never_panics(input in near_valid()) {
        let limits = Limits { max_headers: 4, max_parts: 4, ..Limits::default() };
        if let Ok(msg) = Message::parse_with(Bytes::from(input), &limits) {
            check_reencode(&msg)?;
            prop_assert!(msg.headers().len() <= 4);
            let _ = msg.parts_with(&limits);
        }
    }

    #[test]
    fn multipart_builder_round_trips(
        parts in prop::collection::vec((headers(), body()), 1..6),
    ) {
        let mut builder = MultipartBuilder::new();
        for (headers, body) in &parts {
            builder.part(headers.iter().cloned(), body).unwrap();
        }
        let msg = builder.into_message(Message::builder("upload")).unwrap();
        let parsed = Message::parse(msg.to_bytes()).unwrap();
        let got = parsed.parts().unwrap().unwrap();
        prop_assert_eq!(got.len(), parts.len());
        for (part, (headers, body)) in got.iter().zip(&parts) {
            prop_assert_eq!(&part.body[..], &body[..]);
            let names: Vec<(&str, &str)> =
                part.headers.iter().map(|h| (h.name(), h.value())).collect();
            let want: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.trim_matches([' ', '\t'])))
                .collect();
            prop_assert_eq!(names, want);
        }
    }

    #[test]
    fn arbitrary_multipart_never_panics(
        value in "[0-9 \t+x-]{0,24}",
        offsets in prop::collection::vec(0usize..80, 0..6),
        body in body(),
    ) {
        let body = Bytes::from(body);
        let limits = Limits::default();
        // Arbitrary text as the header value.
        let _ = parse_parts(&value, &body, &limits);
        // Numbers that are often in range, in any order.
        let value = offsets.iter().map(usize::to_string).collect::<Vec<_>>().join(" ");
        if let Ok(parts) = parse_parts(&value, &body, &limits) {
            // Each part's body is the tail of its byte range.
            prop_assert_eq!(parts.len(), offsets.len());
            for (i, part) in parts.iter().enumerate() {
                let end = offsets.get(i + 1).copied().unwrap_or(body.len());
                let start = end - part.body.len();
                prop_assert!(start >= offsets[i]);
                prop_assert_eq!(&part.body[..], &body[start..end]);
            }
        }
    }
}
