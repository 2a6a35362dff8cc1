//! The one check of a configuration, shared by building a server and `lhttpd --check-config`:
//! every section's values, and what they point at — key files and environment variables are
//! read and parsed, NATS credentials and TLS certificates loaded. What it builds on the way
//! (the key verifier, the permissions, the cluster client, the certificates) is kept by the
//! server it was checked for.

use std::sync::Arc;

use lhttp_proto::pattern::Pattern;

use crate::{
    Config,
    broker::cluster::Cluster,
    config::{refuse_placeholder, url_without_credentials},
    error::ServerError,
    requests::upstream::Target,
    security::{auth::Verifier, permissions::Permissions},
    transport::tls::{Listeners, TlsServer},
};

/// What validating a configuration built and [`crate::ServerBuilder::build`] keeps.
pub(crate) struct Checked {
    pub(crate) verifier: Verifier,
    pub(crate) permissions: Permissions,
    pub(crate) cluster: Option<Cluster>,
    /// The certificates of the main port and of `[transports.tls]`, loaded.
    pub(crate) tls: Listeners,
}

impl Config {
    /// Checks the whole configuration as building a server does (building it calls this): the
    /// values of every section, and the keys the server will read — key files and environment
    /// variables are read and parsed, NATS credentials and TLS files must exist. `lhttpd
    /// --check-config` runs this same check.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.checked().map(drop)
    }

    pub(crate) fn checked(&self) -> Result<Checked, ServerError> {
        refuse_placeholder(self).map_err(ServerError::Config)?;
        self.limits.validate().map_err(ServerError::Config)?;
        self.server.validate().map_err(ServerError::Config)?;
        self.upstream.validate().map_err(ServerError::Config)?;
        for prefix in self
            .upstream
            .allow
            .iter()
            .chain(self.upstream.routes.values())
        {
            Target::parse(prefix).map_err(|e| {
                ServerError::Config(format!(
                    "upstream URL {:?}: {e}",
                    url_without_credentials(prefix)
                ))
            })?;
        }
        self.cluster.validate().map_err(ServerError::Config)?;
        self.validate_messaging().map_err(ServerError::Config)?;
        self.auth.validate().map_err(ServerError::Config)?;
        self.validate_transports().map_err(ServerError::Config)?;
        self.validate_channels().map_err(ServerError::Config)?;
        self.validate_admin().map_err(ServerError::Config)?;
        let tls = Listeners {
            main: self
                .server
                .tls
                .as_ref()
                .map(|tls| TlsServer::load("server.tls", tls, &[b"http/1.1"]).map(Arc::new))
                .transpose()
                .map_err(ServerError::Config)?,
            stream: self
                .transports
                .tls
                .as_ref()
                .map(|t| TlsServer::load("transports.tls", &t.tls(), &[]).map(Arc::new))
                .transpose()
                .map_err(ServerError::Config)?,
        };
        Ok(Checked {
            tls,
            verifier: Verifier::new(&self.auth).map_err(ServerError::Config)?,
            permissions: Permissions::new(&self.auth).map_err(ServerError::Config)?,
            cluster: (self.cluster.enabled())
                .then(|| Cluster::new(&self.cluster))
                .transpose()?,
        })
    }
}

impl Config {
    /// `[[channels]]` and `[history]`: patterns, per-channel bounds that a catch-up can queue,
    /// and no history where it cannot be kept safely.
    fn validate_channels(&self) -> Result<(), String> {
        self.history.validate()?;
        let mut keeps_history = false;
        for options in &self.channels {
            let pattern = Pattern::parse(&options.pattern)
                .map_err(|e| format!("channels pattern {:?}: {e}", options.pattern))?;
            options.validate(&self.limits)?;
            if options.history_size == 0 {
                continue;
            }
            keeps_history = true;
            // Gateway requests carry HTTP clients' credentials: never kept for replay.
            if let Some(route) = self.gateway.iter().find(|r| pattern.matches(&r.channel)) {
                return Err(format!(
                    "channels {:?} would keep the history of gateway channel {:?}: gateway requests carry HTTP clients' credentials",
                    options.pattern, route.channel
                ));
            }
        }
        let jetstream = self.history.store == "jetstream";
        if jetstream && !self.cluster.enabled() {
            return Err(
                "history.store = \"jetstream\" keeps history in the NATS of a cluster: it needs [cluster] nats".into(),
            );
        }
        if keeps_history && self.cluster.enabled() && !jetstream {
            return Err(format!(
                "channel history in a cluster must be shared by every node: set history.store = \"jetstream\" (NATS JetStream, nats-server -js), not {:?}, which one node alone would serve",
                self.history.store
            ));
        }
        Ok(())
    }
}
