//! [`ReadAhead`]: the socket under each WebSocket connection, so that tungstenite's read
//! buffer can stay small for idle connections without costing a syscall per few hundred bytes
//! under load.
//!
//! tungstenite allocates its read buffer whole when the connection opens and reads at most that
//! much per call. Most connections are idle most of the time, so that buffer is kept small
//! ([`crate::http`]'s `READ_BUFFER`). To keep reads large anyway, each socket read goes into a
//! per-thread scratch buffer of [`SCRATCH`] bytes; what tungstenite has no room for yet is kept
//! in a per-connection spill buffer that exists only while it holds bytes. An idle connection
//! therefore holds no read-ahead memory at all, and a busy one reads up to [`SCRATCH`] bytes per
//! syscall.

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
        if !this.spill.is_empty() {
            let n = this.spill.len().min(buf.remaining());
            buf.put_slice(&this.spill[..n]);
            this.spill.advance(n);
            if this.spill.is_empty() {
                // Give the memory back: the next bytes may be a long time coming.
                this.spill = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let via_scratch = SCRATCH_BUFFER.try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return None;
            };
            let mut scratch = ReadBuf::new(&mut scratch[..]);
            Some(
                Pin::new(&mut this.inner)
                    .poll_read(cx, &mut scratch)
                    .map_ok(|()| {
                        let read = scratch.filled();
                        let n = read.len().min(buf.remaining());
                        buf.put_slice(&read[..n]);
                        if n < read.len() {
                            this.spill = BytesMut::from(&read[n..]);
                        }
                    }),
            )
        });
        match via_scratch {
            Ok(Some(poll)) => poll,
            // The thread is exiting, or (never in this crate) a read re-entered: read directly.
            Ok(None) | Err(_) => Pin::new(&mut this.inner).poll_read(cx, buf),
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
    /// buffer is released once drained.
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
        assert_eq!(
            reader.spill.capacity(),
            0,
            "a drained spill holds no memory"
        );
        drop(writing.await.unwrap());
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 0, "end of stream");
    }
}
