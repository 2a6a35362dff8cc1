//! [`Client`], its [`ClientBuilder`] and the [`ConnectionState`] it reports.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lhttp_proto::{Message, Text, names};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot, watch},
};
use tokio_rustls::rustls;

use crate::{
    Error,
    connection::{self, Command, ListenerId, Sink},
    history::{History, HistoryQuery},
    presence::Presence,
    subscription::{Feed, Incoming, Subscription},
    transport::{self, Endpoint, Target, TlsOptions},
};

/// The command [`Client::publish`] uses.
pub const DEFAULT_COMMAND: &str = "chat";

/// Requests waiting to be written to the socket. Callers wait (back pressure) when it is full.
const COMMAND_QUEUE: usize = 256;

/// Whether the client has a working connection.
///
/// Observe changes with [`Client::state_changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connected, and (after a reconnect) every subscription restored.
    Connected,
    /// The connection was lost; the client is trying again with backoff.
    Disconnected,
    /// For good: closed by [`Client::close`], by dropping every handle, or lost with
    /// reconnecting turned off. Subscriptions have ended.
    Closed,
}

/// How [`Client::subscribe_with`] subscribes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Send the last `recent` messages the server keeps first (one channel only; see
    /// [`Client::subscribe_recent`]).
    pub recent: Option<usize>,
    /// What presence lists show for this client on these channels (`presence-info`, at most
    /// the server's `limits.max_presence_info` bytes); empty when `None`.
    pub presence_info: Option<String>,
}

/// Options of a [`Client`]; start with [`Client::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lhttp_client::Error> {
/// use std::time::Duration;
/// let client = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
///     .reconnect(true)
///     .backoff(Duration::from_millis(100), Duration::from_secs(5))
///     .request_timeout(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    pub(crate) target: Target,
    pub(crate) options: Options,
}

/// Settings the connection task reads.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) reconnect: bool,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) subscription_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) token: Option<String>,
    pub(crate) tls: TlsOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            subscription_capacity: 1024,
            max_message_size: 16 * 1024 * 1024,
            ping_interval: Some(Duration::from_secs(25)),
            ping_timeout: Duration::from_secs(10),
            token: None,
            tls: TlsOptions::default(),
        }
    }
}

impl ClientBuilder {
    /// Reconnect after the connection is lost, and restore subscriptions (default: on).
    ///
    /// Off, a lost connection closes the client: subscriptions end and operations fail with
    /// [`Error::Closed`].
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/").reconnect(false);
    /// ```
    pub fn reconnect(mut self, on: bool) -> Self {
        self.options.reconnect = on;
        self
    }

    /// A JWT presented on every connection, reconnections included: on a WebSocket as
    /// `Authorization: Bearer <token>` with the upgrade request; on a stream (`tcp://`,
    /// `tls://`, `unix://`, a connector), which has no upgrade, in an `auth` message sent
    /// first, whose answer the connection waits for. A refused token fails
    /// [`ClientBuilder::connect`] with [`Error::Connect`] whose reason carries the server's
    /// (`HTTP 401: token expired` on a WebSocket, `auth 401: token expired` on a stream).
    ///
    /// To refresh a token before it expires on a live connection, send
    /// `LHTTP/1.0 auth` with a `token` header with [`Client::request`]; later reconnections
    /// still present this token.
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/").token("eyJhbGciOi...");
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options.token = Some(token.into());
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for
    /// `wss://` and `tls://` servers, besides the platform's roots (see
    /// [`ClientBuilder::platform_root_certificates`]). May be called several times. Text that
    /// holds no certificate fails [`ClientBuilder::connect`] with [`Error::Tls`].
    ///
    /// ```no_run
    /// # fn demo() -> std::io::Result<()> {
    /// let builder = lhttp_client::Client::builder("tls://lhttp.example.com:8083")
    ///     .ca_certificate(std::fs::read("ca.pem")?);
    /// # Ok(()) }
    /// ```
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.options.tls.ca_pems.push(pem.into());
        self
    }

    /// Whether the platform's root certificates (read once per process from the system's
    /// store) are trusted for `wss://` and `tls://` servers (default: yes). Off, only the CAs
    /// given to [`ClientBuilder::ca_certificate`] are.
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("wss://127.0.0.1:8081/")
    ///     .ca_certificate(b"-----BEGIN CERTIFICATE-----...".to_vec())
    ///     .platform_root_certificates(false);
    /// ```
    pub fn platform_root_certificates(mut self, on: bool) -> Self {
        self.options.tls.platform_roots = on;
        self
    }

    /// A client certificate (its PEM chain, the client's own certificate first) and its
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1), presented to `wss://` and `tls://` servers
    /// that ask for one (mutual TLS). A key that does not parse or does not match fails
    /// [`ClientBuilder::connect`] with [`Error::Tls`].
    ///
    /// ```no_run
    /// # fn demo() -> std::io::Result<()> {
    /// let builder = lhttp_client::Client::builder("tls://lhttp.example.com:8083")
    ///     .client_certificate(std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// # Ok(()) }
    /// ```
    pub fn client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.options.tls.identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// A rustls configuration of the caller's own for `wss://` and `tls://` (its own
    /// certificate verifier, say). It replaces [`ClientBuilder::ca_certificate`],
    /// [`ClientBuilder::platform_root_certificates`] and
    /// [`ClientBuilder::client_certificate`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lhttp_client::rustls;
    ///
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let builder = lhttp_client::Client::builder("wss://127.0.0.1:8081/")
    ///     .tls_config(Arc::new(config));
    /// ```
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.options.tls.config = Some(config);
        self
    }

    /// The rustls configuration this builder's `wss://` and `tls://` connections use: the
    /// one given to [`ClientBuilder::tls_config`], or the one made from the CAs, the
    /// platform's roots and the client certificate given to the builder. For a program that
    /// opens TLS connections of its own with the same trust and identity (the `lhttp bench`
    /// load client does). Fails with [`Error::Tls`] as [`ClientBuilder::connect`] would.
    ///
    /// ```
    /// let config = lhttp_client::Client::builder("tls://127.0.0.1:8083")
    ///     .platform_root_certificates(false)
    ///     .tls_client_config()?;
    /// assert!(config.alpn_protocols.is_empty());
    /// # Ok::<(), lhttp_client::Error>(())
    /// ```
    pub fn tls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        self.options.tls.client_config()
    }

    /// Bounds of the exponential reconnect backoff (default 100 ms to 10 s). Attempt *n*
    /// waits a random time between half and all of `min * 2^n`, capped at `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// ```
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.options.backoff_min = min.max(Duration::from_millis(1));
        self.options.backoff_max = max.max(self.options.backoff_min);
        self
    }

    /// How long [`Client::request`] (and subscribe, publish, unsubscribe) waits for the
    /// server's answer (default 10 s).
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .request_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 10 s): the connection, the TLS and
    /// WebSocket handshakes, and on a stream the answer to the token's `auth`.
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .connect_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Messages buffered per [`Subscription`] (and per [`Incoming`]) that the application has
    /// not read yet (default 1024, at least 1). When the buffer is full, new messages for it
    /// are dropped and counted ([`Subscription::dropped`]); the connection and other
    /// subscriptions are not slowed down.
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .subscription_capacity(64);
    /// ```
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.options.subscription_capacity = capacity.max(1);
        self
    }

    /// Largest message accepted from the server (default 16 MiB); a larger one ends the
    /// connection (and the client reconnects, if allowed).
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .max_message_size(1 << 20);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.options.max_message_size = bytes;
        self
    }

    /// How long the connection may be silent before the client pings the server (default
    /// 25 s; `None` turns pings and the liveness check off), so that a dead network path is
    /// noticed (and the client reconnects) even when the socket never reports an error. When
    /// nothing has arrived for this long, the client sends `LHTTP/1.0 ping`, which the server
    /// answers with `pong` on every transport; when nothing arrives within
    /// [`ClientBuilder::ping_timeout`] more, the connection is treated as lost. A busy
    /// connection sends no pings. On a TCP stream (`tcp://`, `tls://`) the kernel also fails
    /// the connection when written bytes stay unacknowledged for the interval and the timeout
    /// together. On every stream the client answers the server's heartbeats, which keeps the
    /// server's idle timeout from closing a client that only listens.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .ping_interval(Some(Duration::from_secs(5)));
    /// ```
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.options.ping_interval = interval.filter(|i| !i.is_zero());
        self
    }

    /// How long after a ping (see [`ClientBuilder::ping_interval`]) the client waits for
    /// anything to arrive before it treats the connection as lost and reconnects (default
    /// 10 s, at least 1 ms). A dead path is thus noticed at most the interval and this
    /// timeout after the last thing received.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/")
    ///     .ping_interval(Some(Duration::from_secs(5)))
    ///     .ping_timeout(Duration::from_secs(2));
    /// ```
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.options.ping_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Connects (one attempt, no retry) and starts the background task that owns the
    /// connection.
    ///
    /// Fails with [`Error::InvalidUrl`], [`Error::Tls`] (unusable certificates or keys given
    /// to the builder) or [`Error::Connect`]. Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lhttp_client::Error> {
    /// let client = lhttp_client::Client::builder("ws://127.0.0.1:8081/").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = Endpoint::resolve(&self.target, &self.options.tls)?;
        let link = transport::open(&endpoint, &self.options).await?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (drops, drop_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connected);
        tokio::spawn(connection::run(
            link,
            endpoint,
            self.options.clone(),
            command_rx,
            drop_rx,
            state_tx,
        ));
        Ok(Client {
            shared: Arc::new(Shared {
                commands,
                drops,
                state,
                next_id: AtomicU64::new(1),
                options: self.options,
            }),
        })
    }
}

/// A connection to an lhttp server. Cheap to clone; every clone uses the same connection.
///
/// A background task owns the connection. It stops, closing the connection, after
/// [`Client::close`] or once every `Client` clone, [`Subscription`] and [`Incoming`] is dropped.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use lhttp_client::Client;
///
/// # async fn demo() -> Result<(), lhttp_client::Error> {
/// let client = Client::connect("ws://127.0.0.1:8081/").await?;
/// let mut room = client.subscribe(["chatroom"]).await?;
/// client.publish("chatroom", "hello").await?;
/// if let Some(message) = room.next().await {
///     println!("{}", String::from_utf8_lossy(message.body()));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// What every clone of a client shares.
struct Shared {
    /// Operations for the connection task; bounded, so callers wait when the socket is slow.
    commands: mpsc::Sender<Command>,
    /// Subscriptions dropped without `unsubscribe` (a `Drop` cannot wait for queue space);
    /// holds at most one entry per live subscription.
    drops: mpsc::UnboundedSender<ListenerId>,
    state: watch::Receiver<ConnectionState>,
    /// Source of `request-id` values and listener ids; atomic because clones call concurrently.
    next_id: AtomicU64,
    options: Options,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The request timeout this client was built with.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.options.request_timeout
    }

    /// The subscription buffer size this client was built with.
    pub(crate) fn subscription_capacity(&self) -> usize {
        self.shared.options.subscription_capacity
    }

    /// Connects to `url` with the default options: reconnect on, backoff 100 ms to 10 s,
    /// request timeout 10 s. The URL is one of
    ///
    /// - `ws://host:port/path` and `wss://host:port/path` (WebSocket, TLS for `wss`);
    /// - `tcp://host:port` and `tls://host:port` (the lhttp stream framing over TCP, or over
    ///   TLS over TCP);
    /// - `unix:///absolute/path/to.sock` (the stream framing over a Unix socket).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lhttp_client::Error> {
    /// let client = lhttp_client::Client::connect("ws://127.0.0.1:8081/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Client::builder(url).connect().await
    }

    /// Starts configuring a client for `url` (any scheme of [`Client::connect`]). The URL is
    /// checked by [`ClientBuilder::connect`].
    ///
    /// ```
    /// let builder = lhttp_client::Client::builder("ws://127.0.0.1:8081/").reconnect(false);
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: Target::Url(url.into()),
            options: Options::default(),
        }
    }

    /// Starts configuring a client that reaches its server through byte streams that
    /// `connect` opens: once now, and again for every reconnection. The streams carry the
    /// lhttp stream framing (`lhttp_proto::stream`), as `tcp://` connections do, so anything
    /// that leads to a server session speaking it will do: a socket of a kind the URLs do not
    /// cover, a tunnel, or the in-process pipe of a server embedded in the same program.
    ///
    /// With a [`ClientBuilder::token`], each new stream first presents it in an `auth`
    /// message and waits for the server's answer.
    ///
    /// ```
    /// use lhttp_client::Client;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A server embedded in this program: each call opens a pipe into a session of its own.
    /// let server = lhttp_server::Server::builder(lhttp_server::Config::default()).build()?;
    /// let handle = server.handle();
    /// let client = Client::builder_with_connector(move || {
    ///     let stream = handle.connect_in_process();
    ///     async move { Ok(stream) }
    /// })
    /// .connect()
    /// .await?;
    /// client.publish("room", "hello").await?;
    ///
    /// // Any `AsyncRead + AsyncWrite` stream will do, a TCP connection the caller opens say:
    /// let addr: std::net::SocketAddr = "127.0.0.1:8082".parse()?;
    /// let builder = Client::builder_with_connector(move || tokio::net::TcpStream::connect(addr));
    /// # Ok(()) }
    /// ```
    pub fn builder_with_connector<F, Fut, S>(connect: F) -> ClientBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        ClientBuilder {
            target: Target::connector(connect),
            options: Options::default(),
        }
    }

    /// Starts configuring a client over one byte stream the caller already opened (framed as
    /// [`Client::builder_with_connector`]'s). There is no second stream to reconnect with: a
    /// lost connection closes the client, whatever [`ClientBuilder::reconnect`] says.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = lhttp_server::Server::builder(lhttp_server::Config::default()).build()?;
    /// let stream = server.handle().connect_in_process();
    /// let client = lhttp_client::Client::builder_with_stream(stream).connect().await?;
    /// client.publish("room", "hello").await?;
    /// # Ok(()) }
    /// ```
    pub fn builder_with_stream<S>(stream: S) -> ClientBuilder
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        ClientBuilder {
            target: Target::stream(stream),
            options: Options::default(),
        }
    }

    /// Sends `message` as is and returns once it is written; no answer is awaited. An `error`
    /// the server sends back (the message had no `request-id`) arrives on [`Client::incoming`].
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::Message;
    /// let message = Message::builder("chat").header("publish", "room").body("hi").build()?;
    /// client.send(message).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, message: Message) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        self.command(Command::Send { message, done }).await?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Sends `message` with a `request-id` header (a fresh one unless it already has one) and
    /// waits for the server's answer: `ok` (status 200), a processor's reply, or an `error`,
    /// which becomes [`Error::Server`]. Fails with [`Error::Timeout`] after the request timeout
    /// and [`Error::Disconnected`] if the connection drops first.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::{Error, Message};
    /// let message = Message::builder("sub").header("subscribe", ">").build()?;
    /// match client.request(message).await {
    ///     Err(Error::Server { status, reason, .. }) => println!("refused: {status} {reason}"),
    ///     Ok(answer) => println!("answered {}", answer.command()),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn request(&self, message: Message) -> Result<Message, Error> {
        self.request_within(message, self.shared.options.request_timeout)
            .await
    }

    /// [`Client::request`] with its own timeout.
    pub(crate) async fn request_within(
        &self,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let id = match message.header(connection::REQUEST_ID) {
            Some(id) => id.to_owned(),
            None => {
                let id = self.fresh_request_id();
                message
                    .headers_mut()
                    .set(connection::REQUEST_ID, id.clone())?;
                id
            }
        };
        let (answer, result) = oneshot::channel();
        self.command(Command::Request {
            message,
            id,
            answer,
        })
        .await?;
        let answer = self.wait_for(result, timeout).await?;
        Error::check_answer(answer)
    }

    /// Subscribes to `channels` and returns once the server confirmed, so that anything
    /// published afterwards reaches the returned [`Subscription`].
    ///
    /// Several subscriptions of one client may share channels: each gets its own copy, and
    /// the server is told to unsubscribe only when the last one goes.
    ///
    /// On channels that keep history, a reconnection recovers what was published meanwhile
    /// from the last message the subscription received (see [`Subscription`]); to recover
    /// from the moment of subscribing, before the first message, subscribe with
    /// [`Client::subscribe_recent`] and 0.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use futures_util::StreamExt;
    /// let mut news = client.subscribe(["news", "weather"]).await?;
    /// while let Some(message) = news.next().await {
    ///     println!("{}: {:?}", message.header("publish").unwrap_or("?"), message.body());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<I, S>(&self, channels: I) -> Result<Subscription, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        self.subscribe_with(channels, SubscribeOptions::default())
            .await
    }

    /// [`Client::subscribe`] with [`SubscribeOptions`]: the recent messages to send first,
    /// the info presence lists show for this client. Both are asked again on every
    /// reconnection, as the subscription is restored.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::SubscribeOptions;
    /// let options = SubscribeOptions {
    ///     recent: Some(50),
    ///     presence_info: Some("Ann".into()),
    /// };
    /// let room = client.subscribe_with(["chat.lobby"], options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with<I, S>(
        &self,
        channels: I,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        self.subscribe_to(channels, options).await
    }

    /// Subscribes to `channel` and has the server send the last `recent` messages it keeps of
    /// it first (none when the channel keeps no history), then the live ones: what a view
    /// that just opened shows. Returns once the server confirmed; the messages follow on the
    /// subscription, oldest first. With `recent` 0 nothing is sent first, but the
    /// subscription knows the channel's position at once, so that a reconnection recovers
    /// even what is published before its first message.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use futures_util::StreamExt;
    /// let mut room = client.subscribe_recent("chat.lobby", 50).await?;
    /// while let Some(message) = room.next().await {
    ///     println!("{}", String::from_utf8_lossy(message.body()));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_recent(
        &self,
        channel: &str,
        recent: usize,
    ) -> Result<Subscription, Error> {
        let options = SubscribeOptions {
            recent: Some(recent),
            ..SubscribeOptions::default()
        };
        self.subscribe_to(vec![channel.to_owned()], options).await
    }

    async fn subscribe_to(
        &self,
        channels: Vec<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        if channels.is_empty() {
            return Err(Error::InvalidChannel(String::new()));
        }
        if let Some(bad) = channels.iter().find(|c| !connection::plausible_channel(c)) {
            return Err(Error::InvalidChannel(bad.clone()));
        }
        let id = self.fresh_listener_id();
        let (sink, feed) = self.feed(id);
        let (answer, result) = oneshot::channel();
        self.command(Command::Subscribe {
            id,
            channels: channels.clone(),
            recent: options.recent,
            presence_info: options.presence_info,
            sink,
            request_id: self.fresh_request_id(),
            answer,
        })
        .await?;
        // Whatever happens next, the feed's drop guard removes the registration if we fail.
        let answer = self.wait(result).await?;
        Error::check_answer(answer)?;
        Ok(Subscription::new(feed, channels))
    }

    /// Reads the history the server keeps of `channel`, without subscribing: the last
    /// messages ([`HistoryQuery::Recent`]) or those after a [`crate::Position`]
    /// ([`HistoryQuery::Since`], taken from a message with [`crate::Position::of`]). The connection
    /// needs the right to subscribe to the channel ([`Error::Server`] 403 otherwise). The
    /// messages read go to the returned [`History`] only, not to subscriptions.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::HistoryQuery;
    /// let history = client.history("chat.lobby", HistoryQuery::Recent(20)).await?;
    /// for message in &history.messages {
    ///     println!("{}", String::from_utf8_lossy(message.body()));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(&self, channel: &str, query: HistoryQuery) -> Result<History, Error> {
        if !connection::plausible_channel(channel) {
            return Err(Error::InvalidChannel(channel.to_owned()));
        }
        let id = self.fresh_request_id();
        let mut message =
            Message::builder(names::command::HISTORY).header(names::CHANNEL, channel.to_owned());
        message = match query {
            HistoryQuery::Recent(n) => message.header(names::RECENT, n.to_string()),
            HistoryQuery::Since(position) => message
                .header(names::SINCE, position.offset.to_string())
                .header(names::EPOCH, position.epoch),
        };
        let message = message.header(names::REQUEST_ID, id.clone()).build()?;
        let (answer, result) = oneshot::channel();
        self.command(Command::History {
            message,
            id,
            answer,
        })
        .await?;
        let timeout = self.shared.options.request_timeout;
        match tokio::time::timeout(timeout, result).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(history)) => history,
        }
    }

    /// Who is in `channel` (a channel whose server config has `presence`): the member count
    /// and at most `limit` members (the server's cap when `None`; `Some(0)` for the count
    /// alone). Needs the right to subscribe to the channel: [`Error::Server`] 403 otherwise,
    /// 404 on a channel without presence.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let room = client.presence("chat.lobby", None).await?;
    /// println!("{} in the room", room.count);
    /// for member in &room.members {
    ///     println!("{} {}", member.user, member.info);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn presence(&self, channel: &str, limit: Option<usize>) -> Result<Presence, Error> {
        if !connection::plausible_channel(channel) {
            return Err(Error::InvalidChannel(channel.to_owned()));
        }
        let mut message =
            Message::builder(names::command::PRESENCE).header(names::CHANNEL, channel.to_owned());
        if let Some(limit) = limit {
            message = message.header(names::LIMIT, limit.to_string());
        }
        let answer = self.request(message.build()?).await?;
        Presence::from_answer(channel, &answer)
    }

    /// Every message that is neither an answer to a request of this client nor a delivery to
    /// one of its subscriptions: processor replies without `request-id`, `error` answers to
    /// [`Client::send`], messages a server pushes. Each call returns an independent stream.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use futures_util::StreamExt;
    /// let mut incoming = client.incoming().await?;
    /// while let Some(message) = incoming.next().await {
    ///     println!("{}", message.command());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn incoming(&self) -> Result<Incoming, Error> {
        let id = self.fresh_listener_id();
        let (sink, feed) = self.feed(id);
        self.command(Command::Listen { id, sink }).await?;
        Ok(Incoming::new(feed))
    }

    /// Publishes `body` to `channel` with command [`DEFAULT_COMMAND`] (`chat`) and waits for
    /// the server to accept it.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// client.publish("chatroom", "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, channel: &str, body: impl Into<Bytes>) -> Result<(), Error> {
        self.publish_with(
            channel,
            DEFAULT_COMMAND,
            std::iter::empty::<(&str, &str)>(),
            body,
        )
        .await
    }

    /// Publishes `body` to `channel` with `command` and extra `headers` (in order), and waits
    /// for the server to accept it. For a multipart body, build the message with
    /// [`crate::MultipartBuilder`] and a `publish` header, and use [`Client::request`].
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// client
    ///     .publish_with("alerts", "alert", [("level", "high"), ("from", "disk")], "90% full")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with<N, V>(
        &self,
        channel: &str,
        command: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl Into<Bytes>,
    ) -> Result<(), Error>
    where
        N: Into<Text>,
        V: Into<Text>,
    {
        if !connection::plausible_channel(channel) {
            return Err(Error::InvalidChannel(channel.to_owned()));
        }
        let mut builder = Message::builder(command.to_owned());
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let message = builder
            .header("publish", channel.to_owned())
            .body(body)
            .build()?;
        self.request(message).await.map(drop)
    }

    /// The current connection state.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) {
    /// use lhttp_client::ConnectionState;
    /// assert_eq!(client.state(), ConnectionState::Connected);
    /// # }
    /// ```
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// A receiver of connection state changes: `Disconnected` when the connection is lost,
    /// `Connected` once it is back with its subscriptions restored, `Closed` at the end.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) {
    /// let mut states = client.state_changes();
    /// while states.changed().await.is_ok() {
    ///     eprintln!("connection: {:?}", *states.borrow_and_update());
    /// }
    /// # }
    /// ```
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// Closes the connection (a WebSocket close handshake; on a stream, the end of the
    /// client's half, then the server's) and stops reconnecting. Pending
    /// requests fail with [`Error::Closed`]; subscriptions end.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) {
    /// client.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Close { done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }

    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| Error::Closed)
    }

    pub(crate) async fn wait(
        &self,
        result: oneshot::Receiver<Result<Message, Error>>,
    ) -> Result<Message, Error> {
        self.wait_for(result, self.shared.options.request_timeout)
            .await
    }

    async fn wait_for(
        &self,
        result: oneshot::Receiver<Result<Message, Error>>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        match tokio::time::timeout(timeout, result).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(answer)) => answer,
        }
    }

    pub(crate) fn fresh_request_id(&self) -> String {
        format!(
            "lhttp-rs-{}",
            self.shared.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub(crate) fn fresh_listener_id(&self) -> ListenerId {
        ListenerId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn feed(&self, id: ListenerId) -> (Sink, Feed) {
        let (tx, rx) = mpsc::channel(self.shared.options.subscription_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            tx,
            dropped: dropped.clone(),
        };
        let feed = Feed {
            id,
            rx,
            dropped,
            commands: self.shared.commands.clone(),
            drops: self.shared.drops.clone(),
            request_timeout: self.shared.options.request_timeout,
            active: true,
            gaps: 0,
        };
        (sink, feed)
    }
}
