//! [`ReadAhead`]: the socket under each WebSocket connection, so that tungstenite's read
//! buffer can stay small for idle connections without costing a syscall per few hundred bytes
//! under load.
//!
//! tungstenite allocates its read buffer whole when the connection opens and reads at most that
//! much per call. Most connections are idle most of the time, so that buffer is kept small
//! ([`crate::http`]'s `READ_BUFFER`). To keep reads large anyway, each socket read goes into a
//! per-thread scratch buffer of [`SCRATCH`] bytes; what tungstenite has no room for yet is kept
//! in a per-connection spill buffer. While bytes keep coming, later reads go straight into the
//! spill buffer (no copy out of the scratch, no new allocation per read); the first read that
//! finds the socket empty gives it back. An idle connection therefore holds no read-ahead
//! memory at all, and a busy one reads up to [`SCRATCH`] bytes per syscall.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per syscall (at most), into the thread's scratch buffer.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per runtime thread; used only inside one `poll_read`, never across an
    /// await, so connections on the same thread never see each other's bytes.
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A socket whose reads go through a shared scratch buffer; see the module documentation.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read but not yet handed over; empty (and unallocated) most of the time.
    spill: BytesMut,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            spill: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.spill.is_empty() {
            if this.spill.capacity() == 0 {
                return this.poll_read_via_scratch(cx, buf);
            }
            // Busy: the bytes keep coming, so read straight into the spill buffer (its space
            // is reclaimed, not reallocated) rather than into the scratch and then a copy.
            this.spill.reserve(SCRATCH);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.spill) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // The socket has run dry (or ended): the connection may now be idle for a
                    // long time, so the buffer goes back.
                    this.spill = BytesMut::new();
                    return other.map_ok(|_| ());
                }
            }
        }
        let n = this.spill.len().min(buf.remaining());
        buf.put_slice(&this.spill[..n]);
        this.spill.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// A read on a connection that holds no spill buffer: up to [`SCRATCH`] bytes into the
    /// thread's scratch buffer, what `buf` has no room for into a new spill buffer, which is
    /// then kept while the bytes keep coming.
    fn poll_read_via_scratch(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let via_scratch = SCRATCH_BUFFER.try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return None;
            };
            let mut scratch = ReadBuf::new(&mut scratch[..]);
            Some(
                Pin::new(&mut self.inner)
                    .poll_read(cx, &mut scratch)
                    .map_ok(|()| {
                        let read = scratch.filled();
                        let n = read.len().min(buf.remaining());
                        buf.put_slice(&read[..n]);
                        if n < read.len() {
                            let mut spill = BytesMut::with_capacity(SCRATCH);
                            spill.extend_from_slice(&read[n..]);
                            self.spill = spill;
                        }
                    }),
            )
        });
        match via_scratch {
            Ok(Some(poll)) => poll,
            // The thread is exiting, or (never in this crate) a read re-entered: read directly.
            Ok(None) | Err(_) => Pin::new(&mut self.inner).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads get every byte in order, whatever sizes the socket delivers, and the spill
    /// buffer is released once the socket has nothing more.
    #[tokio::test]
    async fn small_reads_see_every_byte_and_release_the_spill() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(server);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut client = client;
        let writing = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client
            })
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        while got.len() < sent.len() {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, sent);
        let client = writing.await.unwrap();
        // Nothing more to read: the read waits, and the connection holds no spill memory.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            reader.read(&mut chunk),
        )
        .await;
        assert!(waiting.is_err(), "no bytes are left to read");
        assert_eq!(reader.spill.capacity(), 0, "an idle reader holds no memory");
        drop(client);
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 0, "end of stream");
    }
}
