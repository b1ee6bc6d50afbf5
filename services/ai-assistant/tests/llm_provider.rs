//! The OpenAI-compatible provider against a local fake server on
//! 127.0.0.1:0: context first, streaming, and 401/429/5xx/timeouts mapped
//! to clear errors with bounded retries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_assistant::kb::KnowledgeBase;
use ai_assistant::llm::{LlmConfig, OpenAiProvider};
use ai_assistant::provider::{AnswerRequest, Provider, ProviderError, Speaker, Turn};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Unauthorized,
    RateLimited,
    ServerError,
    Hang,
    /// 503 on the first request, then OK.
    Flaky,
    /// Streams two chunks and then stalls.
    StallMidStream,
}

#[derive(Clone)]
struct Fake {
    mode: Mode,
    hits: Arc<AtomicUsize>,
    last_body: Arc<Mutex<Value>>,
    last_auth: Arc<Mutex<Option<String>>>,
}

async fn completions(
    State(f): State<Fake>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = f.hits.fetch_add(1, Ordering::SeqCst);
    *f.last_body.lock().unwrap() = body.clone();
    *f.last_auth.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let stream = body["stream"].as_bool().unwrap_or(false);
    match f.mode {
        Mode::Unauthorized => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": "Incorrect API key provided"}})),
            )
                .into_response()
        }
        Mode::RateLimited => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                Json(json!({"error": {"message": "Rate limit reached"}})),
            )
                .into_response()
        }
        Mode::ServerError => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "model crashed"}})),
            )
                .into_response()
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Mode::Flaky if n == 0 => {
            return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
        }
        _ => {}
    }
    if !stream {
        return Json(json!({
            "id": "cmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "Используйте виртуальную таблицу Остатки [1]."}, "finish_reason": "stop"}]
        }))
        .into_response();
    }
    let chunks = ["Используйте ", "виртуальную таблицу ", "Остатки [1]."];
    let mut sse = String::new();
    for c in chunks {
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": c}}]})
        ));
    }
    if f.mode == Mode::StallMidStream {
        let first: String = sse
            .split("\n\n")
            .take(2)
            .map(|s| format!("{s}\n\n"))
            .collect();
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(
            futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(String::new())
            }),
        );
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(body),
        )
            .into_response();
    }
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}

async fn fake(mode: Mode) -> (SocketAddr, Fake) {
    let f = Fake {
        mode,
        hits: Arc::default(),
        last_body: Arc::new(Mutex::new(Value::Null)),
        last_auth: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, f)
}

fn key_file() -> String {
    let path = std::env::temp_dir().join(format!("llm-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, "sk-test\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn provider(addr: SocketAddr, timeout_secs: &str, retries: &str) -> OpenAiProvider {
    let env = kit::config::Env::from_pairs([
        ("LLM_BASE_URL", format!("http://{addr}/v1/")),
        ("LLM_MODEL", "test-model".to_string()),
        ("LLM_API_KEY_FILE", key_file()),
        ("LLM_TIMEOUT", timeout_secs.to_string()),
        ("LLM_MAX_RETRIES", retries.to_string()),
        ("LLM_RETRY_BACKOFF_MS", "10".to_string()),
    ]);
    let cfg = LlmConfig::from_env(&env).unwrap().expect("configured");
    assert!(!format!("{cfg:?}").contains("sk-test"));
    OpenAiProvider::new(cfg).unwrap()
}

async fn request() -> AnswerRequest {
    let kb = KnowledgeBase::embedded().unwrap();
    let question = "как получить остатки товаров на складе запросом?";
    let ctx = ai_assistant::context::build(&kb, None, None, question, None).await;
    AnswerRequest {
        question: question.into(),
        history: vec![
            Turn {
                role: Speaker::User,
                content: "привет".into(),
            },
            Turn {
                role: Speaker::Assistant,
                content: "Здравствуйте!".into(),
            },
        ],
        context: ctx,
    }
}

#[tokio::test]
async fn answer_gets_retrieved_context_first() {
    let (addr, f) = fake(Mode::Ok).await;
    let p = provider(addr, "5", "2");
    let text = p.answer(request().await).await.unwrap();
    assert_eq!(text, "Используйте виртуальную таблицу Остатки [1].");
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.last_auth.lock().unwrap().as_deref(),
        Some("Bearer sk-test")
    );
    let body = f.last_body.lock().unwrap().clone();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], false);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    let ctx = msgs[1]["content"].as_str().unwrap();
    assert!(
        ctx.contains("[1] kb/query-language.md — Как получить остатки товаров на складе запросом")
    );
    assert!(ctx.contains("РегистрНакопления.ОстаткиТоваров.Остатки(&Дата, Склад = &Склад)"));
    // History, then the question last.
    assert_eq!(msgs[2]["content"], "привет");
    assert_eq!(msgs[3]["role"], "assistant");
    assert_eq!(
        msgs.last().unwrap()["content"],
        "как получить остатки товаров на складе запросом?"
    );
}

#[tokio::test]
async fn streaming_yields_sse_chunks() {
    let (addr, f) = fake(Mode::Ok).await;
    let p = provider(addr, "5", "0");
    let mut s = p.stream(request().await).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = s.next().await {
        chunks.push(c.unwrap());
    }
    assert_eq!(
        chunks,
        ["Используйте ", "виртуальную таблицу ", "Остатки [1]."]
    );
    assert_eq!(f.last_body.lock().unwrap()["stream"], true);
}

#[tokio::test]
async fn unauthorized_is_clear_and_not_retried() {
    let (addr, f) = fake(Mode::Unauthorized).await;
    let p = provider(addr, "5", "3");
    let err = p.answer(request().await).await.unwrap_err();
    assert_eq!(err, ProviderError::Unauthorized { status: 401 });
    assert_eq!(err.code(), "llm_unauthorized");
    assert!(err.to_string().contains("LLM_API_KEY_FILE"));
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    let err = p.stream(request().await).await.err().unwrap();
    assert_eq!(err.code(), "llm_unauthorized");
}

#[tokio::test]
async fn rate_limit_is_retried_a_bounded_number_of_times() {
    let (addr, f) = fake(Mode::RateLimited).await;
    let p = provider(addr, "5", "2");
    let err = p.answer(request().await).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::RateLimited {
            retry_after_secs: Some(0)
        }
    );
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(f.hits.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
}

#[tokio::test]
async fn server_error_carries_upstream_message() {
    let (addr, f) = fake(Mode::ServerError).await;
    let p = provider(addr, "5", "1");
    let err = p.answer(request().await).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Upstream {
            status: 500,
            message: "model crashed".into()
        }
    );
    assert_eq!(err.code(), "llm_upstream_error");
    assert_eq!(f.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn transient_failure_is_retried_to_success() {
    let (addr, f) = fake(Mode::Flaky).await;
    let p = provider(addr, "5", "2");
    let text = p.answer(request().await).await.unwrap();
    assert!(text.contains("Остатки"));
    assert_eq!(f.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn timeouts_are_bounded_and_mapped() {
    let (addr, f) = fake(Mode::Hang).await;
    let p = provider(addr, "0.3", "1");
    let started = std::time::Instant::now();
    let err = p.answer(request().await).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
    assert_eq!(err.code(), "llm_timeout");
    assert_eq!(err.status().as_u16(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(f.hits.load(Ordering::SeqCst), 2);

    // A stream that stalls after its first chunk ends with a timeout error.
    let (addr, _) = fake(Mode::StallMidStream).await;
    let p = provider(addr, "0.3", "0");
    let mut s = p.stream(request().await).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), "Используйте ");
    let mut last = None;
    while let Some(item) = s.next().await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(ProviderError::Timeout(_)))),
        "{last:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = provider(dead, "2", "1");
    let err = p.answer(request().await).await.unwrap_err();
    assert_eq!(err.code(), "llm_unavailable", "{err:?}");
    assert!(!err.to_string().contains("sk-test"));
}
