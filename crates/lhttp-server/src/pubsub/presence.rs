//! [`Presence`]: who is subscribed to the channels whose `[[channels]]` block sets `presence`.
//!
//! A member is a connection subscribed to a presence channel by its own name. Joins and leaves
//! are rare next to publishes, so one mutex guards every room: a publish never touches it, and
//! a query holds it for the time it takes to copy at most `limits.max_presence_list` members.
//! Bounded by `limits.max_presence_members` over all rooms (each member's `info` by
//! `limits.max_presence_info` bytes, its `user` by the token size), so what clients can make
//! the server hold here is bounded in count and in bytes.
//!
//! In a cluster the rooms also hold the members of other nodes, each node's set kept apart
//! ([`RemoteNode`]) so that a node that stops sending heartbeats can be dropped whole. Every
//! local change gets the next number of this node's sequence, under the lock, so that the
//! announcements leave in that order; another node applies a change only when it is the next
//! one it expects, and otherwise asks for a snapshot (see `broker::presence`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
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
    /// The node the member is connected to; `None` for this one.
    #[serde(skip)]
    pub(crate) node: Option<Arc<str>>,
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
    /// The number of this node's last change.
    seq: u64,
    /// What this node knows of every other node.
    nodes: HashMap<Arc<str>, RemoteNode>,
}

/// A member and the channel it is a member of.
pub(crate) type Placed = (Box<str>, Member);

/// Another node's members, as far as its announcements told.
#[derive(Debug)]
struct RemoteNode {
    /// The number of its last change applied here; `None` until a snapshot came.
    applied: Option<u64>,
    /// When its last heartbeat (or any announcement) came.
    heard: Instant,
    /// When a snapshot was last asked of it.
    asked: Option<Instant>,
    /// (channel, client) of its members.
    members: HashSet<(Box<str>, Box<str>)>,
    /// The parts of a snapshot being received: its number and the members so far.
    incoming: Option<(u64, Vec<Placed>)>,
}

impl RemoteNode {
    fn new(now: Instant) -> RemoteNode {
        RemoteNode {
            applied: None,
            heard: now,
            asked: None,
            members: HashSet::new(),
            incoming: None,
        }
    }
}

/// A change to announce to local subscribers: `join` or `leave`, the channel, the member.
pub(crate) type Change = (&'static str, Box<str>, Member);

/// What a change announced by another node did here.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Applied; a member joined or left (or nothing visible happened).
    Changed(Option<Change>),
    /// Not the change expected next: this node's view of it is stale, ask for a snapshot.
    Resync,
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

    /// Adds local `member` to `channel`'s room. Joining twice changes nothing (and returns
    /// `Ok(false)`). `numbered` gets the change's sequence number, under the lock.
    pub(crate) fn join(
        &self,
        channel: &str,
        member: Member,
        numbered: impl FnOnce(u64, &Member),
    ) -> Result<bool, Refused> {
        let mut rooms = self.lock();
        if !rooms.insert(channel, member.clone(), self.max_members)? {
            return Ok(false);
        }
        rooms.seq += 1;
        numbered(rooms.seq, &member);
        Ok(true)
    }

    /// Removes local client `client` from `channel`'s room; returns the member it was.
    /// `numbered` gets the change's sequence number, under the lock.
    pub(crate) fn leave(
        &self,
        channel: &str,
        client: &str,
        numbered: impl FnOnce(u64),
    ) -> Option<Member> {
        let mut rooms = self.lock();
        let member = rooms.remove(channel, client)?;
        rooms.seq += 1;
        numbered(rooms.seq);
        Some(member)
    }

    /// This node's members, in parts of at most `part` members, each handed to `send` with
    /// the sequence number they are current at and whether it is the last part; under the
    /// lock, so that no change is numbered between the parts.
    pub(crate) fn snapshot(
        &self,
        part: usize,
        mut send: impl FnMut(u64, &[(&str, &Member)], bool),
    ) {
        let rooms = self.lock();
        let local: Vec<(&str, &Member)> = rooms
            .rooms
            .iter()
            .flat_map(|(channel, room)| room.values().map(move |m| (&**channel, m)))
            .filter(|(_, m)| m.node.is_none())
            .collect();
        let mut parts = local.chunks(part.max(1)).peekable();
        if parts.peek().is_none() {
            send(rooms.seq, &[], true);
        }
        while let Some(chunk) = parts.next() {
            send(rooms.seq, chunk, parts.peek().is_none());
        }
    }

    /// Node `node`'s change number `seq`: `member` joined `channel`, or (with `joined`
    /// false) the member with its client id left it.
    pub(crate) fn remote_change(
        &self,
        node: &Arc<str>,
        seq: u64,
        channel: &str,
        joined: bool,
        member: Member,
        now: Instant,
    ) -> Applied {
        let mut rooms = self.lock();
        let view = rooms.heard(node, now);
        if view.incoming.is_some() || view.applied.map(|a| a + 1) != Some(seq) {
            view.incoming = None;
            return Applied::Resync;
        }
        view.applied = Some(seq);
        let key = (Box::<str>::from(channel), member.client.clone());
        if joined {
            let member = Member {
                node: Some(node.clone()),
                ..member
            };
            // Full (counted by the caller) or a client id already present: not listed.
            if rooms.insert(channel, member.clone(), self.max_members) != Ok(true) {
                return Applied::Changed(None);
            }
            rooms.view(node).members.insert(key);
            Applied::Changed(Some((
                lhttp_proto::names::command::JOIN,
                channel.into(),
                member,
            )))
        } else {
            if !rooms.view(node).members.remove(&key) {
                return Applied::Changed(None);
            }
            let left = rooms.remove(channel, &member.client);
            Applied::Changed(left.map(|m| (lhttp_proto::names::command::LEAVE, channel.into(), m)))
        }
    }

    /// A part of node `node`'s snapshot at its change `seq`; once the last part came, its
    /// members replace what this node knew of it. Returns the joins and leaves that makes.
    pub(crate) fn remote_part(
        &self,
        node: &Arc<str>,
        seq: u64,
        members: Vec<Placed>,
        last: bool,
        now: Instant,
    ) -> Vec<Change> {
        let mut rooms = self.lock();
        let view = rooms.heard(node, now);
        let mut incoming = match view.incoming.take() {
            Some((at, parts)) if at == seq => parts,
            _ => Vec::new(),
        };
        incoming.extend(members);
        if !last {
            view.incoming = Some((seq, incoming));
            return Vec::new();
        }
        view.applied = Some(seq);
        let old = std::mem::take(&mut view.members);
        let new: HashSet<(Box<str>, Box<str>)> = incoming
            .iter()
            .map(|(channel, m)| (channel.clone(), m.client.clone()))
            .collect();
        let mut changes = Vec::new();
        for (channel, client) in old.difference(&new) {
            if let Some(member) = rooms.remove(channel, client) {
                changes.push((lhttp_proto::names::command::LEAVE, channel.clone(), member));
            }
        }
        let mut kept = old.intersection(&new).cloned().collect::<HashSet<_>>();
        for (channel, member) in incoming {
            let key = (channel.clone(), member.client.clone());
            if kept.contains(&key) {
                continue;
            }
            let member = Member {
                node: Some(node.clone()),
                ..member
            };
            if rooms.insert(&channel, member.clone(), self.max_members) == Ok(true) {
                kept.insert(key);
                changes.push((lhttp_proto::names::command::JOIN, channel, member));
            }
        }
        rooms.view(node).members = kept;
        changes
    }

    /// Node `node`'s heartbeat at its change `seq`. True when this node should ask it for a
    /// snapshot: it missed changes (or never had one), and did not ask in the last `every`.
    pub(crate) fn remote_beat(
        &self,
        node: &Arc<str>,
        seq: u64,
        now: Instant,
        every: Duration,
    ) -> bool {
        let mut rooms = self.lock();
        let view = rooms.heard(node, now);
        if view.applied == Some(seq) || view.asked.is_some_and(|at| now - at < every) {
            return false;
        }
        view.asked = Some(now);
        true
    }

    /// Forgets the nodes not heard of for `timeout`, with their members; returns the leaves.
    pub(crate) fn expire(&self, now: Instant, timeout: Duration) -> Vec<Change> {
        let mut rooms = self.lock();
        let dead: Vec<Arc<str>> = rooms
            .nodes
            .iter()
            .filter(|(_, view)| now.saturating_duration_since(view.heard) > timeout)
            .map(|(node, _)| node.clone())
            .collect();
        let mut changes = Vec::new();
        for node in dead {
            let Some(view) = rooms.nodes.remove(&node) else {
                continue;
            };
            for (channel, client) in view.members {
                if let Some(member) = rooms.remove(&channel, &client) {
                    changes.push((lhttp_proto::names::command::LEAVE, channel, member));
                }
            }
        }
        changes
    }

    /// True when this node should ask `node` for a snapshot after a change that did not
    /// apply: unless it asked in the last `every` (one snapshot answers many such changes).
    pub(crate) fn should_resync(&self, node: &Arc<str>, now: Instant, every: Duration) -> bool {
        let mut rooms = self.lock();
        let view = rooms.view(node);
        if view.asked.is_some_and(|at| now - at < every) {
            return false;
        }
        view.asked = Some(now);
        true
    }

    /// The number of this node's last change.
    pub(crate) fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// The other nodes this node knows of.
    pub(crate) fn node_count(&self) -> usize {
        self.lock().nodes.len()
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

impl Rooms {
    /// Adds `member` unless its client id is in the room already (`Ok(false)`).
    fn insert(&mut self, channel: &str, member: Member, max: usize) -> Result<bool, Refused> {
        if self.total >= max {
            return Err(Refused::Full);
        }
        let room = self.rooms.entry(channel.into()).or_default();
        if room.contains_key(&member.client) {
            return Ok(false);
        }
        room.insert(member.client.clone(), member);
        self.total += 1;
        Ok(true)
    }

    fn remove(&mut self, channel: &str, client: &str) -> Option<Member> {
        let room = self.rooms.get_mut(channel)?;
        let member = room.remove(client)?;
        if room.is_empty() {
            self.rooms.remove(channel);
        }
        self.total -= 1;
        Some(member)
    }

    fn view(&mut self, node: &Arc<str>) -> &mut RemoteNode {
        self.nodes
            .entry(node.clone())
            .or_insert_with(|| RemoteNode::new(Instant::now()))
    }

    /// The view of `node`, which was just heard of.
    fn heard(&mut self, node: &Arc<str>, now: Instant) -> &mut RemoteNode {
        let view = self
            .nodes
            .entry(node.clone())
            .or_insert_with(|| RemoteNode::new(now));
        view.heard = now;
        view
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
            node: None,
        }
    }

    fn join(p: &Presence, channel: &str, client: &str) -> Result<bool, Refused> {
        p.join(channel, member(client), |_, _| {})
    }

    #[test]
    fn rooms_count_their_members_and_forget_them_when_they_leave() {
        let p = presence(10);
        assert_eq!(p.rule("room.a"), Some(false));
        assert_eq!(p.rule("other"), None);
        assert_eq!(join(&p, "room.a", "1"), Ok(true));
        assert_eq!(join(&p, "room.a", "1"), Ok(false));
        assert_eq!(join(&p, "room.a", "2"), Ok(true));
        assert_eq!(p.list("room.a", 1).count, 2);
        assert_eq!(p.list("room.a", 1).members.len(), 1);
        assert!(p.leave("room.a", "1", |_| {}).is_some());
        assert!(p.leave("room.a", "1", |_| {}).is_none());
        assert!(p.leave("room.a", "2", |_| {}).is_some());
        assert_eq!((p.member_count(), p.room_count()), (0, 0));
    }

    #[test]
    fn the_member_limit_holds_over_every_room() {
        let p = presence(2);
        join(&p, "room.a", "1").unwrap();
        join(&p, "room.b", "1").unwrap();
        assert!(!p.has_room_for(1));
        assert_eq!(join(&p, "room.c", "2"), Err(Refused::Full));
        p.leave("room.a", "1", |_| {});
        assert_eq!(join(&p, "room.c", "2"), Ok(true));
    }

    #[test]
    fn another_nodes_changes_apply_in_order_and_a_missed_one_asks_for_a_snapshot() {
        let p = presence(100);
        let node: Arc<str> = "b".into();
        let now = Instant::now();
        let every = Duration::from_secs(1);
        // Unknown node: its first heartbeat asks for a snapshot, once per interval.
        assert!(p.remote_beat(&node, 3, now, every));
        assert!(!p.remote_beat(&node, 3, now, every));
        let changes = p.remote_part(&node, 3, vec![("room.a".into(), member("x"))], false, now);
        assert!(changes.is_empty());
        let changes = p.remote_part(&node, 3, vec![("room.a".into(), member("y"))], true, now);
        assert_eq!(changes.len(), 2);
        assert_eq!(p.list("room.a", 10).count, 2);
        // The next change applies; one that skips a number does not.
        let applied = p.remote_change(&node, 4, "room.a", false, member("x"), now);
        assert!(
            matches!(applied, Applied::Changed(Some(("leave", _, _)))),
            "{applied:?}"
        );
        let skipped = p.remote_change(&node, 6, "room.a", true, member("z"), now);
        assert!(matches!(skipped, Applied::Resync));
        assert_eq!(p.list("room.a", 10).count, 1);
        // A snapshot replaces the node's members: y left, z joined.
        let changes = p.remote_part(&node, 6, vec![("room.a".into(), member("z"))], true, now);
        let mut seen: Vec<_> = changes
            .iter()
            .map(|(c, _, m)| (*c, m.client.to_string()))
            .collect();
        seen.sort();
        assert_eq!(seen, [("join", "z".into()), ("leave", "y".into())]);
        // A node not heard of for the timeout leaves with its members; local ones stay.
        join(&p, "room.a", "local").unwrap();
        assert!(p.expire(now + every, every * 2).is_empty());
        let gone = p.expire(now + every * 3, every * 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(p.list("room.a", 10).count, 1);
        assert_eq!(p.node_count(), 0);
    }
}
