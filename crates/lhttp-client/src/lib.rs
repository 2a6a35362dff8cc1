//! An async (tokio) client for lhttp servers such as `lhttpd`.
//!
//! ```
//! use futures_util::StreamExt;
//! use lhttp_client::Client;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // An in-process server on a free port stands in for `lhttpd`.
//! # let server = lhttp_server::Server::builder(lhttp_server::Config::default()).build()?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let url = format!("ws://{}/", listener.local_addr()?);
//! # tokio::spawn(server.run(listener, std::future::pending()));
//! let client = Client::connect(&url).await?;              // e.g. "ws://127.0.0.1:8081/"
//! let mut room = client.subscribe(["chatroom"]).await?; // in place once this returns
//! client.publish("chatroom", "hello").await?;           // waits for the server's ok
//! let message = room.next().await.expect("a message");
//! assert_eq!(&message.body()[..], b"hello");
//! assert_eq!(message.header("publish"), Some("chatroom"));
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`Client`] and [`ClientBuilder`] (module `client`): connect, send, request, subscribe,
//!   publish, observe the [`ConnectionState`].
//! - [`Subscription`] and [`Incoming`] (module `subscription`): `Stream`s of received messages
//!   with bounded buffers.
//! - [`Position`], [`Gap`], [`Event`], [`HistoryQuery`] and [`History`] (module `history`):
//!   channel history as the client sees it ([`Client::subscribe_recent`],
//!   [`Client::history`], [`Subscription::recv_event`]).
//! - [`Presence`] and [`Member`] (module `presence`): who is in a channel with presence
//!   ([`Client::presence`]).
//! - module `connection`: the background task that owns the connection, matches answers to
//!   requests by `request-id`, fans deliveries out to subscriptions, and reconnects with
//!   jittered exponential backoff, restoring subscriptions (with what was missed, on channels
//!   that keep history), and pings a silent connection.
//! - module `transport`: the URL schemes and caller-provided streams, TLS (rustls), and the
//!   one seam (`Link`) through which the connection task reads, writes, pings and closes
//!   without knowing whether a WebSocket or a framed byte stream is underneath.
//! - [`Error`]: one enum for everything; server refusals carry status and reason.
//! - module `worker`: requests to channels ([`Client::call`]) and queue-group workers
//!   ([`Client::serve`], [`Client::join_queue`], [`Client::reply`], [`Reply`]).
//!
//! Behaviour worth knowing:
//! - Requests (`request`, `subscribe`, `publish`, `unsubscribe`) carry a `request-id` and wait
//!   for the server's answer, at most the request timeout (10 s by default).
//! - Memory is bounded: at most 256 operations wait for the socket (callers wait beyond), and
//!   each subscription buffers at most `subscription_capacity` unread messages (1024 by
//!   default); newer messages are dropped and counted when it is full.
//! - A connection silent for 25 s gets an `LHTTP/1.0 ping` (configurable); one still silent
//!   10 s later, or a write stalled past the request timeout, counts as lost, so a dead
//!   network path is noticed within 35 s and replaced.
//! - On channels that keep history (their messages carry `offset` and `epoch`), a
//!   reconnection recovers what was published meanwhile: every message once, in order; when
//!   the server no longer has it all, the subscription reports a [`Gap`]
//!   ([`Subscription::recv_event`]). On other channels delivery is at most once, as the
//!   server's: what is published while the client is disconnected is missed.
//! - Transports, chosen by the URL: `ws://` and `wss://` (one message per WebSocket message),
//!   `tcp://host:port`, `tls://host:port` and `unix:///path` (the same messages in the byte
//!   stream framing of `lhttp_proto::stream`), and any byte stream the caller opens
//!   ([`Client::builder_with_connector`], [`Client::builder_with_stream`]), such as the
//!   in-process pipe of a server embedded in the same program. Every transport gives the
//!   same API and behaviour: requests, subscriptions, pings, reconnects.
//! - TLS (`wss://`, `tls://`) is rustls with the platform's root certificates, plus any CA
//!   given to [`ClientBuilder::ca_certificate`]; [`ClientBuilder::client_certificate`] adds
//!   a client certificate for servers that ask for one.
//! - A token ([`ClientBuilder::token`]) goes in the upgrade request on a WebSocket, and in an
//!   `auth` message sent first on a stream.
//!
//! Messages, headers and multipart bodies are the types of `lhttp-proto`, re-exported here.

mod client;
mod connection;
mod error;
mod history;
mod presence;
mod subscription;
mod transport;
mod worker;

pub use client::{Client, ClientBuilder, ConnectionState, DEFAULT_COMMAND, SubscribeOptions};
pub use error::Error;
pub use history::{Event, Gap, History, HistoryQuery, Position};
pub use lhttp_proto::{
    self as proto, BuildError, Header, Headers, Message, MessageBuilder, MultipartBuilder, Part,
};
pub use presence::{Member, Presence};
pub use subscription::{Incoming, Subscription};
/// The TLS library, for [`ClientBuilder::tls_config`].
pub use tokio_rustls::rustls;
pub use worker::Reply;
