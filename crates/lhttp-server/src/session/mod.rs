//! One connection, on any transport, from accept to close, in one task: it reads messages and
//! runs the filter chain and processors on them, and between and during them it drives the
//! connection's [`Writer`], which drains the outbox into the same socket. The close codes
//! below are WebSocket's; a byte stream gets the same code and reason in its last `close`
//! message.
//!
//! How a connection ends, and what the client sees:
//! - the client closes or disconnects: close hooks run, subscriptions are removed;
//! - a message breaks WebSocket itself (over the size limit: 1009; invalid UTF-8 in a text
//!   frame: 1007; other protocol violations: 1002): the close frame is sent after what is
//!   already queued;
//! - the client reads too slowly (outbox overflow): 1008 "slow consumer", immediately;
//! - the server shuts down: 1012 "server restarting; retry in N ms" (N from 250 to 3750, by
//!   connection), after what is already queued, at its moment of the drain (`server.drain_ms`);
//! - an open filter refuses the connection: the `error` message, then 1008;
//! - a connection that must authenticate has not within `auth.auth_timeout_ms`: an `error`
//!   (401) and 1008 "authentication timeout";
//! - the connection's token expires without a refresh: an `error` (401 "token expired"), then
//!   1008 "token expired".
//! - the client's `auth` messages are refused `limits.auth_failures_per_connection` times:
//!   the last refusal, then 1008 "too many failed authentications";
//! - a message the client began is not complete within `limits.message_timeout_ms`: 1008
//!   "message not completed in time";
//! - a large unfinished message would take the server over `limits.unfinished_message_bytes`:
//!   1013 "server busy: too many unfinished messages";
//! - the server API disconnects it (`POST /server/disconnect`, by user or client id): 4001
//!   "disconnected by the server", after what is already queued; the SDKs do not reconnect;
//! - the client keeps sending over its message rate (`limits.rate_limit_close_after` refusals
//!   within `limits.rate_limit_window_ms`): a last 429 `error`, then 1008 "message rate limit
//!   exceeded".

pub(crate) mod accept;
pub mod builtin;
pub(crate) mod connection;
pub(crate) mod context;
pub(crate) mod directory;
pub(crate) mod extensions;
pub(crate) mod filter;
pub(crate) mod handle;
pub(crate) mod processor;
pub(crate) mod rate;
pub(crate) mod reload;
pub(crate) mod sessions;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use lhttp_proto::Message;
use tokio::sync::OwnedSemaphorePermit;

use std::{future::Future, pin::Pin, task::Poll};

use tokio::time::{Instant, Sleep};

use crate::{
    Connection, Context, Processor, Rejection, ServerHandle, User,
    metrics::{Metrics, add},
    security::peers::IpSlot,
    security::throttle::Refusal,
    session::builtin::names,
    session::rate::{MessageRate, Verdict},
    session::sessions::Sessions,
    transport::outbox::{Outbox, Writer, WriterEnd, close_frame, close_slow},
    transport::{Outgoing, Peer, ReadError, Received, Transport},
};

/// What the socket gave the reading loop: an item, or `None` at the end of the stream.
type Next = Option<Result<Received, ReadError>>;

/// Why the reading loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed or vanished.
    Peer,
    /// The server is shutting down: close 1012 with this retry hint.
    Shutdown(&'static str),
    /// The outbox overflowed: close with 1008 "slow consumer".
    SlowConsumer,
    /// The writer could not write: the socket is dead.
    WriterGone,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

/// Runs one connection to its end. `slots` hold the connection's places in the server's
/// and its address's connection counts until then.
///
/// `socket` and `user` come boxed, and this is a function returning an `async move` block
/// rather than an `async fn`: an async fn keeps each argument twice in its future (as the
/// argument and as the local it is moved into), for its whole life, and a value moved out of
/// a local keeps its room too. The block captures each argument once, and the user is
/// unboxed only where it is handed over. Every idle connection's task is this future: 32
/// bytes more took it over tokio's 128-byte rounding and the allocator's size class
/// (an idle connection went from 3.69 to 4.30 KiB).
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<T: Transport>(
    shared: Arc<Sessions>,
    socket: Box<T>,
    peer: Peer,
    slots: (OwnedSemaphorePermit, IpSlot),
    user: Option<Box<User>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let metrics = &shared.metrics;
        add(&metrics.connections_opened, 1);
        let kind = socket.kind();
        add(&metrics.opened_by_transport[kind as usize], 1);
        let id = shared.admission.next_id();
        tracing::debug!(connection = %id, %peer, "connected");
        // Moved out whole, so that the box is freed now: a value only partly moved out of a box
        // keeps the allocation until the end of the function.
        let mut socket = *socket;
        let limits = &shared.config().limits;
        let (outbox, receiver) = Outbox::new(limits.outbound_queue, limits.outbound_queue_bytes);
        let mut writer = receiver.into_writer();
        let mut sign_in = SignIn::new(&shared, user.as_deref(), &peer);
        let mut connection =
            Connection::new(id, peer, outbox.clone(), ServerHandle::new(shared.clone()));

        connection.set_user(user.map(|user| *user));

        let opened = {
            let opening = std::pin::pin!(open(&shared, &mut connection));
            while_writing(&mut socket, &mut writer, metrics, opening).await
        };
        let end = match opened {
            Err(rejection) => {
                connection.send_rejection(&rejection, None);
                End::Close(1008, "connection refused")
            }
            Ok(()) => {
                read_loop(
                    &shared,
                    &mut connection,
                    &mut sign_in,
                    &mut socket,
                    &mut writer,
                )
                .await
            }
        };
        tracing::debug!(connection = %id, ?end, "disconnecting");

        close(&shared, &mut connection).await;
        drop(connection);

        let timeout = shared.config().server.shutdown_timeout();
        // Boxed: the closing states (close frame, writer wait, linger) would otherwise widen the
        // task of every connection, idle or not, for its whole life.
        let finishing = finish(end, outbox, writer, socket, metrics, timeout);
        Box::pin(finishing).await;
        add(&metrics.connections_closed, 1);
        add(&metrics.closed_by_transport[kind as usize], 1);
        tracing::debug!(connection = %id, "closed");
        drop(slots);
    }
}

/// Ends the connection after its hooks ran: queues the close frame `end` calls for, lets the
/// writer send it after what is queued, then lingers for the client's reply.
async fn finish<T: Transport>(
    end: End,
    outbox: Outbox,
    mut writer: Writer,
    mut socket: T,
    metrics: &Metrics,
    timeout: Duration,
) {
    let close = match end {
        End::Shutdown(hint) => close_frame(1012, hint),
        End::Close(code, reason) => close_frame(code, reason),
        End::SlowConsumer => return close_slow(&mut socket, metrics).await,
        End::Peer | End::WriterGone => return,
    };
    outbox.push_close(close);
    drop(outbox);
    let written = std::future::poll_fn(|cx| writer.poll_write(&mut socket, cx, metrics));
    if let Ok(WriterEnd::Closed) = tokio::time::timeout(timeout, written).await {
        socket.linger().await;
    }
}

/// Runs `work` (hooks, a received message) to its end while the writer goes on writing: a
/// processor that awaits must not stop this connection's deliveries. The writer is polled only
/// when `work` is not ready, so work that never waits costs nothing more. `work` comes pinned
/// by the caller: held here by value, it would take its size twice in the connection's task.
fn while_writing<'a, T: Transport, F: Future>(
    socket: &'a mut T,
    writer: &'a mut Writer,
    metrics: &'a Metrics,
    mut work: Pin<&'a mut F>,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(output);
        }
        // A writer that ended (a dead socket) is noticed by the reading loop afterwards.
        if !writer.has_ended() {
            let _ = writer.poll_write(socket, cx, metrics);
        }
        Poll::Pending
    })
}

/// Runs the open hooks: filters (which may refuse), then processors.
async fn open(shared: &Sessions, connection: &mut Connection) -> Result<(), Rejection> {
    for filter in &shared.commands.filters {
        filter.on_open(connection)?;
    }
    for processor in &shared.commands.processor_order {
        processor.on_open(connection).await;
    }
    Ok(())
}

/// Runs the close hooks, then removes every subscription.
async fn close(shared: &Sessions, connection: &mut Connection) {
    for processor in &shared.commands.processor_order {
        processor.on_close(connection).await;
    }
    for filter in shared.commands.filters.iter().rev() {
        filter.on_close(connection);
    }
    connection.unsubscribe_all();
    connection.leave_directory();
}

/// The authentication state of one connection, kept by its reading task. The timers are
/// created once and polled in place (not re-armed per message), and only when needed: an
/// anonymous connection on an open server holds two empty options.
struct SignIn {
    /// Set until a valid token arrives (only `auth` is accepted meanwhile); fires at the
    /// authentication deadline.
    required_by: Option<Pin<Box<Sleep>>>,
    /// Fires at the token's `exp` plus the leeway, unless a refresh moved it.
    expires: Option<Pin<Box<Sleep>>>,
    /// `auth` messages refused so far (`limits.auth_failures_per_connection`).
    failures: u32,
}

impl SignIn {
    /// A client over a Unix socket is known by its credentials and one in-process is the
    /// embedding program: neither must authenticate.
    fn new(shared: &Sessions, user: Option<&User>, peer: &Peer) -> SignIn {
        let required_by =
            (user.is_none() && !shared.config().auth.anonymous && peer.ip().is_some())
                .then(|| Box::pin(tokio::time::sleep(shared.config().auth.auth_timeout())));
        SignIn {
            required_by,
            expires: user.map(|u| Box::pin(tokio::time::sleep_until(expiry(shared, u)))),
            failures: 0,
        }
    }

    /// `user` authenticated: no deadline any more, and the connection ends with its token.
    fn authenticated(&mut self, shared: &Sessions, user: &User) {
        self.required_by = None;
        let at = expiry(shared, user);
        match &mut self.expires {
            Some(timer) => timer.as_mut().reset(at),
            None => self.expires = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

/// The instant a connection authenticated as `user` must be closed.
fn expiry(shared: &Sessions, user: &User) -> Instant {
    let left = user
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
        + Duration::from_secs(shared.security.verifier.load().leeway());
    // A clamped `exp` is still centuries away: never reached, but it must not overflow.
    Instant::now()
        .checked_add(left)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Completes when `timer` fires; never when there is none.
async fn fired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What woke the reading loop on the socket.
enum SocketEvent {
    /// The next item of the WebSocket stream.
    Received(Next),
    /// The writer cannot write any more: the socket is dead.
    WriterEnded,
}

/// Writes what is queued, and waits for the next received item.
fn socket_event<'a, T: Transport>(
    socket: &'a mut T,
    writer: &'a mut Writer,
    metrics: &'a Metrics,
) -> impl Future<Output = SocketEvent> + 'a {
    std::future::poll_fn(move |cx| {
        if writer.poll_write(socket, cx, metrics).is_ready() {
            return Poll::Ready(SocketEvent::WriterEnded);
        }
        socket.poll_next(cx).map(SocketEvent::Received)
    })
}

async fn read_loop<T: Transport>(
    shared: &Sessions,
    connection: &mut Connection,
    sign_in: &mut SignIn,
    socket: &mut T,
    writer: &mut Writer,
) -> End {
    let outbox = connection.outbox().clone();
    let metrics = &shared.metrics;
    // Keepalive: a ping every interval; a client silent for the idle timeout (no data, no pong)
    // is closed, so dead peers and half-open TCP connections do not hold resources forever.
    let server_config = &shared.config().server;
    let interval = Duration::from_millis(server_config.ping_interval_ms);
    let idle_timeout = Duration::from_millis(server_config.idle_timeout_ms);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = tokio::time::Instant::now();
    let mut rate = MessageRate::new(&shared.config().limits, last_seen);
    // Messages handled since this task last gave its thread away (see `YIELD_AFTER`).
    let mut since_yield = 0;
    // The moment of a drain this connection is closed at, and the wait it is told then.
    let id = connection.id().get();
    let wave = shared.wave_of(id);
    loop {
        let next = tokio::select! {
            biased;
            _ = wave.cancelled() => {
                return End::Shutdown(crate::session::sessions::retry_hint(id));
            }
            _ = outbox.ended() => {
                return if outbox.is_overflowed() {
                    End::SlowConsumer
                } else {
                    End::Close(DISCONNECTED.0, DISCONNECTED.1)
                };
            }
            _ = fired(&mut sign_in.required_by) => {
                connection.send_rejection(&Rejection::new(401, "authentication timeout"), None);
                return End::Close(1008, "authentication timeout");
            }
            _ = fired(&mut sign_in.expires) => {
                connection.send_rejection(&Rejection::new(401, "token expired"), None);
                return End::Close(1008, "token expired");
            }
            event = socket_event(socket, writer, metrics) => match event {
                SocketEvent::Received(next) => next,
                SocketEvent::WriterEnded => return End::WriterGone,
            },
            _ = ping.tick() => {
                if last_seen.elapsed() >= idle_timeout {
                    return End::Close(1001, "idle timeout");
                }
                // A quiet connection takes replaced rules here, within one ping interval.
                connection.follow_rules();
                let _ = outbox.push(Outgoing::Ping);
                continue;
            }
        };
        let now = tokio::time::Instant::now();
        if let Some(Ok(_)) = &next {
            last_seen = now;
        }
        // Messages that arrived together are handled together: what the socket already holds
        // is read without going back through the `select!` above, whose every round polls
        // (and drops) six futures, two of them cancellation tokens with a mutex each. A burst
        // is bounded so that shutdown, the timers, the overflow check and the writer still
        // come round.
        let mut next = Some(next);
        for _ in 0..BURST {
            let item = match next.take() {
                Some(item) => item,
                None => match ready_now(socket).await {
                    Some(item) => item,
                    None => break,
                },
            };
            // Most messages need no processor and are handled by plain calls; only one that
            // does builds the (large) future of the chain around it.
            match receive(shared, connection, sign_in, &mut rate, now, item) {
                Step::Done(Some(end)) => return end,
                Step::Done(None) => {}
                Step::Process(ctx, processor) => {
                    let processing = std::pin::pin!(process(shared, ctx, processor));
                    while_writing(socket, writer, metrics, processing).await;
                }
            }
            // Answers to this very connection (an error, a reply) may have overflowed it.
            if connection.outbox().is_overflowed() {
                return End::SlowConsumer;
            }
            since_yield += 1;
        }
        if since_yield >= YIELD_AFTER {
            since_yield = 0;
            tokio::task::yield_now().await;
        } else {
            // Frames served from buffers never reach the socket's own budget check: count
            // them against the task's budget here, so that a connection that always has data
            // ready still lets the other tasks of its thread run.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// The next item of `stream` if it is ready now, without waiting. Polled with the task's own
/// waker (not a no-op one, as `now_or_never` would): a layer underneath may keep the waker of
/// the last poll, and must not be left with one that wakes nobody.
async fn ready_now<T: Transport>(socket: &mut T) -> Option<Next> {
    std::future::poll_fn(|cx| match socket.poll_next(cx) {
        std::task::Poll::Ready(item) => std::task::Poll::Ready(Some(item)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// The close code and reason of a connection that the server API disconnected
/// (`POST /server/disconnect`): a code of lhttp's own (4000-4999 are for applications), which
/// the SDKs take as "do not reconnect".
pub(crate) const DISCONNECTED: (u16, &str) = (
    lhttp_proto::names::CLOSE_DISCONNECTED,
    "disconnected by the server",
);

/// Most messages handled in one turn of the reading loop (see [`read_loop`]).
const BURST: usize = 64;

/// A connection that always has messages ready gives its thread away after this many, even
/// with budget left. The tasks its messages woke (the subscribers' writers) wait on the same
/// thread meanwhile, in a slot no other thread may take them from: left to the budget alone
/// (thousands of messages) their queues grow by as much, the subscribers' sockets go quiet,
/// and a full outbox cuts a subscriber off. Yielding this often kept the pipeline moving:
/// 1 → 1 median 0.88M → 1.10M msg/s (docs/performance.md, "Design decisions and the
/// measurements behind them"); every 64 messages was worse than not yielding (a write per few
/// messages).
const YIELD_AFTER: usize = 1024;

/// What is left to do with a received item once [`receive`] returns.
enum Step<'c, 's> {
    /// Handled; `Some` ends the connection.
    Done(Option<End>),
    /// The before-filters passed and a processor is registered for the command: [`process`]
    /// runs it and the rest of the chain.
    Process(Context<'c>, &'s dyn Processor),
}

/// Handles one item of the WebSocket stream, received at `now`, as far as it can without
/// waiting.
fn receive<'c, 's>(
    shared: &'s Sessions,
    connection: &'c mut Connection,
    sign_in: &mut SignIn,
    rate: &mut MessageRate,
    now: Instant,
    next: Next,
) -> Step<'c, 's> {
    let data = match next {
        None => return Step::Done(Some(End::Peer)),
        Some(Ok(Received::Text(data) | Received::Binary(data))) => {
            add(&shared.metrics.messages_received, 1);
            add(&shared.metrics.bytes_received, data.len() as u64);
            connection.follow_rules();
            shared
                .metrics
                .message_sizes
                .observe(&crate::metrics::MESSAGE_SIZE_BOUNDS, data.len() as u64);
            Some(data)
        }
        // A ping (answered by the WebSocket layer), a pong or a fragment: the client is alive,
        // noted by the caller.
        Some(Ok(Received::Control)) => None,
        Some(Err(error)) => return Step::Done(Some(protocol_error(shared, &error))),
    };
    // Every frame takes a token, not only messages: floods of pings or of empty fragments
    // meet the limit too. Over the rate, a message is answered 429 unread; a control frame has
    // nothing to answer, but counts towards closing the connection all the same.
    let verdict = rate.check(now);
    if verdict != Verdict::Accept {
        add(&shared.metrics.rate_limited, 1);
        if let Some(data) = &data {
            let rejection = Rejection::limited("message rate limit exceeded: slow down");
            connection.send_rejection(&rejection, salvage_request_id(data).as_ref());
        }
        if verdict == Verdict::Close {
            add(&shared.metrics.rate_limit_closes, 1);
            return Step::Done(Some(End::Close(1008, "message rate limit exceeded")));
        }
        return Step::Done(None);
    }
    match data {
        Some(data) => dispatch(shared, connection, sign_in, data),
        None => Step::Done(None),
    }
}

/// Maps a WebSocket-level error to the close the client gets.
fn protocol_error(shared: &Sessions, error: &ReadError) -> End {
    let broken = match error {
        ReadError::Violation(broken) => broken,
        ReadError::Busy => {
            add(&shared.metrics.unfinished_budget_closes, 1);
            tracing::debug!("unfinished messages over the server's budget");
            return End::Close(1013, "server busy: too many unfinished messages");
        }
        ReadError::Overdue => {
            add(&shared.metrics.message_timeouts, 1);
            return End::Close(1008, "message not completed in time");
        }
        ReadError::Io(_) => return End::Peer,
    };
    add(&shared.metrics.protocol_closes, 1);
    End::Close(broken.code, broken.reason)
}

/// Parses one received message and runs it through the chain, answering every outcome that is
/// not a success the client can see: malformed (400/413), refused by a filter or processor,
/// unknown command (404), and, for a message with a `request-id`, success (`ok`). Stops before
/// a processor, which may wait: the caller runs it with [`process`].
fn dispatch<'c, 's>(
    shared: &'s Sessions,
    connection: &'c mut Connection,
    sign_in: &mut SignIn,
    data: Bytes,
) -> Step<'c, 's> {
    // A cheap reference-counted copy, to look for a request-id if parsing fails.
    let data_copy = data.clone();
    let message = match Message::parse_with(data, &shared.parser_limits) {
        Ok(message) => message,
        Err(error) => {
            let request_id = salvage_request_id(&data_copy);
            connection.send_rejection(&Rejection::from(error), request_id.as_ref());
            return Step::Done(None);
        }
    };
    // `auth` is answered here, before any filter, so no filter or processor sees the token.
    if message.command() == AUTH {
        let request_id = message.headers().get_text(names::REQUEST_ID).cloned();
        match authenticate(shared, connection, sign_in, &message) {
            Ok(()) => {
                if let Some(id) = request_id {
                    let _ = connection.send(&lhttp_proto::answer::ok(id));
                }
            }
            Err(rejection) => {
                connection.send_rejection(&rejection, request_id.as_ref());
                // A client that keeps presenting bad tokens makes the server verify each one
                // (or, throttled, answer each): after a few it has no reason to stay.
                sign_in.failures = sign_in.failures.saturating_add(1);
                let limit = shared.config().limits.auth_failures_per_connection;
                if limit != 0 && sign_in.failures >= limit {
                    add(&shared.metrics.auth_failure_closes, 1);
                    return Step::Done(Some(End::Close(1008, "too many failed authentications")));
                }
            }
        }
        return Step::Done(None);
    }
    if sign_in.required_by.is_some() {
        let request_id = message.headers().get_text(names::REQUEST_ID).cloned();
        let rejection = Rejection::new(
            401,
            "authentication required: send auth with a token header first",
        );
        connection.send_rejection(&rejection, request_id.as_ref());
        return Step::Done(None);
    }
    let mut ctx = Context::new(connection, message);
    if let Err(rejection) = run_before(shared, &mut ctx) {
        answer(&ctx, Err(rejection));
        return Step::Done(None);
    }
    if let Some(processor) = shared.commands.processors.get(ctx.message().command()) {
        return Step::Process(ctx, processor.as_ref());
    }
    let outcome = run_after(shared, &mut ctx);
    answer(&ctx, outcome);
    Step::Done(None)
}

/// The rest of the chain for a message that has a processor: the processor, then the
/// after-filters.
async fn process(shared: &Sessions, mut ctx: Context<'_>, processor: &dyn Processor) {
    ctx.set_handled();
    let outcome = match processor.on_message(&mut ctx).await {
        Ok(()) => run_after(shared, &mut ctx),
        Err(rejection) => Err(rejection),
    };
    answer(&ctx, outcome);
}

/// Answers the outcome of the chain (see [`dispatch`]).
fn answer(ctx: &Context<'_>, outcome: Result<(), Rejection>) {
    let request_id = ctx.request_id_text().cloned();
    let outcome = match outcome {
        Ok(()) if !ctx.is_handled() => Err(Rejection::not_found(
            "unknown command: no processor is registered for it and it has no built-in header",
        )),
        other => other,
    };
    match outcome {
        Err(rejection) => ctx
            .connection()
            .send_rejection(&rejection, request_id.as_ref()),
        Ok(()) => {
            if let (Some(id), false) = (request_id, ctx.has_replied()) {
                let _ = ctx.connection().send(&lhttp_proto::answer::ok(id));
            }
        }
    }
}

/// The command that authenticates a connection or refreshes its token.
const AUTH: &str = "auth";

/// Handles `LHTTP/1.0 auth` with a `token` header: a valid token authenticates the connection
/// (or, for the same user, replaces its token and so postpones its expiry); anything else is
/// refused with 401 and changes nothing.
fn authenticate(
    shared: &Sessions,
    connection: &mut Connection,
    sign_in: &mut SignIn,
    message: &Message,
) -> Result<(), Rejection> {
    let token = message
        .header("token")
        .ok_or_else(|| Rejection::new(401, "auth needs a token header"))?;
    let ip = connection.peer().ip();
    let admitted = match ip {
        Some(ip) => shared.security.throttle.admit(ip, token, Instant::now()),
        None => shared.security.throttle.admit_local(token),
    };
    admitted.map_err(|refusal| {
        let counter = match refusal {
            Refusal::Throttled => &shared.metrics.auth_throttled,
            Refusal::TooLong => &shared.metrics.auth_failures,
        };
        add(counter, 1);
        Rejection::new(refusal.status(), refusal.reason())
    })?;
    let user = shared.security.verifier.load().verify(token).map_err(|e| {
        add(&shared.metrics.auth_failures, 1);
        if let Some(ip) = ip {
            shared.security.throttle.failed(ip, Instant::now());
        }
        Rejection::new(401, e.to_string())
    })?;
    // A new identity on a live connection would inherit subscriptions and state made for
    // another user; changing user takes a new connection.
    if connection.user().is_some_and(|old| old.id() != user.id()) {
        return Err(Rejection::new(
            401,
            "token is for another user; reconnect to change user",
        ));
    }
    tracing::debug!(connection = %connection.id(), user = user.id(), "authenticated");
    sign_in.authenticated(shared, &user);
    connection.set_user(Some(user));
    Ok(())
}

/// Finds a well-formed `request-id` header in a message that failed to parse, so that even a
/// malformed request's error can be matched to it. Looks only at the head, line by line.
fn salvage_request_id(data: &Bytes) -> Option<lhttp_proto::Text> {
    let head_end = data
        .windows(2)
        .position(|w| w == b"\n\n" || w == b"\n\r")
        .unwrap_or(data.len());
    data[..head_end]
        .split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (name, value) = line.split_once(':')?;
            if !name.trim().eq_ignore_ascii_case("request-id") {
                return None;
            }
            let message = Message::builder("x")
                .header("request-id", value.trim_end_matches('\r').to_owned())
                .build()
                .ok()?;
            message.headers().get_text("request-id").cloned()
        })
}

/// The chain is the before-filters in order, the processor, the after-filters in reverse
/// order. This is its first part.
fn run_before(shared: &Sessions, ctx: &mut Context<'_>) -> Result<(), Rejection> {
    shared
        .commands
        .filters
        .iter()
        .try_for_each(|filter| filter.before(ctx))
}

/// The last part of the chain (see [`run_before`]).
fn run_after(shared: &Sessions, ctx: &mut Context<'_>) -> Result<(), Rejection> {
    shared
        .commands
        .filters
        .iter()
        .rev()
        .try_for_each(|filter| filter.after(ctx))
}
