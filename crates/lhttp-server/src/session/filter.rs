//! [`Filter`]: hooks that run for every message, whatever its command.

use crate::{Connection, Context, Rejection};

/// Runs around every message's processor, for every command (registered or not).
///
/// The chain is the built-in filters (multipart check, upstream, subscribe/unsubscribe/publish)
/// followed by user filters in registration order:
/// - `on_open` runs in chain order when a connection opens; a rejection sends the `error`
///   message and closes the connection with code 1008.
/// - `before` runs in chain order, then the processor, then `after` in **reverse** chain order,
///   so each filter wraps everything registered after it. The built-in subscribe and
///   unsubscribe run first (in `before`) and the built-in publish runs last (in `after`): a user
///   filter or processor can inspect, change or veto a message before it is published.
/// - A rejection from any hook answers the client with an `error` message and skips the rest
///   of the chain.
/// - `on_close` runs in reverse chain order when the connection ends, after the processors'
///   `on_close`.
///
/// Filters are synchronous: they inspect and change messages. Slow work belongs in a
/// processor.
pub trait Filter: Send + Sync + 'static {
    /// A connection opened.
    fn on_open(&self, _connection: &mut Connection) -> Result<(), Rejection> {
        Ok(())
    }

    /// Before the processor.
    fn before(&self, _ctx: &mut Context<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    /// After the processor.
    fn after(&self, _ctx: &mut Context<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    /// A connection ended.
    fn on_close(&self, _connection: &mut Connection) {}
}
