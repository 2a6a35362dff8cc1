//! Fixtures for the criterion benchmarks: the hub's fan-out without sockets. Not a public API.

use lhttp_proto::Message;

use crate::{
    Channel, Config, Server, ServerHandle,
    transport::ConnectionId,
    transport::outbox::{Outbox, OutboxReceiver},
};

/// A server whose channel `bench` has `n` subscribers that are plain queues.
pub struct FanOut {
    handle: ServerHandle,
    receivers: Vec<OutboxReceiver>,
    /// Keeps the producing sides alive, as connections would.
    _outboxes: Vec<Outbox>,
}

impl FanOut {
    /// `subscribers` queues subscribed to channel `bench`.
    pub fn new(subscribers: usize) -> FanOut {
        let server = Server::builder(Config::default())
            .build()
            .expect("default config builds");
        let handle = server.handle();
        let channel = Channel::new("bench").expect("valid channel");
        let limits = Config::default().limits;
        let mut receivers = Vec::with_capacity(subscribers);
        let mut outboxes = Vec::with_capacity(subscribers);
        for id in 0..subscribers {
            let (outbox, receiver) =
                Outbox::new(limits.outbound_queue, limits.outbound_queue_bytes);
            handle
                .hub()
                .subscribe(&channel, ConnectionId(id as u64), &outbox);
            receivers.push(receiver);
            outboxes.push(outbox);
        }
        FanOut {
            handle,
            receivers,
            _outboxes: outboxes,
        }
    }

    /// Publishes `message` (which names channel `bench`), then empties every queue as writers
    /// would; returns the number of deliveries.
    pub fn publish_and_drain(&mut self, message: &Message) -> usize {
        let report = self.handle.publish(message).expect("publishable message");
        let drained: usize = self.receivers.iter_mut().map(OutboxReceiver::drain).sum();
        debug_assert_eq!(drained, report.deliveries);
        report.deliveries
    }
}
