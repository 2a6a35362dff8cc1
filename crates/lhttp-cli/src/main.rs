//! `lhttp`: the command-line client for lhttp servers.
//!
//! Layout: `main.rs` parses flags and maps failures to exit codes; `format.rs` prints messages
//! (raw or JSON); `session.rs` runs the interactive (or scripted, from stdin) session;
//! `bench/` is the load generator (`lhttp bench`), one module per scenario.

mod bench;
mod format;
mod session;

use std::{
    io::{IsTerminal, Read},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use lhttp_client::{Client, ConnectionState, Event, Message};

use crate::format::Format;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server answered with an error (its status and reason are printed on stderr)
  2  invalid command line: a flag, URL, channel or value that cannot work
  3  the server cannot be reached, the connection was lost, or no answer came in time

Examples:
  lhttp sub chatroom
  lhttp pub chatroom 'hello everyone'
  echo hi | lhttp pub -c note -H from:ann chatroom -
  lhttp send -c sub -H subscribe:news      (prints the server's ok)
  lhttp --url tcp://127.0.0.1:8082 sub chatroom
  lhttp --url tls://chat.example.com:8083 --ca ca.pem sub chatroom
  lhttp --url unix:///run/lhttp.sock pub chatroom hi
  lhttp                      (interactive session; type `help`)";

/// Command-line client for lhttp servers: subscribe, publish, send, or talk interactively.
///
/// With no subcommand, starts a session that reads commands (`subscribe CH...`,
/// `unsubscribe CH...`, `publish CH TEXT`, `send CMD [-H k:v]... BODY`, `help`, `quit`) from the
/// terminal with line editing and history, or line by line from stdin when it is not a
/// terminal, and prints what arrives.
#[derive(Debug, Parser)]
#[command(name = "lhttp", version, after_help = EXIT_CODES)]
struct Cli {
    /// Server URL: ws://host:port/path, wss://host:port/path (WebSocket), tcp://host:port,
    /// tls://host:port (the lhttp stream framing over TCP or TLS), or unix:///path/to.sock.
    #[arg(
        long,
        env = "LHTTP_URL",
        hide_env_values = true,
        default_value = "ws://127.0.0.1:8081/",
        global = true
    )]
    url: String,

    /// How received messages are printed: `raw` (the message as text, readable to a person)
    /// or `json` (one object per line: command, headers, body or body_base64).
    #[arg(long, value_enum, default_value_t = Format::Raw, global = true)]
    format: Format,

    /// JWT for servers that require authentication: sent as `Authorization: Bearer` with the
    /// WebSocket upgrade, or in an `auth` message first on tcp://, tls:// and unix://.
    #[arg(long, env = "LHTTP_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// A CA certificate file (PEM) to trust for wss:// and tls://, besides the system's.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// A client certificate file (PEM, the chain) for servers that ask for one (mutual TLS);
    /// needs --key.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<std::path::PathBuf>,

    /// The private key file (PEM) of --cert.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,

    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 10.0, global = true, value_name = "SECONDS")]
    timeout: f64,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe to channels and print each message as it arrives (until Ctrl-C).
    ///
    /// After a lost connection it reconnects and, on channels the server keeps history of,
    /// prints what was published meanwhile; when the server no longer has it all, it says so
    /// once on stderr.
    Sub {
        /// Channels to subscribe to.
        #[arg(required = true, value_name = "CHANNEL")]
        channels: Vec<String>,
        /// Exit (code 3) when the connection is lost instead of reconnecting.
        #[arg(long)]
        no_reconnect: bool,
        /// First print the last N messages the server keeps of each channel (none of a
        /// channel without history).
        #[arg(long, value_name = "N")]
        recent: Option<usize>,
    },
    /// Publish a message to a channel and wait for the server to accept it.
    Pub {
        /// The channel.
        channel: String,
        /// The body; `-` reads it from stdin.
        body: String,
        /// The message's command.
        #[arg(short, long, default_value = "chat")]
        command: String,
        /// An extra header, `key:value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "KEY:VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Send any message (with a request-id) and print the server's answer.
    Send {
        /// The body; `-` reads it from stdin; empty if omitted.
        body: Option<String>,
        /// The message's command.
        #[arg(short, long, default_value = "chat")]
        command: String,
        /// A header, `key:value` (repeatable), e.g. `-H publish:room`.
        #[arg(short = 'H', long = "header", value_name = "KEY:VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Send a request to a channel and print its one answer: the reply of a subscriber or
    /// queue-group worker, or the error (503 nobody took it, 504 timeout, 502 worker gone).
    Request {
        /// The channel.
        channel: String,
        /// The body; `-` reads it from stdin; empty if omitted.
        body: Option<String>,
        /// The request's command.
        #[arg(short, long, default_value = "request")]
        command: String,
        /// An extra header, `key:value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "KEY:VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Ask a queue group to hand the request to another worker if its worker disconnects.
        #[arg(long)]
        at_least_once: bool,
    },
    /// Serve the requests of a channel as a member of a queue group, from a terminal: each
    /// request is printed and answered with --reply (or, without it, with its own body), until
    /// Ctrl-C or SIGTERM, which drains (what was taken is answered first).
    Serve {
        /// The channel whose requests to serve.
        channel: String,
        /// The queue group to join (each request goes to one member).
        #[arg(short, long, default_value = "workers")]
        queue: String,
        /// The body of every reply; `-` reads it once from stdin. Without it, each request's
        /// own body is sent back.
        #[arg(short, long)]
        reply: Option<String>,
        /// Requests handled at once.
        #[arg(long, default_value_t = 8)]
        credit: usize,
    },
    /// Measure a server under load, checking every delivery (exit 1 if any was lost,
    /// duplicated, out of order or corrupted).
    Bench {
        #[command(subcommand)]
        scenario: Scenario,
    },
}

/// Load scenarios of `lhttp bench`.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// P publishers on --url flood C channels (each publisher round-robin over them); S
    /// subscribers on --sub-url (default: --url), spread over the channels, check that every
    /// message arrives once, in order per publisher and intact. Prints msg/s and losses. Both
    /// URLs may be ws://, wss://, tcp://host:port, tls://host:port or unix:///path (TLS with
    /// --ca, --cert and --key).
    Throughput {
        /// Where the subscribers connect (another node of a cluster, say).
        #[arg(long, value_name = "URL")]
        sub_url: Option<String>,
        /// Number of publishers.
        #[arg(short, long, default_value_t = 1)]
        publishers: usize,
        /// Number of subscribers (at least --channels).
        #[arg(short, long, default_value_t = 1)]
        subscribers: usize,
        /// Number of channels (named CHANNEL-0, CHANNEL-1, ... when more than one).
        #[arg(short = 'C', long, default_value_t = 1)]
        channels: usize,
        /// Messages to publish, in all.
        #[arg(
            short = 'n',
            long,
            default_value_t = 100_000,
            conflicts_with = "duration"
        )]
        count: u64,
        /// Publish for this many seconds instead of a message count.
        #[arg(short, long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Body size in bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The channel.
        #[arg(long, default_value = "bench")]
        channel: String,
        /// Most messages in flight ahead of the slowest subscriber.
        #[arg(long, default_value_t = 2000)]
        window: u64,
        /// Publishers write each message with its own system call (one frame per write; one
        /// TLS record per write over wss:// and tls://), as browsers and most client
        /// libraries do; by default a publisher writes its batch of messages at once.
        #[arg(long)]
        write_each: bool,
        /// Sporadic traffic: each publisher waits this many microseconds after each message
        /// (one frame per write). The wait is a timer's, so under a millisecond it lasts
        /// about a millisecond: some 900 messages a second per publisher.
        #[arg(long, value_name = "MICROSECONDS")]
        pause_us: Option<u64>,
        /// Drive a nats-server over WebSocket with the NATS protocol (PUB, SUB, MSG) instead
        /// of lhttpd, with the same bodies and checks: --url names its WebSocket port
        /// (`websocket { port: N, no_tls: true }`), for side-by-side figures.
        #[arg(long)]
        nats: bool,
        /// The server's process id: report its CPU time (the run time of all its threads,
        /// from /proc/PID/task/*/schedstat) from the first publish to the last delivery, and
        /// per delivery.
        #[arg(long)]
        pid: Option<u32>,
        /// Draw delivered msg/s over time (a sample per 100 ms) into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Opens N connections, each subscribed to a channel, and reports the server's memory per
    /// connection (from /proc/PID/status when --pid is given), over any transport of --url.
    /// Raise `ulimit -n` first.
    Connections {
        /// Connections to open.
        #[arg(short = 'n', long, default_value_t = 1000)]
        count: usize,
        /// Spread the subscriptions over this many channels.
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// The server's process id, to read its memory.
        #[arg(long)]
        pid: Option<u32>,
        /// Spread the connections over this many source addresses 127.0.0.1, .2, ... (default:
        /// as many as the ephemeral port range requires; needs a server on 127.0.0.0/8 and a
        /// TCP-based URL: ws://, wss://, tcp:// or tls://).
        #[arg(long, value_name = "N")]
        source_addrs: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One publisher on --url sends at a fixed rate, each body stamped with its send time; one
    /// subscriber on --sub-url (default: --url) reports publish-to-delivery latency (p50, p90,
    /// p99, p99.9, max) and checks every delivery (ws://, wss://, tcp://, tls:// or unix://).
    Latency {
        /// Where the subscriber connects.
        #[arg(long, value_name = "URL")]
        sub_url: Option<String>,
        /// Messages per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Body size in bytes (at least 32).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The channel.
        #[arg(long, default_value = "bench")]
        channel: String,
        /// Draw the latency percentile curve (log scale, as HDR plots) into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Many clients chatting: N connections on --url in rooms of --room-size (connection i in
    /// room i / room-size, channel chat-<room>; the last room holds the rest), each
    /// subscribed to its room and publishing one message into it every --interval-ms, one
    /// frame per write, staggered evenly. Every connection checks that each message of its
    /// room (its own included) arrives once, in order per sender, intact, and records its
    /// latency from the send time in its body. Meant for a server with its limits on: the
    /// connections come from several source addresses 127.0.0.1, .2, ... (ws://, wss://,
    /// tcp://, tls:// or unix://).
    Chat {
        /// Connections (each one a chatting client).
        #[arg(short = 'n', long, default_value_t = 10_000)]
        count: usize,
        /// Connections per room.
        #[arg(long, default_value_t = 100)]
        room_size: usize,
        /// Milliseconds between two messages of one connection.
        #[arg(long, default_value_t = 10_000)]
        interval_ms: u64,
        /// Seconds of publishing that count.
        #[arg(short, long, default_value_t = 30.0, value_name = "SECONDS")]
        duration: f64,
        /// Seconds of publishing before those, checked but not counted in the figures.
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        warmup: f64,
        /// Body size in bytes (at least 36).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Spread the connections over this many source addresses 127.0.0.1, .2, ...
        /// (default: as many as keep each at 900 connections or fewer, under lhttpd's default
        /// limit of 1000 per address; needs a server on 127.0.0.0/8 and a TCP-based URL).
        #[arg(long, value_name = "N")]
        source_addrs: Option<usize>,
        /// Drive a nats-server over WebSocket with the NATS protocol (SUB, PUB, MSG on subject
        /// chat-<room>) instead of lhttpd, with the same bodies and checks: --url names its
        /// WebSocket port.
        #[arg(long)]
        nats: bool,
        /// The server's process id: report its CPU time (all its threads' run time) over the
        /// measured window, and per delivery.
        #[arg(long)]
        pid: Option<u32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One subscriber (the Rust SDK, reconnecting by itself) through a TCP relay this command
    /// controls and cuts every --drop-every-ms, one publisher directly on --url (ws:// or
    /// tcp://, loopback only), on a channel that keeps history: reports the share of messages
    /// delivered exactly once and the recovery time after each cut. Exit 1 if any was lost,
    /// duplicated or out of order.
    Relay {
        /// Messages to publish.
        #[arg(short = 'n', long, default_value_t = 20_000)]
        count: u64,
        /// Messages per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Milliseconds between two cuts of every connection through the relay.
        #[arg(long, default_value_t = 200)]
        drop_every_ms: u64,
        /// A channel that keeps history on the server.
        #[arg(long, default_value = "relay.bench")]
        channel: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// K concurrent keep-alive `POST /publish` loops to --url's host and port (the main port:
    /// ws:// or http:// posts over HTTP, wss:// or https:// over HTTPS); one subscriber on
    /// --sub-url checks that every accepted message arrives. Exit 1 if any failed.
    HttpPublish {
        /// Where the subscriber connects: any transport (default: --url, as a WebSocket).
        #[arg(long, value_name = "URL")]
        sub_url: Option<String>,
        /// Requests in flight.
        #[arg(short = 'k', long, default_value_t = 16)]
        concurrency: usize,
        /// Requests to send.
        #[arg(short = 'n', long, default_value_t = 100_000)]
        count: u64,
        /// Body size in bytes (at least 12).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The channel.
        #[arg(long, default_value = "bench")]
        channel: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Workers join a queue group and echo requests; one requester keeps K requests in flight
    /// over --url (ws://, wss://, tcp://, tls:// or unix://; or, with --http, as POSTs to a
    /// gateway route serving that group) and checks every answer. Prints requests/s and
    /// round-trip percentiles.
    Requests {
        /// A gateway route's URL (its channel and queue must be --channel and --queue).
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        /// Number of workers.
        #[arg(short, long, default_value_t = 2)]
        workers: usize,
        /// Requests each worker holds at once.
        #[arg(long, default_value_t = 64)]
        credit: usize,
        /// Requests in flight.
        #[arg(short = 'k', long, default_value_t = 64)]
        concurrency: usize,
        /// Requests to send.
        #[arg(short = 'n', long, default_value_t = 100_000)]
        count: u64,
        /// Body size in bytes (at least 12).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The channel the workers serve.
        #[arg(long, default_value = "bench.requests")]
        channel: String,
        /// The queue group of the workers.
        #[arg(long, default_value = "bench")]
        queue: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Prints an answer (or the server's `error` message) and closes the client; a server error
/// is returned so that the exit code says so.
async fn print_answer(
    client: &Client,
    format: Format,
    result: Result<Message, lhttp_client::Error>,
) -> anyhow::Result<()> {
    let out = &mut format::Stdout;
    let outcome = match result {
        Ok(answer) => out.print(format, &answer).map_err(Into::into),
        Err(lhttp_client::Error::Server {
            status,
            reason,
            message,
        }) => {
            out.print(format, &message)?;
            Err(lhttp_client::Error::Server {
                status,
                reason,
                message,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    };
    client.close().await;
    outcome
}

/// Splits `key:value` at the first colon.
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected key:value, got {text:?}")),
    }
}

/// Completes at SIGINT or SIGTERM.
async fn stop_signal() {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Exit(pub(crate) u8);

/// A command line that parsed but cannot work (a zero duration, an unreadable `--ca` file):
/// exit code 2, as for what clap itself refuses.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `Err(Usage(text))`.
fn usage<T>(text: impl Into<String>) -> Result<T> {
    Err(Usage(text.into()).into())
}

/// `secs` as a duration above zero, or a usage error naming `option`.
fn positive_seconds(secs: f64, option: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .map_or_else(
            || usage(format!("{option} must be a positive number of seconds")),
            Ok,
        )
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("lhttp: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The error and its causes on one line, without repeating what the top already says.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// 1 for a server refusal, 2 for a command line that cannot work (a bad URL, channel or
/// value), 3 for connection trouble, 1 otherwise.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    match e.downcast_ref::<lhttp_client::Error>() {
        Some(lhttp_client::Error::Server { .. }) => 1,
        Some(
            lhttp_client::Error::InvalidUrl { .. }
            | lhttp_client::Error::InvalidChannel(_)
            | lhttp_client::Error::Build(_),
        ) => 2,
        Some(
            lhttp_client::Error::Connect { .. }
            | lhttp_client::Error::Timeout(_)
            | lhttp_client::Error::NotConnected
            | lhttp_client::Error::Disconnected
            | lhttp_client::Error::Closed,
        ) => 3,
        _ => 1,
    }
}

async fn run(cli: Cli) -> Result<()> {
    let timeout = positive_seconds(cli.timeout, "--timeout")?;
    let mut builder = Client::builder(cli.url.clone())
        .request_timeout(timeout)
        .connect_timeout(timeout);
    if let Some(token) = &cli.token {
        builder = builder.token(token.clone());
    }
    if let Some(ca) = &cli.ca {
        builder = builder.ca_certificate(read_file(ca, "--ca")?);
    }
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        builder = builder.client_certificate(read_file(cert, "--cert")?, read_file(key, "--key")?);
    }
    match cli.command {
        Some(Command::Sub {
            channels,
            no_reconnect,
            recent,
        }) => {
            let client = builder.reconnect(!no_reconnect).connect().await?;
            subscribe(&client, channels, recent, cli.format).await
        }
        Some(Command::Pub {
            channel,
            body,
            command,
            headers,
        }) => {
            let client = builder.reconnect(false).connect().await?;
            let body = read_body(&body)?;
            client
                .publish_with(&channel, &command, headers, body)
                .await?;
            client.close().await;
            Ok(())
        }
        Some(Command::Send {
            body,
            command,
            headers,
        }) => {
            let body = match body {
                Some(body) => read_body(&body)?,
                None => Vec::new(),
            };
            let mut message = Message::builder(command);
            for (key, value) in headers {
                message = message.header(key, value);
            }
            let message = message.body(body).build()?;
            let client = builder.reconnect(false).connect().await?;
            let result = client.request(message).await;
            print_answer(&client, cli.format, result).await
        }
        Some(Command::Request {
            channel,
            body,
            command,
            mut headers,
            at_least_once,
        }) => {
            let body = match body {
                Some(body) => read_body(&body)?,
                None => Vec::new(),
            };
            if at_least_once {
                headers.push(("delivery".into(), "at-least-once".into()));
            }
            let client = builder.reconnect(false).connect().await?;
            let result = client
                .call_with(&channel, &command, headers, body, timeout)
                .await;
            print_answer(&client, cli.format, result).await
        }
        Some(Command::Serve {
            channel,
            queue,
            reply,
            credit,
        }) => {
            let reply = match reply {
                Some(reply) => Some(bytes::Bytes::from(read_body(&reply)?)),
                None => None,
            };
            if credit == 0 {
                return usage("--credit must be at least 1");
            }
            let client = builder.connect().await?;
            let format = cli.format;
            eprintln!("lhttp: serving {channel} in queue group {queue}; Ctrl-C to stop");
            client
                .serve_until(
                    &channel,
                    &queue,
                    credit,
                    move |request| {
                        let _ = format::Stdout.print(format, &request);
                        let body = reply.clone().unwrap_or_else(|| request.body().clone());
                        async move { lhttp_client::Reply::ok(body) }
                    },
                    stop_signal(),
                )
                .await?;
            client.close().await;
            Ok(())
        }
        Some(Command::Bench {
            scenario:
                Scenario::Throughput {
                    sub_url,
                    publishers,
                    subscribers,
                    channels,
                    count,
                    duration,
                    size,
                    channel,
                    window,
                    write_each,
                    pause_us,
                    nats,
                    pid,
                    plot,
                    json,
                },
        }) => {
            let amount = match duration {
                Some(secs) => bench::Amount::Duration(positive_seconds(secs, "--duration")?),
                None => bench::Amount::Count(count),
            };
            let report = bench::throughput(bench::Throughput {
                sub_url: sub_url.unwrap_or_else(|| cli.url.clone()),
                url: cli.url,
                publishers,
                subscribers,
                channels,
                amount,
                size,
                channel,
                window,
                write_each,
                pause: pause_us.map(Duration::from_micros),
                nats,
                pid,
                tls: bench_tls(&builder)?,
                timeout,
                output: bench::Output {
                    progress: !json,
                    plot,
                },
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        Some(Command::Bench {
            scenario:
                Scenario::Connections {
                    count,
                    channels,
                    pid,
                    source_addrs,
                    json,
                },
        }) => {
            let report = bench::connections(bench::Connections {
                url: cli.url,
                count,
                channels,
                pid,
                source_addrs,
                tls: bench_tls(&builder)?,
                timeout,
                output: bench::Output {
                    progress: !json,
                    plot: None,
                },
            })
            .await?;
            print_report(json, report.json(), report.table(), true)
        }
        Some(Command::Bench {
            scenario:
                Scenario::Latency {
                    sub_url,
                    rate,
                    duration,
                    size,
                    channel,
                    plot,
                    json,
                },
        }) => {
            let duration = positive_seconds(duration, "--duration")?;
            let report = bench::latency(bench::Latency {
                sub_url: sub_url.unwrap_or_else(|| cli.url.clone()),
                url: cli.url,
                rate,
                duration,
                size,
                channel,
                tls: bench_tls(&builder)?,
                timeout,
                output: bench::Output {
                    progress: !json,
                    plot,
                },
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        Some(Command::Bench {
            scenario:
                Scenario::Chat {
                    count,
                    room_size,
                    interval_ms,
                    duration,
                    warmup,
                    size,
                    source_addrs,
                    nats,
                    pid,
                    json,
                },
        }) => {
            let duration = positive_seconds(duration, "--duration")?;
            let warmup = Duration::try_from_secs_f64(warmup).map_or_else(
                |_| usage("--warmup must be a number of seconds, 0 or more"),
                Ok,
            )?;
            if interval_ms == 0 {
                return usage("--interval-ms must be at least 1");
            }
            let report = bench::chat(bench::Chat {
                url: cli.url,
                count,
                room_size,
                interval: Duration::from_millis(interval_ms),
                duration,
                warmup,
                size,
                source_addrs,
                nats,
                pid,
                tls: bench_tls(&builder)?,
                timeout,
                output: bench::Output {
                    progress: !json,
                    plot: None,
                },
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        Some(Command::Bench {
            scenario:
                Scenario::Relay {
                    count,
                    rate,
                    drop_every_ms,
                    channel,
                    json,
                },
        }) => {
            if drop_every_ms == 0 {
                return usage("--drop-every-ms must be greater than 0");
            }
            let report = bench::relay(bench::Relay {
                url: cli.url,
                count,
                rate,
                drop_every: Duration::from_millis(drop_every_ms),
                channel,
                timeout,
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        Some(Command::Bench {
            scenario:
                Scenario::HttpPublish {
                    sub_url,
                    concurrency,
                    count,
                    size,
                    channel,
                    json,
                },
        }) => {
            let report = bench::http_publish(bench::HttpPublish {
                url: cli.url,
                sub_url,
                concurrency,
                count,
                size,
                channel,
                tls: bench_tls(&builder)?,
                timeout,
                output: bench::Output {
                    progress: !json,
                    plot: None,
                },
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        Some(Command::Bench {
            scenario:
                Scenario::Requests {
                    http,
                    workers,
                    credit,
                    concurrency,
                    count,
                    size,
                    channel,
                    queue,
                    json,
                },
        }) => {
            let report = bench::requests::requests(bench::requests::Requests {
                url: cli.url,
                http,
                channel,
                queue,
                workers,
                credit,
                concurrency,
                count,
                size,
                tls: bench_tls(&builder)?,
                timeout,
            })
            .await?;
            print_report(json, report.json(), report.table(), report.is_clean())
        }
        None => {
            let client = builder.reconnect(true).connect().await?;
            let terminal = std::io::stdin().is_terminal();
            session::run(&client, cli.format, terminal, &cli.url).await
        }
    }
}

/// The TLS of a bench's `wss://`, `tls://` and `https://` connections: the configuration the
/// client library makes of `--ca`, `--cert` and `--key`, as for every other command.
fn bench_tls(builder: &lhttp_client::ClientBuilder) -> Result<bench::Tls> {
    Ok(bench::Tls::new(builder.tls_client_config()?))
}

/// Prints a bench report as JSON or as a table; a run that lost, duplicated, reordered or
/// damaged a delivery (or failed a request) exits with 1.
fn print_report(json: bool, value: serde_json::Value, table: String, clean: bool) -> Result<()> {
    if json {
        println!("{value}");
    } else {
        println!("{table}");
    }
    if clean { Ok(()) } else { Err(Exit(1).into()) }
}

/// The contents of the file a flag names.
fn read_file(path: &std::path::Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).or_else(|e| usage(format!("cannot read {flag} {}: {e}", path.display())))
}

/// `-` reads stdin to the end; anything else is the body itself.
fn read_body(arg: &str) -> Result<Vec<u8>> {
    if arg != "-" {
        return Ok(arg.as_bytes().to_vec());
    }
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("cannot read the body from stdin")?;
    Ok(body)
}

/// `lhttp sub`: prints until Ctrl-C or the end of the client.
async fn subscribe(
    client: &Client,
    channels: Vec<String>,
    recent: Option<usize>,
    format: Format,
) -> Result<()> {
    // `recent` applies to a subscribe of one channel: one subscription per channel then.
    let subscriptions = match recent {
        None => vec![client.subscribe(channels).await?],
        Some(n) => {
            let mut subscriptions = Vec::with_capacity(channels.len());
            for channel in &channels {
                subscriptions.push(client.subscribe_recent(channel, n).await?);
            }
            subscriptions
        }
    };
    let mut events = futures_util::stream::select_all(subscriptions.into_iter().map(|sub| {
        Box::pin(futures_util::stream::unfold(sub, |mut sub| async move {
            sub.recv_event().await.map(|event| (event, sub))
        }))
    }));
    let mut states = client.state_changes();
    let out = &mut format::Stdout;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Message(message)) => {
                    if out.print(format, &message).is_err() {
                        // stdout is gone (`lhttp sub x | head -1`): nothing left to do.
                        return Ok(());
                    }
                }
                Some(Event::Gap(gap)) => eprintln!(
                    "lhttp: {}: messages published while disconnected were lost (the server no longer keeps them)",
                    gap.channel
                ),
                Some(_) => {}
                None => {
                    eprintln!("lhttp: connection to the server lost");
                    return Err(Exit(3).into());
                }
            },
            Ok(()) = states.changed() => match *states.borrow_and_update() {
                ConnectionState::Disconnected => eprintln!("lhttp: connection lost; reconnecting"),
                ConnectionState::Connected => eprintln!("lhttp: reconnected; subscriptions restored"),
                ConnectionState::Closed => {}
            },
            _ = &mut interrupted => {
                client.close().await;
                return Ok(());
            }
        }
    }
}
