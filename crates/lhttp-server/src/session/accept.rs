//! Byte-stream connections (`[transports]`: TCP, TLS, a Unix socket; and in-process pipes):
//! accepting them and starting their sessions, with the same limits as WebSocket
//! connections: `limits.max_connections` in all, `limits.max_connections_per_ip` for TCP
//! clients, `limits.handshake_timeout_ms` for a TLS handshake. A connection refused for a
//! limit is told why in a last `close` message (1013 "too many connections", or "... from your
//! address") and closed.
//!
//! There is no HTTP upgrade, so there is no token in it: a client authenticates with an `auth`
//! message. A Unix-socket client is known by its peer credentials instead and needs none; an
//! in-process client is the program that embeds the server.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream},
    net::{TcpListener, TcpStream, UnixListener},
    sync::OwnedSemaphorePermit,
};

use crate::{
    config::UnixTransport,
    metrics::add,
    security::peers::IpSlot,
    session,
    session::sessions::Sessions,
    transport::{Peer, PeerCredentials, TransportKind, stream::ByteStream, tls::TlsServer},
};

/// Bytes each way of an in-process pipe: a batch of writes' worth, like a socket buffer.
const PIPE_BYTES: usize = 256 * 1024;

/// Why a byte-stream connection was not given a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.max_connections_per_ip`.
    FromAddress,
    /// `limits.max_connections`.
    Full,
    /// The server is shutting down.
    ShuttingDown,
}

impl Refused {
    /// The last message a refused stream client reads, framed.
    fn frame(self) -> &'static [u8] {
        match self {
            Refused::FromAddress => {
                b"77\r\nLHTTP/1.0 close\r\ncode:1013\r\nreason:too many connections from your address\r\n\r\n\r\n"
            }
            Refused::Full => {
                b"59\r\nLHTTP/1.0 close\r\ncode:1013\r\nreason:too many connections\r\n\r\n\r\n"
            }
            Refused::ShuttingDown => {
                b"59\r\nLHTTP/1.0 close\r\ncode:1001\r\nreason:server shutting down\r\n\r\n\r\n"
            }
        }
    }
}

/// A place in the server's connection counts for a client at `peer`.
fn admit(shared: &Sessions, peer: &Peer) -> Result<(OwnedSemaphorePermit, IpSlot), Refused> {
    if shared.draining.is_cancelled() {
        return Err(Refused::ShuttingDown);
    }
    // Per address first: a refused client must not take one of the server's places.
    let ip_slot = match peer.ip() {
        Some(ip) => shared
            .admission
            .connections_per_ip
            .try_acquire(ip)
            .ok_or_else(|| {
                add(&shared.metrics.connections_refused_per_ip, 1);
                Refused::FromAddress
            })?,
        None => IpSlot::none(),
    };
    let permit = shared
        .admission
        .connection_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            add(&shared.metrics.connections_refused, 1);
            Refused::Full
        })?;
    Ok((permit, ip_slot))
}

/// Starts the session of a byte-stream connection of `kind` that was admitted.
fn start<S>(
    shared: &Arc<Sessions>,
    io: S,
    kind: TransportKind,
    peer: Peer,
    slots: (OwnedSemaphorePermit, IpSlot),
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let socket = ByteStream::new(io, kind, shared.config().limits.max_message_size)
        .with_budget(shared.unfinished.clone());
    let session = session::run(shared.clone(), Box::new(socket), peer, slots, None);
    shared.tasks.spawn(session);
}

/// Tells a refused client why, if its socket takes it now, and drops it.
fn refuse(stream: &TcpStream, refused: Refused) {
    let _ = stream.try_write(refused.frame());
}

/// Accepts TCP connections on `listener` until shutdown starts, as plain byte streams or,
/// with `tls`, after a TLS handshake.
pub(crate) async fn tcp_loop(
    listener: TcpListener,
    shared: Arc<Sessions>,
    tls: Option<Arc<TlsServer>>,
) {
    loop {
        let Some((tcp, addr)) = crate::transport::accept_tcp(&listener, &shared.shutdown).await
        else {
            return;
        };
        let peer = Peer::Ip(addr);
        let slots = match admit(&shared, &peer) {
            Ok(slots) => slots,
            Err(refused) => {
                refuse(&tcp, refused);
                continue;
            }
        };
        // Real-time traffic: a small frame goes out now, not after Nagle's algorithm waited.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            start(&shared, tcp, TransportKind::Tcp, peer, slots);
            continue;
        };
        // The handshake runs in a task of its own (holding the connection's places), so that
        // a slow one holds up nobody; it has the handshake timeout.
        let (owned, tls) = (shared.clone(), tls.clone());
        let handshake = async move {
            let timeout = owned.config().limits.handshake_timeout();
            match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
                Ok(Ok(stream)) => start(&owned, stream, TransportKind::Tls, peer, slots),
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => {
                    add(&owned.metrics.handshake_timeouts, 1);
                    tracing::debug!(%peer, "TLS handshake not completed in time");
                }
            }
        };
        shared.tasks.spawn(handshake);
    }
}

/// Binds the Unix socket of `config`: a stale socket file at its path is removed first (any
/// other file is left alone and is an error), and the socket gets the configured mode.
pub(crate) fn bind_unix(config: &UnixTransport) -> std::io::Result<UnixListener> {
    let path = &config.path;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::other(format!(
                "transports.unix.path {}: exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let mode = config.mode_bits().map_err(std::io::Error::other)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts Unix-socket connections until shutdown starts, each known by its peer credentials;
/// removes the socket file when it stops.
pub(crate) async fn unix_loop(listener: UnixListener, path: &Path, shared: Arc<Sessions>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                crate::transport::accept_failed(&error).await;
                continue;
            }
        };
        let credentials = match stream.peer_cred() {
            Ok(cred) => PeerCredentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(error) => {
                tracing::debug!(%error, "no peer credentials for a Unix-socket client");
                continue;
            }
        };
        let peer = Peer::Unix(credentials);
        match admit(&shared, &peer) {
            Ok(slots) => start(&shared, stream, TransportKind::Unix, peer, slots),
            Err(refused) => {
                let _ = stream.try_write(refused.frame());
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// A connection from this process: the client's end of a pipe whose other end is a session,
/// speaking the byte-stream framing. Refused as any connection is when the server is full or
/// shutting down (the client then reads the `close` message and the end of the stream).
pub(crate) fn in_process(shared: &Arc<Sessions>) -> DuplexStream {
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let peer = Peer::InProcess;
    match admit(shared, &peer) {
        Ok(slots) => start(shared, server, TransportKind::InProcess, peer, slots),
        Err(refused) => {
            let mut server = server;
            let refusing = async move {
                let _ = server.write_all(refused.frame()).await;
                let _ = server.shutdown().await;
            };
            shared.tasks.spawn(refusing);
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use lhttp_proto::stream::{Decoded, decode};

    use super::*;

    #[test]
    fn refusal_frames_are_well_formed_close_messages() {
        for refused in [Refused::FromAddress, Refused::Full, Refused::ShuttingDown] {
            let (decoded, used) = decode(refused.frame(), 1024).unwrap();
            let Decoded::Message(message) = decoded else {
                panic!("{refused:?}: {decoded:?}");
            };
            assert_eq!(used + 2, refused.frame().len(), "{refused:?}");
            let message = lhttp_proto::Message::parse(bytes::Bytes::copy_from_slice(message))
                .expect("a valid lhttp message");
            assert_eq!(message.command(), "close");
            assert!(message.header("code").is_some() && message.header("reason").is_some());
        }
    }
}
