//! [`Subscription`] and [`Incoming`]: streams of messages the connection task hands over.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use lhttp_proto::Message;
use tokio::sync::{mpsc, oneshot};

use crate::{
    Error,
    connection::{Command, ListenerId},
    history::{Event, Gap},
};

/// The receiving end shared by [`Subscription`] and [`Incoming`]; deregisters itself when
/// dropped.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) id: ListenerId,
    /// Messages, and for subscriptions the gaps between them.
    pub(crate) rx: mpsc::Receiver<Event>,
    /// Messages the connection task could not queue because `rx` was full; shared with it.
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) drops: mpsc::UnboundedSender<ListenerId>,
    pub(crate) request_timeout: Duration,
    /// False once deregistered explicitly, so that `Drop` does not do it again.
    pub(crate) active: bool,
    /// Gaps received, whether read as events or passed over by `recv`.
    pub(crate) gaps: u64,
}

impl Feed {
    /// The next message, passing over (and counting) gaps.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Event::Message(message))) => return Poll::Ready(Some(message)),
                Poll::Ready(Some(Event::Gap(gap))) => self.passed_over(&gap),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn passed_over(&mut self, gap: &Gap) {
        self.gaps += 1;
        tracing::debug!(channel = gap.channel, "messages lost while disconnected");
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if self.active {
            // Fails only when the connection task has ended, and then there is nothing to undo.
            let _ = self.drops.send(self.id);
        }
    }
}

/// Messages published to some channels, as a [`Stream`]; from [`crate::Client::subscribe`].
///
/// Each message arrives as the server relays it: the publisher's command, headers and body,
/// with `publish` set to the channel it came through. The stream ends when the client is
/// closed for good.
///
/// **Slow readers:** up to `subscription_capacity` messages (default 1024) wait for the
/// application; when that buffer is full, newer messages for this subscription are dropped
/// and counted in [`Subscription::dropped`]. Nothing else slows down, and memory stays bounded.
///
/// Dropping a subscription unsubscribes (in the background); [`Subscription::unsubscribe`]
/// does it and waits for the server.
///
/// **Reconnections:** the subscription is restored after every reconnection. On a channel
/// that keeps history (its messages carry `offset` and `epoch`) the client asks for the
/// messages published meanwhile, so that the stream has every message once, in order; when
/// the server no longer has them all, [`Subscription::recv_event`] returns a [`Gap`] at that
/// point (and [`Subscription::recv`] passes over it, counting it in [`Subscription::gaps`]).
///
/// ```no_run
/// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
/// use futures_util::StreamExt;
/// let mut room = client.subscribe(["chatroom"]).await?;
/// while let Some(message) = room.next().await {
///     println!("{}", String::from_utf8_lossy(message.body()));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    feed: Feed,
    channels: Vec<String>,
}

impl Subscription {
    pub(crate) fn new(feed: Feed, channels: Vec<String>) -> Self {
        Subscription { feed, channels }
    }

    /// The next message or gap, or `None` once the client is closed. A [`Gap`] comes where
    /// messages of a channel were lost while the client was disconnected: after the messages
    /// before it, before those published since.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// use lhttp_client::{Event, HistoryQuery};
    /// let mut room = client.subscribe_recent("chat.lobby", 50).await?;
    /// while let Some(event) = room.recv_event().await {
    ///     match event {
    ///         Event::Message(message) => println!("{}", String::from_utf8_lossy(message.body())),
    ///         Event::Gap(gap) => {
    ///             // Some messages are gone: show what the server still keeps.
    ///             let kept = client.history(&gap.channel, HistoryQuery::Recent(50)).await?;
    ///             println!("(reloaded {} messages)", kept.messages.len());
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_event(&mut self) -> Option<Event> {
        let event = self.feed.rx.recv().await?;
        if let Event::Gap(_) = event {
            self.feed.gaps += 1;
        }
        Some(event)
    }

    /// How many gaps this subscription has had (see [`Subscription::recv_event`]), read or not.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let sub = client.subscribe(["chat.lobby"]).await?;
    /// assert_eq!(sub.gaps(), 0);
    /// # Ok(()) }
    /// ```
    pub fn gaps(&self) -> u64 {
        self.feed.gaps
    }

    /// The channels this subscription receives.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let sub = client.subscribe(["a", "b"]).await?;
    /// assert_eq!(sub.channels(), ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// How many messages were dropped because this subscription's buffer was full.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let sub = client.subscribe(["ticks"]).await?;
    /// if sub.dropped() > 0 {
    ///     eprintln!("reading too slowly: {} messages lost", sub.dropped());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.feed.dropped.load(Ordering::Relaxed)
    }

    /// The next message, or `None` once the client is closed; the same as
    /// `StreamExt::next`. Gaps are passed over (and counted, [`Subscription::gaps`]).
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let mut sub = client.subscribe(["ticks"]).await?;
    /// let first = sub.recv().await;
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.feed.poll_message(cx)).await
    }

    /// Unsubscribes and waits until the server confirmed (when this was the client's last
    /// subscription to a channel). Nothing more arrives on this subscription.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let sub = client.subscribe(["ticks"]).await?;
    /// sub.unsubscribe().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.feed.active = false;
        let (answer, result) = oneshot::channel();
        let command = Command::Unsubscribe {
            id: self.feed.id,
            answer: Some(answer),
        };
        if self.feed.commands.send(command).await.is_err() {
            // The connection task is gone: nothing is subscribed anywhere.
            return Ok(());
        }
        let timeout = self.feed.request_timeout;
        match tokio::time::timeout(timeout, result).await {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(_)) => Ok(()),
            Ok(Ok(answer)) => answer,
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.feed.poll_message(cx)
    }
}

/// Messages that are neither answers nor subscription deliveries, as a [`Stream`]; from
/// [`crate::Client::incoming`]. Buffered and dropped like a [`Subscription`].
///
/// ```no_run
/// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
/// use futures_util::StreamExt;
/// let mut incoming = client.incoming().await?;
/// let next = incoming.next().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Incoming {
    feed: Feed,
}

impl Incoming {
    pub(crate) fn new(feed: Feed) -> Self {
        Incoming { feed }
    }

    /// How many messages were dropped because the buffer was full.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let incoming = client.incoming().await?;
    /// assert_eq!(incoming.dropped(), 0);
    /// # Ok(()) }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.feed.dropped.load(Ordering::Relaxed)
    }

    /// The next message, or `None` once the client is closed.
    ///
    /// ```no_run
    /// # async fn demo(client: lhttp_client::Client) -> Result<(), lhttp_client::Error> {
    /// let mut incoming = client.incoming().await?;
    /// let next = incoming.recv().await;
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.feed.poll_message(cx)).await
    }
}

impl Stream for Incoming {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.feed.poll_message(cx)
    }
}
