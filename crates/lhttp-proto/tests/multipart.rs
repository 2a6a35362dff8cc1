//! Multipart bodies: parts cut at byte offsets, their errors, and the builder.

use bytes::Bytes;
use lhttp_proto::{
    BuildError, Limits, Message, MultipartBuilder, MultipartError, ParseError, Part,
    multipart::{parse_offsets, parse_parts},
};

/// A message with `multipart:<offsets>` and `body`, built in code.
fn message(offsets: &str, body: &[u8]) -> Message {
    Message::builder("upload")
        .header("multipart", offsets.to_owned())
        .body(Bytes::copy_from_slice(body))
        .build()
        .unwrap()
}

fn parts_of(offsets: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    message(offsets, body)
        .parts()
        .map(|p| p.expect("has a multipart header"))
}

fn pairs(part: &Part) -> Vec<(&str, &str)> {
    part.headers.iter().map(|h| (h.name(), h.value())).collect()
}

#[test]
fn go_client_example_has_two_parts() {
    let msg = Message::parse(Bytes::from_static(
        b"LHTTP/1.0 subpub\r\nmultipart:0 14\r\n\r\nk1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2",
    ))
    .unwrap();
    let parts = msg.parts().unwrap().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(pairs(&parts[0]), [("k1", "v1")]);
    assert_eq!(&parts[0].body[..], b"body1");
    assert_eq!(pairs(&parts[1]), [("k2", "v2")]);
    assert_eq!(&parts[1].body[..], b"body2");
}

#[test]
fn no_multipart_header_means_no_parts() {
    let msg = Message::parse(Bytes::from_static(b"LHTTP/1.0 c\r\n\r\nk1:v1\r\n\r\nbody1")).unwrap();
    assert_eq!(msg.parts(), Ok(None));
}

#[test]
fn header_name_is_case_insensitive() {
    let msg = Message::parse(Bytes::from_static(
        b"LHTTP/1.0 c\r\nMultiPart:0\r\n\r\n\r\nx",
    ))
    .unwrap();
    let parts = msg.parts().unwrap().unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(&parts[0].body[..], b"x");
}

#[test]
fn single_part_runs_to_the_end() {
    let parts = parts_of("0", b"a:1\r\nb: two \r\n\r\nthe body\r\n\r\nwith: colons").unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(pairs(&parts[0]), [("a", "1"), ("b", "two")]);
    assert_eq!(&parts[0].body[..], b"the body\r\n\r\nwith: colons");
}

#[test]
fn part_without_headers_and_with_empty_body() {
    // Part 0: no headers, body "x". Part 1: one header, empty body. Part 2: nothing but the
    // blank line.
    let body = b"\r\nxk:v\r\n\r\n\r\n";
    let parts = parts_of("0 3 10", body).unwrap();
    assert_eq!(parts.len(), 3);
    assert!(parts[0].headers.is_empty());
    assert_eq!(&parts[0].body[..], b"x");
    assert_eq!(pairs(&parts[1]), [("k", "v")]);
    assert!(parts[1].body.is_empty());
    assert!(parts[2].headers.is_empty());
    assert!(parts[2].body.is_empty());
}

#[test]
fn parts_accept_bare_lf() {
    let parts = parts_of("0 8", b"k1:v1\n\nAk2:v2\n\nB\n").unwrap();
    assert_eq!(pairs(&parts[0]), [("k1", "v1")]);
    assert_eq!(&parts[0].body[..], b"A");
    assert_eq!(pairs(&parts[1]), [("k2", "v2")]);
    assert_eq!(&parts[1].body[..], b"B\n");
}

#[test]
fn bytes_before_the_first_offset_are_skipped() {
    let parts = parts_of("5", b"junk!k:v\r\n\r\nbody").unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(pairs(&parts[0]), [("k", "v")]);
    assert_eq!(&parts[0].body[..], b"body");
}

#[test]
fn offsets_may_be_separated_by_several_blanks() {
    let parts = parts_of(" 0 \t  14\t", b"k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2").unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(&parts[1].body[..], b"body2");
}

#[test]
fn part_bodies_are_binary_and_unscanned() {
    let body = b"\r\n\xff\x00\r\n\r\nk:v";
    let parts = parts_of("0", body).unwrap();
    assert!(parts[0].headers.is_empty());
    assert_eq!(&parts[0].body[..], b"\xff\x00\r\n\r\nk:v");
}

#[test]
fn offset_beyond_the_body_is_out_of_range() {
    let body = b"k1:v1\r\n\r\nbody1";
    assert_eq!(
        parts_of("0 99", body),
        Err(MultipartError::OutOfRange {
            offset: 99,
            len: 14
        })
    );
    assert_eq!(
        parts_of("15", body),
        Err(MultipartError::OutOfRange {
            offset: 15,
            len: 14
        })
    );
    assert_eq!(
        parts_of("0", b""),
        Err(MultipartError::MissingHeaderBlock { index: 0 })
    );
}

#[test]
fn offset_at_the_end_is_an_empty_part_without_header_block() {
    let body = b"k1:v1\r\n\r\nbody1";
    assert_eq!(
        parts_of("0 14", body),
        Err(MultipartError::MissingHeaderBlock { index: 1 })
    );
}

#[test]
fn offsets_must_be_strictly_ascending() {
    let body = b"k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2";
    assert_eq!(parts_of("14 0", body), Err(MultipartError::NotAscending));
    assert_eq!(parts_of("0 0", body), Err(MultipartError::NotAscending));
    assert_eq!(parts_of("0 14 14", body), Err(MultipartError::NotAscending));
}

#[test]
fn offsets_must_be_decimal_digits() {
    let body = b"\r\nabc";
    for (value, token) in [
        ("x", "x"),
        ("0 x", "x"),
        ("-1", "-1"),
        ("+0", "+0"),
        ("1.5", "1.5"),
        ("0x1", "0x1"),
        ("0,1", "0,1"),
        ("99999999999999999999999999", "99999999999999999999999999"),
    ] {
        assert_eq!(
            parts_of(value, body),
            Err(MultipartError::InvalidOffset(token.to_owned())),
            "{value:?}"
        );
    }
    let long = "9".repeat(100);
    match parts_of(&long, body) {
        Err(MultipartError::InvalidOffset(shown)) => assert_eq!(shown, "9".repeat(32)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_offset_list() {
    assert_eq!(parts_of("", b"\r\nx"), Err(MultipartError::Empty));
    assert_eq!(parts_of(" \t ", b"\r\nx"), Err(MultipartError::Empty));
}

#[test]
fn too_many_parts() {
    let body = vec![b'\n'; 100];
    let offsets = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
    // 64 one-byte parts, each a blank line: 64 parts with no headers and empty bodies.
    let mut shorter = body.clone();
    shorter.truncate(64);
    let parts = parts_of(&offsets(64), &shorter).unwrap();
    assert_eq!(parts.len(), 64);
    assert!(
        parts
            .iter()
            .all(|p| p.headers.is_empty() && p.body.is_empty())
    );

    assert_eq!(
        parts_of(&offsets(65), &body),
        Err(MultipartError::TooManyParts { max: 64 })
    );
    let limits = Limits {
        max_parts: 2,
        ..Limits::default()
    };
    let msg = message(&offsets(3), &body);
    assert_eq!(
        msg.parts_with(&limits),
        Err(MultipartError::TooManyParts { max: 2 })
    );
    assert_eq!(
        msg.parts_with(&Limits::default()).unwrap().unwrap().len(),
        3
    );
}

#[test]
fn part_without_header_block() {
    // The second part has headers but no blank line after them.
    let body = b"k1:v1\r\n\r\nbody1k2:v2\r\n";
    assert_eq!(
        parts_of("0 14", body),
        Err(MultipartError::MissingHeaderBlock { index: 1 })
    );
    assert_eq!(
        parts_of("0", b"k:v"),
        Err(MultipartError::MissingHeaderBlock { index: 0 })
    );
    assert_eq!(
        parts_of("0", b"k:v\n"),
        Err(MultipartError::MissingHeaderBlock { index: 0 })
    );
}

#[test]
fn malformed_part_headers_name_the_part_and_line() {
    // Part 1 is "body1\r\n\r\n": its first line has no colon.
    let body = b"k1:v1\r\n\r\nbody1\r\n\r\n";
    assert_eq!(
        parts_of("0 9", body),
        Err(MultipartError::InvalidPartHeaders {
            index: 1,
            source: ParseError::HeaderWithoutColon { line: 1 }
        })
    );
    // As one part, the same bytes are fine: "body1..." is that part's body.
    assert_eq!(&parts_of("0", body).unwrap()[0].body[..], b"body1\r\n\r\n");
    assert_eq!(
        parts_of("0 9", b"k1:v1\r\n\r\nk2:v2\r\nbad\r\n\r\n"),
        Err(MultipartError::InvalidPartHeaders {
            index: 1,
            source: ParseError::HeaderWithoutColon { line: 2 }
        })
    );
    assert_eq!(
        parts_of("0", b"k:\x01\r\n\r\n"),
        Err(MultipartError::InvalidPartHeaders {
            index: 0,
            source: ParseError::InvalidHeaderValue { line: 1 }
        })
    );
    assert_eq!(
        parts_of("0", b"k:\xff\r\n\r\n"),
        Err(MultipartError::InvalidPartHeaders {
            index: 0,
            source: ParseError::InvalidUtf8
        })
    );
    assert_eq!(
        parts_of("0", b"k:v\r\n\r\n").unwrap()[0].headers.get("K"),
        Some("v")
    );
}

#[test]
fn too_many_headers_in_a_part() {
    let mut body = String::new();
    for i in 0..3 {
        body.push_str(&format!("h{i}:{i}\r\n"));
    }
    body.push_str("\r\nx");
    let limits = Limits {
        max_headers: 2,
        ..Limits::default()
    };
    assert_eq!(
        parse_parts("0", &Bytes::from(body.clone()), &limits),
        Err(MultipartError::InvalidPartHeaders {
            index: 0,
            source: ParseError::TooManyHeaders { max: 2 }
        })
    );
    let parts = parse_parts("0", &Bytes::from(body), &Limits::default()).unwrap();
    assert_eq!(parts[0].headers.len(), 3);
}

#[test]
fn parse_offsets_alone() {
    let limits = Limits::default();
    assert_eq!(parse_offsets("0 14 20", 20, &limits), Ok(vec![0, 14, 20]));
    assert_eq!(
        parse_offsets("21", 20, &limits),
        Err(MultipartError::OutOfRange {
            offset: 21,
            len: 20
        })
    );
}

#[test]
fn multipart_errors_read_well() {
    assert_eq!(
        MultipartError::OutOfRange {
            offset: 99,
            len: 14
        }
        .to_string(),
        "multipart offset 99 is beyond the body of 14 bytes"
    );
    assert_eq!(
        MultipartError::InvalidPartHeaders {
            index: 1,
            source: ParseError::HeaderWithoutColon { line: 2 }
        }
        .to_string(),
        "part 1: header line 2 has no colon"
    );
}

// ---------------------------------------------------------------------------------------------
// The builder.

#[test]
fn builder_reproduces_the_go_client_example() {
    let mut builder = MultipartBuilder::new();
    builder.part([("k1", "v1")], "body1").unwrap();
    builder.part([("k2", "v2")], "body2").unwrap();
    let (offsets, body) = builder.finish();
    assert_eq!(offsets, "0 14");
    assert_eq!(&body[..], b"k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2");
}

#[test]
fn builder_message_round_trips() {
    let mut builder = MultipartBuilder::new();
    builder
        .part(
            [("name", " photo.jpg "), ("type", "image/jpeg")],
            b"\xff\xd8\r\n\r\n\xff",
        )
        .unwrap()
        .part::<&str, &str>([], "no headers")
        .unwrap()
        .part([("empty", "")], "")
        .unwrap();
    let msg = builder
        .into_message(Message::builder("upload").header("publish", "files"))
        .unwrap();
    assert_eq!(msg.header("multipart"), Some("0 42 54"));

    let wire = msg.to_bytes();
    let parsed = Message::parse(wire).unwrap();
    assert_eq!(parsed, msg);
    let parts = parsed.parts().unwrap().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        pairs(&parts[0]),
        [("name", "photo.jpg"), ("type", "image/jpeg")]
    );
    assert_eq!(&parts[0].body[..], b"\xff\xd8\r\n\r\n\xff");
    assert!(parts[1].headers.is_empty());
    assert_eq!(&parts[1].body[..], b"no headers");
    assert_eq!(pairs(&parts[2]), [("empty", "")]);
    assert!(parts[2].body.is_empty());
}

#[test]
fn builder_rejects_bad_headers_and_leaves_the_body_unchanged() {
    let mut builder = MultipartBuilder::new();
    assert_eq!(
        builder.part([("bad name", "v")], "x").unwrap_err(),
        BuildError::InvalidHeaderName("bad name".into())
    );
    assert_eq!(
        builder.part([("k", "v\r\nevil:1")], "x").unwrap_err(),
        BuildError::InvalidHeaderValue("k".into())
    );
    assert_eq!(
        builder.part([("ok", "1"), ("a:b", "2")], "x").unwrap_err(),
        BuildError::InvalidHeaderName("a:b".into())
    );
    builder.part([("k", "v")], "x").unwrap();
    let (offsets, body) = builder.finish();
    assert_eq!(offsets, "0");
    assert_eq!(&body[..], b"k:v\r\n\r\nx");
}
