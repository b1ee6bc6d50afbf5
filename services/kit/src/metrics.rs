//! Prometheus metrics: a per-service registry with the standard HTTP
//! metrics; services register their own collectors in the same registry
//! via [`Metrics::registry`].

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The registry and the standard HTTP collectors. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub http_requests_in_flight: IntGauge,
}

impl Metrics {
    /// Create a registry with `http_requests_total{method,route,status}`,
    /// `http_request_duration_seconds{method,route}`,
    /// `http_requests_in_flight` and `build_info{service,version} 1`.
    pub fn new(service: &str, version: &str) -> Self {
        let registry = Registry::new();
        let http_requests_total = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests handled"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency in seconds",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let http_requests_in_flight = IntGauge::new(
            "http_requests_in_flight",
            "HTTP requests currently being handled",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build information"),
            &["service", "version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[service, version]).set(1);
        registry
            .register(Box::new(http_requests_total.clone()))
            .expect("register");
        registry
            .register(Box::new(http_request_duration_seconds.clone()))
            .expect("register");
        registry
            .register(Box::new(http_requests_in_flight.clone()))
            .expect("register");
        registry.register(Box::new(build_info)).expect("register");
        Metrics {
            registry,
            http_requests_total,
            http_request_duration_seconds,
            http_requests_in_flight,
        }
    }

    /// The registry: `metrics.registry().register(Box::new(my_counter.clone()))`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record one finished request.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests_total
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_standard_metrics() {
        let m = Metrics::new("user-management", "1.2.3");
        m.observe("GET", "/users/{id}", 200, 0.003);
        m.observe("GET", "/users/{id}", 200, 0.2);
        m.http_requests_in_flight.inc();
        let custom = prometheus::IntCounter::new("logins_total", "Logins").unwrap();
        m.registry().register(Box::new(custom.clone())).unwrap();
        custom.inc_by(3);
        let text = m.render();
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"build_info{service="user-management",version="1.2.3"} 1"#));
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
        assert!(text.contains(
            r#"http_request_duration_seconds_bucket{method="GET",route="/users/{id}",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"http_request_duration_seconds_count{method="GET",route="/users/{id}"} 2"#
        ));
        assert!(text.contains("http_requests_in_flight 1"));
        assert!(text.contains("logins_total 3"));
    }
}
