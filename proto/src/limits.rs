//! Resource bounds for a sealroom gRPC server (the agent's attestation service, the key broker), so that no
//! peer — however many connections it opens, however slowly or wrongly it speaks HTTP/2 — can make the server
//! hold unbounded memory or stop answering others.
//!
//! [`ServerLimits`] gathers every bound in one documented value. A server applies it in two places:
//! [`ServerLimits::apply`] on the `tonic` builder (HTTP/2 settings, keepalive, per-request timeout) and
//! [`ServerLimits::incoming`] around its listener (a cap on open connections and a deadline for the client's
//! connection preface). Message sizes are per service in tonic: pass [`ServerLimits::max_request_bytes`] to the
//! generated server's `max_decoding_message_size`.
//!
//! What each bound stops:
//! - `max_connections`: a connection flood (each connection costs a task, buffers, HPACK tables). Connections
//!   over the cap are closed as soon as they are accepted; they never reach HTTP/2.
//! - `preface_timeout`: slow-loris at the start of a connection (a partial client preface, or nothing at
//!   all): the connection is closed when its first 24 bytes have not arrived in time.
//! - `keepalive_interval` + `keepalive_timeout`: a peer that completes the preface and then stalls (a partial
//!   HEADERS frame, an unread response): the server pings, and closes the connection if the ping is not
//!   answered in time.
//! - `max_concurrent_streams`, `max_header_list_size`, `max_frame_size`: the HTTP/2 work one connection may
//!   demand at once (SETTINGS the server advertises and enforces).
//! - `request_timeout`: a request that does not finish (its handler's time included) fails with
//!   `DEADLINE_EXCEEDED`-like cancellation instead of holding its stream.
//! - `max_connection_age`: no connection lives forever; clients reconnect (gRPC clients do so transparently).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, RFC 9113 §3.4).
pub const HTTP2_PREFACE_LEN: u64 = 24;

/// Every bound of one gRPC server. [`ServerLimits::default`] holds the values sealroom's servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at once (per listener); further ones are closed on accept. Default 1024.
    pub max_connections: usize,
    /// Time a new connection has to send the 24-byte HTTP/2 client preface. Default 5 s.
    pub preface_timeout: Duration,
    /// HTTP/2 streams (requests in flight) per connection (SETTINGS_MAX_CONCURRENT_STREAMS). Default 32.
    pub max_concurrent_streams: u32,
    /// Time for one request, handler included. Default 30 s.
    pub request_timeout: Duration,
    /// Idle time after which the server pings the peer (HTTP/2 PING). Default 10 s.
    pub keepalive_interval: Duration,
    /// Time the peer has to answer a ping before the connection is closed. Default 5 s.
    pub keepalive_timeout: Duration,
    /// Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE), bytes. Default 16 KiB.
    pub max_header_list_size: u32,
    /// Largest HTTP/2 frame payload accepted (SETTINGS_MAX_FRAME_SIZE), bytes; 16 KiB is the protocol minimum.
    pub max_frame_size: u32,
    /// Largest request message a service decodes, bytes (apply per service). Default 4 MiB.
    pub max_request_bytes: usize,
    /// Age after which a connection is closed gracefully (then forcibly after the same time again).
    /// Default 30 min.
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            preface_timeout: Duration::from_secs(5),
            max_concurrent_streams: 32,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            max_header_list_size: 16 * 1024,
            max_frame_size: 16 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            max_connection_age: Duration::from_secs(30 * 60),
        }
    }
}

impl ServerLimits {
    /// Sets the HTTP/2 and per-request bounds on a tonic server builder.
    #[must_use]
    pub fn apply<L>(&self, builder: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        builder
            .max_concurrent_streams(self.max_concurrent_streams)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_header_list_size(self.max_header_list_size)
            .max_frame_size(self.max_frame_size)
            // Streams the peer resets before the server accepts them ("rapid reset", CVE-2023-44487).
            .http2_max_pending_accept_reset_streams(Some(64))
            .max_connection_age(self.max_connection_age)
            .max_connection_age_grace(self.max_connection_age)
    }

    /// Wraps a listener's connection stream: at most `max_connections` open at once (the rest are closed on
    /// accept and counted in `stats`), each closed unless its HTTP/2 preface arrives within
    /// `preface_timeout`. Accept errors are passed on unchanged.
    pub fn incoming<S, IO, E>(&self, inner: S, stats: Arc<LimitStats>) -> LimitedIncoming<S>
    where
        S: Stream<Item = Result<IO, E>>,
    {
        LimitedIncoming {
            inner,
            permits: Arc::new(Semaphore::new(self.max_connections)),
            preface_timeout: self.preface_timeout,
            stats,
        }
    }
}

/// Counters of what the limits refused (for logs and tests).
#[derive(Debug, Default)]
pub struct LimitStats {
    /// Connections closed on accept because `max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Connections closed because their preface did not arrive in time.
    pub preface_timeouts: AtomicU64,
}

impl LimitStats {
    /// Connections refused so far.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    /// Preface timeouts so far.
    #[must_use]
    pub fn timed_out(&self) -> u64 {
        self.preface_timeouts.load(Ordering::Relaxed)
    }
}

/// The connection stream of [`ServerLimits::incoming`].
#[derive(Debug)]
pub struct LimitedIncoming<S> {
    inner: S,
    permits: Arc<Semaphore>,
    preface_timeout: Duration,
    stats: Arc<LimitStats>,
}

impl<S, IO, E> Stream for LimitedIncoming<S>
where
    S: Stream<Item = Result<IO, E>> + Unpin,
{
    type Item = Result<LimitedIo<IO>, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = Pin::new(&mut self.inner).poll_next(cx);
            match next {
                Poll::Ready(Some(Ok(io))) => match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(permit) => {
                        return Poll::Ready(Some(Ok(LimitedIo {
                            io,
                            _permit: permit,
                            preface_deadline: Some(Box::pin(tokio::time::sleep(self.preface_timeout))),
                            read_so_far: 0,
                            stats: Arc::clone(&self.stats),
                        })));
                    }
                    // Over the cap: dropping the stream closes it; look at the next one.
                    Err(_) => {
                        self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                        drop(io);
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One accepted connection under [`ServerLimits`]: holds its slot until dropped and fails its reads once the
/// preface deadline passes with fewer than [`HTTP2_PREFACE_LEN`] bytes received.
#[derive(Debug)]
pub struct LimitedIo<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    preface_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read_so_far: u64,
    stats: Arc<LimitStats>,
}

impl<IO: Connected> Connected for LimitedIo<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LimitedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.preface_deadline.as_mut() {
            // Polled before the read so that the timer wakes this task even when the peer sends nothing.
            if deadline.as_mut().poll(cx).is_ready() {
                this.stats.preface_timeouts.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no complete HTTP/2 preface within the preface timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.preface_deadline.is_some() {
            let got = u64::try_from(buf.filled().len().saturating_sub(before)).unwrap_or(u64::MAX);
            this.read_so_far = this.read_so_far.saturating_add(got);
            if this.read_so_far >= HTTP2_PREFACE_LEN {
                this.preface_deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LimitedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
