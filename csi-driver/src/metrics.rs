//! Per-RPC request counts and latency histograms, recorded by a tower layer
//! around the gRPC services and served in the Prometheus text format.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Debug)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "csi_rpc_requests",
            "CSI requests by method and gRPC status code",
            metrics.requests.clone(),
        );
        registry.register(
            "csi_rpc_duration_seconds",
            "CSI request latency by method",
            metrics.duration.clone(),
        );
        Arc::new(metrics)
    }

    fn observe(&self, method: String, code: tonic::Code, started: Instant) {
        self.duration
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RpcLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }
}

/// Every RPC of the CSI services this driver serves, by gRPC path.
const CSI_METHODS: &[(&str, &str)] = &[
    ("Identity", "GetPluginInfo"),
    ("Identity", "GetPluginCapabilities"),
    ("Identity", "Probe"),
    ("Controller", "CreateVolume"),
    ("Controller", "DeleteVolume"),
    ("Controller", "ControllerPublishVolume"),
    ("Controller", "ControllerUnpublishVolume"),
    ("Controller", "ValidateVolumeCapabilities"),
    ("Controller", "ListVolumes"),
    ("Controller", "GetCapacity"),
    ("Controller", "ControllerGetCapabilities"),
    ("Controller", "CreateSnapshot"),
    ("Controller", "DeleteSnapshot"),
    ("Controller", "ListSnapshots"),
    ("Controller", "ControllerExpandVolume"),
    ("Controller", "ControllerGetVolume"),
    ("Controller", "ControllerModifyVolume"),
    ("Node", "NodeStageVolume"),
    ("Node", "NodeUnstageVolume"),
    ("Node", "NodePublishVolume"),
    ("Node", "NodeUnpublishVolume"),
    ("Node", "NodeGetVolumeStats"),
    ("Node", "NodeExpandVolume"),
    ("Node", "NodeGetCapabilities"),
    ("Node", "NodeGetInfo"),
];

/// The method label: a known CSI RPC name, "other" for any other path, so that no
/// client can grow the label set (and the process's memory) without bound.
fn method_label(path: &str) -> String {
    let known = path
        .strip_prefix("/csi.v1.")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(service, method)| {
            CSI_METHODS
                .iter()
                .find(|(s, m)| *s == service && *m == method)
        });
    known.map_or("other", |(_, method)| method).to_owned()
}

#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Req, Res> tower::Service<http::Request<Req>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<Req>, Response = http::Response<Res>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let response = response.await;
            // Errors travel "trailers-only", in the headers; success has none there.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe(method, code, started);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/csi.v1.Node/NodePublishVolume"),
            "NodePublishVolume"
        );
        assert_eq!(method_label("/csi.v1.Identity/Probe"), "Probe");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(method_label("/csi.v1.Node/"), "other");
        // Made-up methods of real services, and RPCs under the wrong service.
        assert_eq!(method_label("/csi.v1.Node/NoSuchMethod0001"), "other");
        assert_eq!(method_label("/csi.v1.Identity/NodePublishVolume"), "other");
        assert_eq!(method_label("/csi.v1.Made/Up"), "other");
    }

    #[test]
    fn records_and_encodes() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::register(&mut registry);
        metrics.observe(
            "Probe".into(),
            tonic::Code::FailedPrecondition,
            Instant::now(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"csi_rpc_requests_total{method="Probe",code="FailedPrecondition"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("csi_rpc_duration_seconds_count{method=\"Probe\"} 1"),
            "{text}"
        );
    }
}
