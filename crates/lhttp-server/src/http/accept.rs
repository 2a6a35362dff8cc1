//! Accepting TCP connections and serving HTTP/1.1 on each, with the limits that apply before a
//! connection becomes a WebSocket: how many such connections one address and everyone may
//! hold, the handshake timeout (slow-loris clients, idle keep-alive connections) and the size
//! of request heads.
//!
//! Every accepted TCP connection takes a place in `limits.max_http_connections_per_ip` and
//! `limits.max_http_connections` until it closes or becomes a WebSocket (which then counts
//! towards the WebSocket limits instead). A connection over either limit gets a fixed 429 or
//! 503 response, written without waiting, and is closed at once: refusing costs no task and
//! no timer, so a flood of connections from one address costs the server an accept each.
//!
//! hyper's `header_read_timeout` starts when the server begins waiting for a request head: on
//! a new connection, and again after each response on a kept-alive one. A client therefore
//! has `limits.handshake_timeout_ms` to send each head; only the first one missed counts as a
//! handshake timeout in `/metrics` (a kept-alive connection that falls idle is just closed).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use axum::extract::ConnectInfo;
use futures_util::{FutureExt as _, future::Either};
use http_body_util::Either as EitherBody;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::OwnedSemaphorePermit,
};
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::{
    config::Limits, http::Routes, http::publish, metrics::add, security::peers::IpSlot,
    session::sessions::Sessions, transport::tls::TlsServer,
};

/// hyper parses up to this many headers on the stack; any other limit costs one allocation
/// per request.
const HYPER_STACK_HEADERS: usize = 100;

/// The HTTP/1 settings every connection is served with.
pub(crate) fn http_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout())
        .max_header_size(limits.http_max_header_bytes)
        .keep_alive(true);
    if limits.http_max_headers != HYPER_STACK_HEADERS {
        builder.max_headers(limits.http_max_headers);
    }
    builder
}

/// Accepts connections on `listener` until shutdown starts, serving `routes` on each, after a
/// TLS handshake when `tls` is given; every connection task is tracked by `connections`, so
/// that shutdown can wait for them.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    shared: Arc<Sessions>,
    builder: Arc<http1::Builder>,
    connections: TaskTracker,
    tls: Option<Arc<TlsServer>>,
) {
    loop {
        let Some((tcp, peer)) = crate::transport::accept_tcp(&listener, &shared.shutdown).await
        else {
            return;
        };
        // Real-time traffic: a small frame goes out now, not when Nagle's algorithm has waited
        // for the peer's (possibly delayed) acknowledgement.
        // Per address first: a refused client must not take one of the server's places.
        let Some(ip_slot) = shared
            .admission
            .http_connections_per_ip
            .try_acquire(peer.ip())
        else {
            add(&shared.metrics.http_connections_refused_per_ip, 1);
            refuse(&tcp, TOO_MANY_FROM_ADDRESS);
            continue;
        };
        let Ok(permit) = shared
            .admission
            .http_connection_slots
            .clone()
            .try_acquire_owned()
        else {
            add(&shared.metrics.http_connections_refused, 1);
            refuse(&tcp, TOO_MANY_CONNECTIONS);
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (routes, shared, builder) = (routes.clone(), shared.clone(), builder.clone());
        let slots = (permit, ip_slot);
        match &tls {
            None => connections.spawn(serve_connection(tcp, peer, routes, shared, builder, slots)),
            Some(tls) => {
                // The handshake runs in the connection's task, under the same timeout as the
                // request head that follows it.
                let tls = tls.clone();
                connections.spawn(async move {
                    let timeout = shared.config().limits.handshake_timeout();
                    match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, routes, shared, builder, slots).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => {
                            add(&shared.metrics.handshake_timeouts, 1);
                            tracing::debug!(%peer, "TLS handshake not completed in time");
                        }
                    }
                })
            }
        };
    }
}

/// The answer to a connection over `limits.max_http_connections_per_ip`.
const TOO_MANY_FROM_ADDRESS: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\n\
content-length: 39\r\nconnection: close\r\n\r\ntoo many connections from your address\n";

/// The answer to a connection over `limits.max_http_connections`.
const TOO_MANY_CONNECTIONS: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// Most bytes of a refused client's request read (and dropped) before closing.
const REFUSED_DRAIN: usize = 16 * 1024;

/// Answers a refused connection with `response` if its socket takes it now, and closes it.
/// What the client already sent is read first, without waiting: closing a socket with unread
/// bytes resets the connection, and the client would lose the answer.
fn refuse(tcp: &TcpStream, response: &[u8]) {
    let mut discard = [0u8; 1024];
    let mut drained = 0;
    while drained < REFUSED_DRAIN {
        match tcp.try_read(&mut discard) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    let _ = tcp.try_write(response);
}

/// Serves HTTP on one connection until it closes, is upgraded to a WebSocket (the session
/// task then owns the socket), or shutdown completes its last response. `_slots` hold the
/// connection's places in the HTTP connection counts until then.
async fn serve_connection<S>(
    tcp: S,
    peer: SocketAddr,
    routes: Routes,
    shared: Arc<Sessions>,
    builder: Arc<http1::Builder>,
    _slots: (OwnedSemaphorePermit, IpSlot),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let (served, shared) = (served.clone(), shared.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            served.store(true, Relaxed);
            if routes.is_publish(&request) {
                let serving = publish::serve(shared.clone(), Some(peer), routes.site, request);
                return Either::Left(serving.map(|answer| {
                    Ok::<_, std::convert::Infallible>(answer.map(EitherBody::Left))
                }));
            }
            request.extensions_mut().insert(ConnectInfo(peer));
            // A Router is always ready: no poll_ready needed before call.
            let routing = routes.router.clone().call(request);
            Either::Right(
                routing.map(|routed| routed.map(|response| response.map(EitherBody::Right))),
            )
        })
    };
    let connection = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shared.shutdown.cancelled() => {
            // Finish the response in progress, then close instead of waiting for another.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        if error.is_timeout() && !served.load(Relaxed) {
            add(&shared.metrics.handshake_timeouts, 1);
            tracing::debug!(%peer, "no complete request head in time");
        } else {
            tracing::trace!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}
