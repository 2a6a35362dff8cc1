//! TLS (`wss://` on the server's main port, `tls://` on `[transports.tls]`) with certificates
//! made at test time: a CA given to the builder, an unknown CA refused, unusable material
//! refused before connecting. Mutual TLS is in transports.rs.

mod common;

use common::{WAIT, everywhere::everywhere, pki::Pki};
use futures_util::StreamExt;
use lhttp_client::{Client, Error};

#[tokio::test]
async fn tls_works_with_the_ca_given_to_the_builder_by_name_and_by_address() {
    let server = everywhere(false, |_| {}).await;
    let by_address = |url: &str| url.replace("localhost", "127.0.0.1");
    for url in [
        server.wss.clone(),
        by_address(&server.wss),
        server.tls.clone(),
        by_address(&server.tls),
    ] {
        let client = Client::builder(&url)
            .ca_certificate(server.pki.ca_pem.clone())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut room = client.subscribe(["room"]).await.unwrap();
        client.publish("room", "over tls").await.unwrap();
        let message = tokio::time::timeout(WAIT, room.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&message.body()[..], b"over tls", "{url}");
        client.close().await;
    }
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let server = everywhere(false, |_| {}).await;
    for url in [&server.wss, &server.tls] {
        match Client::builder(url).reconnect(false).connect().await {
            Err(Error::Connect { reason, .. }) => {
                assert!(
                    reason.starts_with("TLS handshake failed"),
                    "{url}: {reason}"
                );
                assert!(reason.contains("UnknownIssuer"), "{url}: {reason}");
            }
            other => panic!("{url}: expected a refused certificate, got {other:?}"),
        }
        // Trusting only another CA changes nothing.
        let result = Client::builder(url)
            .ca_certificate(Pki::new().ca_pem)
            .platform_root_certificates(false)
            .connect()
            .await;
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
    // A key that is not the certificate's.
    let result = Client::builder("tls://127.0.0.1:1")
        .client_certificate(pki.client_cert_pem, Pki::new().client_key_pem)
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
    let result = Client::builder("tls://127.0.0.1:1")
        .ca_certificate("-----BEGIN NOTHING-----")
        .connect()
        .await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
}
