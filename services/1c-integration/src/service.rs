//! The HTTP service (port 8001) on kit: 1C metadata, entities, document
//! posting, register balances, SOAP calls and the scheduled exchange.
//!
//! Every API route needs a JWT (verified against `JWKS_URL`) with the
//! `developer` or `admin` role.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use kit::extract::Query as QueryParams;
use kit::{ApiError, AuthUser, Role, Secret, Verifier};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::exchange::{self, ExchangeConfig};
use crate::odata::expr::{parse_datetime, parse_filter};
use crate::odata::{
    BalanceArgs, ClientConfig, Filter, Key, Metadata, ODataError, OneC, Query, SetKind,
};
use crate::soap::Soap;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub service_name: String,
    pub port: u16,
    pub database_url: Secret<String>,
    pub redis_url: Secret<String>,
    pub jwks_url: Option<String>,
    /// `JWT_ISSUER` / `JWT_AUDIENCE` the tokens must carry.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// `INTERNAL_AUTH_KEY_FILE`: identities the api-gateway proved (API-key
    /// callers) are accepted with it.
    pub internal_auth: Option<kit::InternalAuthKey>,
    /// `ONEC_BASE_URL`, e.g. `http://onec-simulator:8080/demo`.
    pub onec_base_url: String,
    /// `ONEC_USER`.
    pub onec_user: String,
    /// `ONEC_PASSWORD_FILE` (or `ONEC_PASSWORD`); empty when unset.
    pub onec_password: Secret<String>,
    /// `ONEC_TIMEOUT` seconds (default 30), `ONEC_RETRIES` (default 3).
    pub onec_timeout: Duration,
    pub onec_retries: u32,
    /// `METADATA_CACHE_TTL` seconds (default 300).
    pub metadata_ttl: u64,
    /// `REDIS_KEY_PREFIX` (or the older `REDIS_PREFIX`; default
    /// `<SERVICE_NAME>:`, i.e. `1c-integration:`).
    pub redis_prefix: String,
    /// `EXCHANGE_SETS`, `EXCHANGE_INTERVAL` (s, default 300; 0 disables the
    /// schedule), `EXCHANGE_PAGE_SIZE` (default 100).
    pub exchange: ExchangeConfig,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub body_limit: usize,
    pub connect_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        Self::from_source(&kit::config::Env::process())
    }

    pub fn from_source(env: &kit::config::Env) -> anyhow::Result<Settings> {
        let cfg = kit::Config::from_source(env, "1c-integration", 8001)?;
        let database_url = cfg.database_url.clone().ok_or_else(|| {
            anyhow::anyhow!("DATABASE_URL (or DATABASE_HOST/NAME/USER) is required")
        })?;
        let redis_url = cfg
            .redis_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("REDIS_URL is required"))?;
        let onec_base_url = env.var("ONEC_BASE_URL").ok_or_else(|| {
            anyhow::anyhow!("ONEC_BASE_URL is required (e.g. http://onec-simulator:8080/demo)")
        })?;
        let onec_user = env
            .var("ONEC_USER")
            .ok_or_else(|| anyhow::anyhow!("ONEC_USER is required"))?;
        let onec_password = match env.secret("ONEC_PASSWORD")? {
            Some(p) => p,
            None => {
                tracing::warn!(
                    "ONEC_PASSWORD_FILE is not set: connecting to 1C with an empty password"
                );
                Secret::new(String::new())
            }
        };
        let interval = env.duration_secs_or("EXCHANGE_INTERVAL", Duration::from_secs(300))?;
        Ok(Settings {
            service_name: cfg.service_name.clone(),
            port: cfg.port,
            database_url,
            redis_url,
            jwks_url: cfg.jwks_url.clone(),
            jwt_issuer: cfg.jwt_issuer.clone(),
            jwt_audience: cfg.jwt_audience.clone(),
            internal_auth: cfg.internal_auth_key.clone(),
            onec_base_url,
            onec_user,
            onec_password,
            onec_timeout: env.duration_secs_or("ONEC_TIMEOUT", Duration::from_secs(30))?,
            onec_retries: env.parse_or("ONEC_RETRIES", 3)?,
            metadata_ttl: env.parse_or("METADATA_CACHE_TTL", 300)?,
            redis_prefix: env
                .var("REDIS_PREFIX")
                .unwrap_or_else(|| cfg.redis_key_prefix.clone()),
            exchange: ExchangeConfig {
                sets: exchange::parse_sets(&env.var("EXCHANGE_SETS").unwrap_or_default()),
                interval,
                page_size: env.parse_or("EXCHANGE_PAGE_SIZE", 100)?,
            },
            shutdown_timeout: cfg.shutdown_timeout,
            request_timeout: cfg.request_timeout,
            body_limit: cfg.body_limit,
            connect_timeout: cfg.connect_timeout,
        })
    }

    pub fn client(&self) -> Result<OneC, ODataError> {
        let mut c = ClientConfig::new(
            &self.onec_base_url,
            &self.onec_user,
            crate::odata::Secret::new(self.onec_password.expose().clone()),
        );
        c.timeout = self.onec_timeout;
        c.retries = self.onec_retries;
        OneC::new(c)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub client: OneC,
    pub soap: Arc<Soap>,
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub redis_prefix: String,
    pub metadata_ttl: u64,
    pub exchange: ExchangeConfig,
    /// Serialises exchange runs inside this process.
    pub exchange_lock: Arc<tokio::sync::Mutex<()>>,
    pub exchange_metrics: Option<exchange::ExchangeMetrics>,
}

/// 1C errors as the service's JSON errors.
pub fn api_error(e: ODataError) -> ApiError {
    let msg = e.to_string();
    match e {
        ODataError::Unauthorized { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "onec_unauthorized", msg)
        }
        ODataError::NotFound { message } => ApiError::not_found(message),
        ODataError::PreconditionFailed { message } => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            message,
        ),
        ODataError::Http {
            status: 400,
            message,
        } => ApiError::new(StatusCode::BAD_REQUEST, "onec_rejected", message),
        ODataError::Http { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "onec_error", msg),
        ODataError::Transport { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "onec_unavailable", msg)
        }
        ODataError::Decode(_) => ApiError::new(StatusCode::BAD_GATEWAY, "onec_bad_response", msg),
        ODataError::Metadata(crate::odata::metadata::MetadataError::Empty) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "onec_nothing_published", msg)
        }
        ODataError::Metadata(_) => ApiError::new(StatusCode::BAD_GATEWAY, "onec_bad_metadata", msg),
        ODataError::Invalid(m) => ApiError::bad_request(m),
        ODataError::SoapFault { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "soap_fault", msg),
    }
}

fn allowed(user: &AuthUser) -> Result<(), ApiError> {
    user.require_any_role(&[Role::Developer, Role::Admin])
}

fn redis_error(e: redis::RedisError) -> ApiError {
    ApiError::internal(format!("redis: {e}"))
}

impl AppState {
    fn metadata_key(&self) -> String {
        format!("{}metadata", self.redis_prefix)
    }

    /// The metadata model, from Redis when cached (`hit` = true).
    pub async fn metadata(&self, refresh: bool) -> Result<(Metadata, bool), ApiError> {
        let mut redis = self.redis.clone();
        let key = self.metadata_key();
        if !refresh {
            let cached: Option<String> = redis.get(&key).await.map_err(redis_error)?;
            if let Some(text) = cached {
                match serde_json::from_str::<Metadata>(&text) {
                    Ok(m) => return Ok((m, true)),
                    Err(e) => tracing::warn!(error = %e, "cached metadata unreadable, refetching"),
                }
            }
        }
        let m = self.client.metadata().await.map_err(api_error)?;
        let text = serde_json::to_string(&m).map_err(ApiError::internal)?;
        let _: () = redis
            .set_ex(&key, text, self.metadata_ttl.max(1))
            .await
            .map_err(redis_error)?;
        Ok((m, false))
    }

    async fn require_set(&self, set: &str, kinds: &[SetKind]) -> Result<Metadata, ApiError> {
        let (m, _) = self.metadata(false).await?;
        let s = m.set(set).ok_or_else(|| {
            ApiError::not_found(format!("the infobase publishes no entity set \"{set}\""))
        })?;
        if !kinds.is_empty() && !kinds.contains(&s.kind) {
            return Err(ApiError::bad_request(format!(
                "{set} is a {:?} set, expected one of {kinds:?}",
                s.kind
            )));
        }
        Ok(m)
    }
}

/// A `filter` parameter: simple JSON (`{"Description": {"substringof": "…"}}`)
/// or a raw OData `$filter`, validated before it is sent.
pub fn filter_param(raw: &str) -> Result<String, ApiError> {
    let t = raw.trim();
    if t.starts_with('{') {
        let v: Value = serde_json::from_str(t)
            .map_err(|e| ApiError::bad_request(format!("filter is not valid JSON: {e}")))?;
        Ok(Filter::from_json(&v)
            .map_err(ApiError::bad_request)?
            .to_odata())
    } else {
        parse_filter(t).map_err(|e| ApiError::bad_request(format!("invalid $filter: {e}")))?;
        Ok(t.to_string())
    }
}

fn list_param(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, Default)]
pub struct EntityParams {
    #[serde(alias = "$top")]
    pub top: Option<u64>,
    #[serde(alias = "$skip")]
    pub skip: Option<u64>,
    #[serde(alias = "$select")]
    pub select: Option<String>,
    #[serde(alias = "$orderby")]
    pub orderby: Option<String>,
    #[serde(alias = "$filter")]
    pub filter: Option<String>,
    #[serde(alias = "$expand")]
    pub expand: Option<String>,
    #[serde(alias = "$inlinecount")]
    pub inlinecount: Option<bool>,
}

/// Rows per request when the caller gives no `top`, and the maximum.
const DEFAULT_TOP: u64 = 100;
const MAX_TOP: u64 = 1000;

async fn get_metadata(
    user: AuthUser,
    State(st): State<AppState>,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    allowed(&user)?;
    let refresh = q.get("refresh").is_some_and(|v| v == "true" || v == "1");
    let (m, hit) = st.metadata(refresh).await?;
    let mut resp = Json(m).into_response();
    resp.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    Ok(resp)
}

async fn list_entities(
    user: AuthUser,
    State(st): State<AppState>,
    Path(set): Path<String>,
    QueryParams(p): QueryParams<EntityParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    st.require_set(&set, &[]).await?;
    let top = p.top.unwrap_or(DEFAULT_TOP);
    if top > MAX_TOP {
        return Err(ApiError::bad_request(format!(
            "top must be at most {MAX_TOP}"
        )));
    }
    let mut q = Query::new(&set).top(top);
    if let Some(s) = p.skip {
        q = q.skip(s);
    }
    q = q.select(list_param(&p.select));
    for o in list_param(&p.orderby) {
        q = q.orderby(o);
    }
    for e in list_param(&p.expand) {
        q = q.expand(e);
    }
    if let Some(f) = p.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        q = q.raw_filter(filter_param(f)?);
    }
    if p.inlinecount == Some(true) {
        q = q.inlinecount();
    }
    let page = st.client.fetch(&q).await.map_err(api_error)?;
    let mut body = json!({"set": set, "value": page.rows});
    if let Some(c) = page.count {
        body["count"] = json!(c);
    }
    Ok(Json(body))
}

fn parse_guid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("\"{s}\" is not a GUID")))
}

async fn get_entity(
    user: AuthUser,
    State(st): State<AppState>,
    Path((set, guid)): Path<(String, String)>,
    QueryParams(p): QueryParams<EntityParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    let key = parse_guid(&guid)?;
    let m = st.require_set(&set, &[]).await?;
    if m.entity_type_of(&set).map(|t| t.keys.as_slice()) != Some(&["Ref_Key".to_string()][..]) {
        return Err(ApiError::bad_request(format!(
            "{set} is not keyed by Ref_Key"
        )));
    }
    let v = st
        .client
        .get(
            &set,
            &Key::Guid(key),
            &list_param(&p.select),
            &list_param(&p.expand),
        )
        .await
        .map_err(api_error)?;
    Ok(Json(v))
}

#[derive(Debug, Deserialize, Default)]
pub struct PostParams {
    pub operational: Option<bool>,
}

async fn post_document(
    user: AuthUser,
    State(st): State<AppState>,
    Path((set, guid, action)): Path<(String, String, String)>,
    QueryParams(p): QueryParams<PostParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    let key = parse_guid(&guid)?;
    st.require_set(&set, &[SetKind::Document]).await?;
    match action.as_str() {
        "post" => st
            .client
            .post_document(&set, key, p.operational.unwrap_or(false))
            .await
            .map_err(api_error)?,
        "unpost" => st
            .client
            .unpost_document(&set, key)
            .await
            .map_err(api_error)?,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown document action \"{other}\" (post, unpost)"
            )))
        }
    }
    let doc = st
        .client
        .get(
            &set,
            &Key::Guid(key),
            &[
                "Ref_Key".into(),
                "Number".into(),
                "Posted".into(),
                "DataVersion".into(),
            ],
            &[],
        )
        .await
        .map_err(api_error)?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize, Default)]
pub struct BalanceParams {
    /// `2024-03-01T00:00:00`.
    pub period: Option<String>,
    /// JSON filter or raw OData condition.
    pub condition: Option<String>,
    /// Comma-separated dimension names (`Номенклатура,Склад`).
    pub dimensions: Option<String>,
}

async fn register_balance(
    user: AuthUser,
    State(st): State<AppState>,
    Path(set): Path<String>,
    QueryParams(p): QueryParams<BalanceParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    st.require_set(&set, &[SetKind::AccumulationRegister])
        .await?;
    let period = parse_period(p.period.as_deref())?;
    let condition = p
        .condition
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(filter_param)
        .transpose()?;
    let args = BalanceArgs {
        period,
        condition,
        dimensions: list_param(&p.dimensions),
    };
    let rows = st.client.balance(&set, &args).await.map_err(api_error)?;
    Ok(Json(json!({"register": set, "value": rows})))
}

#[derive(Debug, Deserialize, Default)]
pub struct SliceParams {
    pub period: Option<String>,
    pub condition: Option<String>,
}

async fn register_slice_last(
    user: AuthUser,
    State(st): State<AppState>,
    Path(set): Path<String>,
    QueryParams(p): QueryParams<SliceParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    let m = st
        .require_set(&set, &[SetKind::InformationRegister])
        .await?;
    if m.function_for(&set, "SliceLast").is_none() {
        return Err(ApiError::bad_request(format!(
            "{set} is not a periodic information register (no SliceLast)"
        )));
    }
    let period = parse_period(p.period.as_deref())?;
    let condition = p
        .condition
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(filter_param)
        .transpose()?;
    let rows = st
        .client
        .slice_last(&set, period, condition.as_deref())
        .await
        .map_err(api_error)?;
    Ok(Json(json!({"register": set, "value": rows})))
}

fn parse_period(p: Option<&str>) -> Result<Option<chrono::NaiveDateTime>, ApiError> {
    match p.filter(|s| !s.is_empty()) {
        Some(s) => Ok(Some(parse_datetime(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "period \"{s}\" is not a date-time (YYYY-MM-DDTHH:MM:SS)"
            ))
        })?)),
        None => Ok(None),
    }
}

async fn soap_call(
    user: AuthUser,
    State(st): State<AppState>,
    Path((alias, operation)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    let params: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be a JSON object of operation parameters: {e}"
            ))
        })?
    };
    let result = st
        .soap
        .call(&alias, &operation, &params)
        .await
        .map_err(api_error)?;
    Ok(Json(
        json!({"alias": alias, "operation": operation, "result": result}),
    ))
}

#[derive(Debug, Deserialize, Default)]
pub struct LogParams {
    pub set: Option<String>,
    pub limit: Option<i64>,
}

async fn exchange_log(
    user: AuthUser,
    State(st): State<AppState>,
    QueryParams(p): QueryParams<LogParams>,
) -> Result<Json<Value>, ApiError> {
    allowed(&user)?;
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let rows = exchange::log(&st.pool, p.set.as_deref(), limit).await?;
    Ok(Json(json!({"value": rows})))
}

#[derive(Debug, Deserialize, Default)]
pub struct RunParams {
    /// Run just this set (it must be one of EXCHANGE_SETS).
    pub set: Option<String>,
}

async fn exchange_run(
    user: AuthUser,
    State(st): State<AppState>,
    QueryParams(p): QueryParams<RunParams>,
) -> Result<Response, ApiError> {
    allowed(&user)?;
    if st.exchange.sets.is_empty() {
        return Err(ApiError::bad_request(
            "no entity sets to exchange: set EXCHANGE_SETS",
        ));
    }
    let sets: Vec<String> = match p.set {
        Some(s) if st.exchange.sets.contains(&s) => vec![s],
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "\"{s}\" is not in EXCHANGE_SETS"
            )))
        }
        None => st.exchange.sets.clone(),
    };
    // The run is a task of its own: if the caller goes away (or the
    // request times out) it still finishes and logs properly.
    let task_state = st.clone();
    let run = tokio::spawn(async move {
        let _guard = task_state.exchange_lock.lock().await;
        let mut out = Vec::new();
        for s in &sets {
            let e = exchange::run_set(
                &task_state.pool,
                &task_state.client,
                s,
                task_state.exchange.page_size,
            )
            .await?;
            if let Some(m) = &task_state.exchange_metrics {
                m.record(&e);
            }
            out.push(e);
        }
        Ok::<_, sqlx::Error>(out)
    });
    let out = run.await.map_err(ApiError::internal)??;
    let failed = out.iter().any(|e| e.error.is_some());
    let status = if failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"ok": !failed, "runs": out}))).into_response())
}

/// The API routes alone (no health/metrics/middleware).
pub fn router(state: AppState, verifier: Option<Verifier>) -> Router {
    let r = Router::new()
        .route("/metadata", get(get_metadata))
        .route("/entities/{set}", get(list_entities))
        .route("/entities/{set}/{guid}", get(get_entity))
        .route("/documents/{set}/{guid}/{action}", post(post_document))
        .route("/registers/{set}/balance", get(register_balance))
        .route("/registers/{set}/slice-last", get(register_slice_last))
        .route("/soap/{alias}/{operation}", post(soap_call))
        .route("/exchange/log", get(exchange_log))
        .route("/exchange/run", post(exchange_run))
        .with_state(state);
    match verifier {
        Some(v) => r.layer(Extension(v)),
        None => r,
    }
}

/// Connects PostgreSQL (migrating) and Redis, starts the exchange schedule
/// and returns the complete app with kit's health, metrics and middleware.
pub async fn build(
    settings: &Settings,
    verifier: Option<Verifier>,
) -> anyhow::Result<(Router, AppState)> {
    let pool = kit::db::connect_pg(
        settings.database_url.expose(),
        Some(&MIGRATOR),
        settings.connect_timeout,
    )
    .await?;
    let redis =
        kit::db::connect_redis(settings.redis_url.expose(), settings.connect_timeout).await?;
    let client = settings.client()?;
    let mut infra = kit::Infra::named(&settings.service_name, env!("CARGO_PKG_VERSION"))
        .with_pg(pool.clone())
        .with_redis(redis.clone())
        .with_internal_auth(settings.internal_auth.clone());
    infra.request_timeout = settings.request_timeout;
    infra.body_limit = settings.body_limit;
    let exchange_metrics = exchange::ExchangeMetrics::new(infra.metrics.registry())?;
    let state = AppState {
        soap: Arc::new(Soap::new(client.clone())),
        client,
        pool: pool.clone(),
        redis: redis.clone(),
        redis_prefix: settings.redis_prefix.clone(),
        metadata_ttl: settings.metadata_ttl,
        exchange: settings.exchange.clone(),
        exchange_lock: Arc::new(tokio::sync::Mutex::new(())),
        exchange_metrics: Some(exchange_metrics),
    };
    Ok((infra.wrap(router(state.clone(), verifier)), state))
}

/// The binary's entry: config from env, listen on PORT (default 8001).
pub async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    tracing::info!(
        onec = %settings.onec_base_url,
        user = %settings.onec_user,
        exchange_sets = ?settings.exchange.sets,
        "starting 1c-integration"
    );
    let verifier = settings.jwks_url.as_ref().map(|u| {
        let v = Verifier::from_url(u.clone())
            .with_issuer(settings.jwt_issuer.clone())
            .with_audience(settings.jwt_audience.clone());
        v.spawn_refresh(Duration::from_secs(300));
        v
    });
    if verifier.is_none() && settings.internal_auth.is_none() {
        tracing::warn!(
            "neither JWKS_URL nor INTERNAL_AUTH_KEY_FILE is set: every API request will be \
             refused (auth not configured)"
        );
    }
    let (app, state) = build(&settings, verifier).await?;
    if !settings.exchange.sets.is_empty() && !settings.exchange.interval.is_zero() {
        exchange::spawn_scheduler(
            state.pool.clone(),
            state.client.clone(),
            settings.exchange.clone(),
            state.exchange_lock.clone(),
            state.exchange_metrics.clone(),
        );
    }
    let listener = kit::server::bind(settings.port).await?;
    kit::serve_with_timeout(
        app,
        listener,
        kit::shutdown_signal(),
        settings.shutdown_timeout,
    )
    .await?;
    Ok(())
}
