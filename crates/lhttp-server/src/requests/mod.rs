//! Work that expects an answer: inboxes and requests with exactly one terminal answer
//! ([`inbox`]), queue groups ([`queue`]), the HTTP gateway that turns HTTP requests into
//! requests to a group ([`gateway`]), and calls to HTTP back ends ([`upstream`]).

pub(crate) mod gateway;
pub(crate) mod inbox;
pub(crate) mod queue;
pub mod upstream;
