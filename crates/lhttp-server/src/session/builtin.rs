//! The built-in headers, implemented as the first filters of the chain.

use lhttp_proto::{Headers, Message};

use crate::{
    Context, Filter, Rejection,
    metrics::add,
    pubsub::channel::{self, PublishList},
    pubsub::history::Want,
    requests::inbox,
    requests::queue::Publisher,
    requests::upstream,
};

/// Header names the built-ins act on.
pub use lhttp_proto::names;

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
/// [`crate::requests::upstream`]); it is the one answer to a `request-id`.
pub(crate) struct UpstreamCall;

impl Filter for UpstreamCall {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let Some(value) = ctx.message().header(names::UPSTREAM) else {
            return Ok(());
        };
        ctx.server().sessions().upstream.resolve(value)?;
        ctx.set_handled();
        Ok(())
    }

    fn after(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        let Some(value) = ctx.message().header(names::UPSTREAM) else {
            return Ok(());
        };
        let server = ctx.server().clone();
        let upstream = &server.sessions().upstream;
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
        add(&server.sessions().metrics.upstream_calls, 1);
        tokio::spawn(async move {
            let _slots = (connection_slot, server_slot);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let shared = server.sessions();
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
    ];
    if let Some(ip) = ctx.connection().peer().ip() {
        headers.push(("x-forwarded-for", ip.to_string()));
    }
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

/// `subscribe` and `unsubscribe` before the processor; `publish` after it. With them, the
/// headers of requests and queue groups (see [`crate::requests::inbox`] and [`crate::requests::queue`]):
/// `queue`/`credit` make a subscribe join a queue group, `drain` leaves one gracefully, `ack`
/// acknowledges deliveries, `reply-to` makes a publish a request, and the `inbox` command
/// answers with the connection's inbox address.
///
/// Within one message, subscribe runs before unsubscribe, and both before publish, so a message
/// that subscribes and publishes to the same channel is delivered to its sender too. Every
/// channel list is checked before anything changes: one invalid name rejects the message whole.
pub(crate) struct PubSub;

/// What a subscribe or a history read asks for: `since` (with `epoch`) or `recent`; `None`
/// when it names neither. 400 for a value that is not a number, `since` without `epoch`, or
/// both.
fn want(headers: &Headers) -> Result<Option<Want>, Rejection> {
    let number = |name: &str, value: &str| {
        value.parse::<u64>().map_err(|_| {
            Rejection::bad_request(format!("{name} must be a whole number, not {value:?}"))
        })
    };
    match (headers.get(names::SINCE), headers.get(names::RECENT)) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Rejection::bad_request(
            "since and recent exclude each other",
        )),
        (Some(since), None) => {
            let epoch = headers.get(names::EPOCH).ok_or_else(|| {
                Rejection::bad_request("since needs the epoch its offset belongs to")
            })?;
            Ok(Some(Want::Since {
                offset: number(names::SINCE, since)?,
                epoch: epoch.to_owned(),
            }))
        }
        (None, Some(recent)) => {
            let n = number(names::RECENT, recent)?;
            Ok(Some(Want::Recent(usize::try_from(n).unwrap_or(usize::MAX))))
        }
    }
}

/// The command that asks for the connection's inbox address.
const INBOX_COMMAND: &str = "inbox";

/// Headers that make [`PubSub::before`] change the connection's subscriptions or queue-group
/// membership, or make a publish a request.
const CONNECTION_HEADERS: [&str; 7] = [
    names::SUBSCRIBE,
    names::UNSUBSCRIBE,
    names::QUEUE,
    names::CREDIT,
    names::DRAIN,
    names::ACK,
    names::REPLY_TO,
];

/// True when no header of `message` acts on the connection: then only its `publish` list
/// needs checking. Most messages are plain publishes; one pass over the headers spares them
/// a dozen lookups.
fn publishes_only(message: &Message) -> bool {
    message.command() != INBOX_COMMAND
        && message.command() != names::command::HISTORY
        && message.command() != names::command::PING
        && message.command() != names::command::PRESENCE
        && message.headers().iter().all(|h| {
            let name = h.name();
            !CONNECTION_HEADERS
                .iter()
                .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
        })
}

impl Filter for PubSub {
    fn before(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        if publishes_only(ctx.message()) {
            let headers = ctx.message().headers();
            match channel::PublishList::of(headers) {
                PublishList::Absent => return Ok(()),
                PublishList::One { name, at } => {
                    channel::check(name)?;
                    ctx.connection().check_publish(std::iter::once(name))?;
                    ctx.set_checked_publish(at);
                }
                PublishList::Other => {
                    channel::check_list(headers.get_all(names::PUBLISH))?;
                    ctx.connection()
                        .check_publish(channel::names(headers.get_all(names::PUBLISH)))?;
                }
            }
            ctx.set_handled();
            return Ok(());
        }
        let headers = ctx.message().headers();
        let subscribe = channel::parse_subscription_list(headers.get_all(names::SUBSCRIBE))?;
        let unsubscribe = channel::parse_subscription_list(headers.get_all(names::UNSUBSCRIBE))?;
        // Checked now, so that a bad or forbidden publish list refuses the message before it
        // subscribes.
        channel::check_list(headers.get_all(names::PUBLISH))?;
        ctx.connection()
            .check_publish(channel::names(headers.get_all(names::PUBLISH)))?;
        let acts = headers.contains(names::SUBSCRIBE)
            || headers.contains(names::UNSUBSCRIBE)
            || headers.contains(names::PUBLISH)
            || headers.contains(names::ACK)
            || headers.contains(names::DRAIN);
        let queue = headers.get(names::QUEUE).map(str::to_owned);
        let credit = credit(ctx)?;
        let drain = channel::parse_list(headers.get_all(names::DRAIN))?;
        if (credit.is_some() || !drain.is_empty()) && queue.is_none() {
            return Err(Rejection::bad_request(
                "credit and drain need a queue header",
            ));
        }
        if headers.contains(names::REPLY_TO) {
            check_request(ctx)?;
        }
        let want = want(headers)?;
        let reads_history = ctx.message().command() == names::command::HISTORY;
        if want.is_some()
            && !reads_history
            && (subscribe.len() != 1 || queue.is_some() || channel::is_pattern(subscribe[0]))
        {
            return Err(Rejection::bad_request(
                "since and recent apply to a subscribe of one channel (not a pattern), without queue",
            ));
        }
        if queue.is_some() && subscribe.iter().any(|c| channel::is_pattern(c)) {
            return Err(Rejection::bad_request(
                "a queue group takes the messages of channels, not of patterns",
            ));
        }
        let history_channel = match reads_history {
            true => {
                let channel = headers.get(names::CHANNEL).ok_or_else(|| {
                    Rejection::bad_request("a history read needs a channel header")
                })?;
                if want.is_none() {
                    return Err(Rejection::bad_request(
                        "a history read needs since (with epoch) or recent",
                    ));
                }
                Some(channel.to_owned())
            }
            false => None,
        };
        let presence_query = presence_query(ctx)?;
        let info = presence_info(ctx)?;
        // The lists borrow the message; own them before the connection is borrowed mutably.
        let own = |list: Vec<&str>| list.into_iter().map(str::to_owned).collect::<Vec<_>>();
        let (subscribe, unsubscribe, drain) = (own(subscribe), own(unsubscribe), own(drain));
        let request_id = ctx.request_id_text().cloned();
        let id = request_id.as_ref().map(|id| id.as_str());
        let connection = ctx.connection_mut();
        match (&queue, &want) {
            (Some(group), _) if !subscribe.is_empty() => {
                let list: Vec<&str> = subscribe.iter().map(String::as_str).collect();
                connection.join_queue(&list, group, credit.unwrap_or(1))?;
            }
            (_, Some(want)) if !subscribe.is_empty() => {
                connection.subscribe_catching_up(&subscribe[0], want, id, &info)?;
            }
            _ => connection.subscribe_with_info(subscribe.iter().map(String::as_str), &info)?,
        }
        if let Some((channel, limit)) = &presence_query {
            connection.read_presence(channel, *limit, id)?;
        }
        if let (Some(channel), Some(want)) = (&history_channel, &want) {
            connection.read_history(channel, want, id)?;
        }
        for name in &unsubscribe {
            if queue.is_none() {
                connection.unsubscribe(name);
            }
            connection.leave_queue(name, queue.as_deref());
        }
        if let (Some(group), false) = (&queue, drain.is_empty()) {
            let list: Vec<&str> = drain.iter().map(String::as_str).collect();
            connection.drain(&list, group, request_id.as_ref())?;
            // `drained` is the answer, once the work in hand is acknowledged.
            ctx.defer_reply();
        }
        if ctx.message().command() == names::command::PING {
            let mut pong = Message::builder(names::command::PONG);
            if let Some(id) = ctx.request_id() {
                pong = pong.header(names::REQUEST_ID, id.to_owned());
            }
            let _ = ctx.reply(&pong.build().expect("a valid pong"));
            ctx.set_handled();
        }
        if ctx.message().command() == INBOX_COMMAND {
            let address = ctx.connection_mut().inbox().address();
            let answer = inbox::inbox_answer(&address, ctx.request_id_text());
            let _ = ctx.reply(&answer);
            ctx.set_handled();
        }
        if want.is_some() || presence_query.is_some() {
            // `subscribed`, `history` or `presence` is the answer, already queued.
            ctx.defer_reply();
            ctx.set_handled();
        }
        if acts {
            ctx.set_handled();
        }
        Ok(())
    }

    fn after(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
        // Queue-group work is charged to the connection that published it.
        let publisher = Publisher::Connection(ctx.connection().id());
        if let Some(channel) = ctx.checked_publish() {
            // Found before the processor and unchanged since: one checked channel, and no
            // `reply-to` or `ack` (it publishes only), so nothing else to look for.
            ctx.server()
                .sessions()
                .broker
                .publish_checked_by(channel, ctx.message(), publisher)?;
            return Ok(());
        }
        if PublishList::of(ctx.message().headers()) != PublishList::Absent {
            if ctx.message().headers().contains(names::REPLY_TO) {
                publish_request(ctx)?;
            } else {
                ctx.server()
                    .sessions()
                    .broker
                    .publish_as(ctx.message(), publisher)?;
            }
        }
        if !ctx.message().headers().contains(names::ACK) {
            return Ok(());
        }
        // After the publish, so that a worker's reply goes out before its next piece of work.
        let acks = ack_ids(ctx)?;
        if !acks.is_empty() {
            ctx.connection_mut().ack(&acks)?;
        }
        Ok(())
    }
}

/// The `credit` header: 1 to `queues.max_credit`.
/// The channel and list limit of a `presence` query; `None` for other commands.
fn presence_query(ctx: &Context<'_>) -> Result<Option<(String, usize)>, Rejection> {
    if ctx.message().command() != names::command::PRESENCE {
        return Ok(None);
    }
    let headers = ctx.message().headers();
    let channel = headers
        .get(names::CHANNEL)
        .ok_or_else(|| Rejection::bad_request("a presence query needs a channel header"))?;
    let max = ctx.server().sessions().config().limits.max_presence_list;
    let limit = match headers.get(names::LIMIT) {
        None => max,
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| Rejection::bad_request("limit must be a number"))?
            .min(max),
    };
    Ok(Some((channel.to_owned(), limit)))
}

/// The `presence-info` of a subscribe (empty without one), within
/// `limits.max_presence_info` bytes.
fn presence_info(ctx: &Context<'_>) -> Result<String, Rejection> {
    let Some(info) = ctx.message().headers().get(names::PRESENCE_INFO) else {
        return Ok(String::new());
    };
    let max = ctx.server().sessions().config().limits.max_presence_info;
    if info.len() > max {
        return Err(Rejection::too_large(format!(
            "presence-info may have at most {max} bytes"
        )));
    }
    Ok(info.to_owned())
}

fn credit(ctx: &Context<'_>) -> Result<Option<usize>, Rejection> {
    let Some(value) = ctx.message().header(names::CREDIT) else {
        return Ok(None);
    };
    let max = ctx.server().sessions().config().queues.max_credit;
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Rejection::bad_request(format!(
            "credit must be a number from 1 to {max}"
        ))),
    }
}

/// The ids of an `ack` header (space-separated).
fn ack_ids(ctx: &Context<'_>) -> Result<Vec<u64>, Rejection> {
    let mut ids = Vec::new();
    for value in ctx.message().headers().get_all(names::ACK) {
        for id in value.split_ascii_whitespace() {
            let id = id
                .parse()
                .map_err(|_| Rejection::bad_request("ack takes delivery ids (numbers)"))?;
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The reply address a message hands on: its `reply-to` names a reply address (one the sender
/// was given with a request), so the message forwards that request rather than starting one.
fn forwarded(message: &Message) -> Option<&str> {
    message
        .header(names::REPLY_TO)
        .filter(|address| inbox::is_reply_address(address))
}

/// What a message with `reply-to` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    /// A new request: the server gives it a reply address.
    New,
    /// A request handed on with the reply address its sender holds.
    Forward,
}

/// A request must say where it goes and how its answer is matched.
fn check_request(ctx: &Context<'_>) -> Result<RequestKind, Rejection> {
    let message = ctx.message();
    if !message.headers().contains(names::PUBLISH) {
        return Err(Rejection::bad_request(
            "a request (reply-to) needs a publish header",
        ));
    }
    if forwarded(message).is_some() {
        // The original request has its id, timeout and requester already.
        return Ok(RequestKind::Forward);
    }
    if ctx.request_id().is_none() {
        return Err(Rejection::bad_request(
            "a request (reply-to) needs a request-id to match its answer",
        ));
    }
    ctx.server()
        .sessions()
        .broker
        .requests
        .timeout_for(message.header(names::TIMEOUT))?;
    Ok(RequestKind::New)
}

/// Publishes a request: the server sets `reply-to` to a fresh reply address of the sender's
/// inbox, and the request then gets exactly one terminal answer (see [`crate::requests::inbox`]).
fn publish_request(ctx: &mut Context<'_>) -> Result<(), Rejection> {
    if check_request(ctx)? == RequestKind::Forward {
        return forward_request(ctx);
    }
    let server = ctx.server().clone();
    let shared = server.sessions();
    let timeout = shared
        .broker
        .requests
        .timeout_for(ctx.message().header(names::TIMEOUT))?;
    let request_id = ctx
        .request_id_text()
        .cloned()
        .expect("checked by check_request");
    let inbox = ctx.connection_mut().inbox();
    let answer_to = inbox::AnswerTo::Connection(ctx.connection().outbox().clone());
    let address = shared.broker.requests.start(
        &inbox,
        request_id,
        timeout,
        answer_to,
        shared.metrics.clone(),
    )?;
    ctx.defer_reply();
    ctx.message_mut()
        .headers_mut()
        .set(names::REPLY_TO, address.clone())
        .expect("a reply address is a valid header value");
    let publisher = Publisher::Connection(ctx.connection().id());
    match server
        .sessions()
        .broker
        .publish_as(ctx.message(), publisher)
    {
        // Other nodes may take it: NATS tells when none subscribes (see `crate::cluster`).
        Ok(report) if report.deliveries + report.queued == 0 && shared.broker.cluster.is_some() => {
            shared
                .broker
                .requests
                .await_remote(&address, report.channels, &shared.metrics);
            Ok(())
        }
        Ok(report) if report.deliveries + report.queued == 0 => {
            shared.broker.requests.fail(
                &address,
                &Rejection::unavailable(
                    "no responders: nobody is subscribed and no queue group took the request",
                ),
                &shared.metrics,
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(rejection) => {
            shared.broker.requests.cancel(&address);
            Err(rejection)
        }
    }
}

/// Hands a request on: the message keeps the reply address its sender was given, so whoever
/// takes it answers the original requester, within the original deadline. The sender learns
/// only whether somebody took it (`ok`, or 503 when nobody did, or 404 when the request has
/// already ended): the answer itself goes to the requester.
fn forward_request(ctx: &mut Context<'_>) -> Result<(), Rejection> {
    let server = ctx.server().clone();
    let requests = &server.sessions().broker.requests;
    let address = forwarded(ctx.message()).expect("checked by the caller");
    // A request of another node cannot be checked here; that node drops answers to one that
    // ended.
    if !requests.may_be_pending(address) {
        return Err(Rejection::new(
            404,
            "the request to forward has already had its answer, or never existed",
        ));
    }
    let report = server
        .sessions()
        .broker
        .publish_as(ctx.message(), Publisher::Connection(ctx.connection().id()))?;
    if report.deliveries + report.queued == 0 && server.sessions().broker.cluster.is_none() {
        return Err(Rejection::unavailable(
            "no responders: nobody is subscribed and no queue group took the forwarded request",
        ));
    }
    Ok(())
}
