//! Channel history in tests: the messages published, their offsets, and catch-ups (a
//! subscribe with `since`/`recent`, or a `history` read) with the messages that follow.

use lhttp_server::proto::Message;

use super::Client;

/// A `chat` message for `channel`.
pub fn chat(channel: &str, body: &str) -> Message {
    Message::builder("chat")
        .header("publish", channel.to_owned())
        .body(body.to_owned())
        .build()
        .unwrap()
}

/// The `offset` header of a history channel's message.
pub fn offset(m: &Message) -> u64 {
    m.header("offset")
        .unwrap_or_else(|| panic!("no offset: {m:?}"))
        .parse()
        .unwrap()
}

/// Sends `text` and returns the answer (`subscribed` or `history`) and the `count` messages
/// that follow it.
pub async fn catch_up(client: &mut Client, text: &str) -> (Message, Vec<Message>) {
    client.send(text).await;
    let answer = client.recv().await;
    let count: usize = answer
        .header("count")
        .unwrap_or_else(|| panic!("not a catch-up answer: {answer:?}"))
        .parse()
        .unwrap();
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        messages.push(client.recv().await);
    }
    (answer, messages)
}
