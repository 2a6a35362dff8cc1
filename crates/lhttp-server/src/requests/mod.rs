//! Work that expects an answer: inboxes and requests with exactly one terminal answer
//! ([`inbox`]), queue groups ([`queue`]), the channels and inbox of the HTTP gateway, which
//! turns HTTP requests into requests to a group ([`gateway`]; its HTTP side is in `http/`),
//! and calls to HTTP back ends ([`upstream`]).

pub(crate) mod gateway;
pub(crate) mod inbox;
pub(crate) mod queue;
pub mod upstream;
