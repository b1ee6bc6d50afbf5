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

    /// Stops accepting and closes connections (in-flight requests finish).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
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
