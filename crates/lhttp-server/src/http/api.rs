//! The server API: JSON over HTTP for operators and back ends, under `/server/`, with the same
//! key as `POST /publish` (`Authorization: Bearer <server.api_key>`; without a key, loopback
//! clients only) and the same refusal of other sites' pages.
//!
//! - `GET /server/info`: version, node, uptime, what the server holds now, totals since start,
//!   and the cluster's state with its nodes;
//! - `GET /server/channels?prefix=P&limit=N`: channels with local subscribers, with their
//!   subscriber counts;
//! - `GET /server/presence?channel=C&limit=N`: who is in a channel with presence;
//! - `GET /server/history?channel=C&recent=N` (or `since=O&epoch=E`): what a channel keeps;
//! - `POST /server/disconnect` `{"user": "ann"}` or `{"client": "<id>"}`: closes those
//!   connections (4001 "disconnected by the server"; the SDKs do not reconnect), on every node
//!   of a cluster (the count is this node's).
//!
//! Every answer is bounded: lists by `limit` (at most [`MAX_LIST`]), a history read by the
//! limits of a connection's queue (`limits.outbound_queue`, `limits.outbound_queue_bytes`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, Query, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use lhttp_proto::{Message, names};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Channel, ServerHandle,
    broker::nodes,
    http::{origin::Site, publish},
    pubsub::history::Want,
    session::{directory::Target, sessions::Sessions},
    transport::{Outgoing, outbox::Outbox},
};

/// Most entries one list answer holds (channels, presence members).
pub(crate) const MAX_LIST: usize = 10_000;

/// Entries a list answer holds when the request gives no `limit`.
const DEFAULT_LIST: usize = 100;

/// How long a history read waits for a cluster node's mirror of the channel to load.
const HISTORY_WAIT: Duration = Duration::from_secs(5);

/// The `/server/` routes, behind the same check as `POST /publish`.
pub(crate) fn routes(shared: Arc<Sessions>, site: Site) -> Router<Arc<Sessions>> {
    Router::new()
        .route("/server/info", get(info))
        .route("/server/channels", get(channels))
        .route("/server/presence", get(presence))
        .route("/server/history", get(history))
        .route("/server/disconnect", post(disconnect))
        .route_layer(middleware::from_fn_with_state((shared, site), authorized))
}

/// Lets through a request that `POST /publish` would accept from the same client.
async fn authorized(
    State((shared, site)): State<(Arc<Sessions>, Site)>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    match publish::refusal(&shared, peer, site, &request, "the server API") {
        Some(refused) => refused.map(axum::body::Body::new),
        None => next.run(request).await,
    }
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason: String = reason.into();
    (status, Json(json!({"error": reason}))).into_response()
}

async fn info(State(shared): State<Arc<Sessions>>) -> Response {
    let server = ServerHandle::new(shared.clone());
    let cluster = shared.broker.cluster.as_ref().map(|cluster| {
        // This node first, then the others heard of lately, by id.
        let (_, timeout) = cluster.presence_timing;
        let mut nodes = vec![nodes::own_status(
            &shared.broker,
            cluster.node_id(),
            cluster.started,
        )];
        nodes.extend(cluster.nodes.others(timeout));
        json!({
            "connected": cluster.is_connected(),
            "subscriptions": cluster.subscription_count(),
            "nodes": nodes,
        })
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": shared.broker.cluster.as_ref().map(|c| c.node_id()),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "draining": shared.draining.is_cancelled(),
        "users": shared.directory.user_count(),
        "now": server.gauges(),
        "totals": shared.metrics.totals(),
        "cluster": cluster,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

async fn channels(
    State(shared): State<Arc<Sessions>>,
    query: Result<Query<ChannelsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: prefix (text) and limit (a number) only",
        );
    };
    let Some(limit) = list_limit(query.limit) else {
        return limit_too_large();
    };
    let hub = &shared.broker.hub;
    let listed = hub.list(&query.prefix, limit);
    let channels: Vec<Value> = listed
        .iter()
        .map(|(channel, subscribers)| json!({"channel": channel.as_str(), "subscribers": subscribers}))
        .collect();
    Json(json!({
        "count": hub.channel_count(),
        "listed": channels.len(),
        "channels": channels,
    }))
    .into_response()
}

/// `limit` of a list request: [`DEFAULT_LIST`] when absent; `None` above [`MAX_LIST`].
fn list_limit(limit: Option<usize>) -> Option<usize> {
    match limit {
        None => Some(DEFAULT_LIST),
        Some(limit) => (limit <= MAX_LIST).then_some(limit),
    }
}

fn limit_too_large() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("limit is at most {MAX_LIST}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    channel: String,
    limit: Option<usize>,
}

async fn presence(
    State(shared): State<Arc<Sessions>>,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: channel, and limit (a number)",
        );
    };
    let channel = match Channel::new(&query.channel) {
        Ok(channel) => channel,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(limit) = list_limit(query.limit) else {
        return limit_too_large();
    };
    let limit = limit.min(shared.config().limits.max_presence_list);
    let Some(presence) = shared
        .broker
        .presence
        .as_ref()
        .filter(|p| p.rule(channel.as_str()).is_some())
    else {
        return error(StatusCode::NOT_FOUND, "this channel has no presence");
    };
    let listing = presence.list(channel.as_str(), limit);
    Json(json!({
        "channel": channel.as_str(),
        "count": listing.count,
        "listed": listing.members.len(),
        "members": listing.members,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    channel: String,
    recent: Option<usize>,
    since: Option<u64>,
    epoch: Option<String>,
}

async fn history(
    State(shared): State<Arc<Sessions>>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: channel, and recent (a number) or since (an offset) and epoch",
        );
    };
    let want = match (query.recent, query.since, query.epoch) {
        (Some(n), None, None) => Want::Recent(n),
        (None, Some(offset), Some(epoch)) if !epoch.is_empty() => Want::Since { offset, epoch },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give recent=N, or since=OFFSET and epoch=EPOCH",
            );
        }
    };
    let channel = match Channel::new(&query.channel) {
        Ok(channel) => channel,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if crate::requests::inbox::is_inbox(channel.as_str()) {
        return error(StatusCode::FORBIDDEN, "inboxes keep no history");
    }
    // Read as a connection reads it, into a queue of its own with a connection's bounds.
    let limits = &shared.config().limits;
    let (outbox, receiver) = Outbox::new(limits.outbound_queue, limits.outbound_queue_bytes);
    let queued = shared.broker.catch_up(
        &channel,
        &want,
        names::command::HISTORY,
        None,
        None,
        &outbox,
    );
    if queued.is_err() || outbox.is_overflowed() {
        return too_much();
    }
    drop(outbox);
    let Ok(frames) = tokio::time::timeout(HISTORY_WAIT, receiver.take_queued()).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the channel's history did not load in time",
        );
    };
    let mut messages = frames.into_iter().filter_map(|frame| match frame {
        Outgoing::Text(bytes) | Outgoing::Binary(bytes) => Message::parse(bytes).ok(),
        _ => None,
    });
    let Some(answer) = messages.next() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the history",
        );
    };
    let header = |name: &str| answer.headers().get(name);
    let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
    let listed: Vec<Value> = messages.map(|m| message_json(&m)).collect();
    Json(json!({
        "channel": channel.as_str(),
        "epoch": header(names::EPOCH),
        "offset": number(names::OFFSET).unwrap_or(0),
        "recovered": header(names::RECOVERED).map(|v| v == "true"),
        "count": listed.len(),
        "messages": listed,
    }))
    .into_response()
}

fn too_much() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "more history than a connection's queue holds (limits.outbound_queue, limits.outbound_queue_bytes): ask for fewer with recent",
    )
}

/// A kept message as JSON: its offset, command, headers in order as `[name, value]` pairs,
/// and body as text (`"utf8": false` when the body is not UTF-8 and was made readable).
fn message_json(message: &Message) -> Value {
    let headers: Vec<(&str, &str)> = message
        .headers()
        .iter()
        .map(|h| (h.name(), h.value()))
        .collect();
    let offset = message
        .headers()
        .get(names::OFFSET)
        .and_then(|v| v.parse::<u64>().ok());
    let mut json = json!({
        "offset": offset,
        "command": message.command(),
        "headers": headers,
    });
    match std::str::from_utf8(message.body()) {
        Ok(text) => json["data"] = text.into(),
        Err(_) => {
            json["data"] = String::from_utf8_lossy(message.body()).into();
            json["utf8"] = false.into();
        }
    }
    json
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: Option<String>,
    client: Option<String>,
}

async fn disconnect(State(shared): State<Arc<Sessions>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<DisconnectRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "a JSON object with \"user\" or \"client\"",
        );
    };
    let whom = match (request.user, request.client) {
        (Some(user), None) if !user.is_empty() => nodes::Disconnect::User(user),
        (None, Some(client)) if !client.is_empty() => nodes::Disconnect::Client(client),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give \"user\" or \"client\", one of them",
            );
        }
    };
    let disconnected = shared.directory.disconnect(Target::of(&whom));
    tracing::info!(?whom, disconnected, "server API: disconnect");
    // The other nodes of a cluster close theirs when they hear of it; they do not report back.
    nodes::ask_disconnect(&shared.broker, whom).await;
    Json(json!({
        "disconnected": disconnected,
        "cluster": shared.broker.cluster.is_some(),
    }))
    .into_response()
}
