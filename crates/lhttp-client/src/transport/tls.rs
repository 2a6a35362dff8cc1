//! TLS for `wss://` and `tls://`: rustls with the `ring` provider, the platform's root
//! certificates plus any CA the caller adds, and an optional client certificate.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::Error;

/// What the builder was told about TLS; turned into a [`ClientConfig`] once, at connect.
#[derive(Clone)]
pub(crate) struct TlsOptions {
    /// PEM texts of extra trusted CAs, each possibly holding several certificates.
    pub(crate) ca_pems: Vec<Vec<u8>>,
    /// Whether the platform's root certificates are trusted too.
    pub(crate) platform_roots: bool,
    /// A client certificate chain and its private key, both PEM, for mutual TLS.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    /// A configuration the caller built itself; replaces everything above.
    pub(crate) config: Option<Arc<ClientConfig>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_pems: Vec::new(),
            platform_roots: true,
            identity: None,
            config: None,
        }
    }
}

/// Never prints key material, so that `{:?}` of a builder is safe to log.
impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pems", &self.ca_pems.len())
            .field("platform_roots", &self.platform_roots)
            .field("client_certificate", &self.identity.is_some())
            .field("custom_config", &self.config.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// The rustls configuration these options describe. Fails on PEM text that holds no
    /// certificate, or a key that does not parse or does not match its certificate.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let mut roots = RootCertStore::empty();
        if self.platform_roots {
            roots.add_parsable_certificates(platform_roots().iter().cloned());
        }
        for pem in &self.ca_pems {
            let certs = certificates(pem, "CA")?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("unusable CA certificate: {e}")))?;
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Tls(e.to_string()))?
                .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = certificates(cert_pem, "client")?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| Error::Tls(format!("no usable private key in the PEM: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("unusable client certificate: {e}")))?
            }
        };
        Ok(Arc::new(config))
    }
}

/// Every certificate in `pem`; at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("bad {what} certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "no certificate in the {what} certificate PEM"
        )));
    }
    Ok(certs)
}

/// The platform's trusted roots, read once per process (a few hundred certificates: reading
/// and parsing them takes milliseconds, too much for every reconnect).
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| match rustls_native_certs::load_native_certs() {
        Ok(roots) => roots,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the platform's root certificates");
            Vec::new()
        }
    })
}
