//! Many connections to one server, as `bench connections` and `bench chat` open them.
//!
//! Many connections need two things from this process: open files (the soft limit is raised to
//! the hard one) and source ports — one source address has ~28k ephemeral ports towards one
//! server port, and a server may limit connections per IP (lhttpd: 1000 by default). So
//! connections are spread over several 127.0.0.x source addresses (bound before connecting)
//! when the server is on loopback: `--source-addrs N`, or by default as many as the scenario's
//! most connections per address require. That applies to the TCP-based URLs (`ws://`, `wss://`,
//! `tcp://`, `tls://`); a Unix socket has no ports to run out of, and its connections are
//! opened without it. A connection the server refuses for one of its connection limits (HTTP
//! 429 or 503 at the upgrade) fails the run with the limit named.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;
use tokio_tungstenite::tungstenite;

use super::{
    Socket, Tls, connect,
    dial::{Target, connect_from},
};

/// Connections opened at once: enough that opening 10,000 takes seconds, few enough that the
/// server's accept queue and its limit of unfinished HTTP connections per address
/// (`limits.max_http_connections_per_ip`, 256) are not what is measured.
const WAVE: usize = 100;

/// Where a run's connections go and where they come from.
pub(crate) struct Route {
    url: String,
    target: Target,
    /// Over TCP: the server's address and the source addresses, used in turn; over a Unix
    /// socket, none.
    tcp: Option<(SocketAddr, Vec<IpAddr>)>,
}

impl Route {
    /// The route of `count` connections to `url`: from `wanted` source addresses, or by
    /// default as few as keep each at or under `most_per_address` connections.
    pub(crate) fn new(
        url: &str,
        count: usize,
        wanted: Option<usize>,
        most_per_address: usize,
    ) -> Result<Route> {
        let target = Target::parse(url)?;
        let tcp = match target.host_port() {
            Some(_) => {
                let server = server_addr(&target)?;
                Some((server, sources(server, count, wanted, most_per_address)?))
            }
            None if wanted.is_some() => bail!(
                "--source-addrs applies to TCP-based URLs (ws://, wss://, tcp://, tls://): a \
                 Unix socket ({url}) has no source address or ephemeral port to spread over"
            ),
            None => None,
        };
        Ok(Route {
            url: url.to_owned(),
            target,
            tcp,
        })
    }

    /// Opens connection `i`: over TCP from its source address (the local address it got is
    /// returned), or over the Unix socket.
    async fn open(
        &self,
        i: usize,
        tls: &Tls,
        timeout: Duration,
    ) -> Result<(Socket, Option<SocketAddr>)> {
        match &self.tcp {
            Some((server, sources)) => {
                let source = sources[i % sources.len()];
                let (socket, local) =
                    connect_from(&self.target, *server, source, tls, timeout).await?;
                Ok((socket, Some(local)))
            }
            None => Ok((connect(&self.url, tls, timeout).await?, None)),
        }
    }

    /// What to say about connection `i` when it failed with `error`: where it came from, and
    /// which of the server's limits refused it, if one did.
    fn explain(&self, i: usize, count: usize, error: anyhow::Error) -> anyhow::Error {
        let sources = self.tcp.as_ref().map(|(_, sources)| sources.as_slice());
        let from = match sources {
            Some(sources) => format!("connection {i} (from {})", sources[i % sources.len()]),
            None => format!("connection {i}"),
        };
        let status =
            error
                .chain()
                .find_map(|cause| match cause.downcast_ref::<tungstenite::Error>() {
                    Some(tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
                    _ => None,
                });
        let why = match (status, sources) {
            (Some(429), Some(sources)) => format!(
                "{from}: the server refused it with HTTP 429, too many connections from one \
                 address: its per-address limit (limits.max_connections_per_ip, 1000 by \
                 default) is below the {} connections asked of each of {} source address(es); \
                 spread them over more with --source-addrs N",
                count.div_ceil(sources.len()),
                sources.len()
            ),
            (Some(503), _) => format!(
                "{from}: the server refused it with HTTP 503: it holds as many connections as \
                 it allows (limits.max_connections, 10,000 by default)"
            ),
            (Some(status), _) => format!("{from}: the server refused it with HTTP {status}"),
            (None, _) => from,
        };
        error.context(why)
    }
}

/// Opens `count` connections over `route` in waves, each made ready by `setup` (a
/// subscription, say) before the next wave; returns what `setup` made of each, in order, with
/// the local address the connection got (none over a Unix socket). `bar` counts them.
pub(crate) async fn open_all<T, F, Fut>(
    route: &Route,
    count: usize,
    tls: &Tls,
    timeout: Duration,
    bar: &ProgressBar,
    setup: F,
) -> Result<Vec<(T, Option<SocketAddr>)>>
where
    F: Fn(usize, Socket) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut opened = Vec::with_capacity(count);
    for wave in (0..count).step_by(WAVE) {
        let end = (wave + WAVE).min(count);
        let ready = futures_util::future::try_join_all((wave..end).map(|i| {
            let setup = &setup;
            async move {
                let ready = async {
                    let (socket, local) = route.open(i, tls, timeout).await?;
                    anyhow::Ok((setup(i, socket).await?, local))
                };
                ready.await.map_err(|error| route.explain(i, count, error))
            }
        }))
        .await?;
        opened.extend(ready);
        bar.set_position(opened.len() as u64);
    }
    Ok(opened)
}

/// How many connections came from each local address (none over a Unix socket).
pub(crate) fn per_source<'a>(
    locals: impl IntoIterator<Item = &'a Option<SocketAddr>>,
) -> BTreeMap<IpAddr, usize> {
    let mut per_source = BTreeMap::new();
    for local in locals.into_iter().flatten() {
        *per_source.entry(local.ip()).or_insert(0) += 1;
    }
    per_source
}

/// [`per_source`] as a JSON object: address → connections.
pub(crate) fn per_source_json(per_source: &BTreeMap<IpAddr, usize>) -> serde_json::Value {
    per_source
        .iter()
        .map(|(ip, n)| (ip.to_string(), (*n).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Raises this process's open-files soft limit to the hard limit; returns (soft, hard).
pub(crate) fn raise_open_files() -> Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-files limit")?;
    }
    Ok((hard.max(soft), hard))
}

/// The most connections one source address can open towards one server port, leaving a
/// quarter of its ephemeral ports to everything else on the machine.
pub(crate) fn ports_per_address() -> usize {
    ephemeral_ports() * 3 / 4
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
fn sources(
    server: SocketAddr,
    count: usize,
    wanted: Option<usize>,
    most_per_address: usize,
) -> Result<Vec<IpAddr>> {
    let loopback = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let n = match wanted {
        Some(0) => bail!("--source-addrs must be at least 1"),
        Some(n) if n > 1 && !loopback => {
            bail!("--source-addrs needs a server on 127.0.0.0/8 (got {server})")
        }
        Some(n) => n,
        None if loopback => count.div_ceil(most_per_address.max(1)).max(1),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_get_several_sources_and_others_one() {
        let local: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let ports = ports_per_address();
        assert_eq!(sources(local, 10, Some(3), ports).unwrap().len(), 3);
        assert_eq!(sources(local, 10, None, ports).unwrap().len(), 1);
        assert!(sources(local, ports * 3, None, ports).unwrap().len() >= 3);
        let remote: SocketAddr = "192.0.2.1:8081".parse().unwrap();
        assert!(sources(remote, 10, Some(3), ports).is_err());
        assert_eq!(sources(remote, 10, None, ports).unwrap().len(), 1);
        assert!(sources(local, 10, Some(0), ports).is_err());
    }

    #[test]
    fn by_default_no_address_holds_more_than_asked() {
        let local: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(sources(local, 10_000, None, 900).unwrap().len(), 12);
        assert_eq!(sources(local, 900, None, 900).unwrap().len(), 1);
        assert_eq!(sources(local, 901, None, 900).unwrap().len(), 2);
        assert_eq!(sources(local, 10_000, Some(2), 900).unwrap().len(), 2);
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

    #[test]
    fn connections_are_counted_per_local_address() {
        let locals = [
            Some("127.0.0.1:5000".parse().unwrap()),
            Some("127.0.0.2:5000".parse().unwrap()),
            Some("127.0.0.1:5001".parse().unwrap()),
            None,
        ];
        let counted = per_source(&locals);
        assert_eq!(
            per_source_json(&counted),
            serde_json::json!({"127.0.0.1": 2, "127.0.0.2": 1})
        );
    }
}
