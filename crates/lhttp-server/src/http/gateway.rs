//! The HTTP gateway: HTTP requests under a configured path become requests to a queue group,
//! and a worker's reply becomes the HTTP response.
//!
//! A request to `GET /api/users?id=7` on route `{ path = "/api/", channel = "http.api",
//! queue = "workers" }` is published to `http.api` as
//!
//! ```text
//! LHTTP/1.0 http-request
//! method:GET
//! path:/api/users
//! query:id=7
//! remote-addr:127.0.0.1
//! http-accept:*/*                  (every request header, `http-` + its lowercase name)
//! request-id:<n>
//! reply-to:_inbox.<node>.<replies>.<key>
//! timeout:<ms>
//! publish:http.api
//! ```
//!
//! with the HTTP body as body; `path` is normalised (dot segments resolved, unreserved
//! escapes decoded) and the path as sent, when different, comes in `raw-path`. Only the
//! route's queue group receives it: a plain subscription to the channel, another group there
//! and clients' publishes to it are refused (403), because the request carries the HTTP
//! client's credentials. The worker answers by publishing to the `reply-to` address:
//! `status` (default 200), `http-<name>` headers for the response, and the body. An answer
//! with `partial:true` starts a streamed response; the following ones add to it, and the first
//! without `partial:true` ends it. Replies may come back in any order: each HTTP request has
//! its own reply address. The route's queue group exists while no worker is connected, so a
//! request waits (within its timeout) for a worker to come back: 503 if none joined in time,
//! 504 if workers were busy or did not answer in time.

use lhttp_proto::names;
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::StreamExt;
use lhttp_proto::Message;
use tokio::sync::mpsc;

use crate::{
    GatewayRoute, Rejection,
    broker::Broker,
    metrics::add,
    requests::gateway::HTTP_REQUEST,
    requests::inbox::{AnswerTo, is_partial},
    requests::queue::{Env, Offer, Publisher},
    session::sessions::Sessions,
};

/// Prefix of the lhttp headers that carry HTTP headers, both ways.
const HTTP_HEADER_PREFIX: &str = "http-";

/// Answers (chunks of one streamed response) that may wait for the HTTP connection to take
/// them; a worker that streams faster than the HTTP client reads ends the response.
const ANSWER_QUEUE: usize = 64;

/// Headers that belong to one HTTP connection, not to the request or response they carry.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    ]
    .contains(&name)
}

/// Forgets the request when the HTTP client goes away before its answer.
struct CancelOnDrop {
    broker: Arc<Broker>,
    address: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.broker.requests.cancel(&self.address);
    }
}

/// Serves one HTTP request on `route`.
pub(crate) async fn serve(
    shared: Arc<Sessions>,
    route: Arc<GatewayRoute>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    add(&shared.metrics.gateway_requests, 1);
    let message = match to_message(&shared, &route, peer, request).await {
        Ok(message) => message,
        Err(rejection) => return error_response(&rejection),
    };
    let (answers, mut receiver) = mpsc::channel(ANSWER_QUEUE);
    let inbox = shared.gateway.inbox(
        &shared.broker.requests,
        shared.config().requests.max_pending_gateway,
    );
    let id = shared.gateway.next_request();
    let timeout = Duration::from_millis(route.timeout_ms);
    let address = match shared.broker.requests.start(
        &inbox,
        id.clone().into(),
        timeout,
        AnswerTo::Gateway(answers),
        shared.metrics.clone(),
    ) {
        Ok(address) => address,
        Err(rejection) => return error_response(&rejection),
    };
    let guard = CancelOnDrop {
        broker: shared.broker.clone(),
        address: address.clone(),
    };
    let mut message = message;
    let headers = message.headers_mut();
    let set = [
        (names::REQUEST_ID, id),
        (names::REPLY_TO, address.clone()),
        (names::TIMEOUT, route.timeout_ms.to_string()),
        (names::PUBLISH, route.channel.clone()),
    ];
    if route.at_least_once {
        headers
            .append(names::DELIVERY, "at-least-once")
            .expect("a valid header");
    }
    for (name, value) in set {
        headers
            .append(name, value)
            .expect("generated headers are valid");
    }
    // Only the route's group receives it, from the workers connected to this node: never a
    // plain subscriber, which would read the client's credentials.
    // Its bytes are charged to the HTTP client's address (`queues.max_queued_bytes_per_
    // publisher`): beyond its share it gets 429, beyond the server's budget 503, at once.
    add(&shared.metrics.messages_published, 1);
    match shared.broker.queues.offer_to_group_by(
        &route.channel,
        &route.queue,
        &message,
        Publisher::address(peer.ip()),
        &Env::of(&*shared.broker),
    ) {
        Ok(Offer::Delivered | Offer::Queued) => {}
        Ok(Offer::Refused) => {
            shared.broker.requests.fail(
                &address,
                &Rejection::unavailable("the gateway's queue group is full"),
                &shared.metrics,
            );
        }
        // The guard forgets the request.
        Err(refusal) => return error_response(&refusal.rejection()),
    }
    let Some(first) = receiver.recv().await else {
        return error_response(&Rejection::new(502, "the request ended without an answer"));
    };
    response(first, receiver, guard)
}

/// The lhttp message for an HTTP request (without the routing headers).
async fn to_message(
    shared: &Sessions,
    route: &GatewayRoute,
    peer: SocketAddr,
    request: Request,
) -> Result<Message, Rejection> {
    let limits = &shared.config().limits;
    let (parts, body) = request.into_parts();
    // Room for the headers the gateway adds itself.
    if parts.headers.len() + 10 > limits.max_headers {
        return Err(Rejection::new(431, "too many request headers"));
    }
    let raw_path = parts.uri.path();
    let path = normalise_path(raw_path)?;
    // Routed on the raw path, which may climb out of the route (`/api/../admin`).
    if !path.starts_with(&route.path) {
        return Err(Rejection::new(404, "no gateway route for this path"));
    }
    let mut builder =
        Message::builder(HTTP_REQUEST).header("method", parts.method.as_str().to_owned());
    if path != raw_path {
        builder = builder.header("raw-path", raw_path.to_owned());
    }
    let mut builder = builder.header("path", path);
    if let Some(query) = parts.uri.query() {
        builder = builder.header("query", query.to_owned());
    }
    builder = builder.header("remote-addr", peer.ip().to_string());
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name.as_str()) {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| Rejection::bad_request(format!("header {name} is not plain text")))?;
        builder = builder.header(format!("{HTTP_HEADER_PREFIX}{name}"), value.to_owned());
    }
    let body = axum::body::to_bytes(body, limits.max_message_size)
        .await
        .map_err(|_| Rejection::too_large("request body larger than limits.max_message_size"))?;
    let message = builder
        .body(body)
        .build()
        .map_err(|e| Rejection::bad_request(e.to_string()))?;
    if message.encoded_len() > limits.max_message_size {
        return Err(Rejection::too_large(
            "request larger than limits.max_message_size",
        ));
    }
    Ok(message)
}

/// The path a worker may route on safely: percent-escapes of unreserved characters decoded
/// (`%2e` is `.`, `%7E` is `~`), other escapes kept with upper-case digits (`%2F` stays an
/// escaped slash, not a separator), repeated slashes merged, and `.` and `..` segments
/// resolved (RFC 3986, 5.2.4 and 6.2.2), never above the root. 400 for a broken escape.
fn normalise_path(raw: &str) -> Result<String, Rejection> {
    let bad = || Rejection::bad_request("malformed percent-escape in the request path");
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for segment in raw.split('/').skip(1) {
        let mut decoded = String::with_capacity(segment.len());
        let mut bytes = segment.bytes();
        while let Some(b) = bytes.next() {
            if b != b'%' {
                decoded.push(char::from(b));
                continue;
            }
            let (Some(hi), Some(lo)) = (bytes.next(), bytes.next()) else {
                return Err(bad());
            };
            let hex = |d: u8| char::from(d).to_digit(16).ok_or_else(bad);
            let value = u8::try_from(hex(hi)? * 16 + hex(lo)?).map_err(|_| bad())?;
            if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(value));
            } else {
                decoded.push_str(&format!("%{value:02X}"));
            }
        }
        trailing_slash = matches!(decoded.as_str(), "" | "." | "..");
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(decoded),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The HTTP response for the first answer; later answers of a streamed one follow as body
/// chunks.
fn response(first: Message, mut rest: mpsc::Receiver<Message>, guard: CancelOnDrop) -> Response {
    if first.command() == "error" && is_server_error(&first) {
        let status = first
            .header("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        let reason = first.header("reason").unwrap_or_default();
        return error_response(&Rejection::new(status, reason.to_owned()));
    }
    let status = match first.header("status") {
        None => StatusCode::OK,
        Some(value) => match value
            .parse::<u16>()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            Some(status) => status,
            None => {
                return error_response(&Rejection::new(
                    502,
                    "the worker answered with an invalid status",
                ));
            }
        },
    };
    let mut headers = HeaderMap::new();
    for header in first.headers() {
        let Some(name) = header
            .name()
            .get(..HTTP_HEADER_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(HTTP_HEADER_PREFIX))
            .map(|_| &header.name()[HTTP_HEADER_PREFIX.len()..])
        else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if is_hop_by_hop(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(header.value()),
        ) {
            headers.append(name, value);
        }
    }
    let partial = is_partial(&first);
    let first_body = first.body().clone();
    let body = if partial {
        // The rest of the answers, until the final one; an error (a timeout, the worker gone)
        // ends the stream with an error, which cuts the response short.
        let chunks =
            futures_util::stream::unfold((Some(rest), guard), |(rest, guard)| async move {
                let mut rest = rest?;
                let message = rest.recv().await?;
                if message.command() == "error" && is_server_error(&message) {
                    return Some((
                        Err(std::io::Error::other(
                            "the streamed answer ended with an error",
                        )),
                        (None, guard),
                    ));
                }
                let more = is_partial(&message);
                let next = if more { Some(rest) } else { None };
                Some((
                    Ok::<Bytes, std::io::Error>(message.body().clone()),
                    (next, guard),
                ))
            });
        let stream = futures_util::stream::once(async move { Ok(first_body) }).chain(chunks);
        Body::from_stream(stream)
    } else {
        rest.close();
        drop(guard);
        Body::from(first_body)
    };
    let mut response = (status, body).into_response();
    *response.headers_mut() = headers;
    response
}

/// True for the server's own terminal errors (no responders, timeout, worker gone), which
/// carry a `reason`; a worker's answer is relayed as it is whatever its command.
fn is_server_error(message: &Message) -> bool {
    matches!(message.header("status"), Some("502" | "503" | "504"))
        && message.header("reason").is_some()
}

fn error_response(rejection: &Rejection) -> Response {
    let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", rejection.reason()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::normalise_path;

    #[test]
    fn paths_are_normalised_before_workers_see_them() {
        for (raw, expected) in [
            ("/api/users/7", "/api/users/7"),
            ("/api/", "/api/"),
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/%2e/admin/", "/admin/"),
            ("/api/./x/.", "/api/x/"),
            ("/api//x", "/api/x"),
            ("/../../etc", "/etc"),
            ("/api/a%2Fb", "/api/a%2Fb"),
            ("/api/a%2fb", "/api/a%2Fb"),
            ("/api/%7euser", "/api/~user"),
            ("/api/x/..", "/api/"),
            ("/", "/"),
        ] {
            assert_eq!(normalise_path(raw).unwrap(), expected, "{raw}");
        }
        for raw in ["/api/%", "/api/%2", "/api/%zz"] {
            assert_eq!(normalise_path(raw).unwrap_err().status(), 400, "{raw}");
        }
    }
}
