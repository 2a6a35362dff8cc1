//! The HTTP side of the one port: WebSocket upgrades on any path, `POST /publish`, the
//! server API under `/server/` ([`mod@api`]), `GET /healthz`, `GET /metrics` and the static
//! pages (the chat page at `GET /`).

pub(crate) mod accept;
pub(crate) mod api;
pub(crate) mod gateway;
pub(crate) mod origin;
pub(crate) mod publish;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get, post},
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{
    ServerHandle, User,
    http::origin::Site,
    metrics::add,
    security::throttle::Refusal,
    session,
    session::sessions::Sessions,
    transport::{Peer, websocket::WebSocket},
};

/// A file served over GET on the main port ([`crate::ServerBuilder::static_file`]).
#[derive(Debug, Clone)]
pub(crate) struct StaticFile {
    pub(crate) path: std::borrow::Cow<'static, str>,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static str,
}

/// What one listening port serves: its router, and whether `POST /publish` is among its
/// routes (the accept loop then serves that one itself: see [`mod@publish`]).
#[derive(Clone)]
pub(crate) struct Routes {
    pub(crate) router: Router,
    pub(crate) publish: bool,
    /// The listener's address, for the origin and `Host` checks.
    pub(crate) site: Site,
}

impl Routes {
    /// Whether `request` is a `POST /publish` that [`publish::serve`] answers exactly as
    /// the router would (a WebSocket upgrade on any path goes to the router's middleware).
    pub(crate) fn is_publish<B>(&self, request: &hyper::Request<B>) -> bool {
        self.publish
            && request.method() == Method::POST
            && request.uri().path() == "/publish"
            && !wants_websocket(request.headers())
    }
}

/// The main port: upgrades, `/publish`, the static files, and `/healthz` and `/metrics` unless
/// they have a port of their own (`with_ops` false).
pub(crate) fn router(
    shared: Arc<Sessions>,
    with_ops: bool,
    site: Site,
    static_files: &[StaticFile],
) -> Routes {
    let mut router = Router::new();
    for file in static_files {
        let (content_type, body) = (file.content_type, file.body);
        // The SDK (`/sdk/...`) may be imported by pages of any origin: a module script from
        // another origin loads only with CORS. It is public code, fetched without credentials.
        let shared_with_any_origin = file.path.starts_with("/sdk/");
        router = router.route(
            &file.path,
            get(move || static_file(content_type, body, shared_with_any_origin)),
        );
        // A page at a folder path (`/admin/`) is also reached without the slash, as people
        // type it, by a redirect: the page's relative links need the slash.
        if let Some(bare) = file.path.strip_suffix('/').filter(|bare| {
            !bare.is_empty() && !static_files.iter().any(|other| other.path == *bare)
        }) {
            let to = file.path.to_string();
            router = router.route(bare, get(move || async move { Redirect::permanent(&to) }));
        }
    }
    for route in &shared.config().gateway {
        let prefix = route_prefix(&route.path).to_owned();
        let route = Arc::new(route.clone());
        let handler = {
            let shared = shared.clone();
            move |info, request| gateway::serve(shared.clone(), route.clone(), info, request)
        };
        router = router
            .route(&format!("{prefix}/{{*rest}}"), any(handler.clone()))
            .route(&format!("{prefix}/"), any(handler));
    }
    router = router.route(
        "/publish",
        post(move |state, request| publish(state, site, request)),
    );
    router = router.merge(api::routes(shared.clone(), site));
    if with_ops {
        router = router.merge(ops_routes(site));
    }
    let router = router
        .layer(middleware::from_fn_with_state(
            (shared.clone(), site),
            upgrade_any_path,
        ))
        .with_state(shared);
    Routes {
        router,
        publish: true,
        site,
    }
}

/// `/healthz` and `/metrics`; on a loopback-only listener, only for requests addressed to a
/// loopback name (a page that rebound its own name to 127.0.0.1 cannot read them).
fn ops_routes(site: Site) -> Router<Arc<Sessions>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(site, local_host_only))
}

/// Refuses, with 421, a request to a loopback-only listener whose `Host` is not a loopback
/// name (see [`Site::host_is_local`]).
async fn local_host_only(State(site): State<Site>, request: Request, next: Next) -> Response {
    if site.loopback_only() && !site.host_is_local(request.headers()) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers here only to requests for localhost or a loopback address\n",
        );
    }
    next.run(request).await
}

/// `/api/` -> `/api`: the prefix that axum's `{*rest}` and exact routes are written after.
fn route_prefix(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

/// The metrics port (`server.metrics_listen`): `/healthz` and `/metrics` only.
pub(crate) fn ops_router(shared: Arc<Sessions>, site: Site) -> Routes {
    let router = ops_routes(site).with_state(shared);
    Routes {
        router,
        publish: false,
        site,
    }
}

/// The original clients connect to `/`, `/echo` and `/chat`: an upgrade request is accepted on
/// any path, before routing.
async fn upgrade_any_path(
    State((shared, site)): State<(Arc<Sessions>, Site)>,
    request: Request,
    next: Next,
) -> Response {
    if wants_websocket(request.headers()) {
        accept(shared, site, request)
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
fn accept(shared: Arc<Sessions>, site: Site, mut request: Request) -> Response {
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
    if !site.origin_allowed(&shared.config().server.allowed_origins, headers) {
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
    let user = match bearer_token(&request) {
        None => None,
        Some(token) => match verify_token(&shared, peer.ip(), token) {
            Ok(user) => Some(user),
            Err(response) => return *response,
        },
    };
    let accept_key = derive_accept_key(key.as_bytes());
    if shared.draining.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    // Per address first: a refused client must not take one of the server's slots, even
    // briefly.
    let Some(ip_slot) = shared.admission.connections_per_ip.try_acquire(peer.ip()) else {
        add(&shared.metrics.connections_refused_per_ip, 1);
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        );
    };
    let Ok(permit) = shared
        .admission
        .connection_slots
        .clone()
        .try_acquire_owned()
    else {
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
    let max_message = shared.config().limits.max_message_size;
    let tasks = shared.tasks.clone();
    // The upgrade waits in a task of its own, which ends when the session task starts: the
    // session, which lives as long as the connection, then holds none of what the upgrade
    // needed (a task's memory is the largest state its future can be in, for its whole life).
    let upgrading = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "upgrade failed"),
        };
        let socket = WebSocket::new(TokioIo::new(upgraded), max_message)
            .over_tls(shared.tls.main.is_some())
            .with_budget(shared.unfinished.clone());
        let tracker = shared.tasks.clone();
        let session = session::run(
            shared,
            Box::new(socket),
            Peer::Ip(peer),
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

/// Verifies the token of an upgrade request from `ip`, unless that address failed too often
/// lately (429, unverified) or the token is too long (401, unparsed).
fn verify_token(shared: &Sessions, ip: IpAddr, token: &str) -> Result<User, Box<Response>> {
    let refused = match shared.security.throttle.admit(ip, token, Instant::now()) {
        Err(Refusal::Throttled) => {
            add(&shared.metrics.auth_throttled, 1);
            let reason = Refusal::Throttled.reason();
            let response = (StatusCode::TOO_MANY_REQUESTS, format!("{reason}\n"));
            return Err(Box::new(response.into_response()));
        }
        Err(Refusal::TooLong) => Refusal::TooLong.reason().to_owned(),
        Ok(()) => match shared.security.verifier.load().verify(token) {
            Ok(user) => return Ok(user),
            Err(error) => {
                shared.security.throttle.failed(ip, Instant::now());
                error.to_string()
            }
        },
    };
    add(&shared.metrics.auth_failures, 1);
    tracing::debug!(error = %refused, "upgrade with a refused token");
    let mut response = (StatusCode::UNAUTHORIZED, format!("{refused}\n")).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    Err(Box::new(response))
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

async fn static_file(content_type: &'static str, body: &'static str, any_origin: bool) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    if any_origin {
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
    }
    response
}

async fn healthz(State(shared): State<Arc<Sessions>>) -> Response {
    if shared.draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    // A clustered node without NATS still serves its own clients, but a load balancer should
    // prefer nodes whose clients also reach the other nodes' channels.
    match shared.broker.cluster.as_ref().map(|c| c.is_connected()) {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(true) => Json(json!({"status": "ok", "nats": "connected"})).into_response(),
        Some(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "nats": "disconnected"})),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Sessions>>) -> Response {
    let body = ServerHandle::new(shared).render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `POST /publish` when it comes through the router: the accept loop serves it directly
/// ([`publish::serve`]); the route stays so that other methods get 405 and both paths
/// answer alike.
async fn publish(State(shared): State<Arc<Sessions>>, site: Site, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    self::publish::serve(shared, peer, site, request)
        .await
        .map(Body::new)
}
