//! [`WriteBuffer`]: the encoded frames a connection's transport has to write, held only while
//! there are some.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::AsyncWrite;

/// Frames encoded one after another, of which the first `written` bytes are written; one
/// syscall writes a whole batch. Given back by [`WriteBuffer::release`] when empty, so an idle
/// connection holds no buffer.
#[derive(Debug, Default)]
pub(crate) struct WriteBuffer {
    bytes: Vec<u8>,
    written: usize,
}

impl WriteBuffer {
    /// Where the next frame is encoded (after the ones waiting).
    pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Encoded bytes not yet written.
    pub(crate) fn unwritten(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Makes room for `additional` more bytes of frames.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
    }

    /// Gives the allocation back if everything in it was written.
    pub(crate) fn release(&mut self) {
        if self.bytes.is_empty() {
            self.bytes = Vec::new();
        }
    }

    /// Bytes allocated, for tests of what an idle connection holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Writes everything encoded so far to `io`, then flushes it.
    pub(crate) fn poll_flush<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Keeps the capacity: more frames are likely to follow while the writer is busy.
        self.bytes.clear();
        self.written = 0;
        Pin::new(io).poll_flush(cx)
    }
}
