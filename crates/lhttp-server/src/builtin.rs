//! The built-in headers, implemented as the first filters of the chain.

use crate::{Context, Filter, Rejection, channel};

/// Header names the built-ins act on.
pub mod names {
    /// Space-separated channels to subscribe to.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Space-separated channels to unsubscribe from.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// Space-separated channels to publish the message to.
    pub const PUBLISH: &str = "publish";
    /// `METHOD URL` of an HTTP back end to call.
    pub const UPSTREAM: &str = "upstream";
    /// Byte offsets of the parts of the body.
    pub const MULTIPART: &str = "multipart";
    /// Copied into the answer to a message.
    pub const REQUEST_ID: &str = "request-id";
}

/// Rejects a message whose `multipart` header does not describe its body (400), so that no
/// processor sees a broken multipart message. Parts are computed from the message on demand
/// ([`lhttp_proto::Message::parts`]) and so belong to that message only.
pub(crate) struct MultipartCheck;

impl Filter for MultipartCheck {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        match ctx.message().parts() {
            Ok(_) => Ok(()),
            Err(e) => Err(Rejection::bad_request(e.to_string())),
        }
    }
}

/// Refuses the `upstream` header (403): the server calls no HTTP back end that its operator has
/// not allowed, and this version has no allowance configured.
pub(crate) struct UpstreamGuard;

impl Filter for UpstreamGuard {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        if ctx.message().headers().contains(names::UPSTREAM) {
            return Err(Rejection::forbidden(
                "upstream calls are not allowed on this server",
            ));
        }
        Ok(())
    }
}

/// `subscribe` and `unsubscribe` before the processor; `publish` after it.
///
/// Within one message, subscribe runs before unsubscribe, and both before publish, so a message
/// that subscribes and publishes to the same channel is delivered to its sender too. Every
/// channel list is checked before anything changes: one invalid name rejects the message whole.
pub(crate) struct PubSub;

impl Filter for PubSub {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let headers = ctx.message().headers();
        let subscribe = channel::parse_list(headers.get_all(names::SUBSCRIBE))?;
        let unsubscribe = channel::parse_list(headers.get_all(names::UNSUBSCRIBE))?;
        channel::parse_list(headers.get_all(names::PUBLISH))?;
        let acts = headers.contains(names::SUBSCRIBE)
            || headers.contains(names::UNSUBSCRIBE)
            || headers.contains(names::PUBLISH);
        // The lists borrow the message; own them before the connection is borrowed mutably.
        let subscribe: Vec<String> = subscribe.into_iter().map(str::to_owned).collect();
        let unsubscribe: Vec<String> = unsubscribe.into_iter().map(str::to_owned).collect();
        let connection = ctx.connection_mut();
        connection.subscribe(subscribe.iter().map(String::as_str))?;
        for name in &unsubscribe {
            connection.unsubscribe(name);
        }
        if acts {
            ctx.set_handled();
        }
        Ok(())
    }

    fn after(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        if ctx.message().headers().contains(names::PUBLISH) {
            ctx.server().publish(ctx.message())?;
        }
        Ok(())
    }
}
