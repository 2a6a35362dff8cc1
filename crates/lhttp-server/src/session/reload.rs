//! Changing settings while serving ([`crate::ServerHandle::reload`]; `lhttpd` on SIGHUP).
//!
//! A new configuration is checked whole, as at start; one that would not start is refused and
//! nothing changes. Of the settings that differ, those in [`RELOADABLE`] are put in force and
//! the others are named as needing a restart, and keep the value the server started with.
//! What is reloadable is listed (not what is not), so a setting added later is
//! restart-only until someone makes it follow a reload.
//!
//! When a reloaded setting takes effect:
//! - `[auth]` keys and options: at the next sign-in; the rules (`[[auth.rules]]`): at every
//!   connection's next message or keepalive tick (`server.ping_interval_ms`), which drops the
//!   subscriptions the connection's identity no longer allows (told with `unsubscribed`);
//! - `[upstream]` allow-list, routes, timeout and per-connection cap: at the next call;
//! - `server.api_key` and `server.allowed_origins`: at the next HTTP request or upgrade;
//! - limits of a connection (its queue, its message rate, its subscriptions, its timeouts)
//!   and `server.ping_interval_ms`, `server.idle_timeout_ms`: for connections made from then
//!   on, and at the next use of each for the counts (`max_subscriptions`, ...).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::{
    Config, ServerError,
    security::{auth::Verifier, permissions::Permissions},
    session::sessions::Sessions,
};

/// The settings a reload puts in force: a section (`auth`) or one key of one (`server.api_key`).
pub const RELOADABLE: &[&str] = &[
    "auth",
    "upstream.allow",
    "upstream.routes",
    "upstream.timeout_ms",
    "upstream.max_in_flight_per_connection",
    "server.api_key",
    "server.allowed_origins",
    "server.ping_interval_ms",
    "server.idle_timeout_ms",
    "server.drain_ms",
    "limits.max_subscriptions",
    "limits.max_patterns_per_connection",
    "limits.max_presence_list",
    "limits.outbound_queue",
    "limits.outbound_queue_bytes",
    "limits.messages_per_second",
    "limits.message_burst",
    "limits.rate_limit_close_after",
    "limits.rate_limit_window_ms",
    "limits.handshake_timeout_ms",
    "limits.http_body_timeout_ms",
    "limits.auth_failures_per_connection",
];

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings now in force with their new values (`limits.outbound_queue`, `auth.rules`).
    pub applied: Vec<String>,
    /// Settings that differ but need a restart; they keep the values the server started with.
    pub not_applied: Vec<String>,
}

/// Checks `new` and puts what may change in force; see the module documentation.
pub(crate) fn reload(sessions: &Sessions, new: Config) -> Result<Reloaded, ServerError> {
    new.validate()?;
    let old = sessions.config.load_full();
    let (old_settings, new_settings) = (settings(&old)?, settings(&new)?);
    let mut reloaded = Reloaded::default();
    let mut merged = old_settings.clone();
    let names = old_settings.keys().chain(
        new_settings
            .keys()
            .filter(|k| !old_settings.contains_key(*k)),
    );
    for name in names {
        let (before, after) = (old_settings.get(name), new_settings.get(name));
        if before == after {
            continue;
        }
        if !is_reloadable(name) {
            reloaded.not_applied.push(name.clone());
            continue;
        }
        reloaded.applied.push(name.clone());
        match after {
            Some(value) => merged.insert(name.clone(), value.clone()),
            None => merged.remove(name),
        };
    }
    let merged = config_of(merged)?;
    // The new file was valid alone; what runs is the old settings with the new ones that can
    // change, which must be valid together too (a key removed beside a listener kept, say).
    merged.validate()?;
    let verifier = Verifier::new(&merged.auth).map_err(ServerError::Config)?;
    let permissions = Permissions::new(&merged.auth).map_err(ServerError::Config)?;
    sessions
        .upstream
        .replace(&merged.upstream)
        .map_err(ServerError::Config)?;
    sessions.security.replace(verifier, permissions);
    sessions.config.store(Arc::new(merged));
    // Names only: values may be secrets.
    if !reloaded.applied.is_empty() {
        tracing::info!(applied = ?reloaded.applied, "reload: settings now in force");
    }
    if !reloaded.not_applied.is_empty() {
        tracing::warn!(
            not_applied = ?reloaded.not_applied,
            "reload: these settings changed but need a restart; the values the server started with stay"
        );
    }
    if reloaded == Reloaded::default() {
        tracing::info!("reload: no setting changed");
    }
    Ok(reloaded)
}

fn is_reloadable(name: &str) -> bool {
    RELOADABLE.iter().any(|reloadable| {
        name == *reloadable
            || name
                .strip_prefix(reloadable)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The settings of `config` by name: each key of a section (`limits.outbound_queue`), and each
/// top-level setting that is not a section of keys (`gateway`, `channels`) whole.
fn settings(config: &Config) -> Result<Map<String, Value>, ServerError> {
    let Value::Object(sections) = serde_json::to_value(config).map_err(unreadable)? else {
        return Err(ServerError::Config(
            "the configuration is not a table".into(),
        ));
    };
    let mut settings = Map::new();
    for (section, value) in sections {
        match value {
            Value::Object(keys) => {
                for (key, value) in keys {
                    settings.insert(format!("{section}.{key}"), value);
                }
            }
            value => {
                settings.insert(section, value);
            }
        }
    }
    Ok(settings)
}

/// [`settings`] back into a configuration.
fn config_of(settings: Map<String, Value>) -> Result<Config, ServerError> {
    let mut sections = Map::new();
    for (name, value) in settings {
        match name.split_once('.') {
            Some((section, key)) => {
                let section = sections
                    .entry(section.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(keys) = section {
                    keys.insert(key.to_owned(), value);
                }
            }
            None => {
                sections.insert(name, value);
            }
        }
    }
    serde_json::from_value(Value::Object(sections)).map_err(unreadable)
}

fn unreadable(error: serde_json::Error) -> ServerError {
    ServerError::Config(format!("cannot compare the configurations: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_survives_the_trip_through_its_settings() {
        let mut config = Config::default();
        config.server.api_key = Some("k".repeat(40));
        config.upstream.allow = vec!["http://127.0.0.1:9/".into()];
        config.limits.outbound_queue = 7;
        assert_eq!(config_of(settings(&config).unwrap()).unwrap(), config);
    }

    #[test]
    fn a_section_or_one_of_its_keys_is_reloadable_but_not_a_name_that_merely_starts_alike() {
        assert!(is_reloadable("auth.rules"));
        assert!(is_reloadable("limits.outbound_queue"));
        assert!(is_reloadable("limits.outbound_queue_bytes"));
        assert!(!is_reloadable("limits.max_connections"));
        assert!(!is_reloadable("authx.rules"));
        assert!(!is_reloadable("server.listen"));
        assert!(!is_reloadable("gateway"));
    }
}
