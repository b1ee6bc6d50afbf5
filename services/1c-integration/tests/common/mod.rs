//! Test support: the simulator in-process on 127.0.0.1, stoppable and
//! restartable on the same port over the same data.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onec_integration::odata::{ClientConfig, OneC, Secret};
use onec_integration::simulator::{router, SimConfig, SimState};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const USER: &str = "Администратор";
pub const PASSWORD: &str = "пароль-123";

pub struct Sim {
    pub state: Arc<SimState>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        base: "demo".into(),
        user: USER.into(),
        password: PASSWORD.into(),
        state_file: None,
    }
}

async fn serve(
    app: axum::Router,
    addr: SocketAddr,
) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    };
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, task)
}

impl Sim {
    pub async fn start() -> Sim {
        let state = SimState::new(sim_config()).unwrap();
        Sim::start_with(state.clone(), router(state), "127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves `app` (the simulator router, maybe with test layers) on `addr`.
    pub async fn start_with(state: Arc<SimState>, app: axum::Router, addr: SocketAddr) -> Sim {
        let (addr, stop, task) = serve(app, addr).await;
        Sim {
            state,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals the server to stop accepting (without waiting for it).
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops accepting and closes connections (in-flight requests finish).
    pub async fn stop(&mut self) {
        self.begin_stop();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Starts again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (_, stop, task) = serve(router(self.state.clone()), self.addr).await;
        self.stop = Some(stop);
        self.task = Some(task);
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/demo", self.addr)
    }

    pub fn client(&self) -> OneC {
        client_for(&self.base_url(), PASSWORD)
    }
}

pub fn client_for(base: &str, password: &str) -> OneC {
    let mut cfg = ClientConfig::new(base, USER, Secret::new(password));
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(20);
    cfg.timeout = Duration::from_secs(10);
    OneC::new(cfg).unwrap()
}

// ---------------------------------------------------------------- service

pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgPFPQHHG8WB8FjWrSBBTzBTIm9oQHnggiRKNPRud7R
-----END PRIVATE KEY-----
";
pub const TEST_KEY_X: &str = "47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE";

pub fn test_verifier() -> kit::Verifier {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": TEST_KEY_X,
        "kid": "k1", "use": "sig", "alg": "EdDSA"
    }]}))
    .unwrap();
    kit::Verifier::from_jwks(&set)
}

pub fn token(roles: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = kit::Claims {
        sub: "user-1".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: now + 600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        iss: "user-management".into(),
        aud: Some("ai-assistants-1c".into()),
        iat_ms: None,
        email: None,
        sid: None,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

pub struct Service {
    pub url: String,
    pub state: onec_integration::service::AppState,
    pub db: kit::testing::TestDb,
    pub redis_prefix: String,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service in-process on 127.0.0.1:0, with a fresh database and its own
/// Redis prefix, talking to `onec_base`.
pub async fn start_service(onec_base: &str, sets: &str) -> Service {
    let db = kit::testing::TestDb::new().await;
    let redis_prefix = kit::testing::redis_prefix();
    let env = kit::config::Env::from_pairs([
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", kit::testing::test_redis_url()),
        ("REDIS_PREFIX", redis_prefix.clone()),
        ("ONEC_BASE_URL", onec_base.to_string()),
        ("ONEC_USER", USER.to_string()),
        ("ONEC_PASSWORD", PASSWORD.to_string()),
        ("ONEC_RETRIES", "1".to_string()),
        ("ONEC_TIMEOUT", "10".to_string()),
        ("METADATA_CACHE_TTL", "60".to_string()),
        ("EXCHANGE_SETS", sets.to_string()),
        ("EXCHANGE_PAGE_SIZE", "20".to_string()),
        ("DB_CONNECT_TIMEOUT", "10".to_string()),
    ]);
    let settings = onec_integration::service::Settings::from_source(&env).unwrap();
    let (app, state) = onec_integration::service::build(&settings, Some(test_verifier()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Service {
        url,
        state,
        db,
        redis_prefix,
        task,
    }
}
