//! The byte streams under the WebSocket: where the server gets its
//! connections and how the client opens one.
//!
//! The drivers in [`crate::server`] and [`crate::client`] speak WebSocket over
//! any `AsyncRead + AsyncWrite` stream. [`Acceptor`] and [`Connector`] are the
//! only places that know which network that stream comes from: real TCP here
//! (`tokio::net`), simulated TCP in the simulator (`turmoil::net`, wrapped in
//! bluetick-sim). The WebSocket handshake itself always runs in the drivers
//! over the stream these return, so the code under test is the same.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What a server's connections are made of.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A source of incoming connections for [`crate::server::run_server`].
pub trait Acceptor: Send + Sync {
    /// The connection type.
    type Stream: Stream;

    /// The next connection and a label naming its peer (an address), for logs.
    /// An error is about this one attempt (e.g. out of file descriptors); the
    /// server pauses briefly and calls again.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        no_delay(&stream);
        Ok((stream, peer.to_string()))
    }
}

/// How a client opens the stream to its server, before the WebSocket
/// handshake (which [`crate::client`] performs over the result).
pub trait Connector: Send + Sync + 'static {
    /// The connection type.
    type Stream: Stream;

    /// Opens a stream to `host:port` (as named in the server URL).
    fn connect(&self, host: &str, port: u16) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Real TCP through the operating system.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        // An IPv6 literal arrives in URL brackets; the resolver wants it bare.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        no_delay(&stream);
        Ok(stream)
    }
}

/// Turns Nagle's algorithm off. Frames are small and each is written as soon
/// as it is ready (the writers batch what is queued themselves); with Nagle
/// on, a frame written while an earlier one awaited its ACK waited for the
/// peer's delayed ACK: about 40 ms at the median even at 2,000 msgs/s.
/// Failing to set it costs latency, not correctness, so it is only logged.
fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Why a server URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a WebSocket URL at all.
    #[error("{url:?} is not a WebSocket URL: {detail}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What the parser said.
        detail: String,
    },
    /// A `wss://` (or other) URL: this runtime speaks plain `ws://` only;
    /// TLS is terminated in front of the server.
    #[error("{url:?} uses scheme {scheme:?}; only ws:// is supported (terminate TLS in front of the server)")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// No host in the URL.
    #[error("{url:?} names no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
}

/// The port of a `ws://` URL that names none.
pub const WS_DEFAULT_PORT: u16 = 80;

/// The host and port a `ws://` URL points at.
///
/// # Errors
/// [`UrlError`] if the URL is not a usable `ws://` URL.
pub fn ws_target(url: &str) -> Result<(String, u16), UrlError> {
    let request =
        url.into_client_request().map_err(|e| UrlError::Invalid { url: url.to_string(), detail: e.to_string() })?;
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or_default();
    if scheme != "ws" {
        return Err(UrlError::UnsupportedScheme { url: url.to_string(), scheme: scheme.to_string() });
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| UrlError::NoHost { url: url.to_string() })?;
    Ok((host.to_string(), uri.port_u16().unwrap_or(WS_DEFAULT_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_real_tcp_connection_send_without_nagle_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (client, accepted) = tokio::join!(TcpConnector.connect("127.0.0.1", port), Acceptor::accept(&listener));
        assert!(client.unwrap().nodelay().unwrap(), "connector");
        assert!(accepted.unwrap().0.nodelay().unwrap(), "acceptor");
    }

    #[test]
    fn ws_target_reads_host_and_port_and_defaults_the_port() {
        assert_eq!(ws_target("ws://127.0.0.1:7878/").unwrap(), ("127.0.0.1".to_string(), 7878));
        assert_eq!(ws_target("ws://server/").unwrap(), ("server".to_string(), WS_DEFAULT_PORT));
    }

    #[test]
    fn ws_target_refuses_tls_and_garbage() {
        assert!(matches!(ws_target("wss://example.org/"), Err(UrlError::UnsupportedScheme { .. })));
        assert!(matches!(ws_target("not a url"), Err(UrlError::Invalid { .. })));
    }
}
