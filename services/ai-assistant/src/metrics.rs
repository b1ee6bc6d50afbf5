//! The assistant's own Prometheus metrics (in kit's registry, served at
//! `/metrics` next to the HTTP metrics).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct ChatMetrics {
    /// `ai_assistant_answers_total{provider, outcome="ok"|"error"}`.
    pub answers: IntCounterVec,
    /// `ai_assistant_answer_seconds{provider}`: question to stored answer.
    pub answer_seconds: HistogramVec,
    /// `ai_assistant_bsl_diagnostics_total{rule}`: findings in checked code.
    pub diagnostics: IntCounterVec,
    /// `ai_assistant_analytics_events_total{result="queued"|"dropped"}`.
    pub analytics_events: IntCounterVec,
}

impl ChatMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let answers = IntCounterVec::new(
            Opts::new(
                "ai_assistant_answers_total",
                "Chat answers by provider and outcome",
            ),
            &["provider", "outcome"],
        )?;
        let answer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ai_assistant_answer_seconds",
                "Time from question to stored answer",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["provider"],
        )?;
        let diagnostics = IntCounterVec::new(
            Opts::new(
                "ai_assistant_bsl_diagnostics_total",
                "BSL diagnostics reported, by rule",
            ),
            &["rule"],
        )?;
        let analytics_events = IntCounterVec::new(
            Opts::new(
                "ai_assistant_analytics_events_total",
                "Analytics events queued, or dropped because the queue was full",
            ),
            &["result"],
        )?;
        for r in ["queued", "dropped"] {
            analytics_events.with_label_values(&[r]);
        }
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(answer_seconds.clone()))?;
        registry.register(Box::new(diagnostics.clone()))?;
        registry.register(Box::new(analytics_events.clone()))?;
        Ok(ChatMetrics {
            answers,
            answer_seconds,
            diagnostics,
            analytics_events,
        })
    }

    /// Counts one emitted event (nothing when analytics is not configured).
    pub fn analytics(&self, analytics: &crate::analytics::Analytics, queued: bool) {
        if !analytics.enabled() {
            return;
        }
        self.analytics_events
            .with_label_values(&[if queued { "queued" } else { "dropped" }])
            .inc();
    }

    pub fn diagnostics(&self, diags: &[crate::bsl::Diagnostic]) {
        for d in diags {
            self.diagnostics.with_label_values(&[d.rule.as_str()]).inc();
        }
    }
}
