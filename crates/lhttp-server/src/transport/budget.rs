//! [`UnfinishedBudget`]: the bytes all connections together hold for messages that have not
//! fully arrived (`limits.unfinished_message_bytes`), and how long one may stay unfinished
//! (`limits.message_timeout_ms`).
//!
//! A client can announce a frame of the largest size and then send nothing: the server holds
//! a buffer for it until the message deadline or the idle timeout. Each connection is bounded
//! by the largest message; this bounds them all together. Only large buffers are charged: a
//! read buffer grown past [`super::scratch::SIZE`] for one frame, and the reassembly of a
//! fragmented message past the same size. Small messages, however they are split across
//! reads, never touch the counter, so the normal path pays nothing for it.

use std::{
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Duration,
};

/// The server-wide count of charged bytes; shared by every connection's socket.
#[derive(Debug)]
pub(crate) struct UnfinishedBudget {
    /// 0: no limit (still counted, for the gauge).
    max: usize,
    held: AtomicUsize,
    /// How long a message whose first byte arrived may take to complete; `None`: for ever.
    /// Kept here, with the server, rather than in each connection.
    timeout: Option<Duration>,
}

impl UnfinishedBudget {
    pub(crate) fn new(max: usize, timeout: Option<Duration>) -> UnfinishedBudget {
        UnfinishedBudget {
            max,
            held: AtomicUsize::new(0),
            timeout,
        }
    }

    /// How long a message may stay unfinished.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Charges `bytes` more, unless that would go over the limit (nothing is charged then).
    pub(crate) fn try_charge(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Relaxed);
        if self.max != 0 && before.saturating_add(bytes) > self.max {
            self.held.fetch_sub(bytes, Relaxed);
            return false;
        }
        true
    }

    /// Gives back `bytes` charged before.
    pub(crate) fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Relaxed);
    }

    /// Bytes charged now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}
