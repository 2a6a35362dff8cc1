//! Where a bench URL leads and how the load client gets there: `ws://` and `wss://` (a
//! WebSocket upgrade over TCP, or over TLS), `tcp://host:port` and `tls://host:port` (the
//! byte-stream framing over TCP, or over TLS), `unix:///path` (the framing over a Unix socket).
//!
//! TLS is the configuration lhttp-client builds from `--ca`, `--cert` and `--key` (the one the
//! other commands connect with), so a bench trusts and presents exactly what `lhttp sub`
//! would. Every TCP connection has Nagle off, as a real-time client should: latency must not
//! include its delays.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lhttp_client::rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{http::Uri, protocol::WebSocketConfig},
};

use super::socket::{Io, Socket};

/// How the load client's WebSocket connections read. tungstenite zeroes its whole read chunk
/// before every read (128 KiB by default), and a subscriber among a hundred reads a few
/// messages at a time: at 1 → 100 that zeroing was a sixth of the client's instructions. 32 KiB
/// still takes a burst in one read (1 → 100: 3.65M → 4.08M deliveries/s, client CPU 0.33 →
/// 0.29 µs per delivery; 1 → 1 unchanged within noise; docs/performance.md).
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(32 * 1024)
}

/// The TLS side of every `wss://`, `tls://` and `https://` connection of a run.
#[derive(Clone)]
pub(crate) struct Tls(TlsConnector);

/// Says nothing of the configuration: it may hold a client's private key.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// TLS with `config` (from `lhttp_client::ClientBuilder::tls_client_config`).
    pub(crate) fn new(config: Arc<ClientConfig>) -> Tls {
        Tls(TlsConnector::from(config))
    }

    /// The TLS handshake over `tcp` with the server named `host` (a DNS name or an address,
    /// which its certificate must carry).
    pub(crate) async fn handshake(&self, host: &str, tcp: TcpStream) -> Result<Pin<Box<dyn Io>>> {
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let stream = self
            .0
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        Ok(Box::pin(stream))
    }
}

/// A bench URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `ws://` or `wss://` (`secure`): a WebSocket upgrade to `url`.
    WebSocket {
        url: String,
        host: String,
        port: u16,
        secure: bool,
    },
    /// `tcp://` or `tls://` (`secure`): the byte-stream framing.
    Stream {
        host: String,
        port: u16,
        secure: bool,
    },
    /// `unix:///path`.
    Unix(PathBuf),
}

/// What every error about a URL names as expected.
const SCHEMES: &str = "ws://, wss://, tcp://host:port, tls://host:port or unix:///path";

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("bench speaks {SCHEMES}, not {url}");
        };
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "ws" | "wss" => {
                let secure = scheme == "wss";
                let (host, port) = host_port(url, Some(if secure { 443 } else { 80 }))?;
                Ok(Target::WebSocket {
                    url: url.to_owned(),
                    host,
                    port,
                    secure,
                })
            }
            "tcp" | "tls" => {
                let (host, port) = host_port(url, None)?;
                Ok(Target::Stream {
                    host,
                    port,
                    secure: scheme == "tls",
                })
            }
            "unix" if rest.starts_with('/') && rest.len() > 1 => Ok(Target::Unix(rest.into())),
            "unix" => bail!("expected an absolute path: unix:///path/to.sock, not {url}"),
            _ => bail!("bench speaks {SCHEMES}, not {url}"),
        }
    }

    /// The host and port of a TCP-based target; `None` for a Unix socket.
    pub(crate) fn host_port(&self) -> Option<(&str, u16)> {
        match self {
            Target::WebSocket { host, port, .. } | Target::Stream { host, port, .. } => {
                Some((host, *port))
            }
            Target::Unix(_) => None,
        }
    }
}

/// The host (without the brackets of an IPv6 address) and port of `url`; `default_port` when
/// it names none (a stream URL must name one).
fn host_port(url: &str, default_port: Option<u16>) -> Result<(String, u16)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("not a valid URL: {url}"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("no host in {url}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = match (uri.port_u16(), default_port) {
        (Some(port), _) | (None, Some(port)) => port,
        (None, None) => bail!("expected a port: {url}"),
    };
    Ok((host.to_owned(), port))
}

/// Connects to `url` (any of the schemes above).
pub(crate) async fn connect(url: &str, tls: &Tls, timeout: Duration) -> Result<Socket> {
    let target = Target::parse(url)?;
    let connecting = async {
        match &target {
            Target::Unix(path) => unix(path).await,
            tcp_based => {
                let (host, port) = tcp_based.host_port().context("a TCP target")?;
                let stream = TcpStream::connect((host, port)).await?;
                over_tcp(&target, stream, tls).await
            }
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {url}"))
}

/// Connects to the TCP-based `target`, whose address is `server`, from the local address
/// `source` (port chosen by the kernel): binding first lets many connections share one server
/// port beyond the ~28k ephemeral ports of one source address. Returns the connection and the
/// local address it got.
pub(crate) async fn connect_from(
    target: &Target,
    server: SocketAddr,
    source: IpAddr,
    tls: &Tls,
    timeout: Duration,
) -> Result<(Socket, SocketAddr)> {
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
        let local = stream.local_addr()?;
        anyhow::Ok((over_tcp(target, stream, tls).await?, local))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .context("connecting timed out")?
}

/// What runs over a TCP connection to `target`: TLS if it is secure, then the WebSocket
/// upgrade or the stream framing.
async fn over_tcp(target: &Target, stream: TcpStream, tls: &Tls) -> Result<Socket> {
    stream.set_nodelay(true)?;
    let (host, secure) = match target {
        Target::WebSocket { host, secure, .. } | Target::Stream { host, secure, .. } => {
            (host, *secure)
        }
        Target::Unix(_) => bail!("a Unix socket is not reached over TCP"),
    };
    let io: Pin<Box<dyn Io>> = if secure {
        tls.handshake(host, stream).await?
    } else {
        Box::pin(stream)
    };
    match target {
        Target::WebSocket { url, .. } => {
            let (ws, _) = client_async_with_config(url.as_str(), io, Some(client_config()))
                .await
                .with_context(|| format!("WebSocket handshake with {url} failed"))?;
            Ok(Socket::websocket(ws))
        }
        _ => Ok(Socket::stream(io)),
    }
}

#[cfg(unix)]
async fn unix(path: &std::path::Path) -> Result<Socket> {
    Ok(Socket::stream(Box::pin(
        tokio::net::UnixStream::connect(path).await?,
    )))
}

#[cfg(not(unix))]
async fn unix(_path: &std::path::Path) -> Result<Socket> {
    bail!("Unix sockets are not available on this platform")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_is_understood_and_mistakes_are_named() {
        assert_eq!(
            Target::parse("wss://localhost/chat").unwrap(),
            Target::WebSocket {
                url: "wss://localhost/chat".into(),
                host: "localhost".into(),
                port: 443,
                secure: true
            }
        );
        assert_eq!(
            Target::parse("ws://[::1]:9/").unwrap().host_port(),
            Some(("::1", 9))
        );
        assert_eq!(
            Target::parse("tls://127.0.0.1:8083").unwrap(),
            Target::Stream {
                host: "127.0.0.1".into(),
                port: 8083,
                secure: true
            }
        );
        assert_eq!(
            Target::parse("TCP://127.0.0.1:8082/").unwrap().host_port(),
            Some(("127.0.0.1", 8082))
        );
        assert_eq!(
            Target::parse("unix:///tmp/l.sock").unwrap(),
            Target::Unix("/tmp/l.sock".into())
        );
        for bad in ["tcp://127.0.0.1", "unix://relative", "http://x/", "ws://"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
