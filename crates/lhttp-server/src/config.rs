//! [`Config`]: everything an operator can set, with safe defaults.
//!
//! The same structure is read from the TOML file by `lhttpd` (see `config/lhttpd.toml` for the
//! commented default) and built in code by programs that embed the server.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Largest count that sizes a queue or a semaphore (connections, queued messages, calls in
/// flight). The runtime's own ceiling is far above any real use but below what a TOML integer
/// can say; beyond it building the server would panic instead of reporting the value.
pub const MAX_COUNT: usize = u32::MAX as usize;

/// `url` with its user information (`nats://user:password@host`) replaced by [`REDACTED`], as
/// error messages and printed configurations show it: a password must not reach the logs.
pub fn url_without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]).into(),
        None => url.into(),
    }
}

/// Refuses `value` for `name` when it is above [`MAX_COUNT`].
fn check_count(name: &str, value: usize) -> Result<(), String> {
    if value > MAX_COUNT {
        return Err(format!("{name} must be at most {MAX_COUNT}"));
    }
    Ok(())
}

/// Server configuration. Every field has a default; unknown keys are errors, so that a typo in
/// a config file is reported instead of silently ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen and how to stop.
    pub server: ServerConfig,
    /// What one client can make the server hold.
    pub limits: Limits,
    /// HTTP back ends that clients may call with the `upstream` header.
    pub upstream: UpstreamConfig,
    /// Sharing channels with other nodes over NATS; off unless `nats` lists a server.
    pub cluster: ClusterConfig,
    /// Requests (`reply-to`): timeouts and how many may wait.
    pub requests: RequestsConfig,
    /// Queue groups (work queues): how much work may wait for a member.
    pub queues: QueuesConfig,
    /// HTTP gateway routes (`[[gateway]]`): HTTP requests under a path become requests to a
    /// queue group, and a worker's reply becomes the HTTP response. None by default.
    pub gateway: Vec<GatewayRoute>,
    /// Who may connect (JWT authentication) and which channels they may use.
    pub auth: AuthConfig,
    /// Listeners of byte streams besides the WebSocket port: raw TCP, TLS, a Unix socket. All
    /// off by default.
    pub transports: TransportsConfig,
    /// Options per channel pattern (`[[channels]]`): which channels keep history. None by
    /// default: no channel keeps anything.
    pub channels: Vec<ChannelOptions>,
    /// Where channel history is kept, and its bounds over the server.
    pub history: HistoryConfig,
    /// The admin page (`lhttpd` serves it); off by default.
    pub admin: AdminConfig,
}

/// `[admin]`: the admin page, a live view of the server (connections, channels, rates, the
/// cluster) that reads the server API (`/server/`). `lhttpd` serves it at `path`; a program
/// that embeds the server serves its own pages, or none. Off by default.
///
/// The page holds no data itself: every figure it shows comes from the server API, which
/// wants `server.api_key` (or, without a key, a client on loopback). So that the page is
/// never open to a network without a key, enabling it on a listener that is not loopback
/// needs `server.api_key`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin page.
    pub enabled: bool,
    /// Where: a path starting and ending with `/` (`/admin/`).
    pub path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            path: "/admin/".into(),
        }
    }
}

/// Certificate and key of a TLS listener, as PEM files. The files are read again when they
/// change (checked every `reload_interval_ms`) and on [`crate::ServerHandle::reload_tls`]
/// (`lhttpd` calls it on SIGHUP): new connections get the new certificate, open ones keep
/// theirs. A file that cannot be read or parsed then is reported and the old certificate kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, only clients presenting a certificate signed by one of these CAs (PEM) may
    /// connect (mutual TLS). Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes, in milliseconds; 0: only on
    /// reload.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    10_000
}

/// `[transports]`: byte-stream listeners (the same lhttp messages, framed as docs/protocol.md
/// says in "Byte streams"). Each is off until its block is given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportsConfig {
    /// `[transports.tcp]`: plain TCP, `tcp://` URLs. Unencrypted: for loopback and trusted
    /// networks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTransport>,
    /// `[transports.tls]`: TCP with TLS, `tls://` URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsTransport>,
    /// `[transports.unix]`: a Unix socket, `unix:///path` URLs; clients are known by their
    /// peer credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix: Option<UnixTransport>,
}

/// `[transports.tcp]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpTransport {
    /// Address to listen on (give a loopback address unless the network is trusted).
    pub listen: SocketAddr,
}

/// `[transports.tls]`: a listen address and the TLS settings of [`TlsConfig`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsTransport {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// See [`TlsConfig::cert_file`].
    pub cert_file: PathBuf,
    /// See [`TlsConfig::key_file`].
    pub key_file: PathBuf,
    /// See [`TlsConfig::client_ca_file`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// See [`TlsConfig::reload_interval_ms`].
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

impl TlsTransport {
    /// Its TLS settings.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            reload_interval_ms: self.reload_interval_ms,
        }
    }
}

/// `[transports.unix]`.
///
/// A client on the socket is known by the credentials the kernel gives for it (uid, gid,
/// pid): it needs no token, counts as authenticated, and channel rules may name its `uids` and
/// `gids`. Who may connect at all is decided by the socket file's `mode` and its directory.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixTransport {
    /// Path of the socket file. A stale socket file left there is replaced; any other file
    /// is an error.
    pub path: PathBuf,
    /// File mode of the socket, in octal (`"0660"`: owner and group may connect).
    #[serde(default = "default_unix_mode")]
    pub mode: String,
}

fn default_unix_mode() -> String {
    "0600".into()
}

impl UnixTransport {
    /// [`UnixTransport::mode`] as a number.
    pub fn mode_bits(&self) -> Result<u32, String> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|&m| m <= 0o777 && !digits.is_empty())
            .ok_or_else(|| {
                format!(
                    "transports.unix.mode {:?}: an octal file mode such as \"0660\"",
                    self.mode
                )
            })
    }
}

/// `[auth]`: token authentication and channel permissions.
///
/// The default suits a single-node local demo and **nothing else**: anonymous connections are
/// accepted and, with no `rules`, every connection may subscribe and publish to every channel.
/// docs/security.md says what to set before a server faces the internet.
///
/// Its `Debug` output hides `hs256_secret`, so printing a configuration never prints the secret.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept connections that present no token. When false, a connection that brought no
    /// valid token with its upgrade request may only send `auth` until it has authenticated,
    /// and is closed (1008) after `auth_timeout_ms`.
    pub anonymous: bool,
    /// HS256 shared secret, as text (at least 32 bytes).
    pub hs256_secret: Option<String>,
    /// File holding the HS256 secret; trailing whitespace (a final newline) is not part of it.
    pub hs256_secret_file: Option<PathBuf>,
    /// Environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// RS256 public key, PEM text (`-----BEGIN PUBLIC KEY-----`).
    pub rs256_public_key: Option<String>,
    /// File holding the RS256 public key, PEM.
    pub rs256_public_key_file: Option<PathBuf>,
    /// Environment variable holding the RS256 public key, PEM.
    pub rs256_public_key_env: Option<String>,
    /// ES256 (P-256) public key, PEM text.
    pub es256_public_key: Option<String>,
    /// File holding the ES256 public key, PEM.
    pub es256_public_key_file: Option<PathBuf>,
    /// Environment variable holding the ES256 public key, PEM.
    pub es256_public_key_env: Option<String>,
    /// When set, a token must have an `iss` claim equal to it.
    pub issuer: Option<String>,
    /// When set, a token must have an `aud` claim that contains it; when unset, `aud` is not
    /// checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. A connection is closed for an
    /// expired token this long after its `exp`.
    pub leeway_secs: u64,
    /// How long a connection that must authenticate may stay open without doing so, in
    /// milliseconds (close 1008 "authentication timeout").
    pub auth_timeout_ms: u64,
    /// Channel permission rules. Empty: every connection may subscribe and publish anywhere.
    /// With at least one rule, whatever no rule allows is refused with 403.
    pub rules: Vec<ChannelRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: true,
            hs256_secret: None,
            hs256_secret_file: None,
            hs256_secret_env: None,
            rs256_public_key: None,
            rs256_public_key_file: None,
            rs256_public_key_env: None,
            es256_public_key: None,
            es256_public_key_file: None,
            es256_public_key_env: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            auth_timeout_ms: 10_000,
            rules: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("anonymous", &self.anonymous)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("hs256_secret_file", &self.hs256_secret_file)
            .field("hs256_secret_env", &self.hs256_secret_env)
            .field("rs256_public_key", &self.rs256_public_key)
            .field("rs256_public_key_file", &self.rs256_public_key_file)
            .field("rs256_public_key_env", &self.rs256_public_key_env)
            .field("es256_public_key", &self.es256_public_key)
            .field("es256_public_key_file", &self.es256_public_key_file)
            .field("es256_public_key_env", &self.es256_public_key_env)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("auth_timeout_ms", &self.auth_timeout_ms)
            .field("rules", &self.rules)
            .finish()
    }
}

impl AuthConfig {
    /// [`AuthConfig::auth_timeout_ms`] as a duration.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    /// Checks values that would make authentication unusable or silently open. Keys are read
    /// (and checked) when the server is built.
    pub fn validate(&self) -> Result<(), String> {
        let sources = |name: &str, n: [bool; 3]| {
            if n.iter().filter(|&&set| set).count() > 1 {
                Err(format!(
                    "auth.{name}: give it once (value, _file or _env), not several"
                ))
            } else {
                Ok(n.iter().any(|&set| set))
            }
        };
        let hs = sources(
            "hs256_secret",
            [
                self.hs256_secret.is_some(),
                self.hs256_secret_file.is_some(),
                self.hs256_secret_env.is_some(),
            ],
        )?;
        let rs = sources(
            "rs256_public_key",
            [
                self.rs256_public_key.is_some(),
                self.rs256_public_key_file.is_some(),
                self.rs256_public_key_env.is_some(),
            ],
        )?;
        let es = sources(
            "es256_public_key",
            [
                self.es256_public_key.is_some(),
                self.es256_public_key_file.is_some(),
                self.es256_public_key_env.is_some(),
            ],
        )?;
        if !(self.anonymous || hs || rs || es) {
            return Err(
                "auth.anonymous = false needs a key to verify tokens (auth.hs256_secret, \
                 auth.rs256_public_key or auth.es256_public_key, or their _file/_env forms)"
                    .into(),
            );
        }
        if self.auth_timeout_ms == 0 {
            return Err("auth.auth_timeout_ms must be greater than 0".into());
        }
        // Skew is seconds to minutes; a day would make expiry meaningless.
        if self.leeway_secs > 86_400 {
            return Err("auth.leeway_secs must be at most 86400".into());
        }
        // The rules' patterns are checked where they are compiled, by `Config::validate`.
        Ok(())
    }
}

/// One `[[auth.rules]]` entry: what its connections may do on the channels its pattern matches.
///
/// Rules only allow; a channel is allowed when any rule that applies to the connection allows
/// it. A rule applies to a connection when: `roles` is empty and (`anonymous` is true or the
/// connection is authenticated), or the connection's token lists one of `roles`. A Unix-socket
/// client counts as authenticated; a rule naming `uids` or `gids` applies only to Unix-socket
/// clients with those credentials (and `roles`, if named too). In-process connections are
/// not restricted unless they authenticate as a user.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelRule {
    /// Channel pattern: tokens separated by `.`; `*` matches one token, `>` (last) matches one
    /// or more tokens; `{sub}` is replaced by the user id of the connection (a rule with `{sub}`
    /// never applies to anonymous connections). Example: `user.{sub}.>`.
    pub channels: String,
    /// Connections it applies to may subscribe to matching channels.
    pub subscribe: bool,
    /// Connections it applies to may publish to matching channels.
    pub publish: bool,
    /// Applies to anonymous connections too (not only authenticated ones).
    pub anonymous: bool,
    /// Applies only to users whose token's `roles` claim holds one of these.
    pub roles: Vec<String>,
    /// Applies only to Unix-socket clients whose user id (peer credentials) is one of these,
    /// or whose group id is one of `gids`.
    pub uids: Vec<u32>,
    /// Applies only to Unix-socket clients whose group id is one of these, or whose user id is
    /// one of `uids`.
    pub gids: Vec<u32>,
}

/// `[cluster]`: several nodes share channels through NATS.
///
/// With an empty `nats` list (the default) the node runs alone and no NATS code runs at all.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); several are tried in turn, and
    /// the client also learns the other members of a NATS cluster from the one it reaches.
    pub nats: Vec<String>,
    /// First token(s) of every subject this node uses: channel `c` is `<prefix>.ch.<c escaped>`.
    /// Nodes that should share channels use the same prefix; different prefixes on one NATS
    /// keep deployments apart.
    pub subject_prefix: String,
    /// NATS authentication token.
    pub token: Option<String>,
    /// NATS user name (needs `password`).
    pub user: Option<String>,
    /// NATS password (needs `user`).
    pub password: Option<String>,
    /// NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Refuse to talk to NATS without TLS.
    pub tls_required: bool,
    /// PEM file of the certificate authority that signed the NATS servers' certificates (for a
    /// private CA; the system's roots are used otherwise).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for NATS servers that verify clients (needs `tls_client_key`).
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_client_cert`.
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Most messages waiting to be sent to NATS, and most messages per channel received from
    /// NATS and waiting to be delivered here. Beyond it messages are dropped and counted
    /// (`lhttp_cluster_dropped_total`, `lhttp_cluster_slow_consumers_total`), never buffered.
    pub max_pending: usize,
    /// How often a node sends its presence heartbeat (milliseconds).
    pub presence_interval_ms: u64,
    /// How long after a node's last heartbeat its presence members leave every other node's
    /// view (milliseconds): the bound on ghosts of a node that died or lost NATS.
    pub presence_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: Vec::new(),
            subject_prefix: "lhttp".to_owned(),
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            max_pending: 4096,
            presence_interval_ms: 1000,
            presence_timeout_ms: 5000,
        }
    }
}

impl ClusterConfig {
    /// True when a NATS server is configured.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Checks values that would make the cluster unusable or let subjects collide.
    pub fn validate(&self) -> Result<(), String> {
        for url in &self.nats {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("cluster.nats URL {:?}: {e}", url_without_credentials(url)))?;
        }
        let prefix = &self.subject_prefix;
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !prefix.split('.').all(token_ok) {
            return Err(format!(
                "cluster.subject_prefix {prefix:?}: dot-separated words of letters, digits, '_' and '-'"
            ));
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Err("cluster.tls_client_cert and cluster.tls_client_key go together".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster.user and cluster.password go together".into());
        }
        if self.max_pending == 0 {
            return Err("cluster.max_pending must be greater than 0".into());
        }
        check_count("cluster.max_pending", self.max_pending)?;
        if self.presence_interval_ms == 0
            || self.presence_timeout_ms < 2 * self.presence_interval_ms
            || self.presence_timeout_ms > 3_600_000
        {
            return Err(format!(
                "cluster.presence_timeout_ms ({}) must be at least twice cluster.presence_interval_ms ({}, greater than 0), and at most an hour: one late heartbeat must not make a node's members leave",
                self.presence_timeout_ms, self.presence_interval_ms
            ));
        }
        Ok(())
    }
}

/// `[upstream]`: which HTTP back ends clients may call, and how much of that they may do.
///
/// Closed by default: with no `allow` prefix and no route, every `upstream` header is refused
/// with 403, so no client can make the server call a URL of its choosing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// URL prefixes a client may name (`upstream:POST http://127.0.0.1:9000/record`). A URL is
    /// allowed when its scheme, host and port equal the prefix's and its path starts with the
    /// prefix's path.
    pub allow: Vec<String>,
    /// Named back ends (`upstream:POST record` calls the URL of route `record`).
    pub routes: std::collections::BTreeMap<String, String>,
    /// How long a call may take, connection included, in milliseconds (504 beyond it).
    pub timeout_ms: u64,
    /// Calls one connection may have in flight (429 beyond it).
    pub max_in_flight_per_connection: usize,
    /// Calls the whole server may have in flight (503 beyond it).
    pub max_in_flight: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            allow: Vec::new(),
            routes: std::collections::BTreeMap::new(),
            timeout_ms: 10_000,
            max_in_flight_per_connection: 16,
            max_in_flight: 1024,
        }
    }
}

impl UpstreamConfig {
    /// [`UpstreamConfig::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks values that would make upstream calls unusable or unsafe.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.max_in_flight == 0 || self.max_in_flight_per_connection == 0
        {
            return Err(
                "upstream.timeout_ms and the upstream.max_in_flight limits must be greater than 0"
                    .into(),
            );
        }
        check_count("upstream.max_in_flight", self.max_in_flight)?;
        check_count(
            "upstream.max_in_flight_per_connection",
            self.max_in_flight_per_connection,
        )?;
        for name in self.routes.keys() {
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(format!("upstream route name {name:?} must be a plain word"));
            }
        }
        Ok(())
    }
}

/// `[server]`: the listening socket and shutdown.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the one port that serves WebSocket, `/publish`, `/healthz`, `/metrics` and
    /// the chat page. Loopback by default: exposing the server is a decision.
    pub listen: SocketAddr,
    /// How long a graceful shutdown waits for clients to receive what is queued for them
    /// before the process exits anyway, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Lame duck: how long a graceful shutdown spreads the closing of client connections over,
    /// in milliseconds. Meanwhile `/healthz` answers 503 "draining" and new connections are
    /// refused, so that a load balancer sends clients elsewhere; each client is closed with
    /// code 1012 and a retry hint at a moment of its own within this time. 0: every client at
    /// once. At most 10 minutes.
    pub drain_ms: u64,
    /// Key that `POST /publish` requires as `Authorization: Bearer <key>`. Without a key,
    /// `POST /publish` is accepted from loopback addresses only.
    pub api_key: Option<String>,
    /// Origins (`https://chat.example.com`) whose pages may open WebSocket connections and
    /// `POST /publish` from a browser, besides the server's own origin (the page it served);
    /// `"*"` allows every origin. Empty: the server's own origin, and, while it listens on
    /// loopback only, pages on loopback (`http://localhost:*`, `http://127.0.0.1:*`,
    /// `http://[::1]:*`). Requests without an `Origin` header (clients that are not browsers)
    /// are always accepted.
    pub allowed_origins: Vec<String>,
    /// The server pings each client this often, in milliseconds.
    pub ping_interval_ms: u64,
    /// A client from which nothing (not even a pong) arrived for this long is closed with code
    /// 1001 "idle timeout", in milliseconds.
    pub idle_timeout_ms: u64,
    /// A second address that serves `GET /metrics` and `GET /healthz` (and nothing else), for
    /// a monitoring network. When set, the main port no longer serves them (404). Off by
    /// default: the main port serves both.
    pub metrics_listen: Option<SocketAddr>,
    /// `[server.tls]`: the main port speaks TLS (`wss://`, `https://`). Off by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            shutdown_timeout_ms: 5_000,
            drain_ms: 0,
            api_key: None,
            allowed_origins: Vec::new(),
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            metrics_listen: None,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Checks values that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.drain_ms > 600_000 {
            return Err(format!(
                "server.drain_ms must be at most 600000 (10 minutes), not {}",
                self.drain_ms
            ));
        }
        if self.ping_interval_ms == 0 || self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(
                "server.ping_interval_ms must be > 0 and below server.idle_timeout_ms".into(),
            );
        }
        if self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err("server.api_key must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// `[limits]`: bounds on everything a client controls. What happens at each limit is in
/// docs/protocol.md.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest lhttp message, in bytes, over WebSocket (close 1009 beyond it) and in
    /// `POST /publish` (413 beyond it).
    pub max_message_size: usize,
    /// Most headers in one message (400 beyond it).
    pub max_headers: usize,
    /// Most channels one connection may be subscribed to at once (429 beyond it); wildcard
    /// patterns count too.
    pub max_subscriptions: usize,
    /// Most wildcard patterns (`chat.*`, `sensor.>`) one connection may be subscribed to (429
    /// beyond it); 0 turns wildcard subscriptions off.
    pub max_patterns_per_connection: usize,
    /// Most distinct wildcard patterns over the server (503 to the subscribe beyond it): every
    /// publish matches its channel against each of them.
    pub max_patterns: usize,
    /// Most presence members the server holds, over every room (503 to a subscribe beyond it).
    pub max_presence_members: usize,
    /// Most bytes of a subscribe's `presence-info` (413 beyond it).
    pub max_presence_info: usize,
    /// Most members one `presence` answer lists (the default of its `limit`, and the cap).
    pub max_presence_list: usize,
    /// Most simultaneous WebSocket connections (503 to the upgrade request beyond it).
    pub max_connections: usize,
    /// Most messages queued for one client that is not reading fast enough. When a message
    /// would exceed it, the client is disconnected with close code 1008 ("slow consumer").
    pub outbound_queue: usize,
    /// Most bytes queued for one client; same consequence as `outbound_queue`.
    pub outbound_queue_bytes: usize,
    /// Messages one WebSocket connection may send per second, on average (a token bucket);
    /// beyond it a message is not processed and is answered with an error, status 429.
    /// 0 turns the limit off (benchmarks that publish as fast as they can from one connection).
    pub messages_per_second: u64,
    /// Messages a connection may send at once above the average rate (the bucket's size).
    pub message_burst: u64,
    /// A connection that has this many messages refused for its rate within
    /// `rate_limit_window_ms` is closed with code 1008 "message rate limit exceeded": it keeps
    /// sending without listening to the 429 answers. 0: never close, only refuse.
    pub rate_limit_close_after: u64,
    /// The window of `rate_limit_close_after`, in milliseconds.
    pub rate_limit_window_ms: u64,
    /// Most simultaneous WebSocket connections from one IP address (IPv6: one /64 network);
    /// further upgrade requests get HTTP 429. 0 turns the limit off (behind a reverse proxy on
    /// the same machine every client has the proxy's address).
    pub max_connections_per_ip: usize,
    /// A new TCP connection must send its complete request head (the WebSocket handshake or an
    /// HTTP request) within this many milliseconds, and a kept-alive HTTP connection its next
    /// request head within as long after the previous response; otherwise it is closed
    /// (slow-loris clients).
    pub handshake_timeout_ms: u64,
    /// Most header lines in an HTTP request, the WebSocket handshake included (431 beyond it).
    pub http_max_headers: usize,
    /// Most bytes in an HTTP request head, start line and headers (431 beyond it).
    pub http_max_header_bytes: usize,
    /// A `POST /publish` body must arrive within this many milliseconds of its head (408
    /// beyond it).
    pub http_body_timeout_ms: u64,

    // Bounds on what clients hold before a message is complete, on connections that have not
    // upgraded, and on failed authentications (docs/limits.md, docs/security.md).
    /// Bytes all connections together may hold in WebSocket frames of more than 16 KiB that
    /// have not fully arrived and in fragmented messages not complete yet. A connection that
    /// would go over it is closed with 1013 "server busy: too many unfinished messages".
    /// 0 turns the budget off (each connection is still bounded by `max_message_size`).
    pub unfinished_message_bytes: usize,
    /// A WebSocket message whose first byte arrived must be complete within this many
    /// milliseconds, or the connection is closed with 1008 "message not completed in time".
    /// 0 turns the deadline off.
    pub message_timeout_ms: u64,
    /// Most TCP connections from one IP address (IPv6: one /64 network) that are HTTP, not
    /// (yet) WebSocket; a further one is answered 429 and closed. Upgraded connections count
    /// towards `max_connections_per_ip` instead. 0 turns the limit off.
    pub max_http_connections_per_ip: usize,
    /// Most TCP connections that are HTTP, not (yet) WebSocket, from everyone; a further one
    /// is answered 503 and closed.
    pub max_http_connections: usize,
    /// Longest token accepted, in bytes; a longer one is refused (401) before it is parsed.
    pub max_token_bytes: usize,
    /// A connection whose `auth` messages are refused this many times is closed with 1008
    /// "too many failed authentications". 0: never close.
    pub auth_failures_per_connection: u32,
    /// An IP address (IPv6: one /64 network) whose tokens are refused this many times within
    /// `auth_failure_window_ms` gets 429 for every token it presents (upgrade or `auth`),
    /// unverified, for `auth_failure_window_ms`. 0 turns the limit off.
    pub auth_failures_per_ip: u32,
    /// The window of `auth_failures_per_ip`, and how long an address is then refused, in
    /// milliseconds.
    pub auth_failure_window_ms: u64,

    /// Most channels one message may be published to (400 beyond it, nothing published).
    /// Each channel is a copy of the message in the outbox of a subscriber of all of them: 32
    /// copies of the largest message (64 KiB) fill half of the default 4 MiB outbox, so no
    /// single publish can cut off a follower of every channel it names.
    pub max_publish_channels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_headers: 64,
            max_subscriptions: 1024,
            max_patterns_per_connection: 16,
            max_patterns: 1000,
            max_presence_members: 100_000,
            max_presence_info: 256,
            max_presence_list: 1000,
            max_connections: 10_000,
            outbound_queue: 4096,
            outbound_queue_bytes: 4 * 1024 * 1024,
            messages_per_second: 10_000,
            message_burst: 20_000,
            rate_limit_close_after: 1000,
            rate_limit_window_ms: 10_000,
            max_connections_per_ip: 1000,
            handshake_timeout_ms: 10_000,
            http_max_headers: 100,
            http_max_header_bytes: 16 * 1024,
            http_body_timeout_ms: 10_000,
            unfinished_message_bytes: 64 * 1024 * 1024,
            message_timeout_ms: 10_000,
            max_http_connections_per_ip: 256,
            max_http_connections: 4096,
            max_token_bytes: 8 * 1024,
            auth_failures_per_connection: 5,
            auth_failures_per_ip: 100,
            auth_failure_window_ms: 60_000,
            max_publish_channels: 32,
        }
    }
}

impl Limits {
    /// The parser limits these imply.
    pub(crate) fn parser(&self) -> lhttp_proto::Limits {
        lhttp_proto::Limits {
            max_size: self.max_message_size,
            max_headers: self.max_headers,
            ..lhttp_proto::Limits::default()
        }
    }

    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Limits::http_body_timeout_ms`] as a duration.
    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms)
    }

    /// [`Limits::message_timeout_ms`] as a duration; `None` when the deadline is off.
    pub fn message_timeout(&self) -> Option<Duration> {
        (self.message_timeout_ms > 0).then(|| Duration::from_millis(self.message_timeout_ms))
    }

    /// [`Limits::auth_failure_window_ms`] as a duration.
    pub fn auth_failure_window(&self) -> Duration {
        Duration::from_millis(self.auth_failure_window_ms)
    }

    /// Checks values that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_message_size", self.max_message_size),
            ("max_headers", self.max_headers),
            ("max_subscriptions", self.max_subscriptions),
            ("max_connections", self.max_connections),
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("rate_limit_window_ms", self.rate_limit_window_ms as usize),
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            ("http_max_headers", self.http_max_headers),
            ("http_body_timeout_ms", self.http_body_timeout_ms as usize),
            ("max_http_connections", self.max_http_connections),
            ("max_token_bytes", self.max_token_bytes),
            (
                "auth_failure_window_ms",
                self.auth_failure_window_ms as usize,
            ),
            ("max_publish_channels", self.max_publish_channels),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        check_count("limits.max_connections", self.max_connections)?;
        check_count("limits.max_patterns", self.max_patterns)?;
        check_count("limits.max_presence_members", self.max_presence_members)?;
        check_count("limits.max_presence_info", self.max_presence_info)?;
        check_count("limits.max_presence_list", self.max_presence_list)?;
        check_count(
            "limits.max_patterns_per_connection",
            self.max_patterns_per_connection,
        )?;
        check_count("limits.outbound_queue", self.outbound_queue)?;
        check_count("limits.max_http_connections", self.max_http_connections)?;
        if self.messages_per_second > 0 && self.message_burst == 0 {
            return Err("limits.message_burst must be at least 1 when a rate is set".into());
        }
        // Browsers send handshakes of several hundred bytes, with cookies a few KiB.
        if self.http_max_header_bytes < 1024 {
            return Err("limits.http_max_header_bytes must be at least 1024".into());
        }
        // A budget smaller than one whole message would refuse every message of the largest size.
        if self.unfinished_message_bytes != 0
            && self.unfinished_message_bytes < self.max_message_size.saturating_add(14)
        {
            return Err(
                "limits.unfinished_message_bytes must be 0 or at least limits.max_message_size + 14 (a frame header)"
                    .into(),
            );
        }
        if self.outbound_queue_bytes < self.max_message_size {
            return Err(
                "limits.outbound_queue_bytes must be at least limits.max_message_size".into(),
            );
        }
        Ok(())
    }
}

/// `[requests]`: messages with a `reply-to` header, which get exactly one terminal answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RequestsConfig {
    /// Timeout of a request that sets no `timeout` header, in milliseconds (504 after it).
    pub default_timeout_ms: u64,
    /// Longest timeout a request may ask for, in milliseconds; longer ones are cut to it.
    pub max_timeout_ms: u64,
    /// Most requests one connection (or the HTTP gateway) may have waiting for answers at
    /// once (429 beyond it).
    pub max_pending_per_inbox: usize,
    /// Most HTTP gateway requests waiting for answers at once (429 beyond it).
    pub max_pending_gateway: usize,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            max_pending_per_inbox: 1024,
            max_pending_gateway: 10_000,
        }
    }
}

/// One `[[channels]]` block: options for the channels its pattern matches. The first block
/// whose pattern matches a channel decides its options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Channel pattern: tokens separated by `.`; `*` matches one token, `>` (last) one or more
    /// (`chat.*`, `news.>`, `>`).
    pub pattern: String,
    /// Most messages kept per channel; 0 keeps none (no history, no offsets). At most
    /// `limits.outbound_queue`, since a catch-up queues them for a client at once.
    pub history_size: usize,
    /// Most bytes of messages kept per channel (the copies subscribers receive). At most
    /// `limits.outbound_queue_bytes`, for the same reason.
    pub history_bytes: usize,
    /// How long a message is kept, in seconds.
    pub history_ttl_secs: u64,
    /// Track the members of each channel (connections subscribed to it by name), for the
    /// `presence` command.
    pub presence: bool,
    /// Send `join` and `leave` messages to the channel's subscribers (needs `presence`).
    pub join_leave: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            pattern: String::new(),
            history_size: 0,
            history_bytes: 1024 * 1024,
            history_ttl_secs: 24 * 3600,
            presence: false,
            join_leave: false,
        }
    }
}

impl ChannelOptions {
    /// The checks that need no other section (the pattern is checked where it is compiled).
    pub(crate) fn validate(&self, limits: &Limits) -> Result<(), String> {
        let name = format!("channels {:?}", self.pattern);
        check_count(&format!("{name}: history_size"), self.history_size)?;
        if self.join_leave && !self.presence {
            return Err(format!(
                "{name}: join_leave needs presence = true (joins and leaves are those of presence)"
            ));
        }
        if self.history_size > limits.outbound_queue {
            return Err(format!(
                "{name}: history_size ({}) must be at most limits.outbound_queue ({}): a catch-up queues the whole history for one client",
                self.history_size, limits.outbound_queue
            ));
        }
        if self.history_size > 0 {
            if self.history_bytes == 0 || self.history_ttl_secs == 0 {
                return Err(format!(
                    "{name}: history_bytes and history_ttl_secs must be greater than 0 when history_size is"
                ));
            }
            if self.history_bytes > limits.outbound_queue_bytes {
                return Err(format!(
                    "{name}: history_bytes ({}) must be at most limits.outbound_queue_bytes ({}): a catch-up queues the whole history for one client",
                    self.history_bytes, limits.outbound_queue_bytes
                ));
            }
        }
        Ok(())
    }
}

/// `[history]`: where the history of `[[channels]]` with `history_size` is kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// `"disk"`: kept in memory and written to the file at `path`, read back at start
    /// (history survives a restart); `"memory"`: lost at a restart; `"jetstream"`: kept by
    /// NATS JetStream (`nats-server -js`), shared by every node of a cluster (`[cluster]`
    /// is then required, and a cluster with history requires it).
    pub store: String,
    /// The store's file (an embedded database), made if missing.
    pub path: PathBuf,
    /// Most bytes of history over every channel. A channel that would exceed it drops its own
    /// oldest messages; a message that still does not fit is published but not kept.
    pub max_bytes: usize,
    /// Most channels with history. A channel beyond it is published without history.
    pub max_channels: usize,
    /// Most changes waiting to be written to disk; beyond it they are dropped and counted, and
    /// the next start gives every channel a new epoch.
    pub write_queue: usize,
    /// With `store = "jetstream"`: copies JetStream keeps of each channel's history (1 to 5;
    /// more than 1 needs a clustered NATS with that many servers).
    pub replicas: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            store: "disk".to_owned(),
            path: PathBuf::from("lhttpd-history.redb"),
            max_bytes: 256 * 1024 * 1024,
            max_channels: 100_000,
            write_queue: 50_000,
            replicas: 1,
        }
    }
}

impl HistoryConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !matches!(self.store.as_str(), "disk" | "memory" | "jetstream") {
            return Err(format!(
                "history.store must be \"disk\", \"memory\" or \"jetstream\", not {:?}",
                self.store
            ));
        }
        if self.store == "disk" && self.path.as_os_str().is_empty() {
            return Err("history.path must name a file when history.store is \"disk\"".into());
        }
        check_count("history.max_channels", self.max_channels)?;
        check_count("history.write_queue", self.write_queue)?;
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "history.replicas must be 1 to 5 (JetStream's range), not {}",
                self.replicas
            ));
        }
        if self.max_bytes == 0 || self.max_channels == 0 || self.write_queue == 0 {
            return Err(
                "history.max_bytes, history.max_channels and history.write_queue must be greater than 0"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[queues]`: queue groups (`subscribe` with `queue`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QueuesConfig {
    /// Most messages waiting in one group for a member with credit (503 to the publisher
    /// beyond it, requests and plain messages alike).
    pub max_queued: usize,
    /// Longest time a plain message (not a request) waits in a group, in milliseconds; a
    /// request waits until its own timeout.
    pub max_wait_ms: u64,
    /// Largest `credit` a member may ask for (messages held unacknowledged at once).
    pub max_credit: usize,
    /// Most bytes of queue-group work the server holds at once, waiting or delivered and not
    /// yet acknowledged, over every group (503 to the publisher beyond it).
    pub max_queued_bytes: usize,
    /// Most of those bytes one publisher may hold: a connection, a gateway client address, or
    /// the shared account of `POST /publish` and code (429 to the publisher beyond it).
    pub max_queued_bytes_per_publisher: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            max_queued: 10_000,
            max_wait_ms: 30_000,
            max_credit: 1000,
            max_queued_bytes: 256 * 1024 * 1024,
            max_queued_bytes_per_publisher: 16 * 1024 * 1024,
        }
    }
}

/// One `[[gateway]]` route: HTTP requests whose path starts with `path` become `http-request`
/// messages on `channel` for queue group `queue`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    /// Path prefix, starting and ending with `/` (`/api/`).
    pub path: String,
    /// Channel the requests are published to.
    pub channel: String,
    /// Queue group that serves them; the group exists (and requests wait in it) even while no
    /// worker is connected.
    pub queue: String,
    /// How long a request may wait for its answer, in milliseconds (504 after it; 503 if no
    /// worker joined in that time).
    #[serde(default = "default_gateway_timeout_ms")]
    pub timeout_ms: u64,
    /// Hand a request to another worker when its worker disconnects before answering (set it
    /// for routes whose requests are safe to run twice). Off: the client gets 502 then.
    #[serde(default)]
    pub at_least_once: bool,
}

fn default_gateway_timeout_ms() -> u64 {
    30_000
}

/// Path prefixes the server's own routes use, which the gateway and the admin page may not.
const SERVER_PATHS: [&str; 5] = ["/publish/", "/healthz/", "/metrics/", "/sdk/", "/server/"];

/// A configured path prefix (`setting`): starts and ends with `/`, and holds none of the
/// characters the router gives a meaning.
fn check_route_path(setting: &str, path: &str, example: &str) -> Result<(), String> {
    if !path.starts_with('/')
        || !path.ends_with('/')
        || path.len() < 2
        || path.contains(['{', '}', '*', '?', '#'])
    {
        return Err(format!(
            "{setting} {path:?} must start and end with '/' ({example:?}) and contain no '{{', '}}', '*', '?' or '#'"
        ));
    }
    Ok(())
}

/// Printed by `lhttpd --check-config` in place of a secret. A configuration that holds it
/// anywhere is refused by [`Config::validate`]: a printed configuration fed back as it is must
/// not start a server whose secret is the placeholder's text.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// Checks the listeners: no two on one address, a valid Unix socket mode.
    pub fn validate_transports(&self) -> Result<(), String> {
        let t = &self.transports;
        let mut addresses = vec![("server.listen", self.server.listen)];
        if let Some(metrics) = self.server.metrics_listen {
            addresses.push(("server.metrics_listen", metrics));
        }
        if let Some(tcp) = &t.tcp {
            addresses.push(("transports.tcp.listen", tcp.listen));
        }
        if let Some(tls) = &t.tls {
            addresses.push(("transports.tls.listen", tls.listen));
        }
        for (i, (name, addr)) in addresses.iter().enumerate() {
            // Port 0 asks for any free port: two of them never clash.
            if let Some((other, _)) = addresses[..i]
                .iter()
                .find(|(_, a)| a == addr && addr.port() != 0)
            {
                return Err(format!("{name} and {other} are both {addr}"));
            }
        }
        if let Some(unix) = &t.unix {
            unix.mode_bits()?;
            if unix.path.as_os_str().is_empty() {
                return Err("transports.unix.path is empty".into());
            }
        }
        Ok(())
    }

    /// Checks the admin page's settings: a path of its own, and a key on an open listener.
    pub fn validate_admin(&self) -> Result<(), String> {
        let admin = &self.admin;
        if !admin.enabled {
            return Ok(());
        }
        let path = &admin.path;
        check_route_path("admin.path", path, "/admin/")?;
        if SERVER_PATHS.contains(&path.as_str()) || self.gateway.iter().any(|g| g.path == *path) {
            return Err(format!(
                "admin.path {path:?} is used by the server itself or a [[gateway]] route"
            ));
        }
        if !self.server.listen.ip().is_loopback() && self.server.api_key.is_none() {
            return Err(format!(
                "admin.enabled on {} (not loopback) needs server.api_key: the admin page must not be open to a network without one",
                self.server.listen
            ));
        }
        Ok(())
    }

    /// Checks the request, queue and gateway settings.
    pub fn validate_messaging(&self) -> Result<(), String> {
        let r = &self.requests;
        if r.default_timeout_ms == 0
            || r.max_timeout_ms < r.default_timeout_ms
            || r.max_pending_per_inbox == 0
            || r.max_pending_gateway == 0
        {
            return Err("requests: timeouts and max_pending_per_inbox must be > 0, and max_timeout_ms >= default_timeout_ms".into());
        }
        let q = &self.queues;
        if q.max_queued == 0 || q.max_wait_ms == 0 || q.max_credit == 0 {
            return Err("queues: max_queued, max_wait_ms and max_credit must be > 0".into());
        }
        // A share smaller than one message would refuse the largest messages always.
        if q.max_queued_bytes_per_publisher < self.limits.max_message_size
            || q.max_queued_bytes < q.max_queued_bytes_per_publisher
        {
            return Err("queues: max_queued_bytes_per_publisher must be at least limits.max_message_size, and max_queued_bytes at least max_queued_bytes_per_publisher".into());
        }
        let mut paths = std::collections::HashSet::new();
        for route in &self.gateway {
            let path = &route.path;
            check_route_path("gateway path", path, "/api/")?;
            if SERVER_PATHS.contains(&path.as_str()) {
                return Err(format!(
                    "gateway path {path:?} is used by the server itself"
                ));
            }
            if !paths.insert(path.as_str()) {
                return Err(format!("gateway path {path:?} appears twice"));
            }
            lhttp_proto::channel::check(&route.channel)
                .map_err(|e| format!("gateway channel {:?}: {e}", route.channel))?;
            if lhttp_proto::channel::is_inbox(&route.channel) {
                return Err(format!(
                    "gateway channel {:?} is an inbox name",
                    route.channel
                ));
            }
            if !lhttp_proto::channel::is_valid_group(&route.queue) {
                return Err(format!(
                    "gateway queue {:?}: 1 to 128 letters, digits, '.', '_' or '-'",
                    route.queue
                ));
            }
            if route.timeout_ms == 0 {
                return Err(format!("gateway {path:?}: timeout_ms must be > 0"));
            }
        }
        Ok(())
    }
}

/// Refuses [`REDACTED`] in any text setting, naming the setting.
pub(crate) fn refuse_placeholder(config: &Config) -> Result<(), String> {
    fn find(value: &serde_json::Value, path: &mut String) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains(REDACTED),
            serde_json::Value::Array(items) => items.iter().any(|item| find(item, path)),
            serde_json::Value::Object(fields) => fields.iter().any(|(key, field)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = find(field, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let value = serde_json::to_value(config)
        .map_err(|e| format!("cannot inspect the configuration: {e}"))?;
    let mut path = String::new();
    if find(&value, &mut path) {
        return Err(format!(
            "{path} holds {REDACTED:?}, the placeholder lhttpd --check-config prints for a \
             secret: put the real value back, or give it with the _file or _env form"
        ));
    }
    Ok(())
}
