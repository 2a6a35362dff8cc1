//! `lhttp bench`: load scenarios that drive a real server over real sockets and check every
//! delivery (lost, duplicated, out of order, corrupted).
//!
//! Layout: `throughput.rs` (P publishers, S subscribers, C channels), `latency.rs` (fixed rate,
//! HDR histogram), `chat.rs` (many connections chatting in rooms, one message per interval
//! each, latency and order checked per sender), `http_publish.rs` (keep-alive `POST
//! /publish`), `connections.rs` (idle connections and the server's memory per connection),
//! `requests.rs` (request/reply through queue-group workers); `sources.rs` opens many
//! connections from several loopback source addresses (`connections`, `chat`); `nats.rs` speaks
//! the NATS protocol over WebSocket for side-by-side runs against nats-server (`throughput`,
//! `chat`); `progress.rs` is the bar on stderr and `relay.rs` cuts a subscriber's connections
//! through a relay of its own and counts what the SDK's recovery delivers exactly once;
//! `plot.rs` draws the SVG charts of `--plot`; `socket.rs` is the one connection type, a
//! WebSocket or a stream-framed TCP, TLS or Unix socket, and `dial.rs` opens it from a URL
//! (`ws://`, `wss://`, `tcp://`, `tls://`, `unix://`). The scenarios speak the wire directly
//! (not through the SDK) to stay lean: on a small machine the load generator shares the CPU
//! with the server. TLS is the SDK's configuration, though: the same `--ca`, `--cert` and
//! `--key` as every other command.

mod chat;
mod connections;
mod dial;
mod http1;
mod http_publish;
mod latency;
mod nats;
mod plot;
mod progress;
mod relay;
pub(crate) mod requests;
mod socket;
mod sources;
mod throughput;

use std::{sync::atomic::AtomicU64, time::Duration};

use anyhow::{Context as _, Result, bail};
pub(crate) use chat::{Chat, chat};
pub(crate) use connections::{Connections, connections};
pub(crate) use dial::{Tls, connect};
use futures_util::{SinkExt, StreamExt};
pub(crate) use http_publish::{HttpPublish, http_publish};
pub(crate) use latency::{Latency, latency};
pub(crate) use relay::{Relay, relay};
pub(crate) use socket::Socket;
pub(crate) use throughput::{Amount, Throughput, throughput};
use tokio_tungstenite::tungstenite::Message as Frame;

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

/// Counts the server's 429 answers among the frames `socket` has received, without waiting
/// for more. A publisher over the server's per-connection rate limit gets one per refused
/// message; read as they come, they also never pile up unread on the connection.
pub(crate) fn take_refusals(socket: &mut Socket) -> u64 {
    use futures_util::FutureExt as _;
    let mut refused = 0;
    while let Some(Some(Ok(frame))) = socket.next().now_or_never() {
        if is_rate_refusal(&frame.into_data()) {
            refused += 1;
        }
    }
    refused
}

/// [`take_refusals`] until the socket has been silent for `quiet`: the answers to the last
/// messages published are still on their way when publishing ends.
pub(crate) async fn drain_refusals(socket: &mut Socket, quiet: Duration) -> u64 {
    let mut refused = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(quiet, socket.next()).await {
        if is_rate_refusal(&frame.into_data()) {
            refused += 1;
        }
    }
    refused
}

/// Whether `data` is the server's `error` answer with status 429.
pub(crate) fn is_rate_refusal(data: &[u8]) -> bool {
    let head = payload(data).map_or(data, |body| &data[..data.len() - body.len()]);
    head.starts_with(b"LHTTP/1.0 error\r\n")
        && memchr::memmem::find(head, b"\nstatus:429\r").is_some()
}

/// `table` with a line for the messages the server's rate limit refused, if any.
pub(crate) fn with_refusals(mut table: String, refused: u64) -> String {
    if refused > 0 {
        table.push_str(&format!("\nrefused    {refused:>12}  {REFUSED_HINT}"));
    }
    table
}

/// What the reports say when the server refused messages for its rate limit.
pub(crate) const REFUSED_HINT: &str = "the server's per-connection rate limit refused them (429): \
     benchmark a server started with LHTTPD_LIMITS__MESSAGES_PER_SECOND=0";

/// The body of a received message: what follows the blank line.
pub(crate) fn payload(data: &[u8]) -> Option<&[u8]> {
    memchr::memmem::find(data, b"\r\n\r\n").map(|at| &data[at + 4..])
}

/// The body of a received message that should carry `size` body bytes: its last `size` bytes
/// when the blank line sits right before them (checked in place, the common case), else
/// whatever [`payload`] finds. Bench bodies never contain a blank line, and a head holds only
/// the one that ends it, so the shortcut finds the same body as the search.
pub(crate) fn payload_sized(data: &[u8], size: usize) -> Option<&[u8]> {
    match data.len().checked_sub(size + 4) {
        Some(head) if &data[head..head + 4] == b"\r\n\r\n" => Some(&data[head + 4..]),
        _ => payload(data),
    }
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

/// Appends `value` in exactly `width` decimal digits, zero-padded (the caller keeps `value`
/// below `10^width`). Bodies are numbered this way per message, where `format!` machinery
/// would cost the publisher more than the rest of the message.
pub(crate) fn push_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    debug_assert!(width >= 20 || value < 10u64.pow(width as u32));
    let start = out.len();
    out.resize(start + width, b'0');
    for digit in out[start..].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
}

/// The filler that pads every bench body to its size: byte `i` of message `seq` is
/// `'a' + (seq + i) mod 26`, so that a byte moved, dropped or swapped between messages is
/// caught. The cycle is laid out once, so that writing and checking a filler are one copy and
/// one comparison rather than a division per byte.
pub(crate) struct Filler {
    /// The alphabet repeated over `len + 26` bytes: every filler is a window of it.
    cycle: Vec<u8>,
    len: usize,
}

impl Filler {
    /// The filler of bodies with `len` filler bytes.
    pub(crate) fn new(len: usize) -> Filler {
        let cycle = (0..len + 26).map(|i| b'a' + (i % 26) as u8).collect();
        Filler { cycle, len }
    }

    /// The filler of message `seq`.
    pub(crate) fn of(&self, seq: u64) -> &[u8] {
        let start = (seq % 26) as usize;
        &self.cycle[start..start + self.len]
    }

    /// The number of filler bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `filler` is exactly the filler of message `seq`.
    pub(crate) fn is_intact(&self, filler: &[u8], seq: u64) -> bool {
        filler == self.of(seq)
    }
}

/// The CPU time process `pid` has used so far: the run time of every one of its threads, in
/// nanoseconds, from `/proc/PID/task/*/schedstat` (Linux). Tick counts (`/proc/PID/stat`, 10 ms
/// each) are the fallback where schedstat is missing; they miss short runs by whole ticks.
/// A thread that ends during a run takes its time with it: lhttpd's threads live as long as it.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    if let Some(run_time) = threads_run_time(pid) {
        return Ok(run_time);
    }
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no CPU times in {path}"))?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / per_second,
    ))
}

/// The summed first field (time on a CPU, in ns) of every thread's schedstat.
fn threads_run_time(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2,
/// in parentheses) may hold spaces and parentheses itself, so fields are counted from the
/// last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
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

    #[test]
    fn rate_refusals_are_told_from_other_answers() {
        assert!(is_rate_refusal(
            b"LHTTP/1.0 error\r\nstatus:429\r\nreason:message rate limit exceeded\r\n\r\n"
        ));
        assert!(!is_rate_refusal(
            b"LHTTP/1.0 error\r\nstatus:403\r\nreason:forbidden\r\n\r\n"
        ));
        assert!(!is_rate_refusal(
            b"LHTTP/1.0 bench\r\npublish:b\r\n\r\nstatus:429\r\n"
        ));
    }

    #[test]
    fn padded_numbers_have_their_width() {
        let mut out = b"x".to_vec();
        push_padded(&mut out, 42, 6);
        push_padded(&mut out, 0, 3);
        push_padded(&mut out, u64::MAX, 20);
        assert_eq!(out, b"x00004200018446744073709551615");
    }

    #[test]
    fn fillers_follow_the_alphabet_from_their_sequence_number() {
        let filler = Filler::new(30);
        assert_eq!(filler.of(0), b"abcdefghijklmnopqrstuvwxyzabcd");
        assert_eq!(filler.of(27), b"bcdefghijklmnopqrstuvwxyzabcde");
        assert!(filler.is_intact(b"bcdefghijklmnopqrstuvwxyzabcde", 1));
        assert!(!filler.is_intact(b"bcdefghijklmnopqrstuvwxyzabcde", 2));
        assert!(!filler.is_intact(b"bcdefghijklmnopqrstuvwxyzabcd", 1));
        assert_eq!(Filler::new(0).of(5), b"");
    }

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        let stat = "4242 (lhttpd (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    731 269 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("4242 (lhttpd) S 1"), None);
        let own = cpu_time(std::process::id()).expect("this process's CPU time");
        assert!(own < Duration::from_secs(3600), "{own:?}");
    }

    #[test]
    fn the_run_time_of_every_thread_is_counted() {
        let before = threads_run_time(std::process::id()).expect("schedstat on Linux");
        // Another thread of this process works until the process's figure has moved by 20 ms
        // of CPU (bounded: a machine that never gives it the CPU fails the test in 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let moved = std::thread::spawn(move || {
            let mut spins = 0u64;
            while std::time::Instant::now() < deadline {
                for _ in 0..100_000 {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                let now = threads_run_time(std::process::id()).unwrap();
                if now.saturating_sub(before) >= Duration::from_millis(20) {
                    return true;
                }
            }
            false
        })
        .join()
        .unwrap();
        assert!(moved, "a busy thread's run time is not counted");
    }

    #[test]
    fn a_sized_payload_is_found_in_place_or_by_search() {
        let data = b"LHTTP/1.0 bench\r\npublish:b\r\n\r\n0123456789";
        assert_eq!(payload_sized(data, 10), Some(&b"0123456789"[..]));
        assert_eq!(payload_sized(data, 4), Some(&b"0123456789"[..]));
        assert_eq!(payload_sized(data, 400), Some(&b"0123456789"[..]));
        assert_eq!(payload_sized(b"no blank line", 4), None);
    }
}
