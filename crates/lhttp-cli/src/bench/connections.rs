//! `lhttp bench connections`: opens N idle connections, each subscribed to a channel, and
//! reports the server's memory per connection (RSS from /proc/PID/status), and beside it the
//! kernel's TCP socket memory (/proc/net/sockstat), which no RSS includes.
//!
//! The connections come from several loopback source addresses, as `sources.rs` opens them:
//! `--source-addrs N`, by default as many as the ephemeral port range requires.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Output, Tls, progress, request, round2,
    sources::{self, Route},
};

/// What `lhttp bench connections` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    pub url: String,
    pub count: usize,
    pub channels: usize,
    pub pid: Option<u32>,
    /// How many 127.0.0.x source addresses to spread over; `None`: as many as ports require.
    pub source_addrs: Option<usize>,
    pub tls: Tls,
    pub timeout: Duration,
    pub output: Output,
}

/// The result of `lhttp bench connections`.
#[derive(Debug)]
pub(crate) struct ConnectionsReport {
    pub connections: usize,
    pub elapsed: Duration,
    /// Server RSS before and after, in KiB, when a pid was given.
    pub rss_kib: Option<(u64, u64)>,
    /// The kernel's TCP socket buffer memory, machine-wide, before and after, in KiB
    /// (`/proc/net/sockstat`): outside any process's RSS, and on loopback it holds both ends
    /// of every connection, the server's and this client's.
    pub kernel_tcp_kib: Option<(u64, u64)>,
    /// The open-files limit of this process after raising it (soft, hard).
    pub open_files: (u64, u64),
    /// Connections per local address actually used (none over a Unix socket).
    pub per_source: BTreeMap<IpAddr, usize>,
}

impl ConnectionsReport {
    fn kernel_per_connection_kib(&self) -> Option<f64> {
        self.kernel_tcp_kib.map(|(before, after)| {
            after.saturating_sub(before) as f64 / self.connections.max(1) as f64
        })
    }

    fn per_connection_kib(&self) -> Option<f64> {
        self.rss_kib.map(|(before, after)| {
            after.saturating_sub(before) as f64 / self.connections.max(1) as f64
        })
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "connections",
            "connections": self.connections,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "rss_before_kib": self.rss_kib.map(|r| r.0),
            "rss_after_kib": self.rss_kib.map(|r| r.1),
            "kib_per_connection": self.per_connection_kib().map(round2),
            "kernel_tcp_before_kib": self.kernel_tcp_kib.map(|k| k.0),
            "kernel_tcp_after_kib": self.kernel_tcp_kib.map(|k| k.1),
            "kernel_tcp_kib_per_connection": self.kernel_per_connection_kib().map(round2),
            "open_files_limit": self.open_files.0,
            "source_addrs": self.per_source.len(),
            "connections_per_source": sources::per_source_json(&self.per_source),
        })
    }

    pub(crate) fn table(&self) -> String {
        let from = if self.per_source.is_empty() {
            "over a Unix socket".to_owned()
        } else {
            format!(
                "from        {:>8} source address(es)",
                self.per_source.len()
            )
        };
        let mut out = format!(
            "connections {:>8} (each subscribed, then idle)\nopened in   {:>8.3} s\n\
             {from}; open-files limit {}",
            self.connections,
            self.elapsed.as_secs_f64(),
            self.open_files.0
        );
        if let (Some((before, after)), Some(per)) = (self.rss_kib, self.per_connection_kib()) {
            out.push_str(&format!(
                "\nserver RSS  {before} KiB -> {after} KiB: {per:.2} KiB per connection"
            ));
        }
        if let (Some((before, after)), Some(per)) =
            (self.kernel_tcp_kib, self.kernel_per_connection_kib())
        {
            out.push_str(&format!(
                "\nkernel TCP  {before} KiB -> {after} KiB: {per:.2} KiB per connection \
                 (socket buffers, machine-wide, both ends on loopback; not in any RSS)"
            ));
        }
        out
    }
}

/// The resident set size of process `pid`, in KiB (Linux).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The kernel's TCP socket memory in KiB: the `mem` pages of the `TCP:` line of
/// `/proc/net/sockstat`. `None` where there is no such file (not Linux).
fn kernel_tcp_kib() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let pages = tcp_mem_pages(&sockstat)?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|&p| p > 0)
        .unwrap_or(4096) as u64;
    Some(pages * page / 1024)
}

/// The value after `mem` on the `TCP:` line of a sockstat file.
fn tcp_mem_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

/// Opens `count` connections, each subscribed to one of `channels` channels, and measures the
/// server's memory growth. The connections stay open until the report is made.
pub(crate) async fn connections(opts: Connections) -> Result<ConnectionsReport> {
    let open_files = sources::raise_open_files()?;
    let route = Route::new(
        &opts.url,
        opts.count,
        opts.source_addrs,
        sources::ports_per_address(),
    )?;
    let before = opts.pid.map(rss_kib).transpose()?;
    let kernel_before = kernel_tcp_kib();
    let bar = progress::bar(opts.output.progress, opts.count as u64, "connections");
    let started = Instant::now();
    let (channels, timeout) = (opts.channels.max(1), opts.timeout);
    let sockets = sources::open_all(
        &route,
        opts.count,
        &opts.tls,
        timeout,
        &bar,
        |i, mut socket| async move {
            let id = format!("idle-{i}");
            request(
                &mut socket,
                format!(
                    "LHTTP/1.0 idle\r\nsubscribe:idle-{}\r\nrequest-id:{id}\r\n\r\n",
                    i % channels
                ),
                &id,
                timeout,
            )
            .await?;
            Ok(socket)
        },
    )
    .await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let per_source = sources::per_source(sockets.iter().map(|(_, local)| local));
    // Let the server settle (allocator, deferred frees) before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = opts.pid.map(rss_kib).transpose()?;
    let kernel_after = kernel_tcp_kib();
    drop(sockets);
    Ok(ConnectionsReport {
        connections: opts.count,
        elapsed,
        rss_kib: before.zip(after),
        kernel_tcp_kib: kernel_before.zip(kernel_after),
        open_files,
        per_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_tcp_memory_is_read_from_the_tcp_line() {
        let sockstat =
            "sockets: used 8\nTCP: inuse 1 orphan 0 tw 16 alloc 1 mem 186\nUDP: inuse 0 mem 3\n";
        assert_eq!(tcp_mem_pages(sockstat), Some(186));
        assert_eq!(tcp_mem_pages("sockets: used 8\nUDP: inuse 0 mem 3\n"), None);
        assert_eq!(tcp_mem_pages("TCP: inuse 1 mem\n"), None);
    }
}
