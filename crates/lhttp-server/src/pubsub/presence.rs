//! [`Presence`]: who is subscribed to the channels whose `[[channels]]` block sets `presence`.
//!
//! A member is a connection subscribed to a presence channel by its own name. Joins and leaves
//! are rare next to publishes, so one mutex guards every room: a publish never touches it, and
//! a query holds it for the time it takes to copy at most `limits.max_presence_list` members.
//! Bounded by `limits.max_presence_members` over all rooms (each member's `info` by
//! `limits.max_presence_info` bytes, its `user` by the token size), so what clients can make
//! the server hold here is bounded in count and in bytes.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use lhttp_proto::{Message, names, pattern::Pattern};
use serde::Serialize;

use crate::config::ChannelOptions;

/// One member of a room, as lists show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Member {
    /// The connection's random client id.
    pub(crate) client: Box<str>,
    /// The authenticated user, empty without one.
    pub(crate) user: Box<str>,
    /// What the client set with `presence-info` when it subscribed.
    pub(crate) info: Box<str>,
}

/// What a presence query returns.
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) count: usize,
    pub(crate) members: Vec<Member>,
}

/// The presence of every channel that has it.
#[derive(Debug)]
pub(crate) struct Presence {
    /// (pattern, join_leave) of each `[[channels]]` block with `presence`, in config order: the
    /// first that matches decides.
    rules: Vec<(Pattern, bool)>,
    /// `limits.max_presence_members`.
    max_members: usize,
    rooms: Mutex<Rooms>,
}

#[derive(Debug, Default)]
struct Rooms {
    /// Channel -> client id -> member. A room exists only while it has members.
    rooms: HashMap<Box<str>, HashMap<Box<str>, Member>>,
    /// Members over all rooms.
    total: usize,
}

/// A join that did not happen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.max_presence_members` is reached.
    Full,
}

impl Presence {
    /// The presence of the channels `channels` give it; `None` when no block sets `presence`.
    pub(crate) fn new(
        channels: &[ChannelOptions],
        max_members: usize,
    ) -> Result<Option<Presence>, String> {
        let rules = channels
            .iter()
            .filter(|c| c.presence)
            .map(|c| {
                Pattern::parse(&c.pattern)
                    .map(|p| (p, c.join_leave))
                    .map_err(|e| format!("channels.pattern {:?}: {e}", c.pattern))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Ok(None);
        }
        Ok(Some(Presence {
            rules,
            max_members,
            rooms: Mutex::default(),
        }))
    }

    /// `Some(join_leave)` when `channel` has presence.
    pub(crate) fn rule(&self, channel: &str) -> Option<bool> {
        if lhttp_proto::channel::is_inbox(channel) {
            return None;
        }
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(channel))
            .map(|&(_, join_leave)| join_leave)
    }

    /// True when `more` members more would still fit.
    pub(crate) fn has_room_for(&self, more: usize) -> bool {
        self.lock().total + more <= self.max_members
    }

    /// Adds `member` to `channel`'s room. Joining twice changes nothing (and returns `Ok(false)`).
    pub(crate) fn join(&self, channel: &str, member: Member) -> Result<bool, Refused> {
        let mut rooms = self.lock();
        if rooms.total >= self.max_members {
            return Err(Refused::Full);
        }
        let room = rooms.rooms.entry(channel.into()).or_default();
        if room.contains_key(&member.client) {
            return Ok(false);
        }
        room.insert(member.client.clone(), member);
        rooms.total += 1;
        Ok(true)
    }

    /// Removes client `client` from `channel`'s room; returns the member it was.
    pub(crate) fn leave(&self, channel: &str, client: &str) -> Option<Member> {
        let mut rooms = self.lock();
        let room = rooms.rooms.get_mut(channel)?;
        let member = room.remove(client)?;
        if room.is_empty() {
            rooms.rooms.remove(channel);
        }
        rooms.total -= 1;
        Some(member)
    }

    /// The member count of `channel` and at most `limit` of its members.
    pub(crate) fn list(&self, channel: &str, limit: usize) -> Listing {
        let rooms = self.lock();
        let Some(room) = rooms.rooms.get(channel) else {
            return Listing {
                count: 0,
                members: Vec::new(),
            };
        };
        Listing {
            count: room.len(),
            members: room.values().take(limit).cloned().collect(),
        }
    }

    /// Members over all rooms.
    pub(crate) fn member_count(&self) -> usize {
        self.lock().total
    }

    /// Rooms with members.
    pub(crate) fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `join` or `leave` message subscribers of `channel` get for `member`.
pub(crate) fn announcement(command: &'static str, channel: &str, member: &Member) -> Message {
    Message::builder(command)
        .header(names::PUBLISH, channel.to_owned())
        .header(names::CLIENT, member.client.to_string())
        .header(names::USER, member.user.to_string())
        .body(member.info.as_bytes().to_vec())
        .build()
        .expect("channel names, client ids and users are valid header values")
}

/// The answer to a presence query: the listing, as the `presence` message of docs/protocol.md.
pub(crate) fn answer(
    channel: &str,
    listing: &Listing,
    asker: &str,
    request_id: Option<&str>,
) -> Message {
    let body = serde_json::to_vec(&listing.members).expect("members serialize");
    let mut answer = Message::builder(names::command::PRESENCE)
        .header(names::CHANNEL, channel.to_owned())
        .header(names::COUNT, listing.count.to_string())
        .header(names::LISTED, listing.members.len().to_string())
        .header(names::CLIENT, asker.to_owned());
    if let Some(id) = request_id {
        answer = answer.header(names::REQUEST_ID, id.to_owned());
    }
    answer.body(body).build().expect("a valid presence answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(max: usize) -> Presence {
        let block = ChannelOptions {
            pattern: "room.*".into(),
            presence: true,
            ..ChannelOptions::default()
        };
        Presence::new(&[block], max).unwrap().unwrap()
    }

    fn member(client: &str) -> Member {
        Member {
            client: client.into(),
            user: "".into(),
            info: "".into(),
        }
    }

    #[test]
    fn rooms_count_their_members_and_forget_them_when_they_leave() {
        let p = presence(10);
        assert_eq!(p.rule("room.a"), Some(false));
        assert_eq!(p.rule("other"), None);
        assert_eq!(p.join("room.a", member("1")), Ok(true));
        assert_eq!(p.join("room.a", member("1")), Ok(false));
        assert_eq!(p.join("room.a", member("2")), Ok(true));
        assert_eq!(p.list("room.a", 1).count, 2);
        assert_eq!(p.list("room.a", 1).members.len(), 1);
        assert!(p.leave("room.a", "1").is_some());
        assert!(p.leave("room.a", "1").is_none());
        assert!(p.leave("room.a", "2").is_some());
        assert_eq!((p.member_count(), p.room_count()), (0, 0));
    }

    #[test]
    fn the_member_limit_holds_over_every_room() {
        let p = presence(2);
        p.join("room.a", member("1")).unwrap();
        p.join("room.b", member("1")).unwrap();
        assert!(!p.has_room_for(1));
        assert_eq!(p.join("room.c", member("2")), Err(Refused::Full));
        p.leave("room.a", "1");
        assert_eq!(p.join("room.c", member("2")), Ok(true));
    }
}
