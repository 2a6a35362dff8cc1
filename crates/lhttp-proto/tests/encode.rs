//! Encoding: exact bytes, lengths, header editing, and the builder's checks.

use bytes::{Bytes, BytesMut};
use lhttp_proto::{BuildError, Headers, Message, Text, is_valid_command};

fn wire(msg: &Message) -> Vec<u8> {
    msg.to_bytes().to_vec()
}

#[test]
fn js_sdk_bytes_are_reproduced_exactly() {
    let sub = Message::builder("chat")
        .header("subscribe", "chatroom")
        .build()
        .unwrap();
    assert_eq!(wire(&sub), b"LHTTP/1.0 chat\r\nsubscribe:chatroom\r\n\r\n");

    let publish = Message::builder("chat")
        .header("publish", "chatroom")
        .body("hello")
        .build()
        .unwrap();
    assert_eq!(
        wire(&publish),
        b"LHTTP/1.0 chat\r\npublish:chatroom\r\n\r\nhello"
    );
}

#[test]
fn blank_line_is_always_written() {
    let msg = Message::builder("ping").build().unwrap();
    assert_eq!(wire(&msg), b"LHTTP/1.0 ping\r\n\r\n");
    let msg = Message::builder("ping").body("x").build().unwrap();
    assert_eq!(wire(&msg), b"LHTTP/1.0 ping\r\n\r\nx");
}

#[test]
fn header_order_is_preserved_and_no_space_follows_the_colon() {
    let msg = Message::builder("c")
        .header("zeta", "1")
        .header("Alpha", "two words")
        .header("mid", "POST http://h:80/x?a=b")
        .header("zeta", "3")
        .build()
        .unwrap();
    assert_eq!(
        wire(&msg),
        b"LHTTP/1.0 c\r\nzeta:1\r\nAlpha:two words\r\nmid:POST http://h:80/x?a=b\r\nzeta:3\r\n\r\n"
    );
}

#[test]
fn values_are_trimmed_when_added() {
    let msg = Message::builder("c")
        .header("publish", " \tch \t")
        .header("inner", "a\tb  c")
        .header("empty", "   ")
        .build()
        .unwrap();
    assert_eq!(msg.header("publish"), Some("ch"));
    assert_eq!(
        wire(&msg),
        b"LHTTP/1.0 c\r\npublish:ch\r\ninner:a\tb  c\r\nempty:\r\n\r\n"
    );
}

#[test]
fn binary_body_is_written_verbatim() {
    let body = Bytes::from_static(b"\x00\xff\r\n\r\nk:v\n");
    let msg = Message::builder("bin").body(body.clone()).build().unwrap();
    let bytes = wire(&msg);
    assert_eq!(&bytes[..17], b"LHTTP/1.0 bin\r\n\r\n");
    assert_eq!(&bytes[17..], &body[..]);
}

#[test]
fn encoded_len_is_the_exact_length() {
    let messages = [
        Message::builder("c").build().unwrap(),
        Message::builder("chat")
            .header("publish", "room")
            .body(vec![7u8; 64])
            .build()
            .unwrap(),
        Message::builder("чат")
            .header("ключ", "значение ☕")
            .header("e", "")
            .body("\r\n\r\n")
            .build()
            .unwrap(),
    ];
    for msg in &messages {
        let bytes = msg.to_bytes();
        assert_eq!(msg.encoded_len(), bytes.len(), "{msg:?}");
        let mut v = Vec::new();
        msg.encode(&mut v);
        assert_eq!(v, &bytes[..]);
    }
    assert_eq!(messages[0].encoded_len(), "LHTTP/1.0 c\r\n\r\n".len());
}

#[test]
fn encode_appends_to_the_buffer() {
    let msg = Message::builder("c").header("a", "1").build().unwrap();
    let mut buf = BytesMut::from(&b"prev|"[..]);
    msg.encode(&mut buf);
    msg.encode(&mut buf);
    assert_eq!(
        &buf[..],
        b"prev|LHTTP/1.0 c\r\na:1\r\n\r\nLHTTP/1.0 c\r\na:1\r\n\r\n"
    );
}

#[test]
fn parsed_message_is_normalized_on_encode() {
    let msg = Message::parse(Bytes::from_static(
        b"LHTTP/1.0 chat\nPublish : room 1 \n\tX-Id:\t7\n\nhello\n",
    ))
    .unwrap();
    assert_eq!(
        wire(&msg),
        b"LHTTP/1.0 chat\r\nPublish:room 1\r\nX-Id:7\r\n\r\nhello\n"
    );
    // Ends after the start line: the blank line is added.
    let msg = Message::parse(Bytes::from_static(b"LHTTP/1.0 chat")).unwrap();
    assert_eq!(wire(&msg), b"LHTTP/1.0 chat\r\n\r\n");
}

#[test]
fn editing_a_parsed_message() {
    let mut msg = Message::parse(Bytes::from_static(
        b"LHTTP/1.0 chat\r\nsubscribe:a\r\npublish:room\r\nupstream:GET http://x/\r\n\r\nhi",
    ))
    .unwrap();
    msg.set_command("reply").unwrap();
    assert_eq!(msg.headers_mut().remove("SUBSCRIBE"), 1);
    assert_eq!(msg.headers_mut().remove("missing"), 0);
    msg.headers_mut()
        .retain(|h| !h.name().eq_ignore_ascii_case("upstream"));
    msg.headers_mut().set("status", "200").unwrap();
    msg.set_body("bye");
    assert_eq!(
        wire(&msg),
        b"LHTTP/1.0 reply\r\npublish:room\r\nstatus:200\r\n\r\nbye"
    );
    assert_eq!(msg.encoded_len(), wire(&msg).len());
}

#[test]
fn set_replaces_in_place_and_removes_later_duplicates() {
    let mut headers = Headers::new();
    headers.append("publish", "a").unwrap();
    headers.append("x", "1").unwrap();
    headers.append("Publish", "c").unwrap();
    headers.append("y", "2").unwrap();
    headers.append("PUBLISH", "d").unwrap();

    headers.set("PUBLISH", " b ").unwrap();
    let got: Vec<(&str, &str)> = headers.iter().map(|h| (h.name(), h.value())).collect();
    assert_eq!(got, [("publish", "b"), ("x", "1"), ("y", "2")]);

    // Absent: appended at the end.
    headers.set("z", "3").unwrap();
    let names: Vec<&str> = headers.iter().map(|h| h.name()).collect();
    assert_eq!(names, ["publish", "x", "y", "z"]);

    // Replacing the last one leaves the order alone.
    headers.set("Z", "4").unwrap();
    assert_eq!(headers.get("z"), Some("4"));
    assert_eq!(headers.len(), 4);
}

#[test]
fn get_all_and_contains() {
    let mut headers = Headers::new();
    assert!(headers.is_empty());
    headers.append("s", "a").unwrap();
    headers.append("S", "b").unwrap();
    assert!(headers.contains("s"));
    assert!(!headers.contains("t"));
    assert_eq!(headers.get_all("S").collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(headers.get_text("s").map(Text::as_str), Some("a"));
}

#[test]
fn builder_rejects_invalid_commands() {
    for command in [
        "",
        "a b",
        "chat\r\nx:y",
        "chat\n",
        "tab\there",
        "nul\0",
        "del\x7f",
    ] {
        assert_eq!(
            Message::builder(command.to_owned()).build().unwrap_err(),
            BuildError::InvalidCommand(command.to_owned()),
            "{command:?}"
        );
        assert!(!is_valid_command(command));
    }
    let long = "c".repeat(257);
    assert!(matches!(
        Message::builder(long.clone()).build(),
        Err(BuildError::InvalidCommand(_))
    ));
    assert!(Message::builder("c".repeat(256)).build().is_ok());
    assert!(is_valid_command("chat:room/1"));

    let mut msg = Message::builder("ok").build().unwrap();
    assert_eq!(
        msg.set_command("bad command"),
        Err(BuildError::InvalidCommand("bad command".into()))
    );
    assert_eq!(msg.command(), "ok");
}

#[test]
fn builder_rejects_invalid_header_names() {
    for name in ["", "a:b", "a b", "a\r\n", "x\ty", " lead", "\x01"] {
        assert_eq!(
            Message::builder("c")
                .header(name.to_owned(), "v")
                .build()
                .unwrap_err(),
            BuildError::InvalidHeaderName(name.to_owned()),
            "{name:?}"
        );
    }
    assert!(matches!(
        Message::builder("c").header("n".repeat(257), "v").build(),
        Err(BuildError::InvalidHeaderName(_))
    ));
}

#[test]
fn builder_rejects_header_injection_in_values() {
    for value in [
        "x\r\nevil:1",
        "x\nevil:1",
        "x\r",
        "room\r\n\r\nforged body",
        "\0",
        "bell\x07",
        "del\x7f",
    ] {
        assert_eq!(
            Message::builder("c")
                .header("publish", value.to_owned())
                .build()
                .unwrap_err(),
            BuildError::InvalidHeaderValue("publish".into()),
            "{value:?}"
        );
    }
    // Trailing CRLF is not a blank to trim.
    assert!(Message::builder("c").header("a", "v\r\n").build().is_err());

    let mut headers = Headers::new();
    assert!(headers.append("a", "1\r\nb:2").is_err());
    assert!(headers.set("a", "1\nb:2").is_err());
    assert!(headers.is_empty(), "a rejected header is not added");
}

#[test]
fn builder_reports_the_first_error() {
    let err = Message::builder("bad command")
        .header("bad name", "v")
        .header("ok", "bad\nvalue")
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::InvalidHeaderName("bad name".into()));
    assert_eq!(err.to_string(), "invalid header name \"bad name\"");
}

#[test]
fn text_only_wraps_utf8() {
    assert!(Text::from_utf8(Bytes::from_static(b"\xff")).is_err());
    assert_eq!(
        Text::from_utf8(Bytes::from_static("ок".as_bytes())).unwrap(),
        "ок"
    );
}
