//! The HTTP side of the one port: WebSocket upgrades on any path, `POST /publish`,
//! `GET /healthz`, `GET /metrics` and the chat page at `GET /`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use hyper_util::rt::TokioIo;
use lhttp_proto::Message;
use serde_json::json;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};

use crate::{ServerHandle, metrics::add, read_ahead::ReadAhead, server::Shared, session};

/// Files served over plain GET, embedded at build time: the chat demo and the JavaScript SDK.
/// (path, content type, content)
const STATIC_FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "/chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/chat.js"),
    ),
    (
        "/chat.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/chat.css"),
    ),
    (
        "/sdk/lhttp.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../sdk/js/lhttp.js"),
    ),
    (
        "/sdk/lhttp.d.ts",
        "text/plain; charset=utf-8",
        include_str!("../../../sdk/js/lhttp.d.ts"),
    ),
];

/// tungstenite's read buffer, allocated whole per connection when it opens (and grown only for
/// a frame larger than it). It is small because most connections are idle: socket reads
/// still take up to 16 KiB at once, through [`ReadAhead`]'s per-thread scratch buffer.
const READ_BUFFER: usize = 256;

/// Writes are gathered up to this size before going to the socket.
const WRITE_BUFFER: usize = 64 * 1024;

/// The main port: upgrades, `/publish`, the static files, and `/healthz` and `/metrics` unless
/// they have a port of their own (`with_ops` false).
pub(crate) fn router(shared: Arc<Shared>, with_ops: bool) -> Router {
    let mut router = Router::new();
    for &(path, content_type, body) in STATIC_FILES {
        router = router.route(path, get(move || static_file(content_type, body)));
    }
    for route in &shared.config.gateway {
        let prefix = route_prefix(&route.path).to_owned();
        let route = Arc::new(route.clone());
        let handler = {
            let shared = shared.clone();
            move |info, request| crate::gateway::serve(shared.clone(), route.clone(), info, request)
        };
        router = router
            .route(&format!("{prefix}/{{*rest}}"), any(handler.clone()))
            .route(&format!("{prefix}/"), any(handler));
    }
    router = router.route("/publish", post(publish));
    if with_ops {
        router = router
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics));
    }
    router
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            upgrade_any_path,
        ))
        .with_state(shared)
}

/// `/api/` -> `/api`: the prefix that axum's `{*rest}` and exact routes are written after.
fn route_prefix(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

/// The metrics port (`server.metrics_listen`): `/healthz` and `/metrics` only.
pub(crate) fn ops_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The original clients connect to `/`, `/echo` and `/chat`: an upgrade request is accepted on
/// any path, before routing.
async fn upgrade_any_path(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if wants_websocket(request.headers()) {
        accept(shared, request)
    } else {
        next.run(request).await
    }
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// Validates the RFC 6455 handshake and hands the upgraded socket to a session task.
fn accept(shared: Arc<Shared>, mut request: Request) -> Response {
    if request.method() != Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades use GET\n",
        );
    }
    let headers = request.headers();
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return plain(StatusCode::BAD_REQUEST, "missing Connection: upgrade\n");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut response = plain(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    if !origin_allowed(&shared.config.server.allowed_origins, headers) {
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let user = match bearer_token(&request) {
        None => None,
        Some(token) => match shared.verifier.verify(token) {
            Ok(user) => Some(user),
            Err(error) => {
                add(&shared.metrics.auth_failures, 1);
                tracing::debug!(%error, "upgrade with a refused token");
                let mut response = (StatusCode::UNAUTHORIZED, format!("{error}\n")).into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return response;
            }
        },
    };
    let accept_key = derive_accept_key(key.as_bytes());
    if shared.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
    // Per address first: a refused client must not take one of the server's slots, even
    // briefly.
    let Some(ip_slot) = shared.connections_per_ip.try_acquire(peer.ip()) else {
        add(&shared.metrics.connections_refused_per_ip, 1);
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        );
    };
    let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
        add(&shared.metrics.connections_refused, 1);
        return plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return plain(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded\n",
        );
    };
    let config = websocket_config(&shared.config.limits);
    let tasks = shared.tasks.clone();
    // The upgrade waits in a task of its own, which ends when the session task starts: the
    // session, which lives as long as the connection, then holds none of what the upgrade
    // needed (a task's memory is the largest state its future can be in, for its whole life).
    let upgrading = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "upgrade failed"),
        };
        let socket = WebSocketStream::from_raw_socket(
            ReadAhead::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(config),
        )
        .await;
        let tracker = shared.tasks.clone();
        let session = session::run(
            shared,
            Box::new(socket),
            peer,
            (permit, ip_slot),
            user.map(Box::new),
        );
        tracker.spawn(session);
    };
    tasks.spawn(upgrading);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// The token of an upgrade request: `Authorization: Bearer <token>`, else the `token` query
/// parameter (for clients that cannot set headers; JWTs need no URL escaping).
fn bearer_token(request: &Request) -> Option<&str> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    from_header.or_else(|| {
        request
            .uri()
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
    })
}

/// With an allow-list, a browser page from another origin may not open a connection
/// (cross-site WebSocket hijacking); clients that send no Origin (not browsers) are let in.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
        Some(Err(_)) => false,
    }
}

/// `POST /publish` is open to loopback peers when no API key is configured, and to holders of
/// the key (`Authorization: Bearer <key>`) when one is; anyone else gets this answer.
fn publish_refusal(shared: &Shared, request: &Request) -> Option<Response> {
    match &shared.config.server.api_key {
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
            let loopback = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|info| info.0.ip().is_loopback());
            (!loopback).then(|| {
                json_error(
                    403,
                    "POST /publish is open to loopback clients only unless server.api_key is set",
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

fn websocket_config(limits: &crate::config::Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Room for a full batch of maximum-size messages; the outbox bounds what waits beyond.
        .max_write_buffer_size(WRITE_BUFFER + 2 * limits.max_message_size + 1024)
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size))
}

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    // A clustered node without NATS still serves its own clients, but a load balancer should
    // prefer nodes whose clients also reach the other nodes' channels.
    match shared.cluster.as_ref().map(|c| c.is_connected()) {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(true) => Json(json!({"status": "ok", "nats": "connected"})).into_response(),
        Some(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "nats": "disconnected"})),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = ServerHandle::from_shared(shared).render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn json_error(status: u16, reason: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (code, Json(json!({"status": status, "reason": reason}))).into_response()
}

/// `POST /publish`: the body is an lhttp message; it is published to its `publish` channels.
/// 200 `{"channels":N,"deliveries":M}`; 400 not a message or no `publish` header; 413 too large;
/// 408 body not complete within `limits.http_body_timeout_ms`.
async fn publish(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    add(&shared.metrics.http_publish_requests, 1);
    if let Some(refused) = publish_refusal(&shared, &request) {
        return refused;
    }
    let max = shared.config.limits.max_message_size;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return json_error(413, "message larger than limits.max_message_size");
    }
    // A client that sends its body slowly (or never) cannot hold the request open.
    let reading = axum::body::to_bytes(request.into_body(), max);
    let Ok(read) = tokio::time::timeout(shared.config.limits.http_body_timeout(), reading).await
    else {
        add(&shared.metrics.http_body_timeouts, 1);
        return json_error(408, "the request body did not arrive in time");
    };
    let body = match read {
        Ok(body) => body,
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            return if too_large {
                json_error(413, "message larger than limits.max_message_size")
            } else {
                json_error(400, "could not read the request body")
            };
        }
    };
    let message = match Message::parse_with(body, &shared.parser_limits) {
        Ok(message) => message,
        Err(error) => return json_error(error.status(), &error.to_string()),
    };
    match ServerHandle::from_shared(shared).publish(&message) {
        Ok(report) => Json(report).into_response(),
        Err(rejection) => json_error(rejection.status(), rejection.reason()),
    }
}
