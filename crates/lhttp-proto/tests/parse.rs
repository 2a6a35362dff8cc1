//! Parsing: what existing clients send, and every parsing defect of the original server.

use bytes::Bytes;
use lhttp_proto::{Limits, Message, ParseError};

fn parse(input: &[u8]) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(input))
}

fn ok(input: &[u8]) -> Message {
    match parse(input) {
        Ok(msg) => msg,
        Err(e) => panic!(
            "{:?} should parse, got {e:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn err(input: &[u8]) -> ParseError {
    match parse(input) {
        Ok(msg) => panic!(
            "{:?} should be rejected, got {msg:?}",
            String::from_utf8_lossy(input)
        ),
        Err(e) => e,
    }
}

/// Headers as (name, value) pairs, in order.
fn pairs(msg: &Message) -> Vec<(String, String)> {
    msg.headers()
        .iter()
        .map(|h| (h.name().to_owned(), h.value().to_owned()))
        .collect()
}

fn p(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

// ---------------------------------------------------------------------------------------------
// What existing clients send.

#[test]
fn js_sdk_chat_subscribe() {
    let msg = ok(b"LHTTP/1.0 chat\r\nsubscribe:chatroom\r\n\r\n");
    assert_eq!(msg.command(), "chat");
    assert_eq!(pairs(&msg), vec![p("subscribe", "chatroom")]);
    assert!(msg.body().is_empty());
}

#[test]
fn js_sdk_chat_publish() {
    let msg = ok(b"LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhello, everyone: hi!");
    assert_eq!(msg.command(), "chat");
    assert_eq!(pairs(&msg), vec![p("publish", "chatroom")]);
    assert_eq!(&msg.body()[..], b"hello, everyone: hi!");
}

#[test]
fn go_client_subpub_messages() {
    let sub = ok(b"LHTTP/1.0 subpub\r\nsubscribe:camera_123\r\n\r\n");
    assert_eq!(sub.command(), "subpub");
    assert_eq!(pairs(&sub), vec![p("subscribe", "camera_123")]);
    assert!(sub.body().is_empty());

    let publish = ok(b"LHTTP/1.0 subpub\r\npublish:camera_123\r\n\r\nhello world");
    assert_eq!(pairs(&publish), vec![p("publish", "camera_123")]);
    assert_eq!(&publish.body()[..], b"hello world");

    let unsub = ok(b"LHTTP/1.0 subpub\r\nunsubscribe:camera_123\r\n\r\n");
    assert_eq!(pairs(&unsub), vec![p("unsubscribe", "camera_123")]);
    assert!(unsub.body().is_empty());
}

#[test]
fn go_client_multipart_message_head_and_body() {
    let msg = ok(b"LHTTP/1.0 subpub\r\nmultipart:0 14\r\n\r\nk1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2");
    assert_eq!(pairs(&msg), vec![p("multipart", "0 14")]);
    // The body is not scanned: its header-like lines and blank lines stay in it.
    assert_eq!(&msg.body()[..], b"k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2");
}

#[test]
fn http_publish_body() {
    let msg = ok(b"LHTTP/1.0 chat\r\npublish:mike\r\n\r\nhello mike");
    assert_eq!(msg.command(), "chat");
    assert_eq!(msg.header("publish"), Some("mike"));
    assert_eq!(&msg.body()[..], b"hello mike");
}

#[test]
fn message_may_end_right_after_its_headers() {
    let msg = ok(b"LHTTP/1.0 c\r\nsubscribe:a\r\n");
    assert_eq!(msg.command(), "c");
    assert_eq!(pairs(&msg), vec![p("subscribe", "a")]);
    assert!(msg.body().is_empty());
}

#[test]
fn message_may_end_right_after_the_start_line() {
    let msg = ok(b"LHTTP/1.0 c\r\n");
    assert_eq!(msg.command(), "c");
    assert!(msg.headers().is_empty());
    assert!(msg.body().is_empty());
}

#[test]
fn message_without_any_line_ending() {
    let msg = ok(b"LHTTP/1.0 chat");
    assert_eq!(msg.command(), "chat");
    assert!(msg.headers().is_empty());
    assert!(msg.body().is_empty());
}

#[test]
fn last_header_without_line_ending() {
    let msg = ok(b"LHTTP/1.0 c\r\nsubscribe:a b");
    assert_eq!(pairs(&msg), vec![p("subscribe", "a b")]);
    assert!(msg.body().is_empty());
}

#[test]
fn header_value_with_colons_and_spaces() {
    let msg = ok(b"LHTTP/1.0 chat\r\nupstream:POST http://h:80/x?a=b\r\npublish:room\r\n\r\nhi");
    assert_eq!(
        pairs(&msg),
        vec![
            p("upstream", "POST http://h:80/x?a=b"),
            p("publish", "room")
        ]
    );
    assert_eq!(&msg.body()[..], b"hi");
}

#[test]
fn body_keeps_crlf_blank_lines_and_colons() {
    let msg = ok(b"LHTTP/1.0 c\r\np:x\r\n\r\nk:v\r\n\r\nmore: text\r\n\r\n\r\n");
    assert_eq!(pairs(&msg), vec![p("p", "x")]);
    assert_eq!(&msg.body()[..], b"k:v\r\n\r\nmore: text\r\n\r\n\r\n");
}

#[test]
fn body_may_be_any_bytes() {
    let msg = ok(b"LHTTP/1.0 bin\r\n\r\n\xff\x00\xfe\r\n\x01");
    assert_eq!(&msg.body()[..], b"\xff\x00\xfe\r\n\x01");
}

#[test]
fn bare_lf_line_endings() {
    let msg = ok(b"LHTTP/1.0 chat\npublish:room\nx:1\n\nhi\nthere\n");
    assert_eq!(msg.command(), "chat");
    assert_eq!(pairs(&msg), vec![p("publish", "room"), p("x", "1")]);
    assert_eq!(&msg.body()[..], b"hi\nthere\n");
}

#[test]
fn mixed_line_endings() {
    let msg = ok(b"LHTTP/1.0 chat\npublish:room\r\nx:1\n\r\nbody");
    assert_eq!(pairs(&msg), vec![p("publish", "room"), p("x", "1")]);
    assert_eq!(&msg.body()[..], b"body");

    let msg = ok(b"LHTTP/1.0 chat\r\n\nbody");
    assert!(msg.headers().is_empty());
    assert_eq!(&msg.body()[..], b"body");
}

#[test]
fn non_ascii_utf8_in_head() {
    let msg = ok("LHTTP/1.0 чат\r\nкомната:café ☕\r\n\r\n".as_bytes());
    assert_eq!(msg.command(), "чат");
    assert_eq!(msg.header("комната"), Some("café ☕"));
}

#[test]
fn parsed_message_shares_the_received_buffer() {
    let input = Bytes::from_static(b"LHTTP/1.0 chat\r\npublish:room\r\n\r\nhello");
    let msg = Message::parse(input.clone()).unwrap();
    let base = input.as_ptr() as usize;
    assert_eq!(msg.body().as_ptr() as usize, base + 32);
    assert_eq!(msg.command_text().as_bytes().as_ptr() as usize, base + 10);
    let value = msg.headers().get_text("publish").unwrap();
    assert_eq!(value.as_bytes().as_ptr() as usize, base + 24);
}

// ---------------------------------------------------------------------------------------------
// The original's parsing defects, each fixed.

#[test]
fn start_line_without_command_is_empty_command() {
    for input in [
        &b"LHTTP/1.0\r\n"[..],
        b"LHTTP/1.0\n",
        b"LHTTP/1.0",
        b"LHTTP/1.0 ",
        b"LHTTP/1.0 \r\n",
        b"LHTTP/1.0 \n\nbody",
        b"LHTTP/1.0\r\nsubscribe:a\r\n\r\n",
    ] {
        assert_eq!(err(input), ParseError::EmptyCommand, "{input:?}");
    }
}

#[test]
fn byte_after_version_must_be_a_space() {
    assert_eq!(err(b"LHTTP/1.0Xchat"), ParseError::MalformedStartLine);
    assert_eq!(
        err(b"LHTTP/1.0\tchat\r\n\r\n"),
        ParseError::MalformedStartLine
    );
    assert_eq!(err(b"LHTTP/1.0:chat"), ParseError::MalformedStartLine);
}

#[test]
fn two_spaces_after_version_is_malformed() {
    assert_eq!(
        err(b"LHTTP/1.0  chat\r\n\r\n"),
        ParseError::MalformedStartLine
    );
    assert_eq!(err(b"LHTTP/1.0  "), ParseError::MalformedStartLine);
}

#[test]
fn wrong_prefix_is_missing_prefix() {
    for input in [
        &b""[..],
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"lhttp/1.0 chat\r\n\r\n",
        b" LHTTP/1.0 chat",
        b"\r\nLHTTP/1.0 chat",
        b"hello world",
        b"LHTTP",
        b"LHTTP 1.0 chat",
    ] {
        assert_eq!(err(input), ParseError::MissingPrefix, "{input:?}");
    }
}

#[test]
fn other_versions_are_unsupported() {
    assert_eq!(err(b"LHTTP/2.0 x"), ParseError::UnsupportedVersion);
    assert_eq!(
        err(b"LHTTP/1.1 chat\r\n\r\n"),
        ParseError::UnsupportedVersion
    );
    assert_eq!(err(b"LHTTP/0.9 chat"), ParseError::UnsupportedVersion);
}

#[test]
fn message_without_headers_has_zero_headers_and_unparsed_body() {
    let msg = ok(b"LHTTP/1.0 c\r\n\r\nk:v\r\nsubscribe:x\r\n\r\nz");
    assert_eq!(msg.headers().len(), 0);
    assert!(msg.headers().is_empty());
    assert_eq!(msg.header(""), None);
    assert_eq!(msg.header("subscribe"), None);
    assert_eq!(&msg.body()[..], b"k:v\r\nsubscribe:x\r\n\r\nz");
}

#[test]
fn empty_value_does_not_end_the_headers() {
    let msg = ok(b"LHTTP/1.0 c\r\na:\r\nb:2\r\nc: \t \r\n\r\nbody");
    assert_eq!(pairs(&msg), vec![p("a", ""), p("b", "2"), p("c", "")]);
    assert_eq!(msg.header("a"), Some(""));
    assert_eq!(&msg.body()[..], b"body");
}

#[test]
fn names_and_values_are_trimmed_of_spaces_and_tabs() {
    let msg = ok(b"LHTTP/1.0 c\r\npublish: ch \r\n\tsubscribe \t:\t a  b\t\r\n\r\n");
    assert_eq!(
        pairs(&msg),
        vec![p("publish", "ch"), p("subscribe", "a  b")]
    );
}

#[test]
fn inner_tabs_in_values_are_kept() {
    let msg = ok(b"LHTTP/1.0 c\r\nx:a\tb\r\n\r\n");
    assert_eq!(msg.header("x"), Some("a\tb"));
}

#[test]
fn names_are_case_insensitive_and_keep_their_spelling() {
    let msg = ok(b"LHTTP/1.0 c\r\nPublish:room\r\nX-Id:7\r\n\r\n");
    assert_eq!(msg.header("publish"), Some("room"));
    assert_eq!(msg.header("PUBLISH"), Some("room"));
    assert_eq!(msg.header("x-id"), Some("7"));
    assert!(msg.headers().contains("pUbLiSh"));
    let names: Vec<&str> = msg.headers().iter().map(|h| h.name()).collect();
    assert_eq!(names, ["Publish", "X-Id"]);
}

#[test]
fn repeated_names_keep_every_value_in_order() {
    let msg = ok(b"LHTTP/1.0 c\r\nsubscribe:a\r\nSubscribe:b\r\nx:1\r\nSUBSCRIBE:c\r\n\r\n");
    assert_eq!(msg.header("subscribe"), Some("a"));
    let all: Vec<&str> = msg.headers().get_all("subscribe").collect();
    assert_eq!(all, ["a", "b", "c"]);
    assert_eq!(msg.headers().len(), 4);
}

#[test]
fn header_without_colon_reports_its_line() {
    assert_eq!(
        err(b"LHTTP/1.0 c\r\nnocolon\r\n\r\n"),
        ParseError::HeaderWithoutColon { line: 2 }
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\r\na:1\r\nb:2\r\nnocolon\r\n\r\n"),
        ParseError::HeaderWithoutColon { line: 4 }
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\na:1\nnocolon"),
        ParseError::HeaderWithoutColon { line: 3 }
    );
    // A line of blanks is not a blank line.
    assert_eq!(
        err(b"LHTTP/1.0 c\r\n  \r\nbody"),
        ParseError::HeaderWithoutColon { line: 2 }
    );
    // The body cannot be mistaken for headers, nor headers for a body.
    assert_eq!(
        err(b"LHTTP/1.0 c\r\nhello world"),
        ParseError::HeaderWithoutColon { line: 2 }
    );
}

#[test]
fn invalid_header_names_are_rejected_with_their_line() {
    assert_eq!(
        err(b"LHTTP/1.0 c\r\n:v\r\n\r\n"),
        ParseError::InvalidHeaderName { line: 2 }
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\r\nok:1\r\n \t:v\r\n\r\n"),
        ParseError::InvalidHeaderName { line: 3 }
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\r\na b:v\r\n\r\n"),
        ParseError::InvalidHeaderName { line: 2 }
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\r\na\x01:v\r\n\r\n"),
        ParseError::InvalidHeaderName { line: 2 }
    );
    let long = format!("LHTTP/1.0 c\r\n{}:v\r\n\r\n", "n".repeat(257));
    assert_eq!(
        err(long.as_bytes()),
        ParseError::InvalidHeaderName { line: 2 }
    );
    let longest = format!("LHTTP/1.0 c\r\n{}:v\r\n\r\n", "n".repeat(256));
    assert_eq!(ok(longest.as_bytes()).header(&"N".repeat(256)), Some("v"));
}

#[test]
fn control_characters_in_values_are_rejected() {
    for (input, line) in [
        (&b"LHTTP/1.0 c\r\na:x\x01y\r\n\r\n"[..], 2),
        (b"LHTTP/1.0 c\r\na:x\ry\r\n\r\n", 2),
        (b"LHTTP/1.0 c\r\na:1\r\nb:x\x00\r\n\r\n", 3),
        (b"LHTTP/1.0 c\r\na:x\x7f\r\n\r\n", 2),
        (b"LHTTP/1.0 c\r\na:x\x1b[31m\r\n\r\n", 2),
        // A CR before CRLF is not part of the line ending.
        (b"LHTTP/1.0 c\r\na:x\r\r\n\r\n", 2),
    ] {
        assert_eq!(
            err(input),
            ParseError::InvalidHeaderValue { line },
            "{input:?}"
        );
    }
}

#[test]
fn invalid_commands_are_rejected() {
    assert_eq!(err(b"LHTTP/1.0 ch at\r\n\r\n"), ParseError::InvalidCommand);
    assert_eq!(err(b"LHTTP/1.0 chat \r\n\r\n"), ParseError::InvalidCommand);
    assert_eq!(err(b"LHTTP/1.0 \tchat"), ParseError::InvalidCommand);
    assert_eq!(err(b"LHTTP/1.0 ch\x00at"), ParseError::InvalidCommand);
    assert_eq!(err(b"LHTTP/1.0 ch\rat\r\n"), ParseError::InvalidCommand);
    // A lone CR is not a line ending.
    assert_eq!(err(b"LHTTP/1.0 chat\r"), ParseError::InvalidCommand);
    let long = format!("LHTTP/1.0 {}\r\n\r\n", "c".repeat(257));
    assert_eq!(err(long.as_bytes()), ParseError::InvalidCommand);
    let longest = format!("LHTTP/1.0 {}\r\n\r\n", "c".repeat(256));
    assert_eq!(ok(longest.as_bytes()).command().len(), 256);
}

#[test]
fn too_many_headers() {
    let head = |n: usize| {
        let mut s = String::from("LHTTP/1.0 c\r\n");
        for i in 0..n {
            s.push_str(&format!("h{i}:{i}\r\n"));
        }
        s.push_str("\r\nbody");
        s
    };
    let msg = ok(head(64).as_bytes());
    assert_eq!(msg.headers().len(), 64);
    assert_eq!(msg.header("h63"), Some("63"));
    assert_eq!(&msg.body()[..], b"body");

    let e = err(head(65).as_bytes());
    assert_eq!(e, ParseError::TooManyHeaders { max: 64 });
    assert_eq!(e.status(), 400);

    let limits = Limits {
        max_headers: 2,
        ..Limits::default()
    };
    let two = Message::parse_with(Bytes::from(head(2)), &limits).unwrap();
    assert_eq!(two.headers().len(), 2);
    assert_eq!(
        Message::parse_with(Bytes::from(head(3)), &limits),
        Err(ParseError::TooManyHeaders { max: 2 })
    );
    let none = Limits {
        max_headers: 0,
        ..Limits::default()
    };
    assert!(Message::parse_with(Bytes::from(head(0)), &none).is_ok());
    assert_eq!(
        Message::parse_with(Bytes::from(head(1)), &none),
        Err(ParseError::TooManyHeaders { max: 0 })
    );
}

#[test]
fn too_large_is_413() {
    let max = Limits::default().max_size;
    assert_eq!(max, 64 * 1024);
    let head = b"LHTTP/1.0 c\r\n\r\n";
    let mut exact = head.to_vec();
    exact.resize(max, b'x');
    assert_eq!(ok(&exact).body().len(), max - head.len());

    exact.push(b'x');
    let e = err(&exact);
    assert_eq!(e, ParseError::TooLarge { size: max + 1, max });
    assert_eq!(e.status(), 413);

    let limits = Limits {
        max_size: 20,
        ..Limits::default()
    };
    let input = Bytes::from_static(b"LHTTP/1.0 chat\r\n\r\n12345");
    assert_eq!(
        Message::parse_with(input, &limits),
        Err(ParseError::TooLarge { size: 23, max: 20 })
    );
    // The size is checked before anything else.
    assert_eq!(
        Message::parse_with(Bytes::from(vec![0u8; 21]), &limits),
        Err(ParseError::TooLarge { size: 21, max: 20 })
    );
}

#[test]
fn invalid_utf8_in_head_is_rejected() {
    assert_eq!(err(b"LHTTP/1.0 ch\xffat\r\n\r\n"), ParseError::InvalidUtf8);
    assert_eq!(
        err(b"LHTTP/1.0 c\r\na:\xff\r\n\r\n"),
        ParseError::InvalidUtf8
    );
    assert_eq!(
        err(b"LHTTP/1.0 c\r\n\xc3:v\r\n\r\n"),
        ParseError::InvalidUtf8
    );
    // Truncated multi-byte sequence at the very end of the input.
    assert_eq!(err(b"LHTTP/1.0 c\r\na:\xe2\x98"), ParseError::InvalidUtf8);
    // The body is never checked.
    assert_eq!(&ok(b"LHTTP/1.0 c\r\n\r\n\xff").body()[..], b"\xff");
}

#[test]
fn short_inputs_are_errors_never_panics() {
    let full = b"LHTTP/1.0 chat\r\n";
    for len in 0..=9 {
        let e = err(&full[..len]);
        assert_eq!(e.status(), 400, "{len}: {e:?}");
        let expected = match len {
            0..=5 => ParseError::MissingPrefix,
            6..=8 => ParseError::UnsupportedVersion,
            _ => ParseError::EmptyCommand,
        };
        assert_eq!(e, expected, "prefix of length {len}");
    }
    for b in 0..=255u8 {
        assert!(parse(&[b]).is_err());
        assert!(parse(&[b; 9]).is_err());
    }
    for input in [
        &b"\r\n"[..],
        b"\n",
        b"\r\n\r\n",
        b":",
        b"LHTTP/1.\n",
        b"\0\0\0\0\0\0\0\0\0",
    ] {
        assert!(parse(input).is_err(), "{input:?}");
    }
}

#[test]
fn errors_read_well() {
    assert_eq!(
        err(b"LHTTP/1.0 c\r\na:1\r\nnocolon").to_string(),
        "header line 3 has no colon"
    );
    assert_eq!(
        ParseError::TooLarge {
            size: 70000,
            max: 65536
        }
        .to_string(),
        "message of 70000 bytes exceeds the limit of 65536 bytes"
    );
    assert_eq!(err(b"LHTTP/1.0\r\n").to_string(), "missing command");
}
