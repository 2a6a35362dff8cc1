//! [`Processor`]: application code for one command.

use async_trait::async_trait;

use crate::{Connection, Context, Rejection};

/// Handles the messages of one command, registered with
/// [`crate::ServerBuilder::processor`].
///
/// Hooks run on the task of the connection they concern, so a slow `on_message` delays only
/// that connection's next message, never another client. Work that should not hold up even
/// this connection can be spawned with a [`crate::ConnectionHandle`] to answer later.
///
/// When the hooks run:
/// - `on_open`: for every registered processor, in registration order, once the WebSocket
///   handshake is done and the open filters accepted the connection; before its first message
///   is read.
/// - `on_message`: for each message whose command is the one registered, after the `before`
///   filters and before the `after` filters.
/// - `on_close`: for every registered processor, once the connection has ended for any reason
///   (including one that never sent a valid message), while its subscriptions still exist.
///
/// ```
/// use lhttp_server::{async_trait, Context, Processor, Rejection};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Processor for Echo {
///     async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection> {
///         let reply = ctx
///             .reply_builder()
///             .header("echoed", "true")
///             .body(ctx.message().body().clone())
///             .build()
///             .map_err(|e| Rejection::bad_request(e.to_string()))?;
///         let _ = ctx.reply(&reply);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// A connection was opened.
    async fn on_open(&self, _connection: &mut Connection) {}

    /// A message with this processor's command arrived. Returning a [`Rejection`] answers the
    /// client with an `error` message and skips the remaining filters (and the publish).
    async fn on_message(&self, ctx: &mut Context<'_>) -> Result<(), Rejection>;

    /// A connection ended.
    async fn on_close(&self, _connection: &mut Connection) {}
}
