//! Channels and fan-out: channel names ([`channel`]), the subscription table ([`hub`]) and the
//! one encoding of a published message that every subscriber of a channel shares
//! ([`publish`]).

pub(crate) mod channel;
pub(crate) mod hub;
pub(crate) mod publish;
