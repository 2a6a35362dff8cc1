//! A byte-stream client (TCP, TLS, Unix socket, in-process pipe) that speaks the framing of
//! docs/protocol.md ("Byte streams") as a user's program would, and TLS certificates made at
//! test time.

use std::{path::PathBuf, sync::Arc};

use lhttp_server::proto::{
    Message,
    stream::{Decoded, decode, encode},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WAIT;

/// One framed connection.
pub struct StreamClient<S> {
    pub io: S,
    read: Vec<u8>,
    next_id: u64,
    /// Heartbeats received so far.
    pub heartbeats: usize,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Item {
    Message(Message),
    /// The server's last message: `close` with its code and reason.
    Close(u16, String),
    /// The stream ended.
    End,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamClient<S> {
    pub fn new(io: S) -> Self {
        StreamClient {
            io,
            read: Vec::new(),
            next_id: 0,
            heartbeats: 0,
        }
    }

    /// Sends `message` in one frame (one write).
    pub async fn send(&mut self, message: &str) {
        self.send_bytes(message.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, message: &[u8]) {
        let mut frame = Vec::new();
        encode(message, &mut frame);
        self.io.write_all(&frame).await.expect("write");
    }

    /// Writes `bytes` as they are, framing or not.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// The next message, close or end of stream; heartbeats are counted and skipped. Panics
    /// after [`WAIT`].
    pub async fn item(&mut self) -> Item {
        tokio::time::timeout(WAIT, self.next_item())
            .await
            .expect("timed out waiting for the server")
    }

    async fn next_item(&mut self) -> Item {
        loop {
            let (decoded, used) = decode(&self.read, 16 << 20).expect("the server frames well");
            let item = match decoded {
                Decoded::Message(bytes) => {
                    let message = Message::parse(bytes.to_vec().into()).expect("a valid message");
                    Some(match message.command() {
                        "close" => Item::Close(
                            message.header("code").unwrap().parse().unwrap(),
                            message.header("reason").unwrap().to_owned(),
                        ),
                        _ => Item::Message(message),
                    })
                }
                Decoded::Heartbeat => {
                    self.heartbeats += 1;
                    None
                }
                Decoded::Incomplete { .. } => {
                    self.read.drain(..used);
                    let mut buf = [0; 16 * 1024];
                    match self.io.read(&mut buf).await {
                        Ok(0) | Err(_) => return Item::End,
                        Ok(n) => self.read.extend_from_slice(&buf[..n]),
                    }
                    continue;
                }
            };
            self.read.drain(..used);
            if let Some(item) = item {
                return item;
            }
        }
    }

    /// The next message; panics on anything else.
    pub async fn recv(&mut self) -> Message {
        match self.item().await {
            Item::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The close message, skipping messages before it.
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.item().await {
                Item::Close(code, reason) => return (code, reason),
                Item::Message(_) => continue,
                Item::End => panic!("the stream ended without a close message"),
            }
        }
    }

    /// Sends `text` with a fresh `request-id` and waits for the answer that carries it.
    pub async fn request(&mut self, text: &str) -> Message {
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        let (start, rest) = text.split_once("\r\n").unwrap_or((text, ""));
        self.send(&format!("{start}\r\nrequest-id:{id}\r\n{rest}"))
            .await;
        loop {
            let m = self.recv().await;
            if m.header("request-id") == Some(id.as_str()) && m.header("publish").is_none() {
                return m;
            }
        }
    }

    /// Asserts that no message arrives for `ms` milliseconds (heartbeats are skipped).
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(item) =
            tokio::time::timeout(std::time::Duration::from_millis(ms), self.item()).await
        {
            panic!("expected nothing, got {item:?}");
        }
    }

    /// Subscribes and waits for `ok`.
    pub async fn subscribe(&mut self, channels: &str) {
        let answer = self
            .request(&format!("LHTTP/1.0 sub\r\nsubscribe:{channels}\r\n\r\n"))
            .await;
        assert_eq!(answer.command(), "ok", "subscribe failed: {answer:?}");
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files in a fresh
/// directory, and a client configuration that trusts it.
pub struct TestCert {
    pub dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!(
            "lhttp-tls-{name}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = TestCert {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            dir,
            der: Vec::new(),
        };
        cert.renew()
    }

    /// Writes a new certificate and key over the files.
    pub fn renew(mut self) -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        std::fs::write(&self.cert_file, made.cert.pem()).unwrap();
        std::fs::write(&self.key_file, made.signing_key.serialize_pem()).unwrap();
        self.der = made.cert.der().to_vec();
        self
    }

    /// The server's `TlsConfig` for these files.
    pub fn config(&self) -> lhttp_server::config::TlsConfig {
        lhttp_server::config::TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: None,
            reload_interval_ms: 0,
        }
    }

    /// A client connector that trusts this certificate only.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone().into()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
