//! The per-thread scratch buffer that reads land in while a connection holds no unread bytes,
//! so that a quiet connection holds no read buffer of its own (see `websocket::socket` and
//! `stream`).

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::ReadError;

/// Bytes read from the socket per syscall (at most, but for a large frame); also the size of
/// buffer a connection holds, uncharged, for a frame split across reads.
pub(crate) const SIZE: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per runtime thread; used only inside one poll, never across an await,
    /// so connections on the same thread never see each other's bytes.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SIZE].into_boxed_slice());
}

/// What [`read`] gives: the first item, if whole, and the bytes left over, if any.
pub(crate) type Read<T> = (Option<T>, Option<BytesMut>);

/// Reads from `io` into the thread's scratch buffer and lets `decode` take its first item
/// from the bytes read (it returns the item, if whole, and the bytes it used). Gives the item
/// and, when bytes are left over, a buffer of the connection's own holding them (at least
/// [`SIZE`] bytes of capacity, for the next reads). The end of the stream is an error: the
/// caller holds no unfinished bytes, but the client went away.
pub(crate) fn read<S, T>(
    io: &mut S,
    cx: &mut Context<'_>,
    decode: impl FnOnce(&[u8]) -> Result<(Option<T>, usize), ReadError>,
) -> Poll<Result<Read<T>, ReadError>>
where
    S: AsyncRead + Unpin,
{
    let mut decode = Some(decode);
    let via_scratch = SCRATCH.try_with(|scratch| {
        // Never re-entered within one thread; if it were, the read below goes direct.
        let mut scratch = scratch.try_borrow_mut().ok()?;
        let mut filled = ReadBuf::new(&mut scratch[..]);
        Some(match Pin::new(&mut *io).poll_read(cx, &mut filled) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            Poll::Ready(Ok(())) if filled.filled().is_empty() => {
                Poll::Ready(Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())))
            }
            Poll::Ready(Ok(())) => {
                let bytes = filled.filled();
                let decode = decode.take().expect("called once");
                Poll::Ready(decode(bytes).map(|(item, used)| {
                    let rest = (used < bytes.len()).then(|| {
                        let mut rest = BytesMut::with_capacity(SIZE.max(bytes.len() - used));
                        rest.extend_from_slice(&bytes[used..]);
                        rest
                    });
                    (item, rest)
                }))
            }
        })
    });
    match via_scratch {
        Ok(Some(poll)) => poll,
        // The thread is exiting (or a read re-entered): the caller reads into a buffer of its
        // own, which this one is.
        Ok(None) | Err(_) => Poll::Ready(Ok((None, Some(BytesMut::with_capacity(SIZE))))),
    }
}

/// Reads more of `io` into `buf`, a connection's own buffer (with room reserved by the
/// caller). The end of the stream is an error: a frame was unfinished. When the socket has
/// nothing and `buf` holds nothing, `buf` is given back (the client has gone quiet, perhaps for
/// a long time), so that a quiet connection holds no buffer.
pub(crate) fn read_more<S>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<Result<(), ReadError>>
where
    S: AsyncRead + Unpin,
{
    match tokio_util::io::poll_read_buf(Pin::new(io), cx, buf) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))),
        Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
        Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
        Poll::Pending => {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            Poll::Pending
        }
    }
}
