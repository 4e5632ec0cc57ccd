//! Writes on plain sockets through direct system calls.
//!
//! tokio writes to a socket through the C library's `send` and `writev`, which are cancellation
//! points: each call also switches the thread's cancellation state on and off around the system
//! call. With the reads, that was about 1 % of the data plane's CPU time per proxied request
//! (bench/README.md, session 21). `rustix` makes the same system calls directly. The readiness
//! bookkeeping stays tokio's, through `try_io`, and behaves as tokio's own writes: a short write
//! means the socket's buffer is full, so its readiness is cleared and the next attempt waits for
//! the kernel's next event instead of making a call that would fail.
//!
//! Reads stay tokio's: they fill buffers whose spare room is not initialized, which only
//! `unsafe` code could hand to the kernel, and the workspace forbids it.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::task::{Context, Poll, ready};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A tokio socket whose write readiness can be awaited and used for calls of one's own.
pub(crate) trait Socket: AsFd {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_write_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }

            fn try_write_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                <$t>::try_io(self, Interest::WRITABLE, f)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// Runs one write when the socket is ready. The call returns how many bytes it wrote and how
/// many it was given; a short count clears the readiness (see the module's note).
fn poll_call<S: Socket>(
    s: &S,
    cx: &mut Context<'_>,
    mut call: impl FnMut() -> io::Result<(usize, usize)>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(s.poll_write_ready(cx))?;
        let mut moved = None;
        // `try_io` clears the readiness when the closure answers `WouldBlock`: for the kernel's
        // own EAGAIN, and for a short count, whose bytes are kept in `moved`.
        let r = s.try_write_io(|| {
            let (n, asked) = call()?;
            moved = Some(n);
            if n > 0 && n < asked {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match (moved, r) {
            (Some(n), _) => return Poll::Ready(Ok(n)),
            (None, Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                return Poll::Ready(Err(e));
            }
            // Not ready after all (EAGAIN): wait for the next event.
            (None, _) => {}
        }
    }
}

/// `send`, without SIGPIPE on a closed peer (as the standard library's own sockets do).
pub(crate) fn poll_write<S: Socket>(
    s: &S,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    poll_call(s, cx, || {
        let n = rustix::net::send(s.as_fd(), data, rustix::net::SendFlags::NOSIGNAL)?;
        Ok((n, data.len()))
    })
}

/// `writev` of all `bufs` (`send` when there is one).
pub(crate) fn poll_write_vectored<S: Socket>(
    s: &S,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    if let [one] = bufs {
        return poll_write(s, cx, one);
    }
    let asked = bufs.iter().map(|b| b.len()).sum();
    poll_call(s, cx, || {
        let n = rustix::io::writev(s.as_fd(), bufs)?;
        Ok((n, asked))
    })
}
