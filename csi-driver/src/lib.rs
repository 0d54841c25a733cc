//! A CSI plugin that mounts AFS volumes (`mount-type: volume`) and the whole
//! AFS namespace (`mount-type: root`) into pods, for AuriStorFS, OpenAFS and
//! the in-kernel kAFS client.

pub mod afsroot;
pub mod capability;
pub mod checks;
pub mod config;
pub mod controller;
pub mod identity;
pub mod inflight;
pub mod metrics;
pub mod mounts;
pub mod node;
pub mod plan;
pub mod policy;
pub mod server;
pub mod target;
pub mod volume;

/// Turns a handler's result into the gRPC answer, logging refusals by RPC
/// name and error (never the request: it may carry secrets).
pub(crate) fn respond<T, E>(
    rpc: &'static str,
    result: Result<T, E>,
) -> Result<tonic::Response<T>, tonic::Status>
where
    E: std::fmt::Display + Into<tonic::Status>,
{
    result.map(tonic::Response::new).map_err(|error| {
        tracing::warn!(rpc, %error, "request failed");
        error.into()
    })
}
