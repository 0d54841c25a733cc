//! The CSI v1.12.0 wire interface, generated from `csi.proto`, and a client
//! channel over a unix socket (what kubelet and the sidecars use).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// Parses `unix:///path` (or `unix:/path`, or a bare absolute path) into the
/// socket path.
pub fn unix_socket_path(endpoint: &str) -> Option<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    Path::new(path).is_absolute().then(|| PathBuf::from(path))
}

/// Connects to a CSI endpoint on a unix socket. The channel reconnects on
/// demand, so it can be cloned freely across concurrent callers.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://[::1]:0")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            unix_socket_path("unix:///run/csi.sock"),
            Some("/run/csi.sock".into())
        );
        assert_eq!(
            unix_socket_path("unix:/run/csi.sock"),
            Some("/run/csi.sock".into())
        );
        assert_eq!(
            unix_socket_path("/run/csi.sock"),
            Some("/run/csi.sock".into())
        );
        assert_eq!(unix_socket_path("unix://relative.sock"), None);
        assert_eq!(unix_socket_path("tcp://1.2.3.4:5"), None);
    }
}
