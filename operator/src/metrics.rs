//! Prometheus metrics, registered on a registry passed in (no globals).

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Counter,
    failures: Counter,
    /// Write requests (apply, patch, delete, evict, event); zero in steady state.
    writes: Counter,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Counter::default(),
            writes: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        }
    }
}

/// Observes the reconcile duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    started: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "afs_operator_reconciles",
            "Reconciles started",
            m.reconciles.clone(),
        );
        registry.register(
            "afs_operator_reconcile_failures",
            "Reconciles that failed",
            m.failures.clone(),
        );
        registry.register(
            "afs_operator_write_requests",
            "API write requests (apply, patch, delete, evict, event)",
            m.writes.clone(),
        );
        registry.register(
            "afs_operator_reconcile_duration_seconds",
            "Reconcile duration",
            m.duration.clone(),
        );
        m
    }

    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            started: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn reconcile_error(&self) {
        self.failures.inc();
    }

    pub fn write(&self) {
        self.writes.inc();
    }

    pub fn writes(&self) -> u64 {
        self.writes.get()
    }
}
