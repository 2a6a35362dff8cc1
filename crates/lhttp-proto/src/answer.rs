//! The shapes of the server's answers: `ok` and `error`, with the `request-id` of the message
//! they answer. The server builds them here and the clients read them here.

use crate::{Message, Text, names};

/// `LHTTP/1.0 ok` with `status:200` and the `request-id` of the message it answers.
pub fn ok(request_id: Text) -> Message {
    Message::builder(names::command::OK)
        .header(names::STATUS, "200")
        .header(names::REQUEST_ID, request_id)
        .build()
        .expect("a request-id is a valid header value")
}

/// `LHTTP/1.0 error` with `status` and `reason`, and the `request-id` of the message it
/// answers. Control characters in `reason` become spaces and it is cut to 200 characters, so
/// that a reason built from a peer's input can never break the framing.
pub fn error(status: u16, reason: &str, request_id: Option<&Text>) -> Message {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let mut builder = Message::builder(names::command::ERROR)
        .header(names::STATUS, status.to_string())
        .header(names::REASON, reason);
    if let Some(id) = request_id {
        builder = builder.header(names::REQUEST_ID, id.clone());
    }
    builder.build().unwrap_or_else(|_| {
        Message::builder(names::command::ERROR)
            .header(names::STATUS, status.to_string())
            .build()
            .expect("a numeric status is a valid header value")
    })
}

/// The status and reason of an `error` answer; `None` for any other message.
pub fn as_error(message: &Message) -> Option<(u16, &str)> {
    if message.command() != names::command::ERROR {
        return None;
    }
    let status = message.header(names::STATUS)?.parse().ok()?;
    Some((status, message.header(names::REASON).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_request_id_and_read_back() {
        let id = Text::from("r7");
        let ok = ok(id.clone());
        assert_eq!(ok.command(), "ok");
        assert_eq!(ok.header("request-id"), Some("r7"));
        let error = error(403, "no\r\nsubscribe:x", Some(&id));
        assert_eq!(as_error(&error), Some((403, "no  subscribe:x")));
        assert_eq!(error.header("request-id"), Some("r7"));
        assert_eq!(as_error(&ok), None);
    }
}
