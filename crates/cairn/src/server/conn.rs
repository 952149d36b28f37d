//! Connection plumbing of `cairn serve`: the connection limit, the answer to
//! connections over it, the bound on a write the client does not take, and
//! closing sockets without resetting them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::metrics::Metrics;

/// The open connections, at most `--max-connections`.
pub struct Connections {
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

/// One open connection's slot, given back when it closes.
pub struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Connections {
    /// At most `max` (at least 1) connections, counted in `metrics`.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            metrics,
        }
    }

    /// A slot for a new connection, or `None` when all are taken.
    pub fn try_open(&self) -> Option<ConnectionSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        self.metrics.connection_opened();
        Some(ConnectionSlot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }
}

/// Open files kept for everything but connections: the database's files, the
/// node lock, logs, and the pipes of the shell runs the worker holds (a
/// quarter of a limit smaller than four times this).
const FILES_KEPT: u64 = 256;

/// The connections an open-file `limit` leaves room for.
fn room_for(limit: u64) -> usize {
    let kept = FILES_KEPT.min(limit / 4);
    usize::try_from(limit - kept).unwrap_or(usize::MAX).max(1)
}

/// The most connections this process can hold open: its open-file limit is
/// raised as far as the system lets (to the hard limit; macOS caps an
/// unlimited one at `OPEN_MAX`, 10,240), since a shell's soft 1024 would
/// stop `accept` near `--max-connections`' default and clients would hang in
/// the backlog rather than get the 503; `max` past what that leaves
/// ([`room_for`]) is lowered to it, said in a warning.
pub fn fit_to_open_files(max: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max;
    };
    let mut limit = soft;
    for want in [hard, hard.min(10_240)] {
        if want > limit && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
            limit = want;
            break;
        }
    }
    let room = room_for(limit);
    if max > room {
        tracing::warn!(
            max_connections = max,
            open_file_limit = limit,
            "--max-connections is past what the open-file limit leaves for connections; at most {room} are \
             held open (raise the limit, `ulimit -n`, for more)"
        );
        return room;
    }
    max
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// A connection over the limit: a 503 `unavailable` and close, so the client
/// knows to retry rather than hang in the listen backlog. The answer is written by
/// hand because the connection is never handed to hyper (that is the point).
pub async fn refuse_busy(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request head first: closing a socket with unread input resets it,
    // and the client would see a reset instead of the answer.
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    const BODY: &str = r#"{"error":{"code":"unavailable","message":"too many open connections; retry shortly"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// How long a closing connection keeps reading (and discarding) what the client
/// still sends, and how much of it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 * 1024 * 1024;

/// A connection's socket that closes gracefully: when the server is done with it
/// (an early 413, a timeout), the write side is shut and the client's unread
/// input is drained for a moment before the socket closes. Closing a socket with
/// unread input makes the kernel send a reset, and a reset makes the client's
/// kernel drop the answer it has not read yet (the "lingering close" of nginx and
/// Go's net/http). Hand-written: tokio and hyper leave socket closing to the caller.
///
/// Its writes are bounded too (`--send-timeout`): a write the client has not
/// taken a byte of for that long (a follower that stopped reading: its
/// receive window and this side's send buffer are full) fails with
/// `TimedOut`, hyper drops the connection, and its slot, task and buffers are
/// freed. Any byte taken starts the bound again, so a slow but steady reader
/// is served. Such a socket is reset rather than closed: the client stopped
/// reading, and a close would keep what is queued for it in the kernel until
/// the kernel gives up on it.
pub struct Lingering {
    stream: Option<TcpStream>,
    peer: SocketAddr,
    send_timeout: Duration,
    /// When a write left waiting gives up: made at the first wait, then
    /// reset at each new one.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A write is waiting (`stall` is armed) and none has gone through since.
    waiting: bool,
    /// What the socket held unsent when the wait began, or when the client
    /// last took some of it ([`unsent_bytes`]).
    unsent: Option<usize>,
    /// The bound passed: every write fails, and the socket is reset when dropped.
    timed_out: bool,
}

impl Lingering {
    /// Wrap a stream accepted from `peer`, its writes bounded by `send_timeout`.
    pub fn new(stream: TcpStream, peer: SocketAddr, send_timeout: Duration) -> Self {
        Self {
            stream: Some(stream),
            peer,
            send_timeout,
            stall: None,
            waiting: false,
            unsent: None,
            timed_out: false,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // Only `Drop` takes the stream out.
        Pin::new(self.stream.as_mut().expect("stream present until drop"))
    }

    /// A write's outcome under the bound: one that went through (or failed)
    /// ends the wait; one left waiting starts it, or fails once it has lasted
    /// `send_timeout` with the client taking nothing. A flush that is done
    /// ends no wait: on a socket it is always done, whatever the client took.
    /// A full socket takes a write again only once a third of its buffer
    /// (megabytes) has drained, which a slow reader may take longer than the
    /// bound to read: so when the bound passes, the socket's unsent bytes
    /// say whether the client took any since the wait began, and if it did
    /// the bound starts again.
    fn bounded<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>, progress: bool) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            if progress {
                self.waiting = false;
            }
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let mut stall = self
            .stall
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            stall.as_mut().reset(deadline);
            self.waiting = true;
            self.unsent = self.stream.as_ref().and_then(unsent_bytes);
        }
        while stall.as_mut().poll(cx).is_ready() {
            let left = self.stream.as_ref().and_then(unsent_bytes);
            match (self.unsent, left) {
                (Some(before), Some(left)) if left < before => {
                    // Taken, if slowly: the bound starts again.
                    self.unsent = Some(left);
                    stall.as_mut().reset(tokio::time::Instant::now() + self.send_timeout);
                }
                _ => {
                    self.stall = Some(stall);
                    return self.give_up();
                }
            }
        }
        self.stall = Some(stall);
        Poll::Pending
    }

    /// The bound passed with nothing taken: this write and every later one fail.
    fn give_up<T>(&mut self) -> Poll<io::Result<T>> {
        self.timed_out = true;
        tracing::info!(
            peer = %self.peer,
            "closing a connection whose client took nothing of its answer for {:?} (--send-timeout)",
            self.send_timeout
        );
        Poll::Ready(Err(self.send_timed_out()))
    }

    fn send_timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing of the answer for {:?}", self.send_timeout),
        )
    }
}

/// The bytes `stream` holds that its peer has not acknowledged (`SIOCOUTQ`),
/// or `None` where that cannot be read. Hand-written: one `ioctl`, which
/// neither tokio nor socket2 offers.
#[cfg(target_os = "linux")]
fn unsent_bytes(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut unsent: libc::c_int = 0;
    // SAFETY: `TIOCOUTQ` (`SIOCOUTQ` on a socket) writes one `int` to the
    // pointer it is given, and the descriptor is this stream's, open.
    let answered = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    if answered == 0 {
        usize::try_from(unsent).ok()
    } else {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn unsent_bytes(_stream: &TcpStream) -> Option<usize> {
    None
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.timed_out {
            return Poll::Ready(Err(self.send_timed_out()));
        }
        let polled = self.stream().poll_write(cx, buf);
        self.bounded(cx, polled, true)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.timed_out {
            return Poll::Ready(Err(self.send_timed_out()));
        }
        let polled = self.stream().poll_flush(cx);
        self.bounded(cx, polled, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.timed_out {
            return Poll::Ready(Err(self.send_timed_out()));
        }
        let polled = self.stream().poll_write_vectored(cx, bufs);
        self.bounded(cx, polled, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if self.timed_out {
            // Reset: what is queued for a client that stopped reading is dropped now.
            let _ = stream.set_zero_linger();
            return;
        }
        // Nothing waiting to be read: close at once (the common case).
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Ok(0) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return,
            Ok(_) => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(LINGER, async {
                let mut buf = vec![0u8; 64 * 1024];
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::room_for;

    /// A small limit keeps a quarter for files of its own, a large one 256:
    /// a soft 256 (macOS's) leaves most of it to connections, not one.
    #[test]
    fn an_open_file_limit_leaves_room_for_connections() {
        assert_eq!(room_for(256), 192);
        assert_eq!(room_for(300), 225);
        assert_eq!(room_for(1024), 768);
        assert_eq!(room_for(65_536), 65_280);
        assert_eq!(room_for(0), 1);
    }
}
