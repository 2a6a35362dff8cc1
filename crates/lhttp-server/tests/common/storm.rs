//! Clients that misbehave at the socket level, for fault tests: connections dropped abruptly
//! before, during and after the WebSocket handshake, some in the middle of a frame. Plain TCP
//! and hand-made frames, so that each drop happens exactly where it is meant to. Shared with
//! the `lhttpd` binary's tests (by path), hence no dependency beyond tokio.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Where a client of the storm stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Connects and closes at once.
    Connected,
    /// Sends half of the handshake request.
    MidHandshake,
    /// Completes the handshake, subscribes (and waits for the answer), then vanishes.
    Subscribed,
    /// Subscribes, then sends the first part of a frame and vanishes in its middle.
    MidFrame,
    /// Subscribes, then sends a frame header announcing a large payload and only a few bytes
    /// of it.
    MidLargeFrame,
}

impl Drop {
    pub const ALL: [Drop; 5] = [
        Drop::Connected,
        Drop::MidHandshake,
        Drop::Subscribed,
        Drop::MidFrame,
        Drop::MidLargeFrame,
    ];
}

/// How long one storm client waits for the server at most.
const STEP: Duration = Duration::from_secs(10);

const HANDSHAKE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A client-to-server frame (clients must mask): FIN set, `opcode`, payload masked with a
/// fixed key. `announced` is the payload length written in the header, which may exceed
/// the payload actually included.
pub fn client_frame(opcode: u8, payload: &[u8], announced: usize) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    if announced < 126 {
        frame.push(0x80 | announced as u8);
    } else if announced <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(announced as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(announced as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until `needle` has arrived; false on timeout or close.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + STEP;
    while !seen.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// Runs one storm client against `addr`; `n` numbers its channel. Returns false if the
/// server did not answer where an answer was due (the handshake or the subscription).
pub async fn misbehave(addr: SocketAddr, how: Drop, n: usize) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    // Every other client resets the connection instead of closing it: the server sees both.
    if n % 2 == 0 {
        // Deprecated because a non-zero linger blocks the thread on drop; zero resets at once.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
    }
    match how {
        Drop::Connected => return true,
        Drop::MidHandshake => {
            let _ = stream
                .write_all(&HANDSHAKE.as_bytes()[..HANDSHAKE.len() / 2])
                .await;
            return true;
        }
        _ => {}
    }
    if stream.write_all(HANDSHAKE.as_bytes()).await.is_err()
        || !read_until(&mut stream, b"\r\n\r\n").await
    {
        return false;
    }
    let subscribe =
        format!("LHTTP/1.0 s\r\nrequest-id:s{n}\r\nsubscribe:storm-{n} storm-all\r\n\r\n");
    if stream
        .write_all(&client_frame(0x1, subscribe.as_bytes(), subscribe.len()))
        .await
        .is_err()
        || !read_until(&mut stream, format!("request-id:s{n}").as_bytes()).await
    {
        return false;
    }
    let message = b"LHTTP/1.0 chat\r\npublish:storm-all\r\n\r\nhalf a message";
    let frame = match how {
        Drop::MidFrame => {
            let whole = client_frame(0x1, message, message.len());
            whole[..whole.len() / 2].to_vec()
        }
        Drop::MidLargeFrame => client_frame(0x2, &message[..10], 60_000),
        _ => return true,
    };
    let _ = stream.write_all(&frame).await;
    true
}

/// Runs `total` storm clients, `concurrency` at a time, cycling through every kind of drop.
/// Returns how many found the server unresponsive.
pub async fn storm(addr: SocketAddr, total: usize, concurrency: usize) -> usize {
    let mut failures = 0;
    let mut started = 0;
    while started < total {
        let wave = concurrency.min(total - started);
        let clients: Vec<_> = (started..started + wave)
            .map(|n| tokio::spawn(misbehave(addr, Drop::ALL[n % Drop::ALL.len()], n)))
            .collect();
        for client in clients {
            if !client.await.unwrap_or(false) {
                failures += 1;
            }
        }
        started += wave;
    }
    failures
}
