//! Configuration files: arbitrary text parsed as lhttpd's TOML configuration never panics, and
//! a configuration that passes every check builds a server without panicking either (a value
//! that would make the server fail at run time must be refused by the checks, with a message).

#![no_main]

use lhttp_server::{Config, Server};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<Config>(text) else {
        return;
    };
    let checks = [
        config.limits.validate(),
        config.server.validate(),
        config.upstream.validate(),
        config.cluster.validate(),
    ];
    if checks.iter().any(Result::is_err) {
        return;
    }
    // Building reads the cluster's TLS files: keep the fuzzer off the file system.
    let mut config = config;
    config.cluster.tls_ca_file = None;
    config.cluster.tls_client_cert = None;
    config.cluster.tls_client_key = None;
    config.cluster.credentials_file = None;
    if let Err(error) = Server::builder(config).build() {
        // Refused with a reason: fine. The reason must say something.
        assert!(!error.to_string().is_empty());
    }
});
