//! Accepting gRPC connections with the socket options psflow's servers
//! need.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// The connections `listener` accepts, each with `TCP_NODELAY` set: pass
/// this to `Server::serve_with_incoming*`.
///
/// tonic's `Server::tcp_nodelay` applies only to listeners tonic binds
/// itself. Sockets from any other incoming stream keep Nagle's algorithm,
/// and then a small write that follows another small one (a push's reply:
/// its headers, then its message and trailers; the tail of a pulled
/// stream) waits for the peer's delayed ACK, 40 ms on Linux. On loopback
/// that stalled about one training step in ten by 40 ms.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server = accepted.next().await.expect("a connection").unwrap();
        assert!(
            server.nodelay().unwrap(),
            "the accepted socket has Nagle on"
        );
        // A plain accept does not set it: the option is ours.
        assert!(!client.nodelay().unwrap());
    }
}
