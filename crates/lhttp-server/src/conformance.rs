//! An echo endpoint on the server's own WebSocket codec, for conformance test suites: every
//! text or binary message comes back as a message of the same type, and a violation closes the
//! connection as a session does. `scripts/autobahn` runs the Autobahn TestSuite against it
//! (`examples/websocket_echo.rs`); docs/conformance.md has the results. Not a public API: no
//! lhttp protocol, no limits but the message size, no TLS.

use std::{convert::Infallible, future::poll_fn, io, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::transport::{Outgoing, ReadError, Received, Transport, websocket::WebSocket};

/// Connections served at once; the next accept waits for a slot. A test suite opens one at a
/// time.
const MAX_CONNECTIONS: usize = 64;

/// Accepts connections on `listener` for ever, upgrading each to a WebSocket that echoes
/// messages of at most `max_message` bytes. Returns only if accepting fails.
pub async fn serve_echo(listener: TcpListener, max_message: usize) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Held by the HTTP connection and by the echo task it hands over to, if any.
        let Ok(slot) = slots.clone().acquire_owned().await.map(Arc::new) else {
            return Ok(());
        };
        let (stream, _) = listener.accept().await?;
        // Echoed frames are written one message at a time: no batching to wait for.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let held = slot.clone();
            let service = service_fn(move |request| {
                let slot = held.clone();
                async move { Ok::<_, Infallible>(upgrade(request, max_message, slot)) }
            });
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "echo connection failed");
            }
            drop(slot);
        });
    }
}

/// Answers an upgrade request with 101 and starts echoing once hyper hands over the
/// connection; anything else is answered 400.
fn upgrade(
    mut request: Request<hyper::body::Incoming>,
    max_message: usize,
    slot: Arc<OwnedSemaphorePermit>,
) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let (Some(key), true, true, true) = (
        key,
        version_13,
        has_token(header::CONNECTION, "upgrade"),
        has_token(header::UPGRADE, "websocket"),
    ) else {
        let mut response = Response::new(Full::from("a WebSocket upgrade request only\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => echo(WebSocket::new(TokioIo::new(upgraded), max_message)).await,
            Err(error) => tracing::debug!(%error, "upgrade failed"),
        }
        drop(slot);
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Sends every message back until the client closes, the stream ends or the client breaks
/// the protocol (answered with the close code a session sends); then ends the TCP connection,
/// the server's side first as RFC 6455 (section 7.1.1) asks.
async fn echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut socket: WebSocket<S>) {
    loop {
        let reply = match poll_fn(|cx| socket.poll_next(cx)).await {
            Some(Ok(Received::Text(message))) => Some(Outgoing::Text(message)),
            Some(Ok(Received::Binary(message))) => Some(Outgoing::Binary(message)),
            // A pong for a ping may still wait to be written.
            Some(Ok(Received::Control)) => None,
            Some(Err(ReadError::Violation(broken))) => {
                Some(Outgoing::Close(broken.code, broken.reason))
            }
            // The close reply, if the client closed, is written already.
            Some(Err(_)) | None => break,
        };
        let closing = reply.as_ref().is_some_and(Outgoing::is_close);
        if let Some(reply) = reply {
            socket.feed(&reply);
        }
        if poll_fn(|cx| socket.poll_flush(cx)).await.is_err() || closing {
            break;
        }
    }
    socket.linger().await;
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A client connected to an echo endpoint for messages of at most `max_message` bytes.
    async fn connect(
        max_message: usize,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_echo(listener, max_message));
        let (client, _) = tokio_tungstenite::connect_async(format!("ws://{address}/"))
            .await
            .unwrap();
        client
    }

    #[tokio::test]
    async fn text_comes_back_as_text_and_binary_as_binary() {
        let mut client = connect(1024).await;
        let sent = [
            Message::text("héllo"),
            Message::Binary(Bytes::from_static(b"\x00\xff")),
            Message::text(""),
            Message::Binary(Bytes::from(vec![7; 1024])),
        ];
        for message in &sent {
            client.send(message.clone()).await.unwrap();
            assert_eq!(&client.next().await.unwrap().unwrap(), message);
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_closed_with_1009_and_the_server_ends_the_stream() {
        let mut client = connect(1024).await;
        client
            .send(Message::Binary(Bytes::from(vec![0; 1025])))
            .await
            .unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame, got {other:?}"),
        }
        let end = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
        assert!(
            matches!(end, Ok(None) | Ok(Some(Err(_)))),
            "the stream ends: {end:?}"
        );
    }

    #[tokio::test]
    async fn a_request_that_is_not_an_upgrade_is_answered_400() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_echo(listener, 1024));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    }
}
