//! Question/answer events for the analytics service, sent asynchronously:
//! handlers `try_send` into a bounded channel (never blocking, dropping
//! when full); a background task posts batches to
//! `{SERVICE_URL_ANALYTICS}/events`. Analytics being down only costs events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const SERVICE: &str = "ai-assistant";
const BATCH_MAX: usize = 100;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyticsEvent {
    pub event_id: uuid::Uuid,
    pub kind: &'static str,
    pub service: &'static str,
    pub user_id: String,
    pub occurred_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    pub properties: Value,
}

impl AnalyticsEvent {
    fn new(kind: &'static str, user_id: &str, latency_ms: Option<f64>, properties: Value) -> Self {
        AnalyticsEvent {
            event_id: uuid::Uuid::new_v4(),
            kind,
            service: SERVICE,
            user_id: user_id.to_string(),
            occurred_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            latency_ms,
            properties,
        }
    }

    pub fn question(user_id: &str, question: &str, conversation_id: uuid::Uuid) -> Self {
        Self::new(
            "question",
            user_id,
            None,
            json!({"question": question, "conversation_id": conversation_id}),
        )
    }

    pub fn answer(
        user_id: &str,
        question: &str,
        conversation_id: uuid::Uuid,
        latency_ms: f64,
        provider: &str,
        sources: usize,
    ) -> Self {
        Self::new(
            "answer",
            user_id,
            Some(latency_ms),
            json!({
                "question": question,
                "conversation_id": conversation_id,
                "provider": provider,
                "sources": sources,
            }),
        )
    }
}

/// The sending side; cheap to clone. Without a URL it only counts.
#[derive(Clone, Default)]
pub struct Analytics {
    tx: Option<mpsc::Sender<AnalyticsEvent>>,
    dropped: Arc<AtomicU64>,
}

impl Analytics {
    /// No analytics configured: events are discarded.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Spawns the sender task posting to `{base_url}/events`.
    pub fn spawn(
        base_url: &str,
        ingest_token: Option<kit::Secret<String>>,
        capacity: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{}/events", base_url.trim_end_matches('/'));
        tokio::spawn(run_sender(rx, client, url, ingest_token));
        Analytics {
            tx: Some(tx),
            dropped: Arc::default(),
        }
    }

    /// Queue an event; never waits. Returns false when it was dropped.
    pub fn emit(&self, event: AnalyticsEvent) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        match tx.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "analytics queue full; events dropped");
                }
                false
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run_sender(
    mut rx: mpsc::Receiver<AnalyticsEvent>,
    client: reqwest::Client,
    url: String,
    token: Option<kit::Secret<String>>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        // Gather what arrives shortly after, up to a batch.
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut rb = client.post(&url).json(&batch);
        if let Some(t) = &token {
            rb = rb.header("x-ingest-token", t.expose());
        }
        match rb.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(events = batch.len(), "analytics events sent");
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    events = batch.len(),
                    "analytics rejected events"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), events = batch.len(), "analytics unreachable; events dropped");
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_instead_of_blocking() {
        // Nothing listens on this port: the sender's posts fail.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let a = Analytics::spawn(&format!("http://{dead}"), None, 4);
        let started = std::time::Instant::now();
        let sent = (0..1000)
            .filter(|_| a.emit(AnalyticsEvent::question("u", "q", uuid::Uuid::nil())))
            .count();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(sent < 1000);
        assert_eq!(a.dropped() as usize, 1000 - sent);
        assert!(!Analytics::disabled().emit(AnalyticsEvent::question("u", "q", uuid::Uuid::nil())));
    }

    #[test]
    fn event_shape_matches_analytics_contract() {
        let e = AnalyticsEvent::answer("u1", "вопрос", uuid::Uuid::nil(), 12.5, "offline", 3);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "answer");
        assert_eq!(v["service"], "ai-assistant");
        assert_eq!(v["latency_ms"], 12.5);
        assert_eq!(v["properties"]["question"], "вопрос");
        assert!(chrono::DateTime::parse_from_rfc3339(v["occurred_at"].as_str().unwrap()).is_ok());
        let q =
            serde_json::to_value(AnalyticsEvent::question("u1", "в", uuid::Uuid::nil())).unwrap();
        assert!(q.get("latency_ms").is_none());
    }
}
