//! Channels and fan-out: channel names ([`channel`]), the subscription table ([`hub`]), the
//! one encoding of a published message that every subscriber of a channel shares
//! ([`publish`]), the history some channels keep ([`history`]) and who is subscribed to those
//! with presence ([`presence`]).

pub(crate) mod channel;
pub(crate) mod history;
pub(crate) mod hub;
pub(crate) mod presence;
pub(crate) mod publish;
