//! How bytes reach a client and come back: the WebSocket codec and socket, and the
//! [`outbox`] that queues what a connection is sent until its writer drains it.

pub(crate) mod outbox;
pub(crate) mod websocket;
