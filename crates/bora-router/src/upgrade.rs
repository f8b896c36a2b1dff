//! Upgraded connections (WebSocket and any other `Connection: upgrade`).
//!
//! Once the instance answers `101 Switching Protocols` and the router has
//! relayed that answer, both HTTP connections turn into raw byte streams;
//! [`splice`] copies bytes between them until either side closes. The
//! request's scope (and with it the instance's in-flight count) lives as long
//! as the tunnel.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::hooks::RequestScope;

/// Waits for both sides to finish upgrading, then copies bytes both ways
/// until one side closes or `stop` is cancelled (the server going away).
pub(crate) async fn splice(
    client: OnUpgrade,
    instance: OnUpgrade,
    scope: RequestScope,
    stop: CancellationToken,
) {
    let (client, instance) = match tokio::try_join!(client, instance) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut instance = TokioIo::new(instance);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut instance) => match copied {
            Ok((up, down)) => tracing::debug!(bytes_to_instance = up, bytes_to_client = down, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection broke"),
        },
        () = stop.cancelled() => tracing::debug!("upgraded connection cut: router stopped"),
    }
    drop(scope);
}
