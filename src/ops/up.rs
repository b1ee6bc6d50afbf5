//! `start`, `stop`, `restart`, `down`, `clean`: containers in dependency
//! order, in parallel where the graph allows, each started only when its
//! dependencies are ready.

use crate::engine::create::Desired;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::containers::ContainerSpec;
use crate::model::Stack;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use futures::future::join_all;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The named services plus everything they depend on (all when none named).
pub fn closure(specs: &[ContainerSpec], names: &[String]) -> Result<HashSet<String>> {
    if names.is_empty() {
        return Ok(specs.iter().map(|c| c.name.clone()).collect());
    }
    let mut set = HashSet::new();
    let mut todo: Vec<String> = names.to_vec();
    while let Some(n) = todo.pop() {
        let Some(c) = specs.iter().find(|c| c.name == n) else {
            return Err(Error::usage(
                format!("no container `{n}` in this stack"),
                format!(
                    "choose from: {}",
                    specs
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if set.insert(n.clone()) {
            todo.extend(c.depends_on.iter().cloned());
        }
    }
    Ok(set)
}

/// How a readiness wait ended.
#[derive(Clone, Debug, PartialEq)]
enum Ready {
    Waiting,
    Yes,
    Failed(String),
}

/// Wait until the container is ready: Docker says healthy, or stackctl's own
/// probe (the same test, run through exec, every 500 ms) passes, so readiness
/// does not wait for the health-check interval.
pub async fn wait_ready(
    engine: &Engine,
    name: &str,
    probe: Option<&[String]>,
    timeout: Duration,
) -> std::result::Result<f64, String> {
    let t0 = Instant::now();
    loop {
        let info = engine
            .container(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "it was removed".to_string())?;
        use crate::engine::models::{ContainerStateStatusEnum as S, HealthStatusEnum as H};
        let state = info.state.unwrap_or_default();
        if matches!(state.status, Some(S::EXITED | S::DEAD)) {
            return Err(match state.exit_code {
                Some(code) => format!("it exited with code {code}"),
                None => "it exited".to_string(),
            });
        }
        let running = state.status == Some(S::RUNNING);
        let health = state.health.and_then(|h| h.status);
        let no_health = matches!(health, None | Some(H::EMPTY | H::NONE));
        if health == Some(H::HEALTHY) || (no_health && running && probe.is_none()) {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if running {
            if let Some(cmd) = probe {
                if let Ok((0, _)) = engine.exec(name, cmd, None).await {
                    return Ok(t0.elapsed().as_secs_f64());
                }
            }
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "not ready after {} s (state {}, health {})",
                timeout.as_secs(),
                state.status.map(|s| s.to_string()).unwrap_or_default(),
                match health {
                    Some(h) if !no_health => h.to_string(),
                    _ => "none".to_string(),
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A `[jobs.NAME]` as `start` runs it: at most once, its outcome shared by
/// every service it gates.
struct StartJob {
    job: crate::model::Job,
    unit: crate::runtime::revision::Unit,
    /// The job's service's dependencies: ready before the job runs.
    deps: Vec<String>,
    outcome: tokio::sync::OnceCell<std::result::Result<f64, String>>,
    /// The job's own error when it failed: what `start` reports (exit 43
    /// for a job that ran and failed), not a container that did not get ready.
    failure: std::sync::Mutex<Option<Error>>,
}

/// Create (or keep, or replace) and start one container.
pub(crate) async fn bring_up(env: &StackEnv<'_>, d: &Desired) -> Result<&'static str> {
    let mut action = "created";
    if let Some(existing) = env.engine.container(&d.name).await? {
        let same =
            crate::engine::config_hash_of(existing.config.as_ref().and_then(|c| c.labels.as_ref()))
                == Some(d.hash.as_str());
        let running = existing.state.as_ref().and_then(|s| s.running) == Some(true);
        if same && running {
            return Ok("running");
        }
        if same {
            env.engine.start(&d.name).await?;
            return Ok("started");
        }
        env.engine.remove(&d.name).await?;
        action = "recreated";
    }
    let more_networks: Vec<String> = d
        .spec
        .networks
        .iter()
        .skip(1)
        .map(|net| crate::engine::network_name(&env.project, net))
        .collect();
    env.engine
        .create_and_start(&d.name, d.body.clone(), &more_networks, &d.spec.dns_names())
        .await?;
    Ok(action)
}

pub async fn start(stack: &Stack, names: &[String], wait_timeout: u64, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    start_on(&env, names, wait_timeout, ui).await?;
    Ok(0)
}

/// Bring the named containers (with their dependencies; all when none is
/// named) up on a connected engine and wait until each is ready: the
/// operation behind `start`, also used by `restore` and `backup` to bring
/// back what they stopped. Returns how many containers are ready.
pub(crate) async fn start_on(
    env: &StackEnv<'_>,
    names: &[String],
    wait_timeout: u64,
    ui: &Ui,
) -> Result<usize> {
    let t0 = Instant::now();
    let stack = env.stack;
    let want = closure(&env.containers, names)?;
    let artifacts = env.render()?;
    env.ensure_networks().await?;
    env.ensure_volumes().await?;
    env.ensure_infra_images(ui, true).await?;
    let desired: Vec<Desired> = env.desired_for(&artifacts, Some(&want), ui).await?;
    env.stage_files(
        Some(&artifacts),
        desired
            .iter()
            .map(|d| (d.name.as_str(), d.spec.secrets.as_slice(), d.image.as_str())),
    )
    .await?;
    let started: HashSet<String> = desired.iter().map(|d| d.spec.name.clone()).collect();

    // One-shot jobs (`[jobs.NAME]`, e.g. migrations) run before the services
    // they gate, as in the compose file: once per start, when one of those
    // services is (re)created, after the job's service's dependencies are
    // ready. A failed job stops the services it gates.
    let jobs: Vec<StartJob> = stack
        .jobs
        .iter()
        .filter(|j| j.before.iter().any(|b| started.contains(b)))
        .filter_map(|j| {
            let d = desired
                .iter()
                .find(|d| d.spec.name == j.service && d.replica == 1)?;
            Some(StartJob {
                job: j.clone(),
                unit: crate::runtime::revision::Unit::from_desired(&env.project, d, ""),
                deps: d.spec.depends_on.clone(),
                outcome: tokio::sync::OnceCell::new(),
                failure: std::sync::Mutex::new(None),
            })
        })
        .collect();
    // Containers already running exactly their desired configuration (kept
    // by bring_up; the jobs gating them do not run again): one listing.
    let hashes: HashMap<&str, &str> = desired
        .iter()
        .map(|d| (d.name.as_str(), d.hash.as_str()))
        .collect();
    let current: HashSet<String> = env
        .running()
        .await?
        .iter()
        .filter(|c| crate::engine::is_running(c))
        .filter_map(|c| {
            let name = crate::engine::name_of(c);
            let hash = crate::engine::config_hash_of(c.labels.as_ref())?;
            (hashes.get(name.as_str()) == Some(&hash)).then_some(name)
        })
        .collect();

    // One readiness channel per service (all its replicas).
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for name in &started {
        let (tx, rx) = watch::channel(Ready::Waiting);
        senders.insert(name.clone(), tx);
        receivers.insert(name.clone(), rx);
    }
    let timeout = Duration::from_secs(wait_timeout);
    let by_service: Vec<(String, Vec<&Desired>)> = {
        let mut m: Vec<(String, Vec<&Desired>)> = Vec::new();
        for d in &desired {
            match m.iter_mut().find(|(n, _)| *n == d.spec.name) {
                Some((_, v)) => v.push(d),
                None => m.push((d.spec.name.clone(), vec![d])),
            }
        }
        m
    };
    let env_ref = env;
    let jobs_ref = &jobs;
    let current_ref = &current;
    let receivers_ref = &receivers;
    let tasks = by_service.into_iter().map(|(name, replicas)| {
        let tx = senders.remove(&name).expect("sender");
        let deps: Vec<watch::Receiver<Ready>> = replicas[0]
            .spec
            .depends_on
            .iter()
            .filter_map(|d| receivers.get(d).cloned())
            .collect();
        async move {
            for mut rx in deps {
                let dep = rx
                    .wait_for(|r| *r != Ready::Waiting)
                    .await
                    .map(|r| r.clone())
                    .unwrap_or(Ready::Failed("gone".into()));
                if let Ready::Failed(why) = dep {
                    let _ = tx.send(Ready::Failed(format!("a dependency failed: {why}")));
                    return Err((
                        name,
                        format!("not started: a dependency failed ({why})"),
                        String::new(),
                    ));
                }
            }
            let changing = replicas.iter().any(|d| !current_ref.contains(&d.name));
            for j in jobs_ref
                .iter()
                .filter(|j| changing && j.job.before.contains(&name))
            {
                for dep in &j.deps {
                    if let Some(mut rx) = receivers_ref.get(dep).cloned() {
                        let _ = rx.wait_for(|r| *r != Ready::Waiting).await;
                    }
                }
                let outcome = j
                    .outcome
                    .get_or_init(|| async {
                        super::deploy::run_job(env_ref, &j.job, &j.unit, j.job.timeout.as_std(), ui)
                            .await
                            .map_err(|e| {
                                let why = e.to_string();
                                *j.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                why
                            })
                    })
                    .await;
                if let Err(why) = outcome {
                    let _ = tx.send(Ready::Failed(format!("job {}", j.job.name)));
                    return Err((format!("job {}", j.job.name), why.clone(), String::new()));
                }
            }
            let mut line = Vec::new();
            for d in replicas {
                let action = match bring_up(env_ref, d).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx.send(Ready::Failed(d.name.clone()));
                        return Err((d.name.clone(), e.to_string(), String::new()));
                    }
                };
                match wait_ready(
                    &env_ref.engine,
                    &d.name,
                    d.spec.probe_cmd().as_deref(),
                    timeout,
                )
                .await
                {
                    Ok(secs) => line.push((d.name.clone(), action, secs)),
                    Err(why) => {
                        let logs = env_ref.engine.tail(&d.name, 20).await;
                        let _ = tx.send(Ready::Failed(d.name.clone()));
                        return Err((d.name.clone(), why, logs));
                    }
                }
            }
            let _ = tx.send(Ready::Yes);
            Ok(line)
        }
    });
    let results = join_all(tasks).await;
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for r in results {
        match r {
            Ok(line) => rows.extend(line),
            Err(f) => failures.push(f),
        }
    }
    rows.sort_by(|a, b| a.2.total_cmp(&b.2));
    for (name, action, secs) in &rows {
        ui.ok(format!("{name} {action}, ready in {secs:.1}s"));
    }
    // Report the root cause: a failed job (the services it gates did not
    // start), else a failure that is not "a dependency failed".
    if let Some(e) = jobs
        .iter()
        .find_map(|j| j.failure.lock().unwrap_or_else(|p| p.into_inner()).take())
    {
        return Err(e);
    }
    if let Some((container, reason, logs)) = failures
        .iter()
        .find(|f| !f.1.starts_with("not started"))
        .or(failures.first())
        .cloned()
    {
        return Err(Error::NotReady {
            container,
            reason,
            logs: if logs.trim().is_empty() { String::new() } else { format!("\n  last log lines:\n{}", indent(&logs)) },
            hint: "fix the cause above, then run `stackctl start` again (containers already up are kept)".into(),
        });
    }
    ui.ok(format!(
        "{} containers ready in {:.1}s",
        rows.len(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(rows.len())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Containers of this project for the named services, dependents first.
async fn project_containers(
    env: &StackEnv<'_>,
    names: &[String],
) -> Result<Vec<(String, String, u64)>> {
    let order: Vec<&str> = env.containers.iter().map(|c| c.name.as_str()).collect();
    if !names.is_empty() {
        for n in names {
            if !order.contains(&n.as_str()) {
                return Err(Error::usage(
                    format!("no container `{n}` in this stack"),
                    format!("choose from: {}", order.join(", ")),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for c in env.running().await? {
        let name = crate::engine::name_of(&c);
        let labels = c.labels.unwrap_or_default();
        let svc = labels
            .get(crate::model::containers::LABEL_SERVICE)
            .cloned()
            .unwrap_or_default();
        if !names.is_empty() && !names.contains(&svc) {
            continue;
        }
        let grace = env
            .containers
            .iter()
            .find(|s| s.name == svc)
            .map(|s| s.stop_grace_period.millis() / 1000)
            .unwrap_or(10);
        out.push((svc, name, grace));
    }
    out.sort_by_key(|(svc, _, _)| {
        std::cmp::Reverse(order.iter().position(|o| o == svc).unwrap_or(usize::MAX))
    });
    Ok(out)
}

pub async fn stop(stack: &Stack, names: &[String], ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    stop_on(&env, names, ui).await?;
    Ok(0)
}

/// Stop the named services' containers (dependents first; all when none is
/// named), each with its grace period: the operation behind `stop`. Returns
/// the containers stopped.
pub(crate) async fn stop_on(env: &StackEnv<'_>, names: &[String], ui: &Ui) -> Result<Vec<String>> {
    let list = project_containers(env, names).await?;
    for (_, name, grace) in &list {
        env.engine.stop(name, *grace).await?;
        ui.ok(format!("{name} stopped"));
    }
    if list.is_empty() {
        ui.ok("nothing to stop");
    }
    Ok(list.into_iter().map(|(_, name, _)| name).collect())
}

pub async fn down(stack: &Stack, volumes: bool, yes: bool, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    if volumes && !yes {
        let vols = env.volume_names();
        let question = format!(
            "delete {} volumes and all their data ({})",
            vols.len(),
            vols.join(", ")
        );
        if !crate::ui::confirm(
            &question,
            "add --yes to confirm, or drop --volumes to keep the data",
        )? {
            ui.info("kept everything");
            return Ok(crate::error::EXIT_DECLINED);
        }
    }
    let list = project_containers(&env, &[]).await?;
    for (_, name, grace) in &list {
        env.engine.stop_and_remove(name, *grace).await?;
        ui.ok(format!("{name} removed"));
    }
    for n in &stack.networks {
        let name = crate::engine::network_name(&env.project, &n.name);
        if env.engine.remove_network(&name).await {
            ui.ok(format!("network {name} removed"));
        }
    }
    if volumes {
        for v in env.volume_names() {
            if env.engine.remove_volume(&v).await? {
                ui.ok(format!("volume {v} removed"));
            }
        }
    } else {
        ui.info(format!(
            "volumes kept ({}); `down --volumes --yes` deletes them",
            env.volume_names().len()
        ));
    }
    Ok(0)
}

/// Stopped containers and dangling images of this stack only; never volumes.
pub async fn clean(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let mut removed = 0;
    for c in env.running().await? {
        if crate::engine::is_stopped(&c) {
            env.engine.remove(&c.id.unwrap_or_default()).await?;
            removed += 1;
        }
    }
    let filters = HashMap::from([
        ("dangling".to_string(), vec!["true".to_string()]),
        (
            "label".to_string(),
            vec![format!(
                "{}={}",
                crate::model::containers::LABEL_STACK,
                stack.name
            )],
        ),
    ]);
    let images = env.engine.images(filters).await?;
    let mut freed = 0i64;
    let mut removed_images = 0;
    for i in images {
        // An image a container still uses is in use: the engine refuses, and so do we.
        if env.engine.remove_image(&i.id, false).await {
            freed += i.size;
            removed_images += 1;
        }
    }
    ui.ok(format!("removed {removed} stopped containers and {removed_images} dangling images ({:.1} MB); volumes kept", freed as f64 / 1e6));
    Ok(0)
}
