//! Processors and filters: hooks, replies, ordering, vetoes, per-connection data, and the
//! original's defects 6, 7 and 9.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use lhttp_server::{
    Config, Connection, Context, Filter, Processor, Rejection, Server, async_trait, proto::Message,
};

/// Records hook calls, shared between a test and its processors and filters.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    async fn wait_for(&self, entry: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.0.lock().unwrap().iter().any(|e| e == entry) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never logged {entry:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct Recorder {
    name: &'static str,
    log: Log,
}

#[async_trait]
impl Processor for Recorder {
    async fn on_open(&self, connection: &mut Connection) {
        self.log
            .push(format!("{}:open:{}", self.name, connection.id()));
    }
    async fn on_message(&self, _ctx: &mut Context<'_>) -> Result<(), Rejection> {
        self.log.push(format!("{}:message", self.name));
        Ok(())
    }
    async fn on_close(&self, connection: &mut Connection) {
        self.log
            .push(format!("{}:close:{}", self.name, connection.id()));
    }
}

struct Tracer {
    name: &'static str,
    log: Log,
}

impl Tracer {
    fn new(name: &'static str, log: &Log) -> Self {
        Tracer {
            name,
            log: log.clone(),
        }
    }
}

impl Recorder {
    fn new(name: &'static str, log: &Log) -> Self {
        Recorder {
            name,
            log: log.clone(),
        }
    }
}

impl Filter for Tracer {
    fn on_open(&self, _: &mut Connection) -> Result<(), Rejection> {
        self.log.push(format!("{}:open", self.name));
        Ok(())
    }
    fn before(&self, _: &mut Context<'_>) -> Result<(), Rejection> {
        self.log.push(format!("{}:before", self.name));
        Ok(())
    }
    fn after(&self, _: &mut Context<'_>) -> Result<(), Rejection> {
        self.log.push(format!("{}:after", self.name));
        Ok(())
    }
    fn on_close(&self, _: &mut Connection) {
        self.log.push(format!("{}:close", self.name));
    }
}

/// Defect 7: OnOpen ran at the first message, OnClose went to the last message's processor and
/// never ran if no valid message came. Ours: open at connect and close at disconnect, for every
/// processor, in a documented order around the filters.
#[tokio::test]
async fn open_and_close_run_at_connect_and_disconnect() {
    let log = Log::default();
    let server = start_with(
        Server::builder(Config::default())
            .processor("a", Recorder::new("A", &log))
            .processor("b", Recorder::new("B", &log))
            .filter(Tracer::new("F1", &log))
            .filter(Tracer::new("F2", &log)),
    )
    .await;
    let client = server.client().await;
    log.wait_for("B:open:1").await;
    assert_eq!(log.take(), ["F1:open", "F2:open", "A:open:1", "B:open:1"]);
    // A connection that never sends a valid message still gets its close hooks.
    drop(client);
    log.wait_for("F1:close").await;
    assert_eq!(
        log.take(),
        ["A:close:1", "B:close:1", "F2:close", "F1:close"]
    );
}

/// Before-filters in registration order, the processor, after-filters in reverse order;
/// unregistered commands pass through the filters too.
#[tokio::test]
async fn filter_chain_order() {
    let log = Log::default();
    let server = start_with(
        Server::builder(Config::default())
            .processor("a", Recorder::new("A", &log))
            .filter(Tracer::new("F1", &log))
            .filter(Tracer::new("F2", &log)),
    )
    .await;
    let mut c = server.client().await;
    log.wait_for("A:open:1").await;
    log.take();
    c.request("LHTTP/1.0 a\r\n\r\n").await;
    assert_eq!(
        log.take(),
        [
            "F1:before",
            "F2:before",
            "A:message",
            "F2:after",
            "F1:after"
        ]
    );
    let (answer, _) = c
        .request("LHTTP/1.0 unregistered\r\nsubscribe:x\r\n\r\n")
        .await;
    assert_eq!(answer.command(), "ok");
    assert_eq!(
        log.take(),
        ["F1:before", "F2:before", "F2:after", "F1:after"]
    );
}

/// Replies with any command and any number of headers.
struct Replier;

#[async_trait]
impl Processor for Replier {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let reply = ctx
            .reply_builder()
            .header("a", "1")
            .header("b", "2")
            .header("c", "3")
            .body("reply body")
            .build()
            .unwrap();
        let _ = ctx.reply(&reply);
        let second = Message::builder("other-command")
            .header("x-count", "2")
            .build()
            .unwrap();
        let _ = ctx.reply(&second);
        Ok(())
    }
}

/// Defect 6: the reply API kept only the last AddHeader, and reply settings leaked into the
/// published copies.
#[tokio::test]
async fn replies_keep_every_header_and_do_not_leak_into_publishes() {
    let server = start_with(Server::builder(Config::default()).processor("ask", Replier)).await;
    let mut sub = server.client().await;
    sub.subscribe("room").await;
    let mut asker = server.client().await;
    asker
        .send("LHTTP/1.0 ask\r\npublish:room\r\nmine:yes\r\n\r\nquestion")
        .await;
    let reply = asker.recv().await;
    assert_eq!(
        &reply.to_bytes()[..],
        b"LHTTP/1.0 ask\r\na:1\r\nb:2\r\nc:3\r\n\r\nreply body"
    );
    let second = asker.recv().await;
    assert_eq!(second.command(), "other-command");
    let published = sub.recv().await;
    assert_eq!(
        &published.to_bytes()[..],
        b"LHTTP/1.0 ask\r\npublish:room\r\nmine:yes\r\n\r\nquestion"
    );
    // A processor that replied suppresses the automatic `ok`.
    let (answer, _) = asker.request("LHTTP/1.0 ask\r\n\r\n").await;
    assert_eq!(answer.command(), "ask");
    assert_eq!(answer.header("a"), Some("1"));
}

/// Vetoes a message in `after` when it carries `deny`; adds a header otherwise.
struct Guard;

impl Filter for Guard {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        if ctx.message().header("deny").is_some() {
            return Err(Rejection::forbidden("denied by guard"));
        }
        Ok(())
    }
    fn after(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        ctx.message_mut()
            .headers_mut()
            .set("x-checked", "yes")
            .unwrap();
        Ok(())
    }
}

/// A filter can stop a message with an error reply (nothing is published) or change it before
/// the built-in publish, which runs last.
#[tokio::test]
async fn filters_can_veto_and_change_messages_before_publish() {
    let server = start_with(Server::builder(Config::default()).filter(Guard)).await;
    let mut sub = server.client().await;
    sub.subscribe("room").await;
    let mut c = server.client().await;
    let (answer, _) = c
        .request("LHTTP/1.0 chat\r\ndeny:1\r\npublish:room\r\n\r\nno")
        .await;
    assert_eq!(answer.header("status"), Some("403"));
    assert_eq!(answer.header("reason"), Some("denied by guard"));
    sub.expect_silence(150).await;
    c.send("LHTTP/1.0 chat\r\npublish:room\r\n\r\nyes").await;
    let m = sub.recv().await;
    assert_eq!(m.header("x-checked"), Some("yes"));
    assert_eq!(body(&m), "yes");
}

/// Moves every `chat` message to channels `moved` and `copy`, whatever its `publish` header
/// said.
struct Redirect;

#[async_trait]
impl Processor for Redirect {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        ctx.message_mut()
            .headers_mut()
            .set("publish", "moved copy")
            .unwrap();
        Ok(())
    }
}

/// The publish built-in checks a plain publish before the processor and publishes after it:
/// what it publishes is the message as the processor left it, not what it checked.
#[tokio::test]
async fn a_processor_that_changes_the_publish_header_moves_the_message() {
    let server = start_with(Server::builder(Config::default()).processor("chat", Redirect)).await;
    let mut old = server.client().await;
    old.subscribe("room").await;
    let mut moved = server.client().await;
    moved.subscribe("moved").await;
    let mut copy = server.client().await;
    copy.subscribe("copy").await;
    let mut c = server.client().await;
    c.send("LHTTP/1.0 chat\r\npublish:room\r\n\r\nhi").await;
    for (sub, channel) in [(&mut moved, "moved"), (&mut copy, "copy")] {
        let m = sub.recv().await;
        assert_eq!(m.header("publish"), Some(channel));
        assert_eq!(body(&m), "hi");
    }
    old.expect_silence(150).await;
}

/// Counts messages per connection in connection data; answers with the count, the connection's
/// id and peer address.
struct Counter;

struct Count(u32);

#[async_trait]
impl Processor for Counter {
    async fn on_open(&self, connection: &mut Connection) {
        connection.extensions_mut().insert(Count(0));
    }
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let count = {
            let count = ctx
                .connection_mut()
                .extensions_mut()
                .get_mut::<Count>()
                .unwrap();
            count.0 += 1;
            count.0
        };
        let connection = ctx.connection();
        let reply = ctx
            .reply_builder()
            .header("count", count.to_string())
            .header("id", connection.id().to_string())
            .header("peer", connection.peer().to_string())
            .build()
            .unwrap();
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

#[tokio::test]
async fn per_connection_data_id_and_peer() {
    let server = start_with(Server::builder(Config::default()).processor("count", Counter)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    for expected in 1..=3 {
        let (m, _) = a.request("LHTTP/1.0 count\r\n\r\n").await;
        assert_eq!(m.header("count"), Some(expected.to_string().as_str()));
        let peer = m.header("peer").unwrap();
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    }
    let (m, _) = b.request("LHTTP/1.0 count\r\n\r\n").await;
    assert_eq!(m.header("count"), Some("1"), "data is per connection");
    let (ma, _) = a.request("LHTTP/1.0 count\r\n\r\n").await;
    assert_ne!(m.header("id"), ma.header("id"));
}

/// Sleeps before answering: a slow processor.
struct Slow;

#[async_trait]
impl Processor for Slow {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let reply = ctx.reply_builder().body("slow done").build().unwrap();
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

/// Async work in one connection's processor does not stall other connections.
#[tokio::test]
async fn slow_processor_does_not_stall_others() {
    let server = start_with(Server::builder(Config::default()).processor("slow", Slow)).await;
    let mut slow = server.client().await;
    let mut sub = server.client().await;
    sub.subscribe("fast").await;
    slow.send("LHTTP/1.0 slow\r\n\r\n").await;
    let started = tokio::time::Instant::now();
    let mut other = server.client().await;
    other.publish("c", "fast", "quick").await;
    assert_eq!(body(&sub.recv().await), "quick");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "other connections waited for a slow processor"
    );
    assert_eq!(body(&slow.recv().await), "slow done");
}

/// While a connection's processor awaits, what is published to that connection's own channels
/// still reaches it: its writing does not wait for its reading.
#[tokio::test]
async fn a_connection_busy_in_its_processor_still_receives_deliveries() {
    let server = start_with(Server::builder(Config::default()).processor("slow", Slow)).await;
    let mut busy = server.client().await;
    busy.subscribe("news").await;
    busy.send("LHTTP/1.0 slow\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let mut other = server.client().await;
    other.publish("c", "news", "meanwhile").await;
    assert_eq!(body(&busy.recv().await), "meanwhile");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the delivery waited for the connection's own processor"
    );
    assert_eq!(body(&busy.recv().await), "slow done");
}

/// Reports how many parts its message has.
struct Parts;

#[async_trait]
impl Processor for Parts {
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let parts = ctx
            .message()
            .parts()
            .map_err(|e| Rejection::bad_request(e.to_string()))?;
        let count = parts.map_or(0, |p| p.len());
        let reply = ctx
            .reply_builder()
            .header("parts", count.to_string())
            .build()
            .unwrap();
        let _ = ctx.reply(&reply);
        Ok(())
    }
}

/// Defect 9: multipart parts of an earlier message stayed visible on later messages.
#[tokio::test]
async fn multipart_parts_belong_to_their_message() {
    let server = start_with(Server::builder(Config::default()).processor("parts", Parts)).await;
    let mut c = server.client().await;
    c.send("LHTTP/1.0 parts\r\nmultipart:0 14\r\n\r\nk1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2")
        .await;
    assert_eq!(c.recv().await.header("parts"), Some("2"));
    c.send("LHTTP/1.0 parts\r\n\r\nplain").await;
    assert_eq!(c.recv().await.header("parts"), Some("0"));
}

/// A filter that refuses connections at open.
struct Door;

impl Filter for Door {
    fn on_open(&self, _: &mut Connection) -> Result<(), Rejection> {
        Err(Rejection::forbidden("closed for maintenance"))
    }
}

#[tokio::test]
async fn open_filter_can_refuse_a_connection() {
    let server = start_with(Server::builder(Config::default()).filter(Door)).await;
    let mut c = server.client().await;
    let (status, reason, _) = c.recv_error().await;
    assert_eq!((status, reason.as_str()), (403, "closed for maintenance"));
    let (code, _) = c.recv_close().await;
    assert_eq!(code, 1008);
    server.wait_connections(0).await;
}

/// Publishing from code: the same rules as a client's publish.
#[tokio::test]
async fn publish_from_code() {
    let server = start().await;
    let mut sub = server.client().await;
    sub.subscribe("alerts").await;
    let message = Message::builder("alert")
        .header("publish", "alerts")
        .header("level", "high")
        .body("disk full")
        .build()
        .unwrap();
    let report = server.handle.publish(&message).unwrap();
    assert_eq!((report.channels, report.deliveries), (1, 1));
    let m = sub.recv().await;
    assert_eq!(
        &m.to_bytes()[..],
        b"LHTTP/1.0 alert\r\npublish:alerts\r\nlevel:high\r\n\r\ndisk full"
    );
    let plain = Message::builder("note").body("x").build().unwrap();
    assert_eq!(server.handle.publish(&plain).unwrap_err().status(), 400);
    assert_eq!(server.handle.publish_to("alerts", &plain).unwrap(), 1);
    assert_eq!(sub.recv().await.header("publish"), Some("alerts"));
}

#[test]
fn builder_rejects_bad_registrations() {
    struct P;
    #[async_trait]
    impl Processor for P {
        async fn on_message(&self, _: &mut Context<'_>) -> Result<(), Rejection> {
            Ok(())
        }
    }
    assert!(
        Server::builder(Config::default())
            .processor("has space", P)
            .build()
            .is_err()
    );
    assert!(
        Server::builder(Config::default())
            .processor("x", P)
            .processor("x", P)
            .build()
            .is_err()
    );
    let zero = config(|c: &mut Config| c.limits.max_connections = 0);
    assert!(Server::builder(zero).build().is_err());
}

/// Panics on every message: a bug in application code.
struct Buggy;

#[async_trait]
impl Processor for Buggy {
    async fn on_message(&self, _ctx: &mut Context<'_>) -> Result<(), Rejection> {
        panic!("bug in a processor");
    }
}

/// A panicking processor costs its own connection only: the server keeps serving others and
/// the hub keeps nothing of the dead connection.
#[tokio::test]
async fn panicking_processor_loses_only_its_connection() {
    let server = start_with(Server::builder(Config::default()).processor("bug", Buggy)).await;
    let mut victim = server.client().await;
    victim.subscribe("room").await;
    let mut other = server.client().await;
    other.subscribe("room").await;
    victim.send("LHTTP/1.0 bug\r\n\r\n").await;
    assert!(matches!(
        victim.event().await,
        Event::Gone | Event::Close(_)
    ));
    wait_subscribers(&server, "room", 1).await;
    server.wait_connections(1).await;
    let mut listener = server.client().await;
    listener.subscribe("room").await;
    other.publish("c", "room", "still here").await;
    assert_eq!(body(&listener.recv().await), "still here");
}

/// A multipart body built with `MultipartBuilder` crosses the server intact: a subscriber gets
/// the same parts, binary part bodies included.
#[tokio::test]
async fn multipart_round_trip_through_publish() {
    let server = start().await;
    let mut sub = server.client().await;
    sub.subscribe("files").await;
    let mut parts = lhttp_server::proto::MultipartBuilder::new();
    parts
        .part(
            [("name", "a.txt"), ("content-type", "text/plain")],
            "line one\r\n\r\nline two",
        )
        .unwrap();
    parts
        .part([("name", "b.bin")], [0u8, 255, 13, 10, 13, 10])
        .unwrap();
    parts
        .part(std::iter::empty::<(&str, &str)>(), "no headers")
        .unwrap();
    let message = parts
        .into_message(Message::builder("upload").header("publish", "files"))
        .unwrap();
    let mut publisher = server.client().await;
    publisher.send_binary(&message.to_bytes()).await;
    let received = sub.recv().await;
    let got = received.parts().unwrap().unwrap();
    let sent = message.parts().unwrap().unwrap();
    assert_eq!(got, sent);
    assert_eq!(got.len(), 3);
    assert_eq!(&got[1].body[..], &[0u8, 255, 13, 10, 13, 10]);
    assert!(got[2].headers.is_empty());
}

/// More parts than the limit (64) is a 400, like every other malformed multipart header.
#[tokio::test]
async fn too_many_parts_is_400() {
    let server = start().await;
    let mut c = server.client().await;
    let mut parts = lhttp_server::proto::MultipartBuilder::new();
    for i in 0..65 {
        parts.part([("i", i.to_string())], "x").unwrap();
    }
    let message = parts
        .into_message(Message::builder("upload").header("request-id", "m"))
        .unwrap();
    c.send_binary(&message.to_bytes()).await;
    let (status, reason, _) = c.recv_error().await;
    assert_eq!(status, 400);
    assert!(reason.contains("64"), "{reason}");
}
