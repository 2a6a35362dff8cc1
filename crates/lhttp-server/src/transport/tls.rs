//! [`TlsServer`]: the TLS side of a listener (the main port for `wss://` and `https://`, or
//! `[transports.tls]`), with its certificate read from PEM files and read again when they
//! change, without a restart.
//!
//! rustls asks [`Certificates`] for the certificate at every handshake, so a reload is one
//! swap of an `Arc`: handshakes after it get the new certificate, connections already open keep
//! theirs. A reload that fails (a file half-written, a key that does not match) keeps the old
//! certificate and says why in the log; `lhttpd` also reloads on SIGHUP.

use std::{
    fmt,
    path::Path,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// One TLS listener's settings, acceptor and current certificate.
pub(crate) struct TlsServer {
    /// The configuration section, for messages (`server.tls`, `transports.tls`).
    section: &'static str,
    files: TlsConfig,
    acceptor: TlsAcceptor,
    certificates: Arc<Certificates>,
    provider: Arc<CryptoProvider>,
}

/// The certificate handed to every handshake, and what its files looked like when read.
struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<Stamps>,
}

/// Modification time and size of the certificate and key files when last read.
type Stamps = [Option<(SystemTime, u64)>; 2];

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificates")
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl TlsServer {
    /// Reads the files of `config` and builds the acceptor, offering `alpn` protocols; the
    /// error names `section` and the file at fault.
    pub(crate) fn load(
        section: &'static str,
        config: &TlsConfig,
        alpn: &[&[u8]],
    ) -> Result<TlsServer, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certificate(section, config, &provider)?;
        let certificates = Arc::new(Certificates {
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new([stamp(&config.cert_file), stamp(&config.key_file)]),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{section}: {e}"))?;
        let builder = match &config.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("{section}.client_ca_file {}: {e}", path.display()))?
                {
                    let cert = cert
                        .map_err(|e| format!("{section}.client_ca_file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{section}.client_ca_file {}: {e}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("{section}.client_ca_file {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(certificates.clone());
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsServer {
            section,
            files: config.clone(),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certificates,
            provider,
        })
    }

    /// The acceptor that runs handshakes with the current certificate.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the certificate files again (`only_if_changed`: only when their modification time
    /// or size moved). Returns whether a new certificate is in use; on an error the old one
    /// stays.
    pub(crate) fn reload(&self, only_if_changed: bool) -> Result<bool, String> {
        let now = [stamp(&self.files.cert_file), stamp(&self.files.key_file)];
        let mut stamps = self
            .certificates
            .stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if only_if_changed && *stamps == now {
            return Ok(false);
        }
        // Marked as seen even if it fails: a broken file is reported once, not every check.
        *stamps = now;
        let key = read_certificate(self.section, &self.files, &self.provider)?;
        *self
            .certificates
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(true)
    }

    /// Checks the files every `reload_interval_ms` until `shutdown`, reloading what changed.
    pub(crate) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        if self.files.reload_interval_ms == 0 {
            return;
        }
        let period = Duration::from_millis(self.files.reload_interval_ms);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // What happened is in the log; the old certificate stays on an error.
            let _ = self.log_reload(true);
        }
    }

    /// Reloads and says what happened in the log.
    pub(crate) fn log_reload(&self, only_if_changed: bool) -> Result<bool, String> {
        let reloaded = self.reload(only_if_changed);
        match &reloaded {
            Ok(true) => tracing::info!(section = self.section, "TLS certificate reloaded"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(section = self.section, %error, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
        reloaded
    }
}

/// Reads and checks the certificate chain and key of `config`.
fn read_certificate(
    section: &str,
    config: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_path = &config.cert_file;
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{section}.cert_file {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{section}.cert_file {}: no certificate in it",
            cert_path.display()
        ));
    }
    let key_path = &config.key_file;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{section}.key_file {}: {e}", key_path.display()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{section}.key_file {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|e| {
        format!(
            "{section}: the key in {} does not belong to the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}

/// The TLS side of the listeners, loaded by the one validation.
pub(crate) struct Listeners {
    pub(crate) main: Option<Arc<TlsServer>>,
    pub(crate) stream: Option<Arc<TlsServer>>,
}
