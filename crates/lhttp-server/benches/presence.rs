//! What presence costs in a large room, through the whole server, in process: a room `room.big`
//! of 1,000 or 10,000 members (in-process connections, each subscribed with a
//! `presence-info`), and one more connection that
//!
//! - `join_leave`: subscribes to the room and unsubscribes again (one member joining and
//!   leaving), each answered `ok` — against the same subscribe and unsubscribe on a channel
//!   without presence (`plain`), which is the bare cost of a subscription;
//! - `count`: asks `presence` with `limit:0` (the count alone);
//! - `list`: asks `presence` with the default limit (1,000 members listed as JSON).
//!
//! The asking connection (with no message rate limit) reads and checks every answer; the members never read (nothing is
//! sent to them: the block has no `join_leave`). One thread runs everything (a current-thread
//! runtime), so a figure is the CPU time of the whole path on one core.
//!
//! `cargo bench -p lhttp-server --bench presence`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Instant;

mod support;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lhttp_server::{ChannelOptions, Config, Server, ServerHandle, proto::stream::encode};
use tokio::{
    io::{AsyncWriteExt, DuplexStream},
    runtime::Runtime,
};

const MAX_FRAME: usize = 1024 * 1024;

/// A message to send and how its answer must begin.
type Step = (&'static str, &'static [u8]);

/// One in-process connection and what it has read but not decoded yet.
struct Peer {
    pipe: DuplexStream,
    read: BytesMut,
}

impl Peer {
    fn new(handle: &ServerHandle) -> Peer {
        Peer {
            pipe: handle.connect_in_process(),
            read: BytesMut::with_capacity(MAX_FRAME),
        }
    }

    /// Sends `text` and returns the next message's bytes.
    async fn ask(&mut self, text: &str) -> BytesMut {
        let mut frame = Vec::new();
        encode(text.as_bytes(), &mut frame);
        self.pipe.write_all(&frame).await.expect("write");
        support::next_message(&mut self.pipe, &mut self.read, MAX_FRAME).await
    }
}

/// A server with presence on `room.*` and a room of `n` members.
struct Room {
    asker: Peer,
    _members: Vec<Peer>,
    _server: Server,
}

impl Room {
    async fn new(n: usize) -> Room {
        let mut config = Config::default();
        config.limits.max_connections = n + 1;
        config.server.ping_interval_ms = 3_600_000;
        config.server.idle_timeout_ms = 7_200_000;
        // The asker sends as fast as the server answers: no message rate limit.
        config.limits.messages_per_second = 0;
        config.channels.push(ChannelOptions {
            pattern: "room.*".into(),
            presence: true,
            ..ChannelOptions::default()
        });
        let server = Server::builder(config).build().expect("config builds");
        let handle = server.handle();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let mut member = Peer::new(&handle);
            let answer = member
                .ask(&format!(
                    "LHTTP/1.0 sub\r\nsubscribe:room.big\r\npresence-info:member {i}\r\nrequest-id:s\r\n\r\n"
                ))
                .await;
            assert!(answer.starts_with(b"LHTTP/1.0 ok\r\n"));
            members.push(member);
        }
        let asker = Peer::new(&handle);
        Room {
            asker,
            _members: members,
            _server: server,
        }
    }

    async fn expect(&mut self, text: &str, start: &[u8]) -> usize {
        let answer = self.asker.ask(text).await;
        assert!(
            answer.starts_with(start),
            "{:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        answer.len()
    }
}

fn presence(c: &mut Criterion) {
    let runtime: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("presence");
    for members in [1_000usize, 10_000] {
        let mut room = runtime.block_on(Room::new(members));
        let cases: [(&str, &[Step]); 4] = [
            (
                "join_leave",
                &[
                    (
                        "LHTTP/1.0 sub\r\nsubscribe:room.big\r\nrequest-id:j\r\n\r\n",
                        b"LHTTP/1.0 ok",
                    ),
                    (
                        "LHTTP/1.0 sub\r\nunsubscribe:room.big\r\nrequest-id:l\r\n\r\n",
                        b"LHTTP/1.0 ok",
                    ),
                ],
            ),
            (
                "plain_subscribe_unsubscribe",
                &[
                    (
                        "LHTTP/1.0 sub\r\nsubscribe:plain\r\nrequest-id:j\r\n\r\n",
                        b"LHTTP/1.0 ok",
                    ),
                    (
                        "LHTTP/1.0 sub\r\nunsubscribe:plain\r\nrequest-id:l\r\n\r\n",
                        b"LHTTP/1.0 ok",
                    ),
                ],
            ),
            (
                "count",
                &[(
                    "LHTTP/1.0 presence\r\nchannel:room.big\r\nlimit:0\r\nrequest-id:c\r\n\r\n",
                    b"LHTTP/1.0 presence",
                )],
            ),
            (
                "list",
                &[(
                    "LHTTP/1.0 presence\r\nchannel:room.big\r\nrequest-id:c\r\n\r\n",
                    b"LHTTP/1.0 presence",
                )],
            ),
        ];
        for (name, steps) in cases {
            group.bench_with_input(BenchmarkId::new(name, members), &members, |b, _| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            for (text, start) in steps {
                                room.expect(text, start).await;
                            }
                        }
                        started.elapsed()
                    })
                })
            });
        }
        drop(room);
    }
    group.finish();
}

criterion_group!(benches, presence);
criterion_main!(benches);
