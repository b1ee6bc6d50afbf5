//! OpenAI-compatible chat-completions provider (`POST {LLM_BASE_URL}/chat/completions`).
//!
//! The model receives the retrieved context first (numbered knowledge-base
//! passages, BSL diagnostics, metadata facts) and is told to rewrite and
//! extend it, citing `[n]`. Timeouts, bounded retries with backoff on 429,
//! 5xx, timeouts and connect errors; 401/403 are never retried.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::provider::{render_diagnostics, AnswerRequest, Provider, ProviderError, TextStream};

/// Settings of the OpenAI-compatible provider.
#[derive(Clone)]
pub struct LlmConfig {
    /// `LLM_BASE_URL`, e.g. `http://llm:8080/v1` (no trailing slash).
    pub base_url: String,
    /// `LLM_MODEL`.
    pub model: String,
    /// `LLM_API_KEY` secret (`LLM_API_KEY_FILE`); optional for local servers.
    pub api_key: Option<kit::Secret<String>>,
    /// `LLM_TIMEOUT` seconds (default 60): whole request without streaming;
    /// time to the response head and between chunks when streaming.
    pub timeout: Duration,
    /// `LLM_MAX_RETRIES` (default 2): extra attempts after the first.
    pub max_retries: u32,
    /// First backoff delay (doubles each attempt); `LLM_RETRY_BACKOFF_MS`.
    pub backoff: Duration,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl LlmConfig {
    /// From the environment; `None` when `LLM_BASE_URL` is unset.
    pub fn from_env(env: &kit::config::Env) -> anyhow::Result<Option<Self>> {
        let Some(base_url) = env.var("LLM_BASE_URL") else {
            return Ok(None);
        };
        let model = env
            .var("LLM_MODEL")
            .ok_or_else(|| anyhow::anyhow!("LLM_MODEL is required when LLM_BASE_URL is set"))?;
        Ok(Some(LlmConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            model,
            api_key: env.secret("LLM_API_KEY")?,
            timeout: env.duration_secs_or("LLM_TIMEOUT", Duration::from_secs(60))?,
            max_retries: env.parse_or("LLM_MAX_RETRIES", 2u32)?.min(10),
            backoff: Duration::from_millis(env.parse_or("LLM_RETRY_BACKOFF_MS", 250u64)?),
        }))
    }
}

struct Inner {
    cfg: LlmConfig,
    client: reqwest::Client,
}

#[derive(Clone)]
pub struct OpenAiProvider(Arc<Inner>);

/// Earlier turns sent to the model: at most this many, and at most this
/// many characters in total (the most recent ones win).
const HISTORY_MAX_TURNS: usize = 10;
const HISTORY_BUDGET_CHARS: usize = 12_000;

const SYSTEM_PROMPT: &str = "Ты — ассистент для пользователей и разработчиков 1С:Предприятие. \
Отвечай по-русски, точно и по делу. Сначала тебе дан контекст, найденный сервисом: \
фрагменты базы знаний с номерами [n], результаты проверки кода BSL и сведения о метаданных. \
Перепиши и дополни этот контекст в ясный ответ на вопрос пользователя: опирайся на контекст, \
ссылайся на фрагменты в формате [n], не выдумывай методы платформы и объекты конфигурации, \
которых нет в контексте; если контекста недостаточно, так и скажи. Примеры кода пиши на BSL.";

impl OpenAiProvider {
    pub fn new(cfg: LlmConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(
                Duration::from_secs(5).min(cfg.timeout.max(Duration::from_millis(100))),
            )
            .build()?;
        Ok(Self(Arc::new(Inner { cfg, client })))
    }

    /// The messages sent to the model: system prompt, context, recent
    /// history, the question.
    pub fn messages(req: &AnswerRequest) -> Vec<Value> {
        let mut ctx = String::new();
        if let Some(m) = &req.context.metadata {
            ctx.push_str("Метаданные информационной базы (из 1c-integration):\n");
            ctx.push_str(&m.render());
            ctx.push_str("\n\n");
        }
        if let Some(e) = &req.context.metadata_error {
            ctx.push_str(e);
            ctx.push_str("\n\n");
        }
        if let Some(c) = &req.context.code {
            ctx.push_str(&format!("Код пользователя:\n```bsl\n{}\n```\n", c.code));
            ctx.push_str(&render_diagnostics(c));
            ctx.push('\n');
        }
        if req.context.passages.is_empty() {
            ctx.push_str("В базе знаний подходящих фрагментов не найдено.\n");
        } else {
            ctx.push_str("Фрагменты базы знаний:\n");
            for (i, p) in req.context.passages.iter().enumerate() {
                ctx.push_str(&format!(
                    "[{}] {} — {}\n{}\n\n",
                    i + 1,
                    p.file,
                    p.heading,
                    p.text
                ));
            }
        }
        let mut messages = vec![
            json!({"role": "system", "content": SYSTEM_PROMPT}),
            json!({"role": "system", "content": format!("Контекст:\n\n{ctx}")}),
        ];
        // The most recent turns that fit the budget, oldest first.
        let mut budget = HISTORY_BUDGET_CHARS;
        let mut recent = Vec::new();
        for t in req.history.iter().rev().take(HISTORY_MAX_TURNS) {
            let len = t.content.chars().count();
            if len > budget {
                break;
            }
            budget -= len;
            recent.push(t);
        }
        for t in recent.into_iter().rev() {
            messages.push(json!({"role": t.role.as_str(), "content": t.content}));
        }
        messages.push(json!({"role": "user", "content": req.question}));
        messages
    }

    async fn send_once(&self, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let cfg = &self.0.cfg;
        let mut rb = self
            .0
            .client
            .post(format!("{}/chat/completions", cfg.base_url))
            .json(body);
        if let Some(key) = &cfg.api_key {
            rb = rb.bearer_auth(key.expose());
        }
        let resp = match tokio::time::timeout(cfg.timeout, rb.send()).await {
            Err(_) => return Err(ProviderError::Timeout(cfg.timeout)),
            Ok(Err(e)) if e.is_timeout() => return Err(ProviderError::Timeout(cfg.timeout)),
            Ok(Err(e)) => return Err(ProviderError::Unavailable(without_url(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let retry_after_secs = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = tokio::time::timeout(cfg.timeout, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err(match status {
            401 | 403 => ProviderError::Unauthorized { status },
            429 => ProviderError::RateLimited { retry_after_secs },
            _ => ProviderError::Upstream {
                status,
                message: upstream_message(&text),
            },
        })
    }

    /// One request with bounded retries; returns the successful response.
    async fn send(&self, body: Value) -> Result<reqwest::Response, ProviderError> {
        let cfg = &self.0.cfg;
        let mut attempt = 0;
        loop {
            match self.send_once(&body).await {
                Ok(r) => return Ok(r),
                Err(e) if e.retryable() && attempt < cfg.max_retries => {
                    let mut delay = cfg.backoff * 2u32.pow(attempt);
                    if let ProviderError::RateLimited {
                        retry_after_secs: Some(s),
                    } = e
                    {
                        delay = delay.max(Duration::from_secs(s));
                    }
                    let delay = delay.min(Duration::from_secs(10));
                    tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "LLM request failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn body(&self, req: &AnswerRequest, stream: bool) -> Value {
        json!({
            "model": self.0.cfg.model,
            "messages": Self::messages(req),
            "temperature": 0.2,
            "stream": stream,
        })
    }
}

/// reqwest errors print the URL; keep the message short and key-free.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "LLM_BASE_URL");
    }
    if e.is_connect() {
        format!("connection failed ({s})")
    } else {
        s
    }
}

/// `{"error": {"message": ...}}` of OpenAI-style errors, else the body start.
fn upstream_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
        {
            return m.chars().take(300).collect();
        }
    }
    let s: String = body.chars().take(300).collect();
    if s.trim().is_empty() {
        "no details".into()
    } else {
        s
    }
}

/// Parses `data:` lines of an SSE body, returning content deltas; `Ok(None)`
/// for `[DONE]`.
pub fn parse_sse_data(data: &str) -> Result<Option<String>, ProviderError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| ProviderError::BadResponse(format!("stream chunk is not JSON: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(ProviderError::Upstream {
            status: 200,
            message: upstream_message(&err.to_string()),
        });
    }
    Ok(Some(
        v.pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    ))
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn answer(&self, req: AnswerRequest) -> BoxFuture<'static, Result<String, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.0.cfg.timeout;
            let resp = this.send(this.body(&req, false)).await?;
            let v: Value = match tokio::time::timeout(timeout, resp.json()).await {
                Err(_) => return Err(ProviderError::Timeout(timeout)),
                Ok(Err(e)) => return Err(ProviderError::BadResponse(e.to_string())),
                Ok(Ok(v)) => v,
            };
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ProviderError::BadResponse("no choices[0].message.content".into()))
        })
    }

    fn stream(&self, req: AnswerRequest) -> BoxFuture<'static, Result<TextStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.0.cfg.timeout;
            let resp = this.send(this.body(&req, true)).await?;
            let bytes = resp.bytes_stream();
            struct St<B> {
                bytes: B,
                buf: Vec<u8>,
                pending: std::collections::VecDeque<String>,
                done: bool,
                eof: bool,
            }
            let st = St {
                bytes: Box::pin(bytes),
                buf: Vec::new(),
                pending: Default::default(),
                done: false,
                eof: false,
            };
            let s = futures::stream::unfold(st, move |mut st| async move {
                loop {
                    if let Some(chunk) = st.pending.pop_front() {
                        return Some((Ok(chunk), st));
                    }
                    if st.done {
                        return None;
                    }
                    // Complete lines in the buffer first.
                    if let Some(pos) = st.buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = st.buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        let line = line.trim_end_matches(['\n', '\r']);
                        if let Some(data) = line.strip_prefix("data:") {
                            match parse_sse_data(data) {
                                Ok(Some(t)) if !t.is_empty() => st.pending.push_back(t),
                                Ok(Some(_)) => {}
                                Ok(None) => st.done = true,
                                Err(e) => {
                                    st.done = true;
                                    return Some((Err(e), st));
                                }
                            }
                        }
                        continue;
                    }
                    if st.eof {
                        return None;
                    }
                    match tokio::time::timeout(timeout, st.bytes.next()).await {
                        Err(_) => {
                            st.done = true;
                            return Some((Err(ProviderError::Timeout(timeout)), st));
                        }
                        Ok(None) => {
                            // Stream closed without [DONE]: flush a last line.
                            st.eof = true;
                            if st.buf.is_empty() {
                                return None;
                            }
                            st.buf.push(b'\n');
                            continue;
                        }
                        Ok(Some(Err(e))) => {
                            st.done = true;
                            let err = if e.is_timeout() {
                                ProviderError::Timeout(timeout)
                            } else {
                                ProviderError::Unavailable(without_url(&e))
                            };
                            return Some((Err(err), st));
                        }
                        Ok(Some(Ok(b))) => st.buf.extend_from_slice(&b),
                    }
                }
            });
            let s: TextStream = Box::pin(s);
            Ok(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_parsing() {
        assert_eq!(
            parse_sse_data(r#"{"choices":[{"delta":{"content":"При"}}]}"#).unwrap(),
            Some("При".to_string())
        );
        assert_eq!(parse_sse_data(" [DONE]").unwrap(), None);
        assert!(parse_sse_data("{oops").is_err());
    }

    #[test]
    fn history_is_bounded_by_turns_and_characters() {
        use crate::provider::{Context, Speaker, Turn};
        let turn = |i: usize, len: usize| Turn {
            role: if i.is_multiple_of(2) {
                Speaker::User
            } else {
                Speaker::Assistant
            },
            content: format!("{i}:{}", "x".repeat(len)),
        };
        let req = |history: Vec<Turn>| AnswerRequest {
            question: "вопрос".into(),
            history,
            context: Context::default(),
        };
        // 30 short turns: the last 10 go, in order.
        let m = OpenAiProvider::messages(&req((0..30).map(|i| turn(i, 10)).collect()));
        assert_eq!(m.len(), 2 + 10 + 1);
        assert!(m[2]["content"].as_str().unwrap().starts_with("20:"));
        assert_eq!(m.last().unwrap()["content"], "вопрос");
        // A huge old turn is dropped, the recent small ones kept.
        let mut h = vec![turn(0, 50_000)];
        h.extend((1..4).map(|i| turn(i, 10)));
        let m = OpenAiProvider::messages(&req(h));
        assert_eq!(m.len(), 2 + 3 + 1);
        assert!(m[2]["content"].as_str().unwrap().starts_with("1:"));
    }

    #[test]
    fn upstream_message_prefers_openai_error() {
        assert_eq!(
            upstream_message(r#"{"error":{"message":"model overloaded"}}"#),
            "model overloaded"
        );
        assert_eq!(upstream_message(""), "no details");
    }
}
