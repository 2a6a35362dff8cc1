//! [`Directory`]: the open connections by user and by client id, so that the server API can
//! disconnect a user (every connection authenticated as that user) or one client (by the id
//! presence lists show). Only connections with a user or a client id are listed: an anonymous
//! connection that never showed up in presence costs nothing here.

use dashmap::DashMap;

use crate::{
    broker::nodes::Disconnect,
    transport::{ConnectionId, outbox::Outbox},
};

/// What a disconnect aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// Every connection authenticated as this user id.
    User(&'a str),
    /// The connection with this client id (as presence shows it).
    Client(&'a str),
}

impl<'a> Target<'a> {
    /// The target of a disconnect asked across the cluster.
    pub(crate) fn of(whom: &'a Disconnect) -> Self {
        match whom {
            Disconnect::User(user) => Target::User(user),
            Disconnect::Client(client) => Target::Client(client),
        }
    }
}

/// Connections by user id and by client id. Sharded maps: connections of different users
/// register and leave without contending.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// User id -> its connections on this node (a user may hold several: tabs, devices).
    users: DashMap<Box<str>, Vec<(ConnectionId, Outbox)>, foldhash::quality::RandomState>,
    /// Client id -> its connection. Client ids are random (see `Connection::client_id`).
    clients: DashMap<Box<str>, (ConnectionId, Outbox), foldhash::quality::RandomState>,
}

impl Directory {
    /// Lists connection `id` under `user`.
    pub(crate) fn add_user(&self, user: &str, id: ConnectionId, outbox: &Outbox) {
        self.users
            .entry(user.into())
            .or_default()
            .push((id, outbox.clone()));
    }

    /// Removes connection `id` from `user`'s list.
    pub(crate) fn remove_user(&self, user: &str, id: ConnectionId) {
        self.users.remove_if_mut(user, |_, connections| {
            connections.retain(|(listed, _)| *listed != id);
            connections.is_empty()
        });
    }

    /// Lists connection `id` under its client id.
    pub(crate) fn add_client(&self, client: &str, id: ConnectionId, outbox: &Outbox) {
        self.clients.insert(client.into(), (id, outbox.clone()));
    }

    /// Removes client id `client`.
    pub(crate) fn remove_client(&self, client: &str) {
        self.clients.remove(client);
    }

    /// Tells the connections `target` names to close (4001, after what is queued for them);
    /// returns how many.
    pub(crate) fn disconnect(&self, target: Target<'_>) -> usize {
        match target {
            Target::User(user) => self.users.get(user).map_or(0, |connections| {
                for (_, outbox) in connections.iter() {
                    outbox.disconnect();
                }
                connections.len()
            }),
            Target::Client(client) => self.clients.get(client).map_or(0, |entry| {
                entry.1.disconnect();
                1
            }),
        }
    }

    /// Users with at least one connection on this node.
    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
    }
}
