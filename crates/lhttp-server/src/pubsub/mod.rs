//! Channels and fan-out: channel names ([`channel`]), the subscription table ([`hub`]), the
//! one encoding of a published message that every subscriber of a channel shares
//! ([`publish`]), and the history some channels keep ([`history`]).

pub(crate) mod channel;
pub(crate) mod history;
pub(crate) mod hub;
pub(crate) mod publish;
