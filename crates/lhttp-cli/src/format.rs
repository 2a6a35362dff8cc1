//! Printing received messages: `raw` for people, `json` for programs.

use std::io::Write;

use base64::Engine as _;
use lhttp_client::Message;

/// How messages are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The message as text: start line, `name:value` headers, an empty line, the body, then an
    /// empty line between messages. A body that is not UTF-8 is summarised by its size.
    Raw,
    /// One JSON object per line: `{"command", "headers": [[name, value], ...], "body"}`, with
    /// `body_base64` instead of `body` when the body is not UTF-8.
    Json,
}

/// `message` as `format`, ending with a line end.
pub(crate) fn render(format: Format, message: &Message) -> String {
    match format {
        Format::Raw => raw(message),
        Format::Json => json(message),
    }
}

fn raw(message: &Message) -> String {
    let mut text = format!("LHTTP/1.0 {}\n", message.command());
    for header in message.headers() {
        text.push_str(header.name());
        text.push(':');
        text.push_str(header.value());
        text.push('\n');
    }
    text.push('\n');
    match std::str::from_utf8(message.body()) {
        Ok(body) => {
            text.push_str(body);
            if !body.is_empty() && !body.ends_with('\n') {
                text.push('\n');
            }
        }
        Err(_) => {
            text.push_str(&format!(
                "<binary body of {} bytes; use --format json to see it>\n",
                message.body().len()
            ));
        }
    }
    text.push('\n');
    text
}

fn json(message: &Message) -> String {
    // Written by hand so that the keys keep this order whatever serde_json's features are.
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let headers: Vec<String> = message
        .headers()
        .iter()
        .map(|h| format!("[{},{}]", quote(h.name()), quote(h.value())))
        .collect();
    let body = match std::str::from_utf8(message.body()) {
        Ok(body) => format!("\"body\":{}", quote(body)),
        Err(_) => format!(
            "\"body_base64\":\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(message.body())
        ),
    };
    format!(
        "{{\"command\":{},\"headers\":[{}],{}}}\n",
        quote(message.command()),
        headers.join(","),
        body
    )
}

/// Writes rendered messages to stdout, flushing each so that pipes see it at once.
#[derive(Debug, Default)]
pub(crate) struct Stdout;

impl Stdout {
    pub(crate) fn print(&mut self, format: Format, message: &Message) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(render(format, message).as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message::builder("chat")
            .header("publish", "room")
            .header("from", "ann")
            .body("hi there")
            .build()
            .unwrap()
    }

    #[test]
    fn raw_reads_like_the_wire_form() {
        assert_eq!(
            render(Format::Raw, &message()),
            "LHTTP/1.0 chat\npublish:room\nfrom:ann\n\nhi there\n\n"
        );
    }

    #[test]
    fn json_is_one_line_with_ordered_headers() {
        assert_eq!(
            render(Format::Json, &message()),
            "{\"command\":\"chat\",\"headers\":[[\"publish\",\"room\"],[\"from\",\"ann\"]],\"body\":\"hi there\"}\n"
        );
    }

    #[test]
    fn binary_bodies_are_base64_in_json_and_summarised_in_raw() {
        let binary = Message::builder("blob")
            .body(vec![0xff, 0x00, 0x41])
            .build()
            .unwrap();
        assert_eq!(
            render(Format::Json, &binary),
            "{\"command\":\"blob\",\"headers\":[],\"body_base64\":\"/wBB\"}\n"
        );
        assert!(render(Format::Raw, &binary).contains("<binary body of 3 bytes"));
    }
}
