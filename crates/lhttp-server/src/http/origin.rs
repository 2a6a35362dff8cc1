//! [`Site`]: which web pages may use this server from a browser, and which `Host` a request
//! for a loopback-only endpoint may name.
//!
//! Browsers let any page make requests to any address, the visitor's own machine included:
//! without these checks, a page on any site could open a WebSocket to an `lhttpd` on the
//! visitor's loopback and read every channel, `POST /publish` a text/plain form to it, or
//! read `/metrics` after pointing its own host name at 127.0.0.1 (DNS rebinding). Browsers
//! always say which page a request comes from (`Origin`) and which name it was sent to
//! (`Host`); programs that are not browsers send no `Origin` and are not affected.
//!
//! Allowed origins, for WebSocket upgrades and `POST /publish`:
//! - no `Origin` header (the CLI, the Rust SDK, the original Go client, curl);
//! - the server's own origin: `http(s)://` + the `Host` the request was sent to (the chat
//!   page served by lhttpd itself); on a loopback-only listener only when that `Host` is a
//!   loopback name, since after DNS rebinding a foreign page has its own host name as `Host`;
//! - every origin listed in `server.allowed_origins` (`"*"`: any origin);
//! - with no list, on a listener bound to a loopback address: pages on loopback
//!   (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`), so that a page served
//!   by a local development server may use a local lhttpd.

use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, header};

/// The address one listener is bound to, as the checks need it; one per listening port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site {
    local: SocketAddr,
    /// Bound to a loopback address: only this machine can reach it.
    loopback_only: bool,
}

impl Site {
    pub(crate) fn new(local: SocketAddr) -> Site {
        Site {
            local,
            loopback_only: local.ip().is_loopback(),
        }
    }

    /// True when the listener is bound to a loopback address.
    pub(crate) fn loopback_only(&self) -> bool {
        self.loopback_only
    }

    /// Whether the request's `Host` is one this server is reached at over loopback: a
    /// loopback name or address, or the address it listens on. A request without `Host`
    /// (HTTP/1.0 clients) passes: browsers always send one.
    pub(crate) fn host_is_local(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST) else {
            return true;
        };
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = host_name(host);
        is_loopback_name(name) || parse_ip(name).is_some_and(|ip| ip == self.local.ip())
    }

    /// Whether a browser page from the request's `Origin` may use the server (see the module
    /// documentation); `allowed` is `server.allowed_origins`.
    pub(crate) fn origin_allowed(&self, allowed: &[String], headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if listed(allowed, origin) {
            return true;
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            // `null` (sandboxed pages, files) and other schemes: only if listed.
            return false;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
            && (!self.loopback_only || self.host_is_local(headers))
        {
            return true;
        }
        allowed.is_empty() && self.loopback_only && is_loopback_name(host_name(authority))
    }
}

/// Whether `origin` is in `allowed` (or `allowed` holds `"*"`).
pub(crate) fn listed(allowed: &[String], origin: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn parse_ip(name: &str) -> Option<IpAddr> {
    name.parse().ok()
}

/// `localhost`, a name under `.localhost` (browsers resolve them to loopback, RFC 6761), or a
/// loopback address.
fn is_loopback_name(name: &str) -> bool {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || parse_ip(&lower).is_some_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, host.parse().unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn on_loopback_pages_of_this_machine_are_allowed_and_others_not() {
        let site = Site::new("127.0.0.1:8081".parse().unwrap());
        let allowed = |host, origin| site.origin_allowed(&[], &headers(host, origin));
        assert!(allowed(Some("127.0.0.1:8081"), None));
        assert!(allowed(
            Some("127.0.0.1:8081"),
            Some("http://127.0.0.1:8081")
        ));
        assert!(allowed(
            Some("localhost:8081"),
            Some("http://localhost:3000")
        ));
        assert!(allowed(Some("127.0.0.1:8081"), Some("http://[::1]:5173")));
        assert!(allowed(
            Some("127.0.0.1:8081"),
            Some("http://app.localhost:3000")
        ));
        assert!(!allowed(
            Some("127.0.0.1:8081"),
            Some("https://evil.example")
        ));
        assert!(!allowed(Some("127.0.0.1:8081"), Some("null")));
        // DNS rebinding: the foreign page's own name is the Host, and the Origin matches it.
        assert!(!allowed(
            Some("evil.example:8081"),
            Some("http://evil.example:8081")
        ));
    }

    #[test]
    fn on_other_addresses_only_the_own_origin_and_the_list() {
        let site = Site::new("0.0.0.0:8081".parse().unwrap());
        let own = headers(Some("chat.example.com"), Some("https://chat.example.com"));
        assert!(site.origin_allowed(&[], &own));
        let local_page = headers(Some("chat.example.com"), Some("http://localhost:3000"));
        assert!(!site.origin_allowed(&[], &local_page));
        let other = headers(Some("chat.example.com"), Some("https://app.example.com"));
        assert!(!site.origin_allowed(&[], &other));
        assert!(site.origin_allowed(&["https://app.example.com".into()], &other));
        assert!(site.origin_allowed(&["*".into()], &other));
    }

    #[test]
    fn local_hosts() {
        let site = Site::new("127.0.0.2:8081".parse().unwrap());
        for host in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1:8081",
            "[::1]:8081",
            "127.0.0.2",
        ] {
            assert!(site.host_is_local(&headers(Some(host), None)), "{host}");
        }
        assert!(site.host_is_local(&headers(None, None)));
        for host in ["evil.example", "evil.example:8081", "10.0.0.1:8081"] {
            assert!(!site.host_is_local(&headers(Some(host), None)), "{host}");
        }
    }
}
