//! `lhttp bench`: load scenarios that drive a real server over real sockets and check every
//! delivery (lost, duplicated, out of order, corrupted).
//!
//! Layout: `throughput.rs` (P publishers, S subscribers, C channels), `latency.rs` (fixed rate,
//! HDR histogram), `http_publish.rs` (keep-alive `POST /publish`), `connections.rs` (idle
//! connections and the server's memory per connection); `progress.rs` is the bar on stderr and
//! `plot.rs` draws the SVG charts of `--plot`. The scenarios speak WebSocket directly (not through
//! the SDK) to stay lean: on a small machine the load generator shares the CPU with the server.

mod connections;
mod http1;
mod http_publish;
mod latency;
mod plot;
mod progress;
pub(crate) mod requests;
mod throughput;

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::AtomicU64,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
pub(crate) use connections::{Connections, connections};
use futures_util::{SinkExt, StreamExt};
pub(crate) use http_publish::{HttpPublish, http_publish};
pub(crate) use latency::{Latency, latency};
pub(crate) use throughput::{Amount, Throughput, throughput};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async_with_config, tungstenite::Message as Frame,
};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Options every scenario shares.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Where to write an SVG chart of the run, if anywhere.
    pub plot: Option<std::path::PathBuf>,
}

/// A counter on its own cache line: subscriber tasks on different cores each bump theirs on
/// every delivery, and sharing a line would make them invalidate each other's caches.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Counter(pub AtomicU64);

/// Connects to `url` (Nagle off, as a real-time client should be: latency must not include its
/// delays).
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Socket> {
    let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (socket, _) = tokio::time::timeout(timeout, connecting)
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(socket)
}

/// Connects to `server` (the address of `url`) from the local address `source` (port chosen by
/// the kernel): binding first lets many connections share one server port beyond the ~28k
/// ephemeral ports of one source address.
pub(crate) async fn connect_from(
    url: &str,
    server: SocketAddr,
    source: IpAddr,
    timeout: Duration,
) -> Result<Socket> {
    let connecting = async {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("cannot bind to {source}"))?;
        let stream = socket
            .connect(server)
            .await
            .with_context(|| format!("cannot connect to {server} from {source}"))?;
        stream.set_nodelay(true)?;
        let (socket, _) = client_async_with_config(url, MaybeTlsStream::Plain(stream), None)
            .await
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        anyhow::Ok(socket)
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .context("connecting timed out")?
}

/// Sends `text` and waits for the answer carrying request-id `id` (an `ok`).
pub(crate) async fn request(
    socket: &mut Socket,
    text: String,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    socket.send(Frame::text(text)).await?;
    let needle = format!("request-id:{id}\r\n");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no answer in time")?
            .context("connection closed")??;
        let data = frame.into_data();
        let text = String::from_utf8_lossy(&data);
        if text.contains(&needle) {
            if text.starts_with("LHTTP/1.0 ok") {
                return Ok(());
            }
            bail!(
                "the server refused: {}",
                text.lines().take(3).collect::<Vec<_>>().join(" ")
            );
        }
    }
}

/// The body of a received message: what follows the blank line.
pub(crate) fn payload(data: &[u8]) -> Option<&[u8]> {
    memchr::memmem::find(data, b"\r\n\r\n").map(|at| &data[at + 4..])
}

/// Parses a fixed-width decimal number (all digits), without allocating.
pub(crate) fn parse_digits(digits: Option<&[u8]>) -> Option<u64> {
    let digits = digits?;
    let mut value = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// The filler byte `i` of the body of message `seq`: derived from both, so that a byte moved,
/// dropped or swapped between messages is caught.
pub(crate) fn pattern(seq: u64, i: usize) -> u8 {
    b'a' + ((seq as usize).wrapping_add(i) % 26) as u8
}

/// Whether `filler` is exactly the `len` pattern bytes of message `seq`.
pub(crate) fn filler_intact(filler: &[u8], seq: u64, len: usize) -> bool {
    filler.len() == len
        && filler
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(seq, i))
}

/// Rounds to two decimals, for JSON reports.
pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_parse_without_allocating_and_reject_garbage() {
        assert_eq!(parse_digits(Some(b"000042")), Some(42));
        assert_eq!(parse_digits(Some(b"00a042")), None);
        assert_eq!(parse_digits(None), None);
        assert_eq!(parse_digits(Some(b"99999999999999999999999")), None);
    }
}
