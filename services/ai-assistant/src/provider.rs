//! Answer providers. The service always retrieves the context itself
//! (knowledge-base passages, BSL diagnostics, metadata facts); a provider
//! turns that context into the answer text.
//!
//! * [`OfflineProvider`] (default): deterministic, composes the cited
//!   passages and the BSL check into the answer.
//! * [`crate::llm::OpenAiProvider`]: an OpenAI-compatible chat-completions
//!   endpoint that receives the same context and rewrites/extends it.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::bsl::Diagnostic;
use crate::kb::{Citation, KbAnswer};
use crate::metadata::MetadataFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    User,
    Assistant,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Speaker,
    pub content: String,
}

/// A passage handed to the provider (and cited in the answer).
#[derive(Debug, Clone, Serialize)]
pub struct ContextPassage {
    pub file: String,
    pub heading: String,
    pub text: String,
}

/// BSL code found in the message and what the checker said about it.
#[derive(Debug, Clone, Serialize)]
pub struct CodeCheck {
    pub code: String,
    /// `module` or `query`.
    pub kind: &'static str,
    pub diagnostics: Vec<Diagnostic>,
}

/// Everything retrieved for one question, before any provider runs.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The composed, cited knowledge-base answer.
    pub kb: Option<KbAnswer>,
    /// The passages behind `kb.sources`, in the same order.
    pub passages: Vec<ContextPassage>,
    pub code: Option<CodeCheck>,
    pub metadata: Option<MetadataFacts>,
    /// A metadata question could not be answered (1c-integration down,
    /// object unknown): said in the answer instead of guessing.
    pub metadata_error: Option<String>,
}

impl Context {
    /// What the answer cites: the infobase metadata (from 1c-integration)
    /// and the knowledge-base passages.
    pub fn sources(&self) -> Vec<Citation> {
        let mut out = Vec::new();
        if let Some(m) = &self.metadata {
            out.push(Citation {
                file: "1c-integration: GET /metadata".into(),
                heading: m.object.entity_set.clone(),
                score: 0.0,
            });
        }
        if let Some(k) = &self.kb {
            out.extend(k.sources.iter().cloned());
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct AnswerRequest {
    pub question: String,
    /// Earlier turns of the conversation, oldest first.
    pub history: Vec<Turn>,
    pub context: Context,
}

/// Why a provider could not answer. Each maps to a clear HTTP error.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("the LLM provider rejected the credentials (HTTP {status}): check LLM_API_KEY_FILE")]
    Unauthorized { status: u16 },
    #[error("the LLM provider is rate limiting requests (HTTP 429){}", retry_hint(*.retry_after_secs))]
    RateLimited { retry_after_secs: Option<u64> },
    #[error("the LLM provider failed (HTTP {status}): {message}")]
    Upstream { status: u16, message: String },
    #[error("the LLM provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the LLM provider is unreachable: {0}")]
    Unavailable(String),
    #[error("the LLM provider sent an invalid response: {0}")]
    BadResponse(String),
}

fn retry_hint(secs: Option<u64>) -> String {
    secs.map(|s| format!("; retry after {s} s"))
        .unwrap_or_default()
}

impl ProviderError {
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Unauthorized { .. } => "llm_unauthorized",
            ProviderError::RateLimited { .. } => "llm_rate_limited",
            ProviderError::Upstream { .. } => "llm_upstream_error",
            ProviderError::Timeout(_) => "llm_timeout",
            ProviderError::Unavailable(_) => "llm_unavailable",
            ProviderError::BadResponse(_) => "llm_bad_response",
        }
    }

    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ProviderError::Unauthorized { .. } => StatusCode::BAD_GATEWAY,
            ProviderError::RateLimited { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProviderError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProviderError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProviderError::BadResponse(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Worth another attempt (rate limits, 5xx, timeouts, connect errors).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Upstream { .. }
                | ProviderError::Timeout(_)
                | ProviderError::Unavailable(_)
        )
    }
}

impl From<ProviderError> for kit::ApiError {
    fn from(e: ProviderError) -> Self {
        kit::ApiError::new(e.status(), e.code(), e.to_string())
    }
}

pub type TextStream = BoxStream<'static, Result<String, ProviderError>>;

pub trait Provider: Send + Sync + 'static {
    /// `offline` or `openai`.
    fn name(&self) -> &'static str;
    /// The whole answer text.
    fn answer(&self, req: AnswerRequest) -> BoxFuture<'static, Result<String, ProviderError>>;
    /// The answer as text chunks. Errors before the first chunk come from
    /// the future; later ones from the stream.
    fn stream(&self, req: AnswerRequest) -> BoxFuture<'static, Result<TextStream, ProviderError>>;
}

/// Deterministic answers composed from the retrieved context only.
#[derive(Debug, Clone, Default)]
pub struct OfflineProvider;

impl Provider for OfflineProvider {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn answer(&self, req: AnswerRequest) -> BoxFuture<'static, Result<String, ProviderError>> {
        let text = compose(&req.context);
        Box::pin(async move { Ok(text) })
    }

    fn stream(&self, req: AnswerRequest) -> BoxFuture<'static, Result<TextStream, ProviderError>> {
        let chunks: Vec<Result<String, ProviderError>> = chunk_text(&compose(&req.context))
            .into_iter()
            .map(Ok)
            .collect();
        Box::pin(async move {
            let s: TextStream = Box::pin(futures::stream::iter(chunks));
            Ok(s)
        })
    }
}

/// Splits text into line-aligned chunks of a few hundred bytes (what the
/// offline provider streams).
pub fn chunk_text(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        cur.push_str(line);
        if cur.len() >= 240 {
            chunks.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// Renders BSL diagnostics as a list for an answer.
pub fn render_diagnostics(check: &CodeCheck) -> String {
    let what = if check.kind == "query" {
        "текста запроса"
    } else {
        "кода BSL"
    };
    if check.diagnostics.is_empty() {
        return format!("Проверка {what}: замечаний нет.");
    }
    let mut s = format!(
        "Проверка {what}: замечаний — {}.\n",
        check.diagnostics.len()
    );
    for d in &check.diagnostics {
        let sev = match d.severity {
            crate::bsl::Severity::Error => "ошибка",
            crate::bsl::Severity::Warning => "предупреждение",
            crate::bsl::Severity::Info => "замечание",
        };
        s.push_str(&format!(
            "- строка {}, колонка {} ({sev}, `{}`): {}\n",
            d.line, d.column, d.rule, d.message
        ));
    }
    s
}

/// The offline answer: metadata facts, BSL check, then the cited
/// knowledge-base answer.
pub fn compose(ctx: &Context) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = &ctx.metadata {
        parts.push(m.render());
    }
    if let Some(e) = &ctx.metadata_error {
        parts.push(e.clone());
    }
    if let Some(c) = &ctx.code {
        parts.push(render_diagnostics(c).trim_end().to_string());
    }
    match &ctx.kb {
        Some(kb) if !kb.sources.is_empty() => parts.push(kb.text.trim_end().to_string()),
        Some(kb) if parts.is_empty() => parts.push(kb.text.trim_end().to_string()),
        _ => {}
    }
    parts.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_rejoin_to_the_text() {
        let text = "строка\n".repeat(100);
        let chunks = chunk_text(&text);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn error_codes_and_statuses() {
        let e = ProviderError::RateLimited {
            retry_after_secs: Some(3),
        };
        assert_eq!(e.code(), "llm_rate_limited");
        assert!(e.to_string().contains("retry after 3 s"));
        assert!(e.retryable());
        assert!(!ProviderError::Unauthorized { status: 401 }.retryable());
    }
}
