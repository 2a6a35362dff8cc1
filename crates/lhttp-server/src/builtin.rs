//! The built-in headers, implemented as the first filters of the chain.

use lhttp_proto::Message;

use crate::{Context, Filter, Rejection, channel, metrics::add, upstream};

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

/// The `upstream` header: checked before the processor (400 malformed, 403 not allowed, so a
/// refused call refuses the whole message), called after it on a task of its own, once the
/// message has been published. The back end's answer is relayed to the client (see
/// [`crate::upstream`]); it is the one answer to a `request-id`.
pub(crate) struct UpstreamCall;

impl Filter for UpstreamCall {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let Some(value) = ctx.message().header(names::UPSTREAM) else {
            return Ok(());
        };
        ctx.server().shared().upstream.resolve(value)?;
        ctx.set_handled();
        Ok(())
    }

    fn after(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let Some(value) = ctx.message().header(names::UPSTREAM) else {
            return Ok(());
        };
        let server = ctx.server().clone();
        let upstream = &server.shared().upstream;
        let call = upstream.resolve(value)?;
        let per_connection = upstream.per_connection();
        let connection_slot = ctx
            .connection_mut()
            .upstream_slot(per_connection)
            .ok_or_else(|| {
                Rejection::limited("too many upstream calls in flight on this connection")
            })?;
        let server_slot = upstream
            .server_slot()
            .ok_or_else(|| Rejection::unavailable("too many upstream calls in flight"))?;
        let headers = request_headers(ctx);
        let request = ctx.message().clone();
        let client = ctx.connection().handle();
        ctx.defer_reply();
        add(&server.shared().metrics.upstream_calls, 1);
        tokio::spawn(async move {
            let _slots = (connection_slot, server_slot);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let shared = server.shared();
            let result = shared
                .upstream
                .call(&call, request.body().clone(), &headers)
                .await;
            let request_id = request.headers().get_text(names::REQUEST_ID);
            let answer = match result {
                Ok(response) if response.status == 204 => match request_id {
                    // Nothing to relay; a client waiting on its request-id still gets its answer.
                    Some(id) => Message::builder("ok")
                        .header("status", "204")
                        .header(names::REQUEST_ID, id.clone())
                        .build()
                        .ok(),
                    None => None,
                },
                Ok(response) => Some(upstream::relay(&request, response)),
                Err(error) => {
                    tracing::debug!(url = call.url(), %error, "upstream call failed");
                    add(&shared.metrics.upstream_failures, 1);
                    add(&shared.metrics.error_replies, 1);
                    Some(error.rejection().to_message(request_id))
                }
            };
            if let Some(answer) = answer {
                let _ = client.send(&answer);
            }
        });
        Ok(())
    }
}

/// The headers an upstream request carries: a documented set, never the lhttp headers blindly.
fn request_headers(ctx: &Context<'_>) -> Vec<(&'static str, String)> {
    let message = ctx.message();
    let mut headers = vec![
        ("x-lhttp-command", message.command().to_owned()),
        ("x-lhttp-connection", ctx.connection().id().to_string()),
        (
            "x-forwarded-for",
            ctx.connection().peer_addr().ip().to_string(),
        ),
    ];
    if let Some(user) = ctx.connection().user() {
        headers.push(("x-lhttp-user", header_safe(user.id())));
    }
    if let Some(content_type) = message.header("content-type") {
        headers.push(("content-type", content_type.to_owned()));
    }
    if let Some(id) = message.header(names::REQUEST_ID) {
        headers.push(("x-request-id", id.to_owned()));
    }
    if let Ok(channels) = channel::parse_list(message.headers().get_all(names::PUBLISH)) {
        if !channels.is_empty() {
            headers.push(("x-lhttp-channels", channels.join(" ")));
        }
    }
    headers
}

/// A user id as an HTTP header value: printable ASCII as it is, every other byte (and `%`)
/// percent-encoded, so that no id can break the request or be refused by the HTTP client.
fn header_safe(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if (b == b' ' || b.is_ascii_graphic()) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        // Checked now, so that a bad or forbidden publish list refuses the message before it
        // subscribes.
        channel::check_list(headers.get_all(names::PUBLISH))?;
        ctx.connection()
            .check_publish(channel::names(headers.get_all(names::PUBLISH)))?;
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
