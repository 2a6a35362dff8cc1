//! The lhttp server engine, as a library.
//!
//! `lhttpd` is a thin binary over this crate; programs that embed the server use the same API
//! to add their own commands ([`Processor`]) and hooks ([`Filter`]).
//!
//! Layout, following a message from the socket to its subscribers (docs/architecture.md draws
//! it, with what each part may import):
//! - `transport`: how bytes reach a client — WebSocket, byte streams over TCP, TLS and Unix
//!   sockets, in-process pipes — behind one seam, with each connection's bounded outbox.
//! - [`http`](crate::Server::run): one port for WebSocket upgrades (any path), `POST /publish`,
//!   `/healthz`, `/metrics`, the gateway's routes and the pages an embedder adds.
//! - `session`: one task per connection reads messages, parses them (`lhttp-proto`), runs
//!   the filter chain ([`builtin`] headers first) and the processor ([`Context`]), and drains
//!   the connection's outbox into the same socket, several frames per write.
//! - `broker`: where a publish goes — the [`Hub`] (channel -> subscribers; a published
//!   message is encoded once per channel and the same bytes are queued for every
//!   subscriber), queue groups, request inboxes, and, when `[cluster] nats` is set, the other
//!   nodes through NATS.
//! - `requests`: inboxes and requests (`reply-to`), each ending with exactly one terminal
//!   answer; queue groups (work queues with credit, acks, at-least-once hand-over, drain); the
//!   gateway's channels; calls to HTTP back ends ([`upstream`]).
//! - `security`: JWT verification ([`User`]), channel rules, failed-auth throttling and the
//!   connection limits, checked at accept, at the upgrade, on `auth`, and by the built-ins.
//! - [`Config`], [`Metrics`], [`Rejection`] (the `error` answer), [`Channel`] (name rules).
//!
//! ```no_run
//! use lhttp_server::{async_trait, Config, Context, Processor, Rejection, Server};
//!
//! struct Hello;
//!
//! #[async_trait]
//! impl Processor for Hello {
//!     async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
//!         let reply = ctx.reply_builder().body("hello").build().expect("valid reply");
//!         let _ = ctx.reply(&reply);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(Config::default()).processor("hello", Hello).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! server.run(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod broker;
pub mod config;
#[doc(hidden)]
pub mod conformance;
mod error;
#[doc(hidden)]
pub mod fuzz_support;
mod http;
mod metrics;
mod pubsub;
mod rejection;
mod requests;
mod security;
mod server;
mod session;
mod transport;
mod validation;

pub use async_trait::async_trait;
pub use config::{
    AdminConfig, AuthConfig, ChannelOptions, ChannelRule, ClusterConfig, Config, GatewayRoute,
    HistoryConfig, Limits, QueuesConfig, RequestsConfig, UpstreamConfig,
};
pub use error::ServerError;
pub use lhttp_proto as proto;
pub use metrics::Metrics;
pub use pubsub::channel::{Channel, MAX_CHANNEL_LEN};
pub use pubsub::hub::Hub;
pub use pubsub::publish::PublishReport;
pub use rejection::Rejection;
pub use requests::upstream;
pub use security::auth::{AuthError, TokenSpec, User, mint_token};
pub use server::{Server, ServerBuilder};
pub use session::builtin;
pub use session::connection::{Connection, ConnectionHandle, ConnectionId};
pub use session::context::Context;
pub use session::extensions::Extensions;
pub use session::filter::Filter;
pub use session::handle::ServerHandle;
pub use session::processor::Processor;
pub use session::reload::{RELOADABLE, Reloaded};
pub use transport::outbox::SendError;
