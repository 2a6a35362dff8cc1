//! The HTTP gateway's side among requests: the routes' channels, which only the gateway
//! publishes to and only the routes' queue groups receive, and the inbox its requests are
//! answered through. The HTTP side (turning an HTTP request into a message and the answer into
//! the response) is `http::gateway`.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
};

use crate::{
    GatewayRoute, Rejection,
    requests::inbox::{Inbox, Requests},
};

/// The command of a gateway request.
pub const HTTP_REQUEST: &str = "http-request";

/// The gateway's inbox, opened at the first gateway request, and the channels of its routes.
pub(crate) struct Gateway {
    inbox: std::sync::OnceLock<Arc<Inbox>>,
    /// Channel -> the queue groups of the routes on it. Read-only after build. Requests on
    /// these channels carry HTTP clients' credentials (`http-authorization`, `http-cookie`), so
    /// only the routes' groups receive them, and only the gateway publishes there.
    channels: HashMap<Box<str>, Vec<Box<str>>>,
    next_request: AtomicU64,
}

impl Gateway {
    pub(crate) fn new(routes: &[GatewayRoute]) -> Self {
        let mut channels: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        for route in routes {
            channels
                .entry(route.channel.as_str().into())
                .or_default()
                .push(route.queue.as_str().into());
        }
        Gateway {
            inbox: std::sync::OnceLock::new(),
            channels,
            next_request: AtomicU64::new(1),
        }
    }

    /// Refuses (403) a plain subscription to a gateway channel, and a queue group other than
    /// its routes' (`group`): they would receive HTTP requests no route sends them.
    pub(crate) fn check_subscribe(
        &self,
        channel: &str,
        group: Option<&str>,
    ) -> Result<(), Rejection> {
        let Some(groups) = self.channels.get(channel) else {
            return Ok(());
        };
        match group {
            Some(group) if groups.iter().any(|g| &**g == group) => Ok(()),
            _ => Err(Rejection::forbidden(format!(
                "channel {channel} carries HTTP gateway requests: only its queue group ({}) takes them",
                groups.join(", ")
            ))),
        }
    }

    /// True when some route is configured.
    pub(crate) fn has_channels(&self) -> bool {
        !self.channels.is_empty()
    }

    /// Refuses (403) a client's publish to a gateway channel: workers there trust that what
    /// they receive came from the gateway (method, path, the client's address).
    pub(crate) fn check_publish<'a>(
        &self,
        mut channels: impl Iterator<Item = &'a str>,
    ) -> Result<(), Rejection> {
        match channels.find(|c| self.channels.contains_key(*c)) {
            None => Ok(()),
            Some(channel) => Err(Rejection::forbidden(format!(
                "only the HTTP gateway publishes to channel {channel}"
            ))),
        }
    }

    /// The inbox every gateway request is answered through, opened at the first request
    /// (`max_pending`: `requests.max_pending_gateway`).
    pub(crate) fn inbox(&self, requests: &Requests, max_pending: usize) -> Arc<Inbox> {
        self.inbox
            .get_or_init(|| requests.open_inbox(None, max_pending))
            .clone()
    }

    /// The `request-id` of the next gateway request.
    pub(crate) fn next_request(&self) -> String {
        self.next_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string()
    }
}
