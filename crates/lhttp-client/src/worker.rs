//! Requests to channels and queue-group workers: [`Client::call`], [`Client::join_queue`],
//! [`Client::serve`] and the reply helpers.
//!
//! The server's side of this is in docs/protocol.md ("Requests", "Queue groups"): a request is
//! a publish with `reply-to`, answered exactly once (the reply, or an error with status 502,
//! 503 or 504); a queue-group member receives deliveries with `delivery-id`, answers on
//! `reply-to` and acknowledges with `ack`, which frees its credit.

use lhttp_proto::names;
use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use lhttp_proto::{Message, Text};
use tokio::{sync::oneshot, task::JoinSet};

use crate::{
    Client, Error, Subscription,
    connection::{self, Command, Worker},
};

/// Extra time the client waits beyond a request's server-side timeout, so that the server's
/// 504 (which names the cause) normally arrives before the client gives up on its own.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// What a handler of [`Client::serve`] answers: a status and a body, with headers.
#[derive(Debug, Clone)]
pub struct Reply {
    command: Text,
    status: u16,
    headers: Vec<(Text, Text)>,
    body: Bytes,
}

impl Reply {
    /// A reply with status 200 and `body`.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200, body)
    }

    /// A reply with `status` and `body`.
    pub fn status(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            command: Text::from_static("reply"),
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (for the HTTP gateway, `http-<name>` headers become response headers).
    pub fn header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the reply's command (default `reply`).
    pub fn command(mut self, command: impl Into<Text>) -> Reply {
        self.command = command.into();
        self
    }

    fn into_message(self, delivery: &Message, partial: bool) -> Result<Message, Error> {
        let reply_to = delivery
            .header(names::REPLY_TO)
            .ok_or_else(|| Error::InvalidChannel("the delivery has no reply-to".into()))?;
        let mut builder = Message::builder(self.command)
            .header("publish", reply_to.to_owned())
            .header(names::STATUS, self.status.to_string());
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        if partial {
            builder = builder.header("partial", "true");
        } else if let Some(id) = delivery.header("delivery-id") {
            builder = builder.header("ack", id.to_owned());
        }
        Ok(builder.body(self.body).build()?)
    }
}

impl Client {
    /// Sends a request to `channel` and waits for its one answer: the reply of a subscriber
    /// or queue-group member, or [`Error::Server`] with status 503 (nobody took it), 504 (no
    /// answer within the request timeout) or 502 (the worker holding it went away).
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let answer = client.call("users.lookup", "id=7").await?;
    /// println!("{}", String::from_utf8_lossy(answer.body()));
    /// # Ok(()) }
    /// ```
    pub async fn call(&self, channel: &str, body: impl Into<Bytes>) -> Result<Message, Error> {
        self.call_with(
            channel,
            "request",
            std::iter::empty::<(&str, &str)>(),
            body,
            self.request_timeout(),
        )
        .await
    }

    /// [`Client::call`] with a command, extra headers (for instance
    /// `("delivery", "at-least-once")`) and a timeout of its own.
    pub async fn call_with<N, V>(
        &self,
        channel: &str,
        command: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, Error>
    where
        N: Into<Text>,
        V: Into<Text>,
    {
        if !connection::plausible_channel(channel) {
            return Err(Error::InvalidChannel(channel.to_owned()));
        }
        let mut builder = Message::builder(command.to_owned())
            .header("publish", channel.to_owned())
            .header(names::REPLY_TO, "")
            .header("timeout", timeout.as_millis().max(1).to_string());
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let message = builder.body(body).build()?;
        self.request_within(message, timeout + TIMEOUT_MARGIN).await
    }

    /// Joins queue group `group` of `channel`, holding at most `credit` unacknowledged
    /// messages, and returns once the server confirmed. Each delivery must be answered with
    /// [`Client::reply`] or acknowledged with [`Client::ack`]. The membership is restored
    /// after a reconnect; dropping the subscription leaves the group.
    pub async fn join_queue(
        &self,
        channel: &str,
        group: &str,
        credit: usize,
    ) -> Result<Subscription, Error> {
        if !connection::plausible_channel(channel) {
            return Err(Error::InvalidChannel(channel.to_owned()));
        }
        // More credit than the buffer holds would let deliveries be dropped while they hold
        // credit, and the member would starve.
        let credit = credit.clamp(1, self.subscription_capacity());
        let id = self.fresh_listener_id();
        let (sink, feed) = self.feed(id);
        let (answer, result) = oneshot::channel();
        self.command(Command::Join {
            id,
            worker: Worker {
                channel: channel.to_owned(),
                group: group.to_owned(),
                credit,
                sink,
            },
            request_id: self.fresh_request_id(),
            answer,
        })
        .await?;
        let answer = self.wait(result).await?;
        Error::check_answer(answer)?;
        Ok(Subscription::new(feed, vec![channel.to_owned()]))
    }

    /// Answers `delivery` (a request received through a queue group or a subscription) with
    /// `reply`, and acknowledges it.
    pub async fn reply(&self, delivery: &Message, reply: Reply) -> Result<(), Error> {
        self.send(reply.into_message(delivery, false)?).await
    }

    /// Sends one part of a streamed answer to `delivery`; the answer ends with
    /// [`Client::reply`].
    pub async fn reply_partial(&self, delivery: &Message, reply: Reply) -> Result<(), Error> {
        self.send(reply.into_message(delivery, true)?).await
    }

    /// Acknowledges a queue-group delivery without answering it.
    pub async fn ack(&self, delivery: &Message) -> Result<(), Error> {
        let Some(id) = delivery.header("delivery-id") else {
            return Ok(());
        };
        let message = Message::builder("ack")
            .header("ack", id.to_owned())
            .build()?;
        self.send(message).await
    }

    /// Stops taking work from group `group` of `channel` and waits until everything it holds
    /// is acknowledged (the server's `drained`), at most `timeout`.
    pub async fn drain(&self, channel: &str, group: &str, timeout: Duration) -> Result<(), Error> {
        let message = Message::builder("drain")
            .header("drain", channel.to_owned())
            .header("queue", group.to_owned())
            .build()?;
        self.request_within(message, timeout).await.map(drop)
    }

    /// Serves requests of queue group `group` of `channel` with `handler`, at most `credit`
    /// at once, until the client closes. See [`Client::serve_until`].
    pub async fn serve<F, Fut>(
        &self,
        channel: &str,
        group: &str,
        credit: usize,
        handler: F,
    ) -> Result<(), Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.serve_until(channel, group, credit, handler, std::future::pending())
            .await
    }

    /// Serves requests of queue group `group` of `channel`: each delivery is passed to
    /// `handler` (at most `credit` run at once) and its [`Reply`] goes back to the requester,
    /// acknowledging the delivery; a delivery without `reply-to` is acknowledged when the
    /// handler returns. When `stop` completes, the worker drains: it takes no new work,
    /// finishes what it holds, and returns — a graceful restart loses nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::Reply;
    /// client
    ///     .serve_until("http.api", "workers", 8, |request| async move {
    ///         let path = request.header("path").unwrap_or("/").to_owned();
    ///         Reply::ok(format!("hello from {path}")).header("http-content-type", "text/plain")
    ///     }, async { let _ = tokio::signal::ctrl_c().await; })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_until<F, Fut>(
        &self,
        channel: &str,
        group: &str,
        credit: usize,
        handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut deliveries = self.join_queue(channel, group, credit).await?;
        let mut running = JoinSet::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                delivery = deliveries.recv() => {
                    let Some(delivery) = delivery else { break };
                    self.spawn_handler(&mut running, &handler, delivery);
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = &mut stop => {
                    // Keep handling what is in hand while the server waits for our acks.
                    let drain = self.drain(channel, group, Duration::from_secs(3600));
                    let mut drain = std::pin::pin!(drain);
                    loop {
                        tokio::select! {
                            result = &mut drain => {
                                while running.join_next().await.is_some() {}
                                return result;
                            }
                            delivery = deliveries.recv() => {
                                let Some(delivery) = delivery else { break };
                                self.spawn_handler(&mut running, &handler, delivery);
                            }
                            Some(_) = running.join_next(), if !running.is_empty() => {}
                        }
                    }
                    break;
                }
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }

    fn spawn_handler<F, Fut>(&self, running: &mut JoinSet<()>, handler: &Arc<F>, delivery: Message)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let client = self.clone();
        let handler = handler.clone();
        running.spawn(async move {
            let is_request = delivery.header(names::REPLY_TO).is_some();
            let reply = handler(delivery.clone()).await;
            let sent = if is_request {
                client.reply(&delivery, reply).await
            } else {
                client.ack(&delivery).await
            };
            if let Err(error) = sent {
                tracing::debug!(%error, "could not answer a queue delivery");
            }
        });
    }
}
