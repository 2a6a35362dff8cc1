//! `wss://` with certificates made at test time: a CA given to the builder, an unknown CA
//! refused, and a client certificate for a server that asks for one.

mod common;

use std::{net::SocketAddr, sync::Arc};

use common::{TestServer, WAIT, pki::Pki, start};
use futures_util::StreamExt;
use lhttp_client::{Client, Error, rustls};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

/// A TLS listener in front of the real server: it terminates TLS (asking for a client
/// certificate from `pki`'s CA when `mutual`) and passes the bytes on.
async fn tls_front(server: &TestServer, pki: &Pki, mutual: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = server.addr;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_works_with_the_ca_given_to_the_builder() {
    let server = start().await;
    let pki = Pki::new();
    let front = tls_front(&server, &pki, false).await;
    // By name and by address: the certificate carries both.
    for url in [
        format!("wss://localhost:{}/", front.port()),
        format!("wss://{front}/chat"),
    ] {
        let client = Client::builder(&url)
            .ca_certificate(pki.ca_pem.clone())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut room = client.subscribe(["room"]).await.unwrap();
        client.publish("room", "over tls").await.unwrap();
        let message = tokio::time::timeout(WAIT, room.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&message.body()[..], b"over tls");
        client.close().await;
    }
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let server = start().await;
    let pki = Pki::new();
    let front = tls_front(&server, &pki, false).await;
    let url = format!("wss://localhost:{}/", front.port());
    match Client::builder(&url).reconnect(false).connect().await {
        Err(Error::Connect { reason, .. }) => {
            assert!(reason.starts_with("TLS handshake failed"), "{reason}");
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    // Trusting only another CA changes nothing.
    let result = Client::builder(&url)
        .ca_certificate(Pki::new().ca_pem)
        .platform_root_certificates(false)
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_a_server_that_asks_for_one() {
    let server = start().await;
    let pki = Pki::new();
    let front = tls_front(&server, &pki, true).await;
    let url = format!("wss://localhost:{}/", front.port());
    let client = Client::builder(&url)
        .ca_certificate(pki.ca_pem.clone())
        .client_certificate(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
        .connect()
        .await
        .unwrap();
    client.publish("room", "mutual").await.unwrap();
    client.close().await;

    for (cert, key) in [(None, None), {
        let (cert, key) = Pki::stranger_client();
        (Some(cert), Some(key))
    }] {
        let mut builder = Client::builder(&url)
            .reconnect(false)
            .ca_certificate(pki.ca_pem.clone());
        if let (Some(cert), Some(key)) = (cert, key) {
            builder = builder.client_certificate(cert, key);
        }
        let result = builder.connect().await;
        assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
    }
}

#[tokio::test]
async fn unusable_tls_material_fails_before_connecting() {
    let pki = Pki::new();
    let result = Client::builder("wss://127.0.0.1:1/")
        .client_certificate(pki.client_cert_pem.clone(), "not a key")
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
    let result = Client::builder("tls://127.0.0.1:1")
        .client_certificate(pki.client_cert_pem, Pki::new().client_key_pem)
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
}
