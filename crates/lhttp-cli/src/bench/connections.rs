//! `lhttp bench connections`: opens N idle connections, each subscribed to a channel, and
//! reports the server's memory per connection (RSS from /proc/PID/status), and beside it the
//! kernel's TCP socket memory (/proc/net/sockstat), which no RSS includes.
//!
//! Many connections need two things from this process: open files (the soft limit is raised to
//! the hard one) and source ports — one source address has ~28k ephemeral ports towards one
//! server port, and a server may limit connections per IP. So connections are spread over
//! several 127.0.0.x source addresses (bound before connecting) when the server is on loopback:
//! `--source-addrs N`, or as many as the ephemeral port range requires. That applies to the
//! TCP-based URLs (`ws://`, `wss://`, `tcp://`, `tls://`); a Unix socket has no ports to run
//! out of, and its connections are opened without it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Output, Socket, Tls, connect,
    dial::{Target, connect_from},
    progress, request, round2,
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
        let per_source: serde_json::Map<String, serde_json::Value> = self
            .per_source
            .iter()
            .map(|(ip, n)| (ip.to_string(), (*n).into()))
            .collect();
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
            "connections_per_source": per_source,
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

/// Raises this process's open-files soft limit to the hard limit; returns (soft, hard).
fn raise_open_files() -> Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-files limit")?;
    }
    Ok((hard.max(soft), hard))
}

/// How many ephemeral ports one source address has towards one server port.
fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(str::parse::<usize>);
            let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
            Some(high.saturating_sub(low) + 1)
        })
        .unwrap_or(28_000)
}

/// The source addresses to connect from: 127.0.0.1, 127.0.0.2, ... when the server is on IPv4
/// loopback (every 127.0.0.0/8 address is local there); only the default elsewhere.
fn sources(server: SocketAddr, count: usize, wanted: Option<usize>) -> Result<Vec<IpAddr>> {
    let loopback = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let n = match wanted {
        Some(0) => bail!("--source-addrs must be at least 1"),
        Some(n) if n > 1 && !loopback => {
            bail!("--source-addrs needs a server on 127.0.0.0/8 (got {server})")
        }
        Some(n) => n,
        // Leave a quarter of the ports to everything else on the machine.
        None if loopback => count.div_ceil(ephemeral_ports() * 3 / 4).max(1),
        None => 1,
    };
    if n > 254 {
        bail!("--source-addrs can be at most 254");
    }
    if !loopback {
        return Ok(vec![if server.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        }]);
    }
    Ok((1..=n as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}

/// The server's socket address: the host and port of a TCP-based target, resolved.
fn server_addr(target: &Target) -> Result<SocketAddr> {
    let (host, port) = target
        .host_port()
        .context("a Unix socket has no server address")?;
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

/// Opens `count` connections, each subscribed to one of `channels` channels, and measures the
/// server's memory growth. The connections stay open until the report is made.
pub(crate) async fn connections(opts: Connections) -> Result<ConnectionsReport> {
    let open_files = raise_open_files()?;
    let target = Target::parse(&opts.url)?;
    // Over TCP: where to connect, and from which addresses; over a Unix socket, neither.
    let route = match target.host_port() {
        Some(_) => {
            let server = server_addr(&target)?;
            Some((server, sources(server, opts.count, opts.source_addrs)?))
        }
        None if opts.source_addrs.is_some() => bail!(
            "--source-addrs applies to TCP-based URLs (ws://, wss://, tcp://, tls://): a Unix \
             socket ({}) has no source address or ephemeral port to spread over",
            opts.url
        ),
        None => None,
    };
    let before = opts.pid.map(rss_kib).transpose()?;
    let kernel_before = kernel_tcp_kib();
    let bar = progress::bar(opts.output.progress, opts.count as u64, "connections");
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(opts.count);
    // Connect in waves, so that the server's accept queue is not the limit being measured.
    const WAVE: usize = 100;
    for wave in (0..opts.count).step_by(WAVE) {
        let end = (wave + WAVE).min(opts.count);
        let opened = futures_util::future::try_join_all((wave..end).map(|i| {
            let (channels, timeout) = (opts.channels.max(1), opts.timeout);
            let (target, route, opts) = (&target, &route, &opts);
            async move {
                let (mut socket, local) = open(target, route, i, opts).await?;
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
                .await
                .with_context(|| match local {
                    Some(local) => format!("connection {i} (from {local})"),
                    None => format!("connection {i}"),
                })?;
                anyhow::Ok((socket, local))
            }
        }))
        .await?;
        sockets.extend(opened);
        bar.set_position(sockets.len() as u64);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let mut per_source = BTreeMap::new();
    for local in sockets.iter().filter_map(|(_, local)| *local) {
        *per_source.entry(local.ip()).or_insert(0) += 1;
    }
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

/// Opens connection `i`: over TCP from its source address (the local address it got is
/// returned), or over the Unix socket.
async fn open(
    target: &Target,
    route: &Option<(SocketAddr, Vec<IpAddr>)>,
    i: usize,
    opts: &Connections,
) -> Result<(Socket, Option<SocketAddr>)> {
    match route {
        Some((server, sources)) => {
            let source = sources[i % sources.len()];
            let (socket, local) =
                connect_from(target, *server, source, &opts.tls, opts.timeout).await?;
            Ok((socket, Some(local)))
        }
        None => Ok((connect(&opts.url, &opts.tls, opts.timeout).await?, None)),
    }
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

    #[test]
    fn loopback_servers_get_several_sources_and_others_one() {
        let local: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(sources(local, 10, Some(3)).unwrap().len(), 3);
        assert_eq!(sources(local, 10, None).unwrap().len(), 1);
        let ports = ephemeral_ports();
        assert!(sources(local, ports * 2, None).unwrap().len() >= 3);
        let remote: SocketAddr = "192.0.2.1:8081".parse().unwrap();
        assert!(sources(remote, 10, Some(3)).is_err());
        assert_eq!(sources(remote, 10, None).unwrap().len(), 1);
        assert!(sources(local, 10, Some(0)).is_err());
    }

    #[test]
    fn server_address_comes_from_the_url() {
        for (url, addr) in [
            ("ws://127.0.0.1:9000/chat", "127.0.0.1:9000"),
            ("wss://127.0.0.1/", "127.0.0.1:443"),
            ("tcp://127.0.0.1:9001", "127.0.0.1:9001"),
            ("tls://[::1]:9002", "[::1]:9002"),
        ] {
            let target = Target::parse(url).unwrap();
            assert_eq!(
                server_addr(&target).unwrap(),
                addr.parse().unwrap(),
                "{url}"
            );
        }
        assert!(server_addr(&Target::parse("unix:///tmp/x.sock").unwrap()).is_err());
    }
}
