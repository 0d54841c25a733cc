//! Prometheus metrics, registered on a registry passed in (no globals).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub module: String,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub loaded: Family<ModuleLabels, Gauge>,
    pub refcount: Family<ModuleLabels, Gauge>,
    pub ready: Gauge,
    pub load_seconds: Gauge<f64, AtomicU64>,
    pub guard_seconds: Gauge<f64, AtomicU64>,
    pub unload_refusals: Counter,
    pub unloads: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "kmod_manager_module_loaded",
            "1 when the module is loaded (or built in)",
            m.loaded.clone(),
        );
        registry.register(
            "kmod_manager_module_refcount",
            "Module reference count",
            m.refcount.clone(),
        );
        registry.register(
            "kmod_manager_ready",
            "1 when the module is loaded and live",
            m.ready.clone(),
        );
        registry.register(
            "kmod_manager_load_seconds",
            "Time the last verify+load took",
            m.load_seconds.clone(),
        );
        registry.register(
            "kmod_manager_guard_decision_seconds",
            "Time the last unload-guard observation+decision took",
            m.guard_seconds.clone(),
        );
        registry.register(
            "kmod_manager_unload_refusals",
            "Unloads refused because the module was in use",
            m.unload_refusals.clone(),
        );
        registry.register(
            "kmod_manager_unloads",
            "Successful unloads",
            m.unloads.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.loaded
            .get_or_create(&ModuleLabels {
                module: "kafs".into(),
            })
            .set(1);
        m.unload_refusals.inc();
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).expect("encode");
        assert!(
            s.contains("kmod_manager_module_loaded{module=\"kafs\"} 1"),
            "{s}"
        );
        assert!(s.contains("kmod_manager_unload_refusals_total 1"), "{s}");
    }
}
