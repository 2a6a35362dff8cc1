//! A lean keep-alive HTTP/1.1 client for `lhttp bench http-publish`: one TCP connection (TLS
//! for `https://`), one `POST` at a time with a `Content-Length` body, answers read by their
//! `Content-Length`.
//!
//! The load client shares the CPU with the server it measures, so every instruction it spends
//! is one the server does not get. reqwest spent 2.3× the server's instructions per request
//! (parsing the URL with IDNA each time, its pool, header maps, a timer per request); this
//! client writes a request head prepared once and reads the answer into a reused buffer.

use std::{mem::MaybeUninit, pin::Pin, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{Tls, socket::Io};

/// Room for the headers of an answer; hyper sends three or four.
const MAX_HEADERS: usize = 32;

/// An answer's head and body beyond this size are refused: the bench's answers are small JSON.
const MAX_ANSWER: usize = 1 << 20;

/// `http://host:port/path` or `https://...` split into what a request needs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port` as written, for the `Host` header.
    authority: String,
    /// Where to connect: the authority with the default port added when it has none.
    address: String,
    path: String,
    /// For `https://`: the name the server's certificate must carry (the host, without the
    /// brackets of an IPv6 address).
    tls_name: Option<String>,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let (rest, secure) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            bail!("expected an http:// or https:// URL: {url}");
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url}");
        }
        // `[::1]` and `host` have no port; `[::1]:80` and `host:80` do.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.contains(']'));
        let address = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        let tls_name = secure.then(|| {
            let host = match authority.rsplit_once(':') {
                Some((host, _)) if has_port => host,
                _ => authority,
            };
            let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            unbracketed.unwrap_or(host).to_owned()
        });
        Ok(Target {
            authority: authority.to_owned(),
            address,
            path: path.to_owned(),
            tls_name,
        })
    }
}

/// An answer: its status and body (borrowed from the connection's buffer until the next
/// request).
pub(crate) struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// One keep-alive connection.
pub(crate) struct Connection {
    stream: Pin<Box<dyn Io>>,
    /// `POST <path> HTTP/1.1`, `Host` and the start of `Content-Length`, prepared once.
    head: Vec<u8>,
    request: Vec<u8>,
    answer: Vec<u8>,
    /// Bytes of `answer` that belong to the previous answer, dropped before the next read.
    consumed: usize,
    /// The server said `Connection: close`: the next request needs a new connection.
    closing: bool,
}

impl Connection {
    pub(crate) async fn open(target: &Target, tls: &Tls, timeout: Duration) -> Result<Self> {
        let connecting = async {
            let tcp = TcpStream::connect(&target.address)
                .await
                .with_context(|| format!("cannot connect to {}", target.address))?;
            // The request goes out in one write; no reason to wait for the previous ACK.
            tcp.set_nodelay(true)?;
            let stream: Pin<Box<dyn Io>> = match &target.tls_name {
                Some(name) => tls.handshake(name, tcp).await?,
                None => Box::pin(tcp),
            };
            anyhow::Ok(stream)
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .with_context(|| format!("connecting to {} timed out", target.address))??;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: ",
            target.path, target.authority
        )
        .into_bytes();
        Ok(Connection {
            stream,
            head,
            request: Vec::with_capacity(512),
            answer: Vec::with_capacity(4096),
            consumed: 0,
            closing: false,
        })
    }

    /// Whether this connection can carry another request.
    pub(crate) fn reusable(&self) -> bool {
        !self.closing
    }

    /// Sends `body` and reads the whole answer.
    pub(crate) async fn post(&mut self, body: &[u8]) -> Result<Answer<'_>> {
        if self.closing {
            bail!("the server closed the connection");
        }
        self.request.clear();
        self.request.extend_from_slice(&self.head);
        push_decimal(&mut self.request, body.len());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        self.stream
            .write_all(&self.request)
            .await
            .context("cannot send the request")?;

        self.answer.drain(..self.consumed);
        self.consumed = 0;
        let (status, head_len, body_len) = loop {
            if let Some(parsed) = parse_head(&self.answer)? {
                break parsed;
            }
            self.read_more().await?;
        };
        let end = head_len
            .checked_add(body_len)
            .filter(|&end| end <= MAX_ANSWER)
            .context("answer too large")?;
        while self.answer.len() < end {
            self.read_more().await?;
        }
        self.consumed = end;
        self.closing = status.1;
        Ok(Answer {
            status: status.0,
            body: &self.answer[head_len..end],
        })
    }

    async fn read_more(&mut self) -> Result<()> {
        if self.answer.len() >= MAX_ANSWER {
            bail!("answer too large");
        }
        self.answer.reserve(4096);
        let read = self
            .stream
            .read_buf(&mut self.answer)
            .await
            .context("cannot read the answer")?;
        if read == 0 {
            self.closing = true;
            bail!("the server closed the connection before answering");
        }
        Ok(())
    }
}

/// ((status, connection closes), head length, body length) once `buf` holds a whole head.
type Head = ((u16, bool), usize, usize);

fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    // Left uninitialised: zeroing room for MAX_HEADERS headers cost more than the parse.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, buf, &mut headers)
        .context("malformed HTTP answer")?;
    let head_len = match parsed {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("answer without a status")?;
    let mut body_len = None;
    let mut closes = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("bad Content-Length in the answer")?;
            body_len = Some(len);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked answers are not supported by the bench client");
        } else if header.name.eq_ignore_ascii_case("connection") {
            closes = header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    // Only answers that cannot have a body may leave Content-Length out.
    let body_len = match body_len {
        Some(len) => len,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => bail!("answer {status} without Content-Length"),
    };
    Ok(Some(((status, closes), head_len, body_len)))
}

/// Appends `n` in decimal (itoa: no `fmt` machinery on the per-request path).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_get_the_default_port_only_when_they_have_none() {
        let t = Target::parse("http://127.0.0.1:8081/publish").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.address.as_str(), t.path.as_str()),
            ("127.0.0.1:8081", "127.0.0.1:8081", "/publish")
        );
        assert_eq!(
            Target::parse("http://example.org/p").unwrap().address,
            "example.org:80"
        );
        assert_eq!(Target::parse("http://[::1]/p").unwrap().address, "[::1]:80");
        assert_eq!(
            Target::parse("http://[::1]:9/p").unwrap().address,
            "[::1]:9"
        );
        let secure = Target::parse("https://[::1]:8443/publish").unwrap();
        assert_eq!(
            (secure.address.as_str(), secure.tls_name.as_deref()),
            ("[::1]:8443", Some("::1"))
        );
        let secure = Target::parse("https://localhost:8443/publish").unwrap();
        assert_eq!(secure.tls_name.as_deref(), Some("localhost"));
        let secure = Target::parse("https://localhost/publish").unwrap();
        assert_eq!(
            (secure.address.as_str(), secure.tls_name.as_deref()),
            ("localhost:443", Some("localhost"))
        );
        assert_eq!(t.tls_name, None);
        assert!(Target::parse("ftp://example.org/").is_err());
    }

    #[test]
    fn answer_heads_are_parsed_by_content_length() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        let ((status, closes), head, body) = parse_head(answer).unwrap().unwrap();
        assert_eq!(
            (status, closes, &answer[head..head + body]),
            (200, false, &b"hello"[..])
        );
        assert!(parse_head(&answer[..20]).unwrap().is_none());
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(closing).unwrap().unwrap().0, (503, true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
