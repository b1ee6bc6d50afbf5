//! Ingestion metrics, registered in kit's Prometheus registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::event::Kind;

#[derive(Clone)]
pub struct IngestMetrics {
    /// `events_ingested_total{kind}`: newly stored events.
    pub ingested: IntCounterVec,
    /// `events_duplicate_total`: events whose `event_id` was already stored.
    pub duplicate: IntCounter,
    /// `events_rejected_total`: events that failed validation.
    pub rejected: IntCounter,
    /// `events_batch_size`: events per `POST /events` batch.
    pub batch_size: Histogram,
    /// `events_retention_deleted_total`: events deleted by retention.
    pub retention_deleted: IntCounter,
}

impl IngestMetrics {
    /// Create the collectors and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let ingested = IntCounterVec::new(
            Opts::new("events_ingested_total", "Events stored, per kind"),
            &["kind"],
        )?;
        // Pre-create every label so the series exist (at 0) from the start.
        for k in Kind::ALL {
            ingested.with_label_values(&[k.as_str()]);
        }
        let duplicate = IntCounter::new(
            "events_duplicate_total",
            "Events ignored because their event_id was already stored",
        )?;
        let rejected = IntCounter::new(
            "events_rejected_total",
            "Events rejected by schema validation",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("events_batch_size", "Events per ingestion batch").buckets(vec![
                1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
            ]),
        )?;
        let retention_deleted = IntCounter::new(
            "events_retention_deleted_total",
            "Events deleted by the retention policy",
        )?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(duplicate.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(retention_deleted.clone()))?;
        Ok(IngestMetrics {
            ingested,
            duplicate,
            rejected,
            batch_size,
            retention_deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = kit::Metrics::new("analytics", "0.1.0");
        let im = IngestMetrics::register(m.registry()).unwrap();
        im.ingested.with_label_values(&["question"]).inc_by(3);
        im.duplicate.inc();
        im.rejected.inc_by(2);
        im.batch_size.observe(7.0);
        let text = m.render();
        assert!(
            text.contains(r#"events_ingested_total{kind="question"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"events_ingested_total{kind="api_call"} 0"#));
        assert!(text.contains("events_duplicate_total 1"));
        assert!(text.contains("events_rejected_total 2"));
        assert!(text.contains(r#"events_batch_size_bucket{le="10"} 1"#));
        assert!(text.contains(r#"events_batch_size_bucket{le="5"} 0"#));
        // A second registration in the same registry is refused.
        assert!(IngestMetrics::register(m.registry()).is_err());
    }
}
