//! The accept loop: one task per connection, plain HTTP/1.1 or TLS, with graceful shutdown.
//!
//! Ours rather than `axum::serve` because the TLS layer must put the connection's client
//! certificate name ([`ClientCertName`]) on every request it carries. What a connection may
//! cost is set in one place, [`ConnectionOptions`].
//!
//! Shutdown: when the `shutdown` future resolves the listener closes, every connection is
//! told to finish the request it is serving and close (hyper's graceful shutdown), and
//! [`serve`] returns once all have. Waiting claims and event polls answer at once because the
//! caller's shutdown future flips `AppState::shutdown` before it resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::identity::ClientCertName;

/// What one connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open (hyper starts the clock when it waits for the next
    /// request). Stops clients that open connections and send nothing.
    pub header_read_timeout: Duration,
    /// How long a client may take to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown` resolves and every
/// open connection has finished its request.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    options: ConnectionOptions,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let http = Arc::new(http);
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
        let connection = Connection {
            app: app.clone(),
            http: Arc::clone(&http),
            watcher: graceful.watcher(),
            peer,
            options,
        };
        tokio::spawn(connection.serve(stream, tls.clone()));
    }
    drop(listener);
    graceful.shutdown().await;
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

/// One accepted connection.
struct Connection {
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    watcher: Watcher,
    peer: SocketAddr,
    options: ConnectionOptions,
}

impl Connection {
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        // Small JSON answers and long-polls: send each at once.
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls else {
            return self.serve_http(TokioIo::new(stream), None).await;
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
                self.serve_http(TokioIo::new(tls_stream), cert).await
            }
        }
    }

    /// Serves HTTP/1.1 on `io`; every request carries `cert` when there is one.
    async fn serve_http<I>(self, io: TokioIo<I>, cert: Option<ClientCertName>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let app = self
            .app
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                if let Some(name) = &cert {
                    req.extensions_mut().insert(name.clone());
                }
                req
            });
        let conn = self
            .http
            .serve_connection(io, TowerToHyperService::new(app));
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
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
