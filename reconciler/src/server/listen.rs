//! The accept loop: one task per connection, plain HTTP/1.1 or TLS, with graceful shutdown.
//!
//! Ours rather than `axum::serve` because the TLS layer must put the connection's client
//! certificate name ([`ClientCertName`]) on every request it carries, and because what a
//! connection may cost is enforced here, all set in [`ConnectionOptions`]:
//! - a cap on open connections: one over it is closed as soon as it is accepted (no TLS
//!   handshake, no read, no answer: the cheapest refusal there is; clients see a closed
//!   connection and retry, the agent with backoff);
//! - the TLS handshake, the request headers, an idle kept-alive connection and a request
//!   body that stops sending each have a timeout;
//! - every request carries [`ConnectionReads`], so a refusal can bound how much more of the
//!   connection is read (`limits::refuse`).
//!
//! Shutdown: when the `shutdown` future resolves the listener closes, every connection is
//! told to finish the request it is serving and close (hyper's graceful shutdown), and
//! [`serve`] returns once all have. Waiting claims and event polls answer at once because the
//! caller's shutdown future flips `AppState::shutdown` before it resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::identity::ClientCertName;

/// What connections may take. Defaults are sized for a Raspberry Pi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// How long a client may take to send a request's headers. hyper starts this clock
    /// when the connection is ready for a request, so on a kept-alive connection it also
    /// bounds the wait for the next one.
    pub header_read_timeout: Duration,
    /// How long a request body may bring less than [`BODY_PROGRESS_BYTES`] (while the
    /// server reads it) before the request is cut off and the connection closed.
    pub body_read_timeout: Duration,
    /// How long a connection may sit between requests (or before its first) without a byte.
    pub idle_timeout: Duration,
    /// How long a client may take to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Open connections at most; one more is closed as soon as it is accepted. Keep the
    /// process's file limit above it (the systemd unit's `LimitNOFILE=`).
    pub max_connections: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// What the listener has seen, for `/metrics`.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from every client connection (TLS: after decryption).
    pub bytes_read: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicUsize,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_refused: AtomicU64,
}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a connection whose reads a refusal capped stays open waiting for its answer to
/// be written, at most.
const CAPPED_LINGER: Duration = Duration::from_secs(5);

/// At most one warning about refused connections per this long (a flood must not flood
/// the log too).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown` resolves and every
/// open connection has finished its request.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    options: ConnectionOptions,
    traffic: Arc<Traffic>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Dropping the stream closes it: nothing read, nothing written.
            drop(stream);
            traffic.connections_refused.fetch_add(1, Ordering::Relaxed);
            refusals.refused(options.max_connections);
            continue;
        };
        let connection = Connection {
            app: app.clone(),
            http: Arc::clone(&http),
            watcher: graceful.watcher(),
            peer,
            options,
            _slot: OpenConnection::new(slot, Arc::clone(&traffic)),
            traffic: Arc::clone(&traffic),
        };
        tokio::spawn(connection.serve(stream, tls.clone()));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Rate-limits the warning about connections refused at the cap.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, cap: usize) {
        self.unlogged += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < REFUSAL_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            refused = self.unlogged,
            "{cap} connections are open (max_connections): closing new ones at once until \
             some close"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}

/// An accept error: a connection that failed before we took it is skipped; anything else
/// (out of file descriptors) is logged and waited out, as `axum::serve` does.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One of the `max_connections` slots, held for the connection's life.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    traffic: Arc<Traffic>,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit, traffic: Arc<Traffic>) -> Self {
        traffic.connections_open.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            traffic,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.traffic
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection.
struct Connection {
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    watcher: Watcher,
    peer: SocketAddr,
    options: ConnectionOptions,
    _slot: OpenConnection,
    traffic: Arc<Traffic>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        // Small JSON answers and long-polls: send each at once.
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls else {
            return self.serve_http(stream, None).await;
        };
        let peer = self.peer;
        let handshake = async {
            let mut first = [0u8; 1];
            let n = stream.peek(&mut first).await?;
            if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
                return Ok(Err(stream));
            }
            acceptor.accept(stream).await.map(Ok)
        };
        match tokio::time::timeout(self.options.tls_handshake_timeout, handshake).await {
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            Ok(Err(e)) => log_handshake_error(peer, &e),
            Ok(Ok(Err(plain))) => answer_plain_http(plain).await,
            Ok(Ok(Ok(tls_stream))) => {
                let cert = super::tls::client_cert_name(tls_stream.get_ref().1, peer);
                self.serve_http(tls_stream, cert).await
            }
        }
    }

    /// Serves HTTP/1.1 on `io`; every request carries `cert` when there is one, and
    /// [`ConnectionReads`]; every request body has the idle timeout.
    async fn serve_http<I>(self, io: I, cert: Option<ClientCertName>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let meter = Arc::new(ConnectionMeter::default());
        let io = MeteredIo::new(
            io,
            Arc::clone(&meter),
            Arc::clone(&self.traffic),
            self.options.idle_timeout,
        );
        let app = self.app;
        let body_timeout = self.options.body_read_timeout;
        let service = hyper::service::service_fn(move |req: axum::http::Request<Incoming>| {
            let request = InFlight::start(&meter);
            let (mut parts, body) = req.into_parts();
            if let Some(name) = &cert {
                parts.extensions.insert(name.clone());
            }
            parts.extensions.insert(ConnectionReads(Arc::clone(&meter)));
            let body = Body::new(IdleTimeoutBody::new(body, body_timeout));
            let req = axum::http::Request::from_parts(parts, body);
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await?;
                // The request ends when hyper has written (or dropped) its answer's body.
                Ok::<_, std::convert::Infallible>(response.map(|body| AnswerBody {
                    body,
                    _request: request,
                }))
            }
        });
        let conn = self.http.serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

/// What a connection has read, whether a request is in flight, and the cap a refusal put
/// on further reads. Shared by the connection's IO and its requests.
#[derive(Debug)]
pub struct ConnectionMeter {
    /// Bytes read from the client so far.
    read: AtomicU64,
    /// Reads stop (the IO stalls, then ends) once `read` reaches this.
    read_limit: AtomicU64,
    /// Woken when `read` reaches `read_limit`.
    limit_reached: Notify,
    /// Requests whose answer is not written yet (0 or 1: HTTP/1.1 serves one at a time).
    in_flight: AtomicUsize,
    /// Bumped each time the connection becomes idle (an answer was written).
    idle_generation: AtomicU64,
    /// `read` when the connection last became idle: where the current request began.
    request_start: AtomicU64,
}

impl Default for ConnectionMeter {
    fn default() -> Self {
        Self {
            read: AtomicU64::new(0),
            read_limit: AtomicU64::new(u64::MAX),
            limit_reached: Notify::new(),
            in_flight: AtomicUsize::new(0),
            idle_generation: AtomicU64::new(0),
            request_start: AtomicU64::new(0),
        }
    }
}

/// The request extension that lets a refusal bound how much more of its connection is
/// read: see `limits::refuse`.
#[derive(Debug, Clone)]
pub struct ConnectionReads(Arc<ConnectionMeter>);

impl ConnectionReads {
    /// From now on the connection reads at most `body_bytes` past this request's head
    /// (`head_bytes` long): what hyper had already buffered of the body counts.
    pub fn cap_body(&self, head_bytes: u64, body_bytes: u64) {
        let meter = &self.0;
        let limit = meter
            .request_start
            .load(Ordering::Acquire)
            .saturating_add(head_bytes)
            .saturating_add(body_bytes);
        meter.read_limit.store(limit, Ordering::Release);
        if meter.read.load(Ordering::Acquire) >= limit {
            meter.limit_reached.notify_one();
        }
    }

    /// Lifts the cap (the refused body was read to its end, the connection stays usable).
    pub fn uncap(&self) {
        self.0.read_limit.store(u64::MAX, Ordering::Release);
    }

    /// Resolves once the connection has read up to its cap.
    pub async fn cap_reached(&self) {
        self.0.limit_reached.notified().await;
    }

    /// Bytes this request has read from the connection so far (its head included).
    pub fn read_by_request(&self) -> u64 {
        let meter = &self.0;
        meter
            .read
            .load(Ordering::Acquire)
            .saturating_sub(meter.request_start.load(Ordering::Acquire))
    }
}

/// Marks a request in flight on its connection until dropped (with its answer's body).
struct InFlight(Arc<ConnectionMeter>);

impl InFlight {
    fn start(meter: &Arc<ConnectionMeter>) -> Self {
        meter.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(meter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let meter = &self.0;
        meter
            .request_start
            .store(meter.read.load(Ordering::Acquire), Ordering::Release);
        meter.idle_generation.fetch_add(1, Ordering::AcqRel);
        meter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request in flight until hyper is done with it.
struct AnswerBody {
    body: Body,
    _request: InFlight,
}

impl hyper::body::Body for AnswerBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    /// The client sent (next to) nothing for the body-read timeout.
    #[error(
        "the request body brought less than {BODY_PROGRESS_BYTES} bytes in {} s \
         (body_read_timeout_s): cut off",
        .0.as_secs()
    )]
    Idle(Duration),
    /// hyper's own error (the client hung up, a malformed chunk).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A request body that fails with [`BodyReadError::Idle`] when, while it is being read, it
/// brings less than [`BODY_PROGRESS_BYTES`] in `timeout`: nothing at all, or a trickle (a
/// byte a second would otherwise hold a connection, and an upload place, for days). The
/// clock runs only while someone waits on the body, so a handler that reads it later (or
/// never) is not cut off by its own work.
///
/// When the clock runs out the body waits [`IDLE_CONFIRM`] more before it fails: a handler
/// that stopped reading for a while (a slow disk) and comes back finds hyper has not read
/// the socket meanwhile, so the first wait after such a gap always looks idle; in that
/// moment hyper reads what the client sent during the gap.
struct IdleTimeoutBody {
    inner: Incoming,
    timeout: Duration,
    /// When the body last brought [`BODY_PROGRESS_BYTES`] (or began to be read); the
    /// deadline is this plus `timeout`.
    mark: Option<Instant>,
    /// Bytes since `mark`.
    since_mark: u64,
    /// Created on the first wait; armed for `armed` (a mark, or the confirmation).
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Armed,
}

/// What the body's clock is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    Nothing,
    /// The deadline of this mark.
    Mark(Instant),
    /// The confirmation after the deadline of this mark.
    Confirm(Instant),
}

/// The least a request body must bring per body-read timeout.
pub const BODY_PROGRESS_BYTES: u64 = 1024;

/// How long a body whose clock ran out gets to show it has bytes after all.
const IDLE_CONFIRM: Duration = Duration::from_millis(200);

impl IdleTimeoutBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            mark: None,
            since_mark: 0,
            sleep: None,
            armed: Armed::Nothing,
        }
    }
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = &mut *self;
        let mark = *this.mark.get_or_insert_with(Instant::now);
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                this.since_mark += data.map_or(0, |d| d.len() as u64);
                if this.since_mark >= BODY_PROGRESS_BYTES {
                    this.mark = Some(Instant::now());
                    this.since_mark = 0;
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyReadError::from)));
        }
        let deadline = mark + this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !matches!(this.armed, Armed::Mark(m) | Armed::Confirm(m) if m == mark) {
            sleep.as_mut().reset(deadline);
            this.armed = Armed::Mark(mark);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match this.armed {
                Armed::Confirm(_) => {
                    return Poll::Ready(Some(Err(BodyReadError::Idle(this.timeout))))
                }
                _ => {
                    sleep.as_mut().reset(Instant::now() + IDLE_CONFIRM);
                    this.armed = Armed::Confirm(mark);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where the idle clock of a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleClock {
    /// Running for the idle period with this generation.
    Running(u64),
    /// Stopped in this idle period: the next request's first bytes arrived.
    Stopped(u64),
}

/// The connection's IO: counts what is read, ends an idle connection (no request in
/// flight, no byte for `idle_timeout`), and stalls reads at a refusal's cap (then, after
/// [`CAPPED_LINGER`], reports the end of the stream so the connection cannot hang).
struct MeteredIo<I> {
    inner: I,
    meter: Arc<ConnectionMeter>,
    traffic: Arc<Traffic>,
    idle_timeout: Duration,
    idle_sleep: Pin<Box<Sleep>>,
    idle: IdleClock,
    capped_sleep: Option<Pin<Box<Sleep>>>,
}

impl<I> MeteredIo<I> {
    fn new(
        inner: I,
        meter: Arc<ConnectionMeter>,
        traffic: Arc<Traffic>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            meter,
            traffic,
            idle_timeout,
            idle_sleep: Box::pin(tokio::time::sleep(idle_timeout)),
            // Generation 0 is the wait for the first request: the clock runs from now.
            idle: IdleClock::Running(0),
            capped_sleep: None,
        }
    }

    /// While no request is in flight: `None` when the idle clock has run out, else the
    /// idle period's generation (the wake-up at its end is registered). Always `Some` while
    /// a request is in flight (with no generation: the clock does not run).
    fn idle_check(&mut self, cx: &mut Context<'_>) -> Option<Option<u64>> {
        if self.meter.in_flight.load(Ordering::Acquire) > 0 {
            return Some(None);
        }
        let generation = self.meter.idle_generation.load(Ordering::Acquire);
        match self.idle {
            // The next request has begun: its head is hyper's header timeout's business.
            IdleClock::Stopped(g) if g == generation => return Some(None),
            IdleClock::Running(g) if g == generation => {}
            _ => {
                self.idle_sleep
                    .as_mut()
                    .reset(Instant::now() + self.idle_timeout);
                self.idle = IdleClock::Running(generation);
            }
        }
        match self.idle_sleep.as_mut().poll(cx) {
            Poll::Ready(()) => None,
            Poll::Pending => Some(Some(generation)),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for MeteredIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let read = this.meter.read.load(Ordering::Acquire);
        let limit = this.meter.read_limit.load(Ordering::Acquire);
        if read >= limit {
            this.meter.limit_reached.notify_one();
            let linger = this
                .capped_sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CAPPED_LINGER)));
            return match linger.as_mut().poll(cx) {
                // The end of the stream: hyper closes the connection.
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        let Some(idle_generation) = this.idle_check(cx) else {
            tracing::debug!("closing a connection idle for its idle timeout");
            return Poll::Ready(Ok(()));
        };
        let allowed = usize::try_from(limit - read).unwrap_or(usize::MAX);
        let (poll, n) = if allowed < buf.remaining() {
            // Under a refusal's cap (rare): read into a bounded slice of `buf`.
            let unfilled = buf.initialize_unfilled_to(allowed);
            let mut limited = ReadBuf::new(unfilled);
            let poll = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
            let n = limited.filled().len();
            buf.advance(n);
            (poll, n)
        } else {
            let before = buf.filled().len();
            let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
            (poll, buf.filled().len() - before)
        };
        if n > 0 {
            let n = n as u64;
            let total = this.meter.read.fetch_add(n, Ordering::AcqRel) + n;
            this.traffic.bytes_read.fetch_add(n, Ordering::Relaxed);
            if let Some(generation) = idle_generation {
                this.idle = IdleClock::Stopped(generation);
            }
            if total >= limit {
                this.meter.limit_reached.notify_one();
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for MeteredIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A client certificate the CA did not sign is worth an operator's attention (an agent with
/// the wrong files); anything else (scanners, hang-ups) is noise.
fn log_handshake_error(peer: SocketAddr, e: &std::io::Error) {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => tracing::warn!(
            %peer,
            error = %why,
            "refused a client certificate: it does not verify against --client-ca-file \
             (issue one with `cis490-reconciler certs issue-agent NAME`)"
        ),
        _ => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
    }
}

/// A plain-HTTP request on the TLS port: answer in plain HTTP that this port speaks HTTPS,
/// so `http://` in a client's URL is a clear error and not a reset connection.
async fn answer_plain_http(mut stream: TcpStream) {
    // Read the request head first: closing with unread bytes would reset the connection
    // before the client reads the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read_head = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = serde_json::json!({
        "error": "tls_required",
        "message": "this server speaks HTTPS only: use an https:// URL (and pass --ca-file with \
                    the lab CA, e.g. the ca.pem made by `cis490-reconciler certs init`)",
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}
