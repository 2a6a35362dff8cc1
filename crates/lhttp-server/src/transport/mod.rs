//! How bytes reach a client and come back, behind one seam ([`Transport`]) that the session
//! drives without knowing what is underneath:
//!
//! - [`websocket`]: RFC 6455 on an upgraded HTTP connection (plain or TLS);
//! - [`stream`]: lhttp messages framed for a byte stream (`lhttp_proto::stream`), over TCP,
//!   TLS, Unix sockets and the in-process pipe;
//! - [`tls`]: certificates of TLS listeners, loaded from PEM files and reloaded when they
//!   change;
//! - [`outbox`]: the bounded queue of what a connection is sent, and the writer that drains it
//!   into its transport;
//! - [`deadline`]: the clock of a message a client has begun and not finished;
//!   [`budget`]: the bytes all connections may hold for such messages; [`scratch`]: the
//!   per-thread read buffer of quiet connections.
//!
//! A transport may import nothing from the session, pub/sub or requests: they are built on it.

pub(crate) mod budget;
pub(crate) mod deadline;
pub(crate) mod outbox;
pub(crate) mod scratch;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod websocket;
pub(crate) mod write;

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use std::time::Duration;

use bytes::Bytes;

/// Pause after an accept error that is not the peer's (out of file descriptors): retrying at
/// once would spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// After an accept error: one that is not the peer's (out of file descriptors) is logged and
/// waited out, since retrying at once would spin while nothing can be accepted.
pub(crate) async fn accept_failed(error: &std::io::Error) {
    let peers_fault = matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
    );
    if !peers_fault {
        tracing::warn!(%error, "cannot accept a connection");
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The next connection on `listener`, or `None` once `shutdown` is cancelled; accept errors
/// are handled as [`accept_failed`] says.
pub(crate) async fn accept_tcp(
    listener: &tokio::net::TcpListener,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(pair) => return Some(pair),
            Err(error) => accept_failed(&error).await,
        }
    }
}

/// What the server sends a client, whatever carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// An lhttp message that is UTF-8 (see [`outbox::frame`]): a WebSocket text frame.
    Text(Bytes),
    /// An lhttp message with a binary body: a WebSocket binary frame.
    Binary(Bytes),
    /// A keepalive: a WebSocket ping, a stream's heartbeat.
    Ping,
    /// The answer to a client's WebSocket ping; byte streams have none.
    Pong(Bytes),
    /// The end of the connection, with the WebSocket close code the event has on every
    /// transport and its reason; nothing follows it.
    Close(u16, &'static str),
}

impl Outgoing {
    /// Payload bytes, as counted against the outbox's byte limit.
    pub(crate) fn len(&self) -> usize {
        match self {
            Outgoing::Text(bytes) | Outgoing::Binary(bytes) | Outgoing::Pong(bytes) => bytes.len(),
            Outgoing::Ping => 0,
            Outgoing::Close(_, reason) => 2 + reason.len(),
        }
    }

    pub(crate) fn is_close(&self) -> bool {
        matches!(self, Outgoing::Close(..))
    }
}

/// What a transport received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A whole lhttp message from a WebSocket text frame (its UTF-8 checked), not parsed yet.
    Text(Bytes),
    /// A whole lhttp message from a WebSocket binary frame, or from a byte stream (which has no
    /// text frames), not parsed yet.
    Binary(Bytes),
    /// Traffic that is not a message (a ping, already answered; a pong; a heartbeat; a
    /// fragment of a message not complete yet): the client is alive.
    Control,
}

/// The client broke its transport's framing; the connection is closed with `code` (the
/// WebSocket close code, on every transport) and `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Broken {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// Why reading stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The client broke the framing; the connection is closed with its code and reason.
    #[error(transparent)]
    Violation(#[from] Broken),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Unfinished messages of all connections hold the whole `limits.unfinished_message_bytes`:
    /// this connection, whose message would need more, is closed with 1013.
    #[error("unfinished messages over the server's budget")]
    Busy,
    /// A message whose first byte arrived was not complete within `limits.message_timeout_ms`.
    #[error("message not completed in time")]
    Overdue,
}

/// One client connection's transport, as the session drives it: read the next message, feed
/// frames, flush them, and linger after the close. Implemented by [`websocket::WebSocket`] and
/// [`stream::ByteStream`]; the session and the outbox's writer are generic over it, so each
/// transport gets its own monomorphic copy and the seam costs no dynamic call.
pub(crate) trait Transport: Send + Unpin + 'static {
    /// Most bytes the transport adds around one message it writes.
    const MAX_FRAME_OVERHEAD: usize;

    /// The next message or control item from the client; `None` once nothing more will be
    /// read (the client closed, the stream ended, or reading failed before).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>>;

    /// Encodes `frame` after what waits to be written; nothing follows a close.
    fn feed(&mut self, frame: &Outgoing);

    /// Makes room for `additional` more bytes of frames.
    fn reserve(&mut self, additional: usize);

    /// Encoded bytes not yet written.
    fn unwritten(&self) -> usize;

    /// Writes everything fed so far.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Gives back the write buffer if everything in it was written.
    fn release_write_buffer(&mut self);

    /// Which transport this is, for the metrics.
    fn kind(&self) -> TransportKind;

    /// After the server's close was written: reads and drops what the client still sends,
    /// for a short while, so that closing does not reset the connection under the client.
    fn linger(self) -> impl std::future::Future<Output = ()> + Send;
}

/// A connection's number, unique for the life of the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

pub(crate) use crate::metrics::TransportKind;

/// Who is at the other end of a connection.
#[derive(Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP connection (WebSocket, or a byte stream over TCP or TLS) from this address.
    Ip(SocketAddr),
    /// A Unix-socket connection, with the peer's credentials as the kernel gave them.
    Unix(PeerCredentials),
    /// A connection made in this process ([`crate::ServerHandle::connect_in_process`]).
    InProcess,
}

impl Peer {
    /// The client's IP address, for the limits kept per address; `None` for local peers.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(addr) => Some(addr.ip()),
            Peer::Unix(_) | Peer::InProcess => None,
        }
    }

    /// The socket address of a TCP peer.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(addr) => Some(*addr),
            Peer::Unix(_) | Peer::InProcess => None,
        }
    }

    /// The credentials of a Unix-socket peer.
    pub fn credentials(&self) -> Option<&PeerCredentials> {
        match self {
            Peer::Unix(credentials) => Some(credentials),
            Peer::Ip(_) | Peer::InProcess => None,
        }
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Unix(c) => write!(f, "unix uid={} gid={} pid={:?}", c.uid, c.gid, c.pid),
            Peer::InProcess => f.write_str("in-process"),
        }
    }
}

/// The process at the other end of a Unix socket, as the kernel reports it (`SO_PEERCRED`):
/// it cannot be forged by the client, so channel rules may rely on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform gives it.
    pub pid: Option<i32>,
}
