//! `POST /publish`: an lhttp message as the request body is published to its `publish`
//! channels; or, with `Content-Type: application/json`, the message described as JSON
//! ([`JsonMessage`]). 200 `{"channels":N,"deliveries":M}`; 400 not a message or no channel;
//! 401 / 403 refused (see [`refusal`]); 413 too large; 408 body not complete within
//! `limits.http_body_timeout_ms`.
//!
//! This is the one HTTP route on a hot path (publishing from PHP, Python, curl...), so the
//! accept loop calls [`serve`] directly for `POST /publish` instead of going through the
//! axum router: routing, the upgrade middleware, boxed bodies and futures, and the peer
//! address as a request extension cost more instructions than the publish itself. The
//! router keeps the route (through [`crate::http`]) for everything the shortcut does not
//! take, so both answer alike.

use std::{error::Error, net::SocketAddr, sync::Arc};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Body,
    header::{self, HeaderValue},
};
use lhttp_proto::Message;

use crate::{
    ServerHandle,
    http::origin::{Site, listed},
    metrics::add,
    pubsub::publish::PublishReport,
    session::sessions::Sessions,
};

/// The answer type of [`serve`]: a complete body, never boxed.
pub(crate) type Answer = Response<Full<Bytes>>;

/// Serves one `POST /publish` from `peer` (None when the address is unknown, which counts as
/// not loopback).
pub(crate) async fn serve<B>(
    shared: Arc<Sessions>,
    peer: Option<SocketAddr>,
    site: Site,
    request: Request<B>,
) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    add(&shared.metrics.http_publish_requests, 1);
    if let Some(refused) = refusal(&shared, peer, site, &request, "POST /publish") {
        return refused;
    }
    let max = shared.config().limits.max_message_size;
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return too_large();
    }
    let reading = read_body(request.into_body(), max);
    tokio::pin!(reading);
    // A body that came with its head (the usual case) is read without arming a timer: the
    // timer only matters to a client that sends its body slowly (or never), and registering
    // one costs as much as parsing the message.
    let read = match reading.as_mut().now_or_never() {
        Some(read) => read,
        None => {
            match tokio::time::timeout(shared.config().limits.http_body_timeout(), reading).await {
                Ok(read) => read,
                Err(_) => {
                    add(&shared.metrics.http_body_timeouts, 1);
                    return json_error(408, "the request body did not arrive in time");
                }
            }
        }
    };
    let body = match read {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Broken) => return json_error(400, "could not read the request body"),
    };
    let message = if json {
        match JsonMessage::to_message(&body) {
            Ok(message) => message,
            Err(reason) => return json_error(400, &reason),
        }
    } else {
        match Message::parse_with(body, &shared.parser_limits) {
            Ok(message) => message,
            Err(error) => return json_error(error.status(), &error.to_string()),
        }
    };
    match ServerHandle::new(shared).publish(&message) {
        Ok(report) => json_answer(StatusCode::OK, report_json(&report)),
        Err(rejection) => json_error(rejection.status(), rejection.reason()),
    }
}

/// A message to publish, as JSON: what a program that speaks JSON rather than the lhttp text
/// sends to `POST /publish` with `Content-Type: application/json`:
///
/// ```json
/// {"channel": "chatroom", "command": "chat", "headers": {"nick": "ann"}, "data": "hello"}
/// ```
///
/// `channel` or `channels` (a list) names where it goes; `command` is `chat` when left out;
/// `headers` is an object or a list of `[name, value]` pairs (kept in order); `data` is the
/// body, as text. Routing headers (`publish`, `subscribe`, `unsubscribe`, `upstream`,
/// `reply-to`) cannot be given as headers: 400.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMessage {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    headers: Option<JsonHeaders>,
    #[serde(default)]
    data: String,
}

/// `headers` of a [`JsonMessage`].
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonHeaders {
    Pairs(Vec<(String, String)>),
    Object(std::collections::BTreeMap<String, String>),
}

impl JsonMessage {
    /// The message `body` describes, or why it does not.
    fn to_message(body: &[u8]) -> Result<Message, String> {
        let described: JsonMessage = serde_json::from_slice(body).map_err(|e| {
            format!("not a JSON message ({{\"channel\", \"command\", \"headers\", \"data\"}}): {e}")
        })?;
        let mut channels = described.channels;
        channels.extend(described.channel);
        if channels.is_empty() {
            return Err("a JSON message needs \"channel\" or \"channels\"".into());
        }
        let mut builder = Message::builder(described.command.unwrap_or_else(|| "chat".into()))
            .header(lhttp_proto::names::PUBLISH, channels.join(" "));
        let headers = match described.headers {
            None => Vec::new(),
            Some(JsonHeaders::Pairs(pairs)) => pairs,
            Some(JsonHeaders::Object(object)) => object.into_iter().collect(),
        };
        for (name, value) in headers {
            if ROUTING.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
                return Err(format!(
                    "header {name:?} cannot be set in a JSON message (channels go in \"channel\" or \"channels\")"
                ));
            }
            builder = builder.header(name, value);
        }
        builder
            .body(described.data)
            .build()
            .map_err(|e| format!("JSON message: {e}"))
    }
}

/// Headers that route a message: not settable through [`JsonMessage::headers`].
const ROUTING: [&str; 5] = [
    lhttp_proto::names::PUBLISH,
    lhttp_proto::names::SUBSCRIBE,
    lhttp_proto::names::UNSUBSCRIBE,
    lhttp_proto::names::UPSTREAM,
    lhttp_proto::names::REPLY_TO,
];

/// `POST /publish` is open to loopback peers when no API key is configured, and to holders of
/// the key (`Authorization: Bearer <key>`) when one is; anyone else gets this answer. Browser
/// pages of other sites are refused either way (403): a page can make its visitor's browser
/// post a text/plain form to any address, lhttpd on the visitor's own loopback included. And
/// without a key, a request must name a loopback host (421): after DNS rebinding, a foreign
/// page's requests come from loopback too, but name the page's own host. The server API
/// (`/server/`) is guarded alike; `what` names the route in the refusal.
pub(crate) fn refusal<B>(
    shared: &Sessions,
    peer: Option<SocketAddr>,
    site: Site,
    request: &Request<B>,
    what: &str,
) -> Option<Answer> {
    let headers = request.headers();
    let allowed = &shared.config().server.allowed_origins;
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let origin_listed = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| listed(allowed, origin));
    if (cross_site && !origin_listed) || !site.origin_allowed(allowed, headers) {
        return Some(json_error(
            403,
            &format!(
                "{what} does not accept requests from pages of other sites (see server.allowed_origins)"
            ),
        ));
    }
    match &shared.config().server.api_key {
        Some(key) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes())) {
                None
            } else {
                let mut response = json_error(401, "a valid API key is required");
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(response)
            }
        }
        None => {
            let loopback = peer.is_some_and(|peer| peer.ip().is_loopback());
            if !loopback {
                return Some(json_error(
                    403,
                    &format!(
                        "{what} is open to loopback clients only unless server.api_key is set"
                    ),
                ));
            }
            (!site.host_is_local(headers)).then(|| {
                json_error(
                    421,
                    &format!("{what} without server.api_key answers only requests for localhost or a loopback address"),
                )
            })
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads the whole body, refusing more than `max` bytes whatever the client declared (a
/// chunked body declares nothing). A body that arrives in one piece, as small ones do, is
/// kept as it is, without a copy.
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
{
    tokio::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(BodyError::Broken);
        };
        // Trailers carry nothing a message needs.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(BodyError::TooLarge);
        }
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut all = BytesMut::with_capacity(total);
                all.extend_from_slice(head);
                all.extend_from_slice(&data);
                first = None;
                joined = Some(all);
            }
            (_, Some(all)) => all.extend_from_slice(&data),
        }
    }
    Ok(match (first, joined) {
        (_, Some(all)) => all.freeze(),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}

/// The JSON of `report`, as its `Serialize` derive writes it (a test keeps the two equal),
/// without serde's machinery: this answer goes out for every publish.
fn report_json(report: &PublishReport) -> Vec<u8> {
    let mut json = Vec::with_capacity(64);
    json.extend_from_slice(b"{\"channels\":");
    push_decimal(&mut json, report.channels);
    json.extend_from_slice(b",\"deliveries\":");
    push_decimal(&mut json, report.deliveries);
    if report.queued != 0 {
        json.extend_from_slice(b",\"queued\":");
        push_decimal(&mut json, report.queued);
    }
    json.push(b'}');
    json
}

/// Appends `n` in decimal (itoa: no `fmt` machinery on the per-request path).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn too_large() -> Answer {
    json_error(413, "message larger than limits.max_message_size")
}

/// `{"status":<code>,"reason":"..."}` with that status.
pub(crate) fn json_error(status: u16, reason: &str) -> Answer {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let json = serde_json::to_vec(&serde_json::json!({"status": status, "reason": reason}))
        .unwrap_or_default();
    json_answer(code, json)
}

fn json_answer(status: StatusCode, json: Vec<u8>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_json_is_what_serde_writes() {
        for (channels, deliveries, queued) in [(0, 0, 0), (1, 1, 0), (3, 1234567, 2), (9, 10, 0)] {
            let report = PublishReport {
                channels,
                deliveries,
                queued,
            };
            assert_eq!(
                String::from_utf8(report_json(&report)).unwrap(),
                serde_json::to_string(&report).unwrap()
            );
        }
    }
}
