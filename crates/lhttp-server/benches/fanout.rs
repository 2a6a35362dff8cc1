//! Fan-out through the whole server, in process: one `ServerHandle::publish` of a 64-byte chat
//! message to channel `bench` with 1, 100, 1,000 and 10,000 subscribers, until every
//! subscriber has read and decoded its copy.
//!
//! Each subscriber is a real connection made with `ServerHandle::connect_in_process()`,
//! subscribed with a framed `subscribe` message whose `ok` is read before measuring. So an
//! iteration is the path a delivery takes on any transport: publish → hub → each
//! subscriber's outbox → its session's writer (its own task) → the in-process pipe → the
//! frame read back and decoded (`lhttp_proto::stream::decode`) and compared byte for byte
//! with the expected copy. Sockets are left out, and so are their system calls: what remains
//! is the server's own work per delivery plus the pipe and the reading side.
//!
//! Everything runs on one thread (a current-thread tokio runtime), so the time per
//! iteration is the CPU time of the whole path, subscriber tasks included, and deliveries/s
//! is what one core does. `iter_custom` runs a whole batch of iterations in one `block_on`
//! and times it from inside, so entering the runtime is not part of the figure.
//!
//! 10,000 in-process connections are 10,000 session tasks and pipes in one process: setting
//! them up takes about a second and each publish to them tens of milliseconds, so that size
//! gets fewer iterations from criterion than the others, and shows what happens once the
//! subscribers' state no longer fits in the caches.
//!
//! `cargo bench -p lhttp-server --bench fanout`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::{Duration, Instant};

mod support;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lhttp_server::{
    Config, Server, ServerHandle,
    proto::{Message, stream::encode},
};
use tokio::{
    io::{AsyncWriteExt, DuplexStream},
    runtime::Runtime,
};

/// Largest frame a subscriber accepts; the bench's are about a hundred bytes.
const MAX_FRAME: usize = 64 * 1024;

/// One subscribing in-process connection and what it has read but not decoded yet.
struct Subscriber {
    pipe: DuplexStream,
    read: BytesMut,
}

impl Subscriber {
    /// The next message's bytes, skipping heartbeats.
    async fn next_message(&mut self) -> BytesMut {
        support::next_message(&mut self.pipe, &mut self.read, MAX_FRAME).await
    }
}

/// A server and `n` in-process connections subscribed to channel `bench`.
struct FanOut {
    handle: ServerHandle,
    subscribers: Vec<Subscriber>,
    /// The bytes every subscriber must receive for the published message.
    expected: Vec<u8>,
    /// Keeps the server's shared state as a running server would.
    _server: Server,
}

impl FanOut {
    async fn new(n: usize, message: &Message) -> FanOut {
        let mut config = Config::default();
        // In-process connections count against the connection limit (10,000 by default).
        config.limits.max_connections = n + 1;
        // No heartbeat or idle timeout during a run: the subscribers never write after
        // subscribing.
        config.server.ping_interval_ms = 3_600_000;
        config.server.idle_timeout_ms = 7_200_000;
        let server = Server::builder(config).build().expect("config builds");
        let handle = server.handle();
        let mut subscribers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut subscriber = Subscriber {
                pipe: handle.connect_in_process(),
                read: BytesMut::with_capacity(MAX_FRAME),
            };
            let mut frame = Vec::new();
            encode(
                b"LHTTP/1.0 sub\r\nsubscribe:bench\r\nrequest-id:s\r\n\r\n",
                &mut frame,
            );
            subscriber.pipe.write_all(&frame).await.expect("subscribe");
            let answer = subscriber.next_message().await;
            assert!(
                answer.starts_with(b"LHTTP/1.0 ok\r\n"),
                "subscribe answered {:?}",
                String::from_utf8_lossy(&answer)
            );
            subscribers.push(subscriber);
        }
        assert_eq!(handle.hub().subscriber_count("bench"), n);
        let mut fanout = FanOut {
            handle,
            subscribers,
            expected: Vec::new(),
            _server: server,
        };
        // The first delivery tells what every later one must be.
        fanout.handle.publish(message).expect("publishable");
        let first = fanout.subscribers[0].next_message().await.to_vec();
        for subscriber in &mut fanout.subscribers[1..] {
            assert_eq!(subscriber.next_message().await[..], first[..]);
        }
        fanout.expected = first;
        fanout
    }

    /// Publishes `message` and reads every subscriber's copy; returns the deliveries.
    async fn publish_and_read(&mut self, message: &Message) -> usize {
        let report = self.handle.publish(message).expect("publishable");
        for subscriber in &mut self.subscribers {
            let got = subscriber.next_message().await;
            assert!(got[..] == self.expected[..], "a subscriber got other bytes");
        }
        report.deliveries
    }
}

fn fanout(c: &mut Criterion) {
    let message = Message::builder("chat")
        .header("publish", "bench")
        .header("nick", "ann")
        .body(vec![b'x'; 64])
        .build()
        .expect("valid message");
    let runtime: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 1_000, 10_000] {
        let mut fixture = runtime.block_on(FanOut::new(subscribers, &message));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &n| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            let delivered = fixture.publish_and_read(&message).await;
                            debug_assert_eq!(delivered, n);
                        }
                        started.elapsed()
                    })
                })
            },
        );
        runtime.block_on(async {
            drop(fixture);
            // Let the sessions see their connections end before the next fixture starts.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
