//! Upstream calls: the `upstream:METHOD URL` header makes the server call an HTTP back end with
//! the message's body and relay the answer to the client.
//!
//! Closed against server-side request forgery: only URLs under a prefix the operator allowed
//! (`[upstream] allow`), or named routes (`[upstream.routes]`), can be reached; redirects are
//! not followed and no proxy from the environment is used. Calls run on their own tasks, so a
//! slow back end never holds up the connection; they are capped per connection (429) and per
//! server (503), and time out (504).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::http::Uri;
use bytes::{Bytes, BytesMut};
use lhttp_proto::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Rejection, config::UpstreamConfig};

/// HTTP methods a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET: sends no body.
    Get,
    /// POST: sends the lhttp body.
    Post,
    /// PUT: sends the lhttp body.
    Put,
    /// PATCH: sends the lhttp body.
    Patch,
    /// DELETE: sends the lhttp body.
    Delete,
}

impl Method {
    /// Parses a method name (case-insensitive).
    pub fn parse(name: &str) -> Option<Method> {
        let method = match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        };
        Some(method)
    }

    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

/// A parsed `http://host:port/path` URL, in the form used to compare against allowed prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, host lowercased, port explicit.
    authority: String,
    path: String,
    /// The URL as given, to call.
    url: String,
}

impl Target {
    /// Parses an absolute `http://` URL, refusing what could smuggle a request elsewhere:
    /// user info (`http://allowed@evil/`), dot segments, encoded dots, backslashes.
    pub fn parse(url: &str) -> Result<Target, &'static str> {
        let uri: Uri = url.parse().map_err(|_| "not a valid URL")?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err("https back ends are not supported yet"),
            _ => return Err("only http:// URLs can be called"),
        }
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("user info is not allowed in upstream URLs");
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err("the URL has no host");
        }
        let path = uri.path();
        let lowered = path.to_ascii_lowercase();
        if lowered.contains("%2e") || lowered.contains("%2f") || path.contains('\\') {
            return Err("encoded dots, slashes or backslashes are not allowed in upstream paths");
        }
        if path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err("dot segments are not allowed in upstream paths");
        }
        Ok(Target {
            authority: format!("{host}:{}", authority.port_u16().unwrap_or(80)),
            path: path.to_owned(),
            url: url.to_owned(),
        })
    }

    /// True when `other` is under this prefix: same host and port, and a path that continues
    /// this one at a segment boundary (`/api` allows `/api` and `/api/x`, not `/apix`).
    fn allows(&self, other: &Target) -> bool {
        if self.authority != other.authority || !other.path.starts_with(&self.path) {
            return false;
        }
        self.path.ends_with('/') || other.path.len() == self.path.len() || {
            other.path.as_bytes().get(self.path.len()) == Some(&b'/')
        }
    }
}

/// A resolved call: method and URL, checked against the allowance.
#[derive(Debug, Clone)]
pub struct Call {
    method: Method,
    url: String,
}

impl Call {
    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The URL that will be called.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// What a back end answered.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body (at most the server's message size limit).
    pub body: Bytes,
}

/// Why a call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The back end could not be reached, or the exchange failed.
    #[error("upstream call failed: {0}")]
    Failed(String),
    /// The back end did not answer in time.
    #[error("upstream call timed out")]
    Timeout,
    /// The answer is larger than the server relays.
    #[error("upstream answer larger than {0} bytes")]
    TooLarge(usize),
}

impl UpstreamError {
    /// What the client is told: 502 for failures, 504 for timeouts.
    pub fn rejection(&self) -> Rejection {
        match self {
            UpstreamError::Failed(_) => Rejection::new(502, "upstream unreachable or failed"),
            UpstreamError::Timeout => Rejection::new(504, "upstream timed out"),
            UpstreamError::TooLarge(_) => Rejection::new(502, "upstream answer too large"),
        }
    }
}

/// The server's upstream caller: the allowance, the HTTP client and the server-wide cap.
pub struct Upstream {
    client: reqwest::Client,
    /// What may be called and how long a call may take; replaced whole by a reload.
    allowance: ArcSwap<Allowance>,
    /// Routes added by the program that embeds the server, kept over reloads.
    extra_routes: Vec<(String, String)>,
    /// One permit per call in flight on the whole server.
    slots: Arc<Semaphore>,
    max_response: usize,
}

/// The part of `[upstream]` a reload may change.
struct Allowance {
    allow: Vec<Target>,
    routes: BTreeMap<String, Target>,
    timeout: Duration,
    per_connection: usize,
}

impl Allowance {
    fn new(config: &UpstreamConfig, extra_routes: &[(String, String)]) -> Result<Self, String> {
        config.validate()?;
        let allow = config
            .allow
            .iter()
            .map(|p| Target::parse(p).map_err(|e| format!("upstream.allow {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = BTreeMap::new();
        let all_routes = config
            .routes
            .iter()
            .map(|(n, u)| (n.clone(), u.clone()))
            .chain(extra_routes.iter().cloned());
        for (name, url) in all_routes {
            let target =
                Target::parse(&url).map_err(|e| format!("upstream route {name:?} ({url}): {e}"))?;
            routes.insert(name, target);
        }
        Ok(Allowance {
            allow,
            routes,
            timeout: config.timeout(),
            per_connection: config.max_in_flight_per_connection,
        })
    }
}

impl Upstream {
    pub(crate) fn new(
        config: &UpstreamConfig,
        extra_routes: &[(String, String)],
        max_response: usize,
    ) -> Result<Upstream, String> {
        let allowance = Allowance::new(config, extra_routes)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Upstream {
            client,
            allowance: ArcSwap::from_pointee(allowance),
            extra_routes: extra_routes.to_vec(),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            max_response,
        })
    }

    /// Puts a new allow-list, routes, timeout and per-connection cap in force (a reload); calls
    /// in flight finish under the old ones. `max_in_flight` is kept from the start.
    pub(crate) fn replace(&self, config: &UpstreamConfig) -> Result<(), String> {
        let allowance = Allowance::new(config, &self.extra_routes)?;
        self.allowance.store(Arc::new(allowance));
        Ok(())
    }

    /// True when nothing at all may be called.
    pub fn is_closed(&self) -> bool {
        let allowance = self.allowance.load();
        allowance.allow.is_empty() && allowance.routes.is_empty()
    }

    /// Resolves an `upstream` header value, `METHOD URL` or `METHOD route-name`: 400 when
    /// malformed, 403 when the URL is not allowed.
    pub fn resolve(&self, value: &str) -> Result<Call, Rejection> {
        let (method, target) = value
            .split_once([' ', '\t'])
            .ok_or_else(|| Rejection::bad_request("upstream must be METHOD URL"))?;
        let method = Method::parse(method).ok_or_else(|| {
            Rejection::bad_request("upstream method must be GET, POST, PUT, PATCH or DELETE")
        })?;
        let target = target.trim();
        if self.is_closed() {
            return Err(Rejection::forbidden(
                "upstream calls are not allowed on this server",
            ));
        }
        let allowance = self.allowance.load();
        if let Some(route) = allowance.routes.get(target) {
            return Ok(Call {
                method,
                url: route.url.clone(),
            });
        }
        let parsed = Target::parse(target).map_err(Rejection::forbidden)?;
        if !allowance.allow.iter().any(|prefix| prefix.allows(&parsed)) {
            return Err(Rejection::forbidden("upstream URL is not allowed"));
        }
        Ok(Call {
            method,
            url: parsed.url,
        })
    }

    /// Calls a named route from code (a processor, say).
    pub async fn call_route(
        &self,
        method: Method,
        route: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Response, UpstreamError> {
        let url = self
            .allowance
            .load()
            .routes
            .get(route)
            .map(|target| target.url.clone())
            .ok_or_else(|| UpstreamError::Failed(format!("no upstream route named {route:?}")))?;
        let call = Call { method, url };
        self.call(&call, body, headers).await
    }

    /// Performs `call` with `headers`, within the timeout; GET sends no body.
    pub async fn call(
        &self,
        call: &Call,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Response, UpstreamError> {
        let mut request = self.client.request(call.method.to_reqwest(), &call.url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if call.method != Method::Get {
            request = request.body(body);
        }
        let exchange = async {
            let mut response = request
                .send()
                .await
                .map_err(|e| UpstreamError::Failed(error_chain(&e)))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| UpstreamError::Failed(error_chain(&e)))?
            {
                if body.len() + chunk.len() > self.max_response {
                    return Err(UpstreamError::TooLarge(self.max_response));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                content_type,
                body: body.freeze(),
            })
        };
        let timeout = self.allowance.load().timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// A server-wide slot for one call, or `None` when the server is at its cap.
    pub(crate) fn server_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Calls one connection may have in flight.
    pub(crate) fn per_connection(&self) -> usize {
        self.allowance.load().per_connection
    }
}

/// The error and its causes on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The lhttp message that relays a back end's answer: the request's command, `status`, the
/// answer's `content-type`, the request's `request-id`, and the answer's body.
pub(crate) fn relay(request: &Message, response: Response) -> Message {
    let mut builder = Message::builder(request.command_text().clone())
        .header("status", response.status.to_string());
    if let Some(content_type) = response.content_type {
        if lhttp_proto::Message::builder("x")
            .header("content-type", content_type.clone())
            .build()
            .is_ok()
        {
            builder = builder.header("content-type", content_type);
        }
    }
    if let Some(id) = request.headers().get_text("request-id") {
        builder = builder.header("request-id", id.clone());
    }
    builder.body(response.body).build().unwrap_or_else(|_| {
        Rejection::new(502, "upstream answer could not be relayed").to_message(None)
    })
}
