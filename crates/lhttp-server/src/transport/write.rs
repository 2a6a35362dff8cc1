//! [`WriteBuffer`]: the encoded frames a connection's transport has to write, held only while
//! there are some.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::AsyncWrite;

/// Spare write buffers a thread keeps for the next connection it writes for.
const SPARE_BUFFERS: usize = 4;

/// A buffer larger than this (a batch of large frames) is freed rather than kept spare.
const SPARE_CAPACITY: usize = 128 * 1024;

thread_local! {
    /// Write buffers that connections on this thread gave back when they went idle. A fan-out
    /// wakes many writers in turn on one thread, each with a batch to write and nothing after
    /// it: with a buffer of its own each time, every batch was an allocation and a free of up
    /// to 64 KiB, encoded into memory no cache had seen. Handed on, the same few buffers stay
    /// warm: 1 -> 1,000 server CPU per delivery -20% (docs/performance.md, "Write buffers
    /// handed on").
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Frames encoded one after another, of which the first `written` bytes are written; one
/// syscall writes a whole batch. Given back by [`WriteBuffer::release`] when empty, so an idle
/// connection holds no buffer: it goes to its thread's spares, for the next connection with
/// something to write.
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

    /// Makes room for `additional` more bytes of frames, in a spare buffer of this thread's
    /// large enough if the connection holds none.
    pub(crate) fn reserve(&mut self, additional: usize) {
        if self.bytes.capacity() == 0 {
            // Only a spare that is large enough: growing one would copy its old bytes.
            let spare = SPARE.try_with(|spare| {
                let mut spare = spare.try_borrow_mut().ok()?;
                let fits = spare.iter().position(|b| b.capacity() >= additional)?;
                Some(spare.swap_remove(fits))
            });
            if let Ok(Some(spare)) = spare {
                self.bytes = spare;
            }
        }
        self.bytes.reserve(additional);
    }

    /// Gives the allocation back if everything in it was written: to this thread's spares, or
    /// to the allocator when they are full or it is large.
    pub(crate) fn release(&mut self) {
        if !self.bytes.is_empty() || self.bytes.capacity() == 0 {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() > SPARE_CAPACITY {
            return;
        }
        // On a thread that is exiting, or in a re-entered call, the buffer is simply freed.
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < SPARE_BUFFERS
            {
                spare.push(bytes);
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_handed_to_the_next_connection_that_writes_on_the_thread() {
        let mut first = WriteBuffer::default();
        first.reserve(10_000);
        first.bytes_mut().extend_from_slice(b"frames");
        // Not empty yet: nothing is given back.
        first.release();
        assert!(first.capacity() >= 10_000);
        first.bytes_mut().clear();
        first.release();
        assert_eq!(first.capacity(), 0, "an idle connection holds no buffer");

        let mut next = WriteBuffer::default();
        next.reserve(10);
        assert!(
            next.capacity() >= 10_000,
            "the spare buffer was not handed on: {}",
            next.capacity()
        );
        assert!(next.bytes_mut().is_empty(), "a spare buffer comes empty");
    }

    #[test]
    fn large_buffers_and_more_than_a_few_are_not_kept_spare() {
        let mut large = WriteBuffer::default();
        large.reserve(SPARE_CAPACITY + 1);
        large.release();
        let mut next = WriteBuffer::default();
        next.reserve(10);
        assert!(next.capacity() < SPARE_CAPACITY, "a large buffer was kept");

        let mut buffers: Vec<WriteBuffer> = (0..SPARE_BUFFERS + 3)
            .map(|_| {
                let mut buffer = WriteBuffer::default();
                buffer.reserve(1000);
                buffer
            })
            .collect();
        for buffer in &mut buffers {
            buffer.release();
        }
        let spares = SPARE.with(|spare| spare.borrow().len());
        assert_eq!(spares, SPARE_BUFFERS);
    }
}
