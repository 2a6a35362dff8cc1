//! Where a client connects and how: the URL schemes (`ws://`, `wss://`, `tcp://`, `tls://`,
//! `unix://`) and caller-provided streams, each opened into a [`Link`].
//!
//! The target is checked and its TLS configuration built once, when the client connects
//! ([`Endpoint::resolve`]); every reconnection opens the same [`Endpoint`] again ([`open`]).

mod link;
mod tls;

use lhttp_proto::names;
use std::{
    fmt,
    future::Future,
    io,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use lhttp_proto::Message;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::pki_types::{InvalidDnsNameError, ServerName},
};
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest, http::Uri, protocol::WebSocketConfig,
};

use self::link::BoxedIo;
pub(crate) use self::link::{Link, Received, WriteError};
pub(crate) use self::tls::TlsOptions;
use crate::{Error, client::Options};

/// The `request-id` of the `auth` message that presents a token on a stream.
const AUTH_REQUEST_ID: &str = "lhttp-rs-auth";

/// A boxed future that opens a stream, as a connector returns it.
type Connecting = Pin<Box<dyn Future<Output = io::Result<BoxedIo>> + Send>>;

/// Opens a fresh stream for each connection attempt.
pub(crate) type ConnectFn = Arc<dyn Fn() -> Connecting + Send + Sync>;

/// What a builder connects to, as the caller gave it.
#[derive(Clone)]
pub(crate) enum Target {
    Url(String),
    /// A function that opens a stream, called again for every reconnection.
    Connector(ConnectFn),
    /// One stream, taken by the first connection; a lost connection cannot be reopened.
    Stream(Arc<Mutex<Option<BoxedIo>>>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Url(url) => f.debug_tuple("Url").field(url).finish(),
            Target::Connector(_) => f.write_str("Connector"),
            Target::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl Target {
    /// `connect` as a [`ConnectFn`].
    pub(crate) fn connector<F, Fut, S>(connect: F) -> Target
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Target::Connector(Arc::new(move || {
            let opening = connect();
            Box::pin(async move { Ok(Box::pin(opening.await?) as BoxedIo) })
        }))
    }

    pub(crate) fn stream<S>(stream: S) -> Target
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Target::Stream(Arc::new(Mutex::new(Some(Box::pin(stream)))))
    }
}

/// A host and port to reach over TCP.
#[derive(Debug, Clone)]
struct HostPort {
    /// Without the brackets of an IPv6 address.
    host: String,
    port: u16,
}

/// TLS for one server: the configuration and the name its certificate must carry.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// How an endpoint opens.
#[derive(Clone)]
enum Route {
    WebSocket {
        url: String,
        addr: HostPort,
        tls: Option<Tls>,
    },
    Tcp(HostPort),
    Tls(HostPort, Tls),
    Unix(PathBuf),
    Connector(ConnectFn),
    Stream(Arc<Mutex<Option<BoxedIo>>>),
}

/// A checked target, ready to be opened (again).
#[derive(Clone)]
pub(crate) struct Endpoint {
    route: Route,
    /// The URL, or what stands for it in errors and logs.
    label: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl Endpoint {
    /// Checks `target` and prepares what every connection to it needs (the TLS configuration).
    pub(crate) fn resolve(target: &Target, tls: &TlsOptions) -> Result<Endpoint, Error> {
        let (route, label) = match target {
            Target::Url(url) => (route(url, tls)?, url.clone()),
            Target::Connector(connect) => (Route::Connector(connect.clone()), "(connector)".into()),
            Target::Stream(stream) => (Route::Stream(stream.clone()), "(stream)".into()),
        };
        Ok(Endpoint { route, label })
    }

    /// The URL, or `(connector)` / `(stream)`.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// False for a single caller-provided stream: once lost, there is nothing to reconnect.
    pub(crate) fn can_reopen(&self) -> bool {
        !matches!(self.route, Route::Stream(_))
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Connect {
            url: self.label.clone(),
            reason: reason.into(),
        }
    }
}

/// The scheme of `url`, lower-cased, and the rest after `://`.
fn split_scheme(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((scheme.to_ascii_lowercase(), rest))
}

fn invalid(url: &str, reason: &'static str) -> Error {
    Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    }
}

/// The route for a URL.
fn route(url: &str, tls: &TlsOptions) -> Result<Route, Error> {
    const EXPECTED: &str = "expected ws://, wss://, tcp://host:port, tls://host:port or \
                            unix:///path";
    let Some((scheme, rest)) = split_scheme(url) else {
        return Err(invalid(url, EXPECTED));
    };
    match scheme.as_str() {
        "ws" | "wss" => {
            let addr = host_port(url, if scheme == "ws" { 80 } else { 443 })?;
            let tls = (scheme == "wss")
                .then(|| tls_for(url, &addr, tls))
                .transpose()?;
            Ok(Route::WebSocket {
                url: url.to_owned(),
                addr,
                tls,
            })
        }
        "tcp" | "tls" => {
            let uri = uri(url)?;
            if uri.port_u16().is_none() {
                return Err(invalid(url, "expected a port: tcp://host:port"));
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(invalid(url, "a stream URL has no path: tcp://host:port"));
            }
            let addr = host_port(url, 0)?;
            if scheme == "tcp" {
                Ok(Route::Tcp(addr))
            } else {
                let tls = tls_for(url, &addr, tls)?;
                Ok(Route::Tls(addr, tls))
            }
        }
        "unix" => {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(invalid(
                    url,
                    "expected an absolute path: unix:///path/to.sock",
                ));
            }
            Ok(Route::Unix(PathBuf::from(rest)))
        }
        _ => Err(invalid(url, EXPECTED)),
    }
}

fn uri(url: &str) -> Result<Uri, Error> {
    let uri: Uri = url.parse().map_err(|_| invalid(url, "not a valid URL"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            url,
            "user names and passwords in URLs are not supported",
        ));
    }
    Ok(uri)
}

/// The host and port of `url`, with `default_port` when it names none.
fn host_port(url: &str, default_port: u16) -> Result<HostPort, Error> {
    let uri = uri(url)?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(url, "no host"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(HostPort {
        host: host.to_owned(),
        port: uri.port_u16().unwrap_or(default_port),
    })
}

fn tls_for(url: &str, addr: &HostPort, options: &TlsOptions) -> Result<Tls, Error> {
    let name = ServerName::try_from(addr.host.clone())
        .map_err(|_: InvalidDnsNameError| invalid(url, "the host is not a valid server name"))?;
    Ok(Tls {
        connector: TlsConnector::from(options.client_config()?),
        name,
    })
}

/// One connection attempt, bounded by the connect timeout. On a stream, a client with a token
/// presents it with `auth` and waits for the answer before the attempt counts as done.
pub(crate) async fn open(endpoint: &Endpoint, options: &Options) -> Result<Link, Error> {
    let attempt = async {
        let mut link = open_link(endpoint, options).await?;
        if let (Link::Stream(_), Some(token)) = (&link, &options.token) {
            authenticate(&mut link, token, endpoint).await?;
        }
        Ok(link)
    };
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Err(_) => Err(endpoint.error(format!("timed out after {:?}", options.connect_timeout))),
        Ok(result) => result,
    }
}

async fn open_link(endpoint: &Endpoint, options: &Options) -> Result<Link, Error> {
    let failed = |e: io::Error| endpoint.error(e.to_string());
    let max = options.max_message_size;
    match &endpoint.route {
        Route::WebSocket { url, addr, tls } => {
            let tcp = tcp(addr, None).await.map_err(failed)?;
            let io = match tls {
                Some(tls) => handshake(tls, tcp, endpoint).await?,
                None => Box::pin(tcp),
            };
            websocket(url, io, options, endpoint).await
        }
        Route::Tcp(addr) => {
            let tcp = tcp(addr, stream_user_timeout(options))
                .await
                .map_err(failed)?;
            Ok(Link::stream(Box::pin(tcp), max))
        }
        Route::Tls(addr, tls) => {
            let tcp = tcp(addr, stream_user_timeout(options))
                .await
                .map_err(failed)?;
            Ok(Link::stream(handshake(tls, tcp, endpoint).await?, max))
        }
        Route::Unix(path) => {
            let unix = unix(path).await.map_err(failed)?;
            Ok(Link::stream(unix, max))
        }
        Route::Connector(connect) => Ok(Link::stream(connect().await.map_err(failed)?, max)),
        Route::Stream(stream) => {
            let taken = stream.lock().map(|mut s| s.take()).unwrap_or(None);
            match taken {
                Some(io) => Ok(Link::stream(io, max)),
                None => Err(endpoint.error("the stream was used by an earlier connection")),
            }
        }
    }
}

/// How long the kernel may hold written bytes unacknowledged before it fails a stream's TCP
/// connection: the ping interval and the ping timeout, the bound the pings keep anyway. It
/// also fails a connection whose writes (not only pings) go unacknowledged that long.
fn stream_user_timeout(options: &Options) -> Option<Duration> {
    options
        .ping_interval
        .map(|every| every.saturating_add(options.ping_timeout))
}

/// A TCP connection with Nagle off (a real-time client must not wait to fill packets).
async fn tcp(addr: &HostPort, user_timeout: Option<Duration>) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Some(timeout) = user_timeout {
        socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(timeout))?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = user_timeout;
    Ok(stream)
}

#[cfg(unix)]
async fn unix(path: &std::path::Path) -> io::Result<BoxedIo> {
    Ok(Box::pin(tokio::net::UnixStream::connect(path).await?))
}

#[cfg(not(unix))]
async fn unix(_path: &std::path::Path) -> io::Result<BoxedIo> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Unix sockets are not available on this platform",
    ))
}

async fn handshake(tls: &Tls, tcp: TcpStream, endpoint: &Endpoint) -> Result<BoxedIo, Error> {
    match tls.connector.connect(tls.name.clone(), tcp).await {
        Ok(stream) => Ok(Box::pin(stream)),
        Err(e) => Err(endpoint.error(format!("TLS handshake failed: {e}"))),
    }
}

/// The WebSocket upgrade over `io`, with the token (if any) as `Authorization: Bearer`.
async fn websocket(
    url: &str,
    io: BoxedIo,
    options: &Options,
    endpoint: &Endpoint,
) -> Result<Link, Error> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_size))
        .max_frame_size(Some(options.max_message_size));
    let mut request = url
        .into_client_request()
        .map_err(|e| endpoint.error(e.to_string()))?;
    if let Some(token) = &options.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| endpoint.error("the token is not a valid header value"))?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::client_async_with_config(request, io, Some(config)).await {
        Ok((ws, _response)) => Ok(Link::websocket(ws)),
        Err(tungstenite::Error::Http(response)) => Err(endpoint.error(refusal(&response))),
        Err(e) => Err(endpoint.error(e.to_string())),
    }
}

/// The server's refusal of an upgrade as `HTTP <status>: <first line of its body>`, so that a
/// refused token says why (`HTTP 401: token expired`).
fn refusal(response: &tungstenite::handshake::client::Response) -> String {
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    format!("HTTP {}: {}", response.status().as_u16(), first_line(&body))
}

fn first_line(text: &str) -> String {
    let line: String = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    line.trim().to_owned()
}

/// Presents `token` with `auth` (a stream has no upgrade request to carry it) and waits for
/// the server's answer. A refusal fails like a refused upgrade: `auth 401: token expired`.
async fn authenticate(link: &mut Link, token: &str, endpoint: &Endpoint) -> Result<(), Error> {
    let message = Message::builder(names::command::AUTH)
        .header(names::TOKEN, token.to_owned())
        .header(crate::connection::REQUEST_ID, AUTH_REQUEST_ID)
        .build()
        .map_err(|_| endpoint.error("the token is not a valid header value"))?;
    link.send(&message).await.map_err(|e| endpoint.error(e.0))?;
    loop {
        match link.next().await {
            Received::Message(bytes) => {
                let Ok(answer) = Message::parse(bytes) else {
                    continue;
                };
                if answer.header(crate::connection::REQUEST_ID) != Some(AUTH_REQUEST_ID) {
                    // Nothing is subscribed yet: nobody to hand it to.
                    tracing::trace!(command = answer.command(), "message before auth answer");
                    continue;
                }
                if answer.command() == "error" {
                    return Err(endpoint.error(format!(
                        "auth {}: {}",
                        answer.header(names::STATUS).unwrap_or("?"),
                        first_line(answer.header(names::REASON).unwrap_or_default())
                    )));
                }
                return Ok(());
            }
            Received::Alive => {}
            Received::Closed { code, reason } => {
                return Err(endpoint.error(match code {
                    Some(code) => format!("closed by the server ({code}): {reason}"),
                    None => format!("closed by the server: {reason}"),
                }));
            }
            Received::Ended(reason) => {
                return Err(endpoint.error(reason.unwrap_or_else(|| {
                    "the server ended the connection before answering auth".into()
                })));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<Endpoint, Error> {
        Endpoint::resolve(&Target::Url(url.into()), &TlsOptions::default())
    }

    #[test]
    fn every_scheme_is_understood_and_mistakes_are_named() {
        for good in [
            "ws://127.0.0.1:8081/",
            "WS://example.com/chat",
            "wss://example.com/",
            "ws://[::1]:8081/",
            "tcp://127.0.0.1:8082",
            "tcp://localhost:8082/",
            "tls://[::1]:8083",
            "unix:///tmp/lhttp.sock",
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "ws://",
            "http://x/",
            "",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:8082/chat",
            "unix://relative.sock",
            "ws://user:pw@host/",
        ] {
            assert!(
                matches!(check(bad), Err(Error::InvalidUrl { .. })),
                "{bad}: {:?}",
                check(bad)
            );
        }
    }

    #[test]
    fn hosts_lose_their_brackets_and_get_default_ports() {
        let addr = host_port("ws://[::1]/", 80).unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("::1", 80));
        let addr = host_port("wss://example.com/x", 443).unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("example.com", 443));
    }

    #[test]
    fn bad_tls_material_is_refused_before_connecting() {
        let options = TlsOptions {
            ca_pems: vec![b"not a certificate".to_vec()],
            ..TlsOptions::default()
        };
        let result = Endpoint::resolve(&Target::Url("tls://127.0.0.1:1".into()), &options);
        assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
        // Plain URLs do not need it.
        let plain = Endpoint::resolve(&Target::Url("tcp://127.0.0.1:1".into()), &options);
        assert!(plain.is_ok());
    }
}
