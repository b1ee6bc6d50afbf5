//! The service in-process on 127.0.0.1:0 against a fresh PostgreSQL
//! database (TEST_DATABASE_URL): chat with citations, persistence per user,
//! SSE streaming, BSL check endpoint, analytics events, metadata answers,
//! JWT identification.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_assistant::{build_state, migrate, router, AuthMode, Settings};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

struct Svc {
    base: String,
    http: reqwest::Client,
    _db: kit::testing::TestDb,
}

fn settings(auth: AuthMode) -> Settings {
    Settings {
        auth,
        llm: None,
        integration_url: None,
        analytics_url: None,
        ingest_token: None,
        analytics_queue: 100,
    }
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn start(settings: Settings) -> Svc {
    let db = kit::testing::TestDb::new().await;
    let pool = kit::db::connect_pg(&db.url, None, Duration::from_secs(10))
        .await
        .expect("connect test database");
    migrate(&pool).await.expect("migrations");
    let infra = kit::Infra::named("ai-assistant", "test").with_pg(pool.clone());
    let state = build_state(pool, settings, &infra.metrics).expect("state");
    let addr = serve(infra.wrap(router(state))).await;
    Svc {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _db: db,
    }
}

/// The per-stack key the (test) api-gateway signs identities with.
fn gateway_key() -> kit::InternalAuthKey {
    kit::InternalAuthKey::new(&kit::Secret::new(
        "ai-assistant-test-internal-key-0123456789".into(),
    ))
    .unwrap()
}

/// The headers the api-gateway sets for `user` on `method path`.
fn proved(method: &reqwest::Method, path: &str, user: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    let id = kit::identity::ForwardedIdentity {
        user_id: user.into(),
        roles: vec!["viewer".into()],
        method: kit::identity::AuthMethod::ApiKey,
    };
    gateway_key().sign_into(&mut h, method, path, &id).unwrap();
    h
}

impl Svc {
    /// A request as the api-gateway forwards it for `user`.
    fn as_user(&self, method: reqwest::Method, path: &str, user: &str) -> reqwest::RequestBuilder {
        let h = proved(&method, path, user);
        self.http
            .request(method, format!("{}{path}", self.base))
            .headers(h)
    }

    async fn chat(&self, user: &str, body: Value) -> (u16, Value) {
        let r = self
            .as_user(reqwest::Method::POST, "/chat", user)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, user: &str, path: &str) -> (u16, Value) {
        let r = self
            .as_user(reqwest::Method::GET, path, user)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn stock_question_answer_cites_register_balance_passages() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let (status, body) = svc
        .chat(
            "u1",
            json!({"message": "как получить остатки товаров на складе запросом?"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["provider"], "offline");
    let sources = body["sources"].as_array().unwrap();
    assert_eq!(sources[0]["file"], "kb/query-language.md");
    assert_eq!(
        sources[0]["heading"],
        "Как получить остатки товаров на складе запросом"
    );
    let answer = body["answer"].as_str().unwrap();
    assert!(answer.contains("РегистрНакопления.ОстаткиТоваров.Остатки(&Дата, Склад = &Склад)"));
    assert!(answer.contains("[1] kb/query-language.md"));
}

#[tokio::test]
async fn conversations_persist_per_user() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let (s, first) = svc
        .chat(
            "alice",
            json!({"message": "Как установить состав стандартного интерфейса OData?"}),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    let cid = first["conversation_id"].as_str().unwrap().to_string();
    let (s, second) = svc
        .chat(
            "alice",
            json!({"conversation_id": cid, "message": "А что писать в default.vrd?"}),
        )
        .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["conversation_id"], cid.as_str());
    // Bob has his own conversation.
    let (s, _) = svc
        .chat(
            "bob",
            json!({"message": "как сделать резервное копирование базы?"}),
        )
        .await;
    assert_eq!(s, 200);

    let (s, list) = svc.get("alice", "/conversations").await;
    assert_eq!(s, 200);
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1, "{list}");
    assert_eq!(convs[0]["id"], cid.as_str());
    assert_eq!(convs[0]["message_count"], 4);
    assert_eq!(
        convs[0]["title"],
        "Как установить состав стандартного интерфейса OData?"
    );

    let (s, conv) = svc.get("alice", &format!("/conversations/{cid}")).await;
    assert_eq!(s, 200);
    let msgs = conv["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[2]["content"], "А что писать в default.vrd?");
    assert_eq!(msgs[1]["sources"][0]["file"], "kb/odata.md");
    assert_eq!(msgs[3]["id"], second["message_id"]);

    // Bob sees neither the list entry nor the conversation, nor can he post to it.
    let (_, bob_list) = svc.get("bob", "/conversations").await;
    assert_eq!(bob_list["conversations"].as_array().unwrap().len(), 1);
    assert_ne!(bob_list["conversations"][0]["id"], cid.as_str());
    let (s, err) = svc.get("bob", &format!("/conversations/{cid}")).await;
    assert_eq!(s, 404);
    assert_eq!(err["error"]["code"], "not_found");
    let (s, _) = svc
        .chat("bob", json!({"conversation_id": cid, "message": "привет"}))
        .await;
    assert_eq!(s, 404);

    // No user, bad input.
    let r = svc
        .http
        .get(format!("{}/conversations", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, err) = svc.chat("alice", json!({"message": "   "})).await;
    assert_eq!(s, 422, "{err}");
    let (s, _) = svc.get("alice", "/conversations/not-a-uuid").await;
    assert_eq!(s, 422);

    // Deleting: only the owner, then it is gone.
    let del = |user: &'static str| {
        svc.as_user(
            reqwest::Method::DELETE,
            &format!("/conversations/{cid}"),
            user,
        )
        .send()
    };
    assert_eq!(del("bob").await.unwrap().status().as_u16(), 404);
    assert_eq!(del("alice").await.unwrap().status().as_u16(), 204);
    assert_eq!(del("alice").await.unwrap().status().as_u16(), 404);
    let (s, _) = svc.get("alice", &format!("/conversations/{cid}")).await;
    assert_eq!(s, 404);
    let (_, list) = svc.get("alice", "/conversations").await;
    assert!(list["conversations"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn code_in_message_is_checked_and_cited() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let msg = "Почему этот код медленный?\n```bsl\nПроцедура Заполнить(Товары)\n\tДля Каждого Строка Из Товары Цикл\n\t\tЗапрос = Новый Запрос(\"ВЫБРАТЬ 1 КАК Поле\");\n\t\tРезультат = Запрос.Выполнить();\n\tКонецЦикла;\nКонецПроцедуры\n```";
    let (s, body) = svc.chat("dev", json!({"message": msg})).await;
    assert_eq!(s, 200, "{body}");
    let diags = body["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{body}");
    assert_eq!(diags[0]["rule"], "query-in-loop");
    assert_eq!(diags[0]["line"], 4);
    assert!(body["answer"].as_str().unwrap().contains("строка 4"));
    assert!(
        body["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["heading"] == "Запросы в цикле запрещены"),
        "{body}"
    );
    let metrics = svc
        .http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ai_assistant_bsl_diagnostics_total{rule=\"query-in-loop\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ai_assistant_answers_total{outcome=\"ok\",provider=\"offline\"} 1"));
    assert!(metrics.contains("ai_assistant_analytics_events_total{result=\"queued\"} 0"));
}

#[tokio::test]
async fn streaming_chat_sends_sse_and_stores_answer() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let r = svc
        .as_user(reqwest::Method::POST, "/chat?stream=true", "streamer")
        .json(&json!({"message": "как получить остатки товаров на складе запросом?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.first().unwrap().0, "meta");
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert!(events.iter().filter(|(e, _)| e == "delta").count() > 1);
    assert!(deltas.contains("РегистрНакопления.ОстаткиТоваров.Остатки"));
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["sources"][0]["file"], "kb/query-language.md");
    let cid = done["conversation_id"].as_str().unwrap();

    let (_, conv) = svc.get("streamer", &format!("/conversations/{cid}")).await;
    assert_eq!(conv["messages"][1]["content"].as_str().unwrap(), deltas);

    // Accept: text/event-stream works too.
    let r = svc
        .as_user(reqwest::Method::POST, "/chat", "streamer")
        .header("accept", "text/event-stream")
        .json(&json!({"message": "default.vrd"}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("event: done"));
}

fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn bsl_check_endpoint_and_health() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let r = svc
        .http
        .post(format!("{}/bsl/check", svc.base))
        .json(&json!({"code": "Процедура А()\n\tДата = ТекущаяДата();\n\tСообщить(Дата);\nКонецПроцедуры\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "module");
    let d = body["diagnostics"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{body}");
    assert_eq!(
        (
            d[0]["line"].as_u64(),
            d[0]["column"].as_u64(),
            d[0]["rule"].as_str(),
            d[0]["severity"].as_str()
        ),
        (
            Some(2),
            Some(9),
            Some("deprecated-current-date"),
            Some("warning")
        )
    );
    assert_eq!(d[1]["rule"], "deprecated-message");
    assert!(d[1]["message"]
        .as_str()
        .unwrap()
        .contains("СообщениеПользователю"));

    let r = svc
        .http
        .post(format!("{}/bsl/check", svc.base))
        .json(&json!({"code": "ВЫБРАТЬ\n\tТ.Ссылка,\nИЗ Справочник.Номенклатура КАК Т"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "query");
    assert_eq!(body["diagnostics"][0]["rule"], "query-syntax-error");

    let r = svc
        .http
        .post(format!("{}/bsl/check", svc.base))
        .json(&json!({"source": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["code"].is_string());

    let r = svc
        .http
        .get(format!("{}/health/ready", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = svc
        .http
        .get(format!("{}/kb/search?q=default.vrd", svc.base))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["file"], "kb/odata.md");
}

#[tokio::test]
async fn questions_and_answers_go_to_analytics_and_its_outage_is_harmless() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |Json(batch): Json<Vec<Value>>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().extend(batch);
                Json(json!({"accepted": 1}))
            }
        }),
    );
    let addr = serve(app).await;
    let mut s = settings(AuthMode::Gateway(gateway_key()));
    s.analytics_url = Some(format!("http://{addr}"));
    let svc = start(s).await;
    let (status, body) = svc
        .chat(
            "carol",
            json!({"message": "как получить остатки товаров на складе запросом?"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut events = Vec::new();
    for _ in 0..50 {
        events = seen.lock().unwrap().clone();
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["kind"], "question");
    assert_eq!(events[1]["kind"], "answer");
    for e in &events {
        assert_eq!(e["service"], "ai-assistant");
        assert_eq!(e["user_id"], "carol");
        assert_eq!(
            e["properties"]["question"],
            "как получить остатки товаров на складе запросом?"
        );
        assert_eq!(e["properties"]["conversation_id"], body["conversation_id"]);
        uuid::Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap();
        chrono::DateTime::parse_from_rfc3339(e["occurred_at"].as_str().unwrap()).unwrap();
    }
    assert!(events[1]["latency_ms"].as_f64().unwrap() >= 0.0);
    let metrics = svc
        .http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ai_assistant_analytics_events_total{result=\"queued\"} 2"),
        "{metrics}"
    );

    // Analytics unreachable: the assistant answers all the same.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut s = settings(AuthMode::Gateway(gateway_key()));
    s.analytics_url = Some(format!("http://{dead}"));
    let svc = start(s).await;
    for _ in 0..3 {
        let (status, _) = svc.chat("dave", json!({"message": "default.vrd"})).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn metadata_questions_are_answered_from_1c_integration() {
    let model = json!({
        "namespace": "StandardODATA",
        "entity_sets": [
            {"name": "Catalog_Номенклатура", "entity_type": "StandardODATA.Catalog_Номенклатура", "kind": "catalog"},
            {"name": "Catalog_Номенклатура_ДополнительныеРеквизиты", "entity_type": "StandardODATA.Catalog_Номенклатура_ДополнительныеРеквизиты",
             "kind": "tabular_section", "owner": "Catalog_Номенклатура", "section": "ДополнительныеРеквизиты"}
        ],
        "entity_types": {
            "Catalog_Номенклатура": {"name": "Catalog_Номенклатура", "keys": ["Ref_Key"], "properties": [
                {"name": "Ref_Key", "type": "Edm.Guid", "nullable": false},
                {"name": "Description", "type": "Edm.String", "nullable": true},
                {"name": "Артикул", "type": "Edm.String", "nullable": true},
                {"name": "ЕдиницаИзмерения_Key", "type": "Edm.Guid", "nullable": true}
            ], "navigation": []},
            "Catalog_Номенклатура_ДополнительныеРеквизиты": {"name": "Catalog_Номенклатура_ДополнительныеРеквизиты", "properties": [
                {"name": "Значение", "type": "Edm.String", "nullable": true}
            ], "navigation": []}
        }
    });
    let auth_seen: Arc<Mutex<Option<String>>> = Arc::default();
    let a2 = auth_seen.clone();
    let app = axum::Router::new().route(
        "/metadata",
        get(move |headers: axum::http::HeaderMap| {
            let model = model.clone();
            let a2 = a2.clone();
            async move {
                *a2.lock().unwrap() = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string());
                Json(model)
            }
        }),
    );
    let addr = serve(app).await;
    let mut s = settings(AuthMode::Gateway(gateway_key()));
    s.integration_url = Some(format!("http://{addr}"));
    let svc = start(s).await;
    let r = svc
        .as_user(reqwest::Method::POST, "/chat", "erin")
        .header("authorization", "Bearer forwarded-token")
        .json(&json!({"message": "какие реквизиты у Справочник.Номенклатура?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    let answer = body["answer"].as_str().unwrap();
    assert!(answer.contains("Catalog_Номенклатура"), "{answer}");
    assert!(answer.contains("`Артикул`: Edm.String"), "{answer}");
    assert!(answer.contains("ДополнительныеРеквизиты"), "{answer}");
    assert_eq!(
        body["metadata"]["object"]["entity_set"],
        "Catalog_Номенклатура"
    );
    assert_eq!(body["sources"][0]["file"], "1c-integration: GET /metadata");
    assert_eq!(body["sources"][0]["heading"], "Catalog_Номенклатура");
    assert_eq!(
        auth_seen.lock().unwrap().as_deref(),
        Some("Bearer forwarded-token")
    );

    let (s, body) = svc
        .chat(
            "erin",
            json!({"message": "какие поля у Документ.НетТакого?"}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        body["answer"].as_str().unwrap().contains("не найден"),
        "{body}"
    );
}

const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgPFPQHHG8WB8FjWrSBBTzBTIm9oQHnggiRKNPRud7R
-----END PRIVATE KEY-----
";
const TEST_KEY_X: &str = "47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE";

fn token(sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let claims = json!({"sub": sub, "roles": ["developer"], "exp": now + 600, "iat": now});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn test_verifier() -> kit::Verifier {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": TEST_KEY_X, "kid": "k1", "use": "sig", "alg": "EdDSA"
    }]}))
    .unwrap();
    kit::Verifier::from_jwks(&jwks)
}

#[tokio::test]
async fn bearer_token_wins_over_gateway_identity_in_combined_mode() {
    let svc = start(settings(AuthMode::JwtOrGateway(
        test_verifier(),
        gateway_key(),
    )))
    .await;
    // API-key caller: no bearer, the gateway's proved identity identifies.
    let (s, _) = svc
        .chat("api-key-user", json!({"message": "default.vrd"}))
        .await;
    assert_eq!(s, 200);
    let (_, list) = svc.get("api-key-user", "/conversations").await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    // A bearer token decides even when a proved identity says otherwise.
    let list: Value = svc
        .as_user(reqwest::Method::GET, "/conversations", "api-key-user")
        .bearer_auth(token("jwt-user"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"].as_array().unwrap().len(), 0);
    // An invalid token is rejected, not replaced by the identity headers.
    let r = svc
        .as_user(reqwest::Method::GET, "/conversations", "api-key-user")
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn forged_x_user_id_is_refused() {
    // What TRUST_X_USER_ID=true accepted: a bare header from anything on the
    // network. Now refused in every mode.
    for auth in [
        AuthMode::Gateway(gateway_key()),
        AuthMode::JwtOrGateway(test_verifier(), gateway_key()),
    ] {
        let svc = start(settings(auth)).await;
        let r = svc
            .http
            .get(format!("{}/conversations", svc.base))
            .header("x-user-id", "victim")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_identity_proof", "{v}");
        // Signed by another key (another stack, or a guess): refused.
        let mut h = reqwest::header::HeaderMap::new();
        kit::InternalAuthKey::new(&kit::Secret::new("not-this-stacks-key-0123".into()))
            .unwrap()
            .sign_into(
                &mut h,
                &reqwest::Method::GET,
                "/conversations",
                &kit::identity::ForwardedIdentity {
                    user_id: "victim".into(),
                    roles: vec![],
                    method: kit::identity::AuthMethod::Jwt,
                },
            )
            .unwrap();
        let r = svc
            .http
            .get(format!("{}/conversations", svc.base))
            .headers(h)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        // A proof for another path (replayed): refused.
        let r = svc
            .http
            .get(format!("{}/conversations", svc.base))
            .headers(proved(&reqwest::Method::GET, "/kb/search", "victim"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        // The gateway's proof for this request: accepted.
        let r = svc
            .as_user(reqwest::Method::GET, "/conversations", "victim")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

#[test]
fn trust_x_user_id_gets_a_warning_naming_its_replacement() {
    let env = kit::config::Env::from_pairs([("TRUST_X_USER_ID", "true")]);
    let w = ai_assistant::trust_x_user_id_warning(&env).unwrap();
    assert!(w.contains("no longer supported"), "{w}");
    assert!(w.contains("INTERNAL_AUTH_KEY_FILE"), "{w}");
    let env = kit::config::Env::from_pairs::<[(&str, &str); 0], _, _>([]);
    assert!(ai_assistant::trust_x_user_id_warning(&env).is_none());
    // And the variable alone no longer makes the service start.
    let cfg = kit::Config::from_source(
        &kit::config::Env::from_pairs([("TRUST_X_USER_ID", "true")]),
        "ai-assistant",
        8000,
    )
    .unwrap();
    let err = Settings::from_env(
        &cfg,
        &kit::config::Env::from_pairs([("TRUST_X_USER_ID", "true")]),
    )
    .err()
    .expect("no way to identify users");
    assert!(err.to_string().contains("INTERNAL_AUTH_KEY_FILE"), "{err}");
}

#[tokio::test]
async fn jwt_subject_identifies_the_user() {
    let svc = start(settings(AuthMode::Jwt(test_verifier()))).await;
    let r = svc
        .http
        .post(format!("{}/chat", svc.base))
        .bearer_auth(token("user-42"))
        .json(&json!({"message": "как обновить конфигурацию?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let list: Value = svc
        .http
        .get(format!("{}/conversations", svc.base))
        .bearer_auth(token("user-42"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    let other: Value = svc
        .http
        .get(format!("{}/conversations", svc.base))
        .bearer_auth(token("user-43"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["conversations"].as_array().unwrap().len(), 0);
    // Without the gateway's key configured, even a proved identity is not
    // accepted in JWT mode.
    let r = svc
        .as_user(reqwest::Method::GET, "/conversations", "user-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// A minimal OpenAI-compatible server: 401 unless the key is `sk-good`.
async fn fake_llm() -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(
            |headers: axum::http::HeaderMap, Json(body): Json<Value>| async move {
                use axum::response::IntoResponse;
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer sk-good")
                {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        Json(json!({"error": {"message": "bad key"}})),
                    )
                        .into_response();
                }
                if body["stream"] == true {
                    let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Ответ \"}}]}\n\n\
                           data: {\"choices\":[{\"delta\":{\"content\":\"модели [1]\"}}]}\n\n\
                           data: [DONE]\n\n";
                    ([("content-type", "text/event-stream")], sse).into_response()
                } else {
                    Json(json!({"choices": [{"message": {"content": "Ответ модели [1]"}}]}))
                        .into_response()
                }
            },
        ),
    );
    serve(app).await
}

fn llm_settings(addr: SocketAddr, key: &str) -> Settings {
    let path = std::env::temp_dir().join(format!("llm-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, key).unwrap();
    let env = kit::config::Env::from_pairs([
        ("LLM_BASE_URL", format!("http://{addr}/v1")),
        ("LLM_MODEL", "m".to_string()),
        ("LLM_API_KEY_FILE", path.to_string_lossy().into_owned()),
        ("LLM_TIMEOUT", "5".to_string()),
        ("LLM_MAX_RETRIES", "0".to_string()),
    ]);
    let mut s = settings(AuthMode::Gateway(gateway_key()));
    s.llm = ai_assistant::llm::LlmConfig::from_env(&env).unwrap();
    s
}

#[tokio::test]
async fn chat_with_llm_provider_streams_and_maps_errors() {
    let addr = fake_llm().await;
    let svc = start(llm_settings(addr, "sk-good")).await;
    let (s, body) = svc
        .chat(
            "frank",
            json!({"message": "как получить остатки товаров на складе запросом?"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["provider"], "openai");
    assert_eq!(body["answer"], "Ответ модели [1]");
    assert_eq!(body["sources"][0]["file"], "kb/query-language.md");

    let r = svc
        .as_user(reqwest::Method::POST, "/chat?stream=true", "frank")
        .json(&json!({"conversation_id": body["conversation_id"], "message": "а обороты?"}))
        .send()
        .await
        .unwrap();
    let events = parse_sse(&r.text().await.unwrap());
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "Ответ модели [1]");
    assert_eq!(events.last().unwrap().0, "done");
    let (_, conv) = svc
        .get(
            "frank",
            &format!(
                "/conversations/{}",
                body["conversation_id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(conv["messages"].as_array().unwrap().len(), 4);
    assert_eq!(conv["messages"][3]["provider"], "openai");

    // A rejected key is a clear 502, and nothing is stored.
    let svc = start(llm_settings(addr, "sk-bad")).await;
    let (s, err) = svc.chat("gina", json!({"message": "default.vrd"})).await;
    assert_eq!(s, 502, "{err}");
    assert_eq!(err["error"]["code"], "llm_unauthorized");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("LLM_API_KEY_FILE"));
    let r = svc
        .as_user(reqwest::Method::POST, "/chat?stream=true", "gina")
        .json(&json!({"message": "default.vrd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let (_, list) = svc.get("gina", "/conversations").await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn short_follow_up_is_searched_with_the_previous_question() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let (_, first) = svc
        .chat(
            "henry",
            json!({"message": "как получить остатки товаров на складе запросом?"}),
        )
        .await;
    let (s, body) = svc
        .chat(
            "henry",
            json!({"conversation_id": first["conversation_id"], "message": "а обороты за период?"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["sources"][0]["heading"], "Обороты за период", "{body}");
    assert!(body["answer"]
        .as_str()
        .unwrap()
        .contains("Обороты(&Начало, &Конец"));
}

/// A real module is 0.4–0.6 MB, a generated one several MB: the whole of it
/// is checked over HTTP (the old 200,000-character cap refused both), and the
/// answer says how many lines were checked and how long it took.
#[tokio::test]
async fn bsl_check_takes_a_module_of_several_megabytes() {
    let svc = start(settings(AuthMode::Gateway(gateway_key()))).await;
    let procedures = 25_000;
    let mut code = String::new();
    for i in 0..procedures {
        code.push_str(&format!(
            "Процедура ЗаполнитьДатуДокумента{i}(Документ) Экспорт\n\tДокумент.Дата = ТекущаяДата(); // дата записи\nКонецПроцедуры\n\n"
        ));
    }
    assert!(code.len() > 3_000_000, "{} bytes", code.len());
    let r = svc
        .http
        .post(format!("{}/bsl/check", svc.base))
        .json(&json!({ "code": code, "kind": "module" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["lines"].as_u64(), Some(4 * procedures as u64));
    let d = body["diagnostics"].as_array().unwrap();
    // One deprecated-current-date warning per procedure, on its second line.
    assert_eq!(d.len(), procedures, "{:?}", &d[..d.len().min(3)]);
    assert!(d.iter().all(|x| x["rule"] == "deprecated-current-date"));
    assert_eq!(
        d[procedures - 1]["line"].as_u64(),
        Some(4 * procedures as u64 - 2)
    );
    let ms = body["elapsed_ms"].as_f64().unwrap();
    assert!(ms > 0.0);
    println!(
        "checked {} bytes, {} lines in {ms:.0} ms over HTTP",
        code.len(),
        body["lines"]
    );
}
