//! Gateway metrics, registered in kit's registry (served on /metrics).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::breaker::Breaker;

#[derive(Clone)]
pub struct GatewayMetrics {
    /// `gateway_upstream_duration_seconds{service,status}`: time to the
    /// upstream's response headers.
    pub upstream_duration: HistogramVec,
    /// `gateway_upstream_requests_total{service,outcome}`; outcome is the
    /// status class (`2xx`...) or `connect_error`, `timeout`, `error`,
    /// `circuit_open`.
    pub upstream_requests: IntCounterVec,
    /// `gateway_upstream_retries_total{service}`.
    pub retries: IntCounterVec,
    /// `gateway_rate_limited_total{scope}` (scope: ip, user).
    pub rate_limited: IntCounterVec,
    /// `gateway_auth_failures_total{code}`.
    pub auth_failures: IntCounterVec,
}

impl GatewayMetrics {
    pub fn register(
        registry: &Registry,
        breakers: Arc<BTreeMap<String, Arc<Breaker>>>,
    ) -> prometheus::Result<Self> {
        let m = GatewayMetrics {
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gateway_upstream_duration_seconds",
                    "Upstream latency to response headers, in seconds",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["service", "status"],
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "gateway_upstream_requests_total",
                    "Proxied requests by upstream and outcome",
                ),
                &["service", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "gateway_upstream_retries_total",
                    "Idempotent requests retried after a connect error",
                ),
                &["service"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new("gateway_rate_limited_total", "Requests refused with 429"),
                &["scope"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "gateway_auth_failures_total",
                    "Requests refused by authentication or RBAC",
                ),
                &["code"],
            )?,
        };
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.upstream_requests.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(BreakerCollector::new(breakers)?))?;
        Ok(m)
    }
}

/// `gateway_circuit_breaker_state{service}` (0 closed, 1 open, 2 half-open),
/// read from the breakers at scrape time so time-based transitions show.
struct BreakerCollector {
    gauge: IntGaugeVec,
    breakers: Arc<BTreeMap<String, Arc<Breaker>>>,
}

impl BreakerCollector {
    fn new(breakers: Arc<BTreeMap<String, Arc<Breaker>>>) -> prometheus::Result<Self> {
        Ok(Self {
            gauge: IntGaugeVec::new(
                Opts::new(
                    "gateway_circuit_breaker_state",
                    "Circuit breaker per upstream: 0 closed, 1 open, 2 half-open",
                ),
                &["service"],
            )?,
            breakers,
        })
    }
}

impl Collector for BreakerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        for (name, b) in self.breakers.iter() {
            self.gauge
                .with_label_values(&[name.as_str()])
                .set(b.state(now).as_gauge());
        }
        self.gauge.collect()
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
