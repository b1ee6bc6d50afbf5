//! The Docker Swarm target: the stack as Swarm services, driven through the
//! Engine API (never the docker CLI). Each container spec of the model
//! becomes one replicated service (see [`spec`]); each deploy or rollback is
//! a revision stored in the swarm (see [`revisions`]).
//!
//! Names: services `<project>_<name>` (reachable on their networks by the
//! plain name, as locally), overlay networks `<project>_<net>`, volumes
//! `<project>_<vol>` (local driver), secrets and configs
//! `<project>-<name>-<8 hex of the content>`.

pub mod inspect;
pub mod revisions;
pub mod spec;

pub use inspect::{health, logs, status};

use crate::engine::models::{Node, Service, Task, TaskState};
use crate::engine::{Engine, LABEL_CONFIG_HASH, LABEL_PROJECT};
use crate::error::{Error, Result};
use crate::model::containers::{ContainerSpec, Source};
use crate::model::Stack;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use revisions::{Planned, SwarmRevision, SwarmStatus, LABEL_REVISION};
use spec::{ConfigFile, ObjectRef};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What a stackctl-made Swarm object is: secret, config or revision.
pub const LABEL_OBJECT: &str = "io.stackctl.object";

pub fn service_name(project: &str, name: &str) -> String {
    format!("{project}_{name}")
}

pub fn network_name(project: &str, net: &str) -> String {
    format!("{project}_{net}")
}

pub fn volume_name(project: &str, vol: &str) -> String {
    format!("{project}_{vol}")
}

/// How long a deploy, rollback or scale waits for the services to converge:
/// `STACKCTL_SWARM_TIMEOUT` seconds, default 600.
fn wait_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("STACKCTL_SWARM_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

/// The usage error for a command the Swarm target does not drive.
pub(crate) fn unsupported(cmd: &crate::cli::Command) -> Error {
    let dbg = format!("{cmd:?}");
    let variant: String = dbg
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut name = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('-');
        }
        name.push(c.to_ascii_lowercase());
    }
    Error::usage(
        format!("`{name}` does not work with --target swarm"),
        "with --target swarm use deploy, rollback, history, status, health, logs, scale or down; drop --target swarm (or unset STACKCTL_TARGET) for the local engine",
    )
}

/// The engine, checked to be a Swarm manager.
pub async fn connect(stack: &Stack) -> Result<StackEnv<'_>> {
    let env = StackEnv::connect(stack).await?;
    ensure_manager(&env.engine).await?;
    Ok(env)
}

async fn ensure_manager(engine: &Engine) -> Result<()> {
    let sw = engine.swarm_info().await?;
    let state = sw
        .local_node_state
        .map(|s| s.to_string())
        .unwrap_or_default();
    if state != "active" {
        return Err(Error::usage(
            format!(
                "the Docker Engine at {} is not part of a swarm (node state `{}`): --target swarm needs a Swarm manager",
                engine.host,
                if state.is_empty() { "inactive" } else { &state }
            ),
            "make this engine a single-node swarm: docker swarm init --advertise-addr 127.0.0.1 (or drop --target swarm to run containers locally)",
        ));
    }
    if !sw.control_available.unwrap_or(false) {
        return Err(Error::usage(
            format!(
                "the Docker Engine at {} is a swarm worker, not a manager: services can only be managed on a manager",
                engine.host
            ),
            "point DOCKER_HOST at a manager node (docker node ls there), or promote this one: docker node promote NODE",
        ));
    }
    Ok(())
}

/// The project's services by Swarm name.
pub async fn services(engine: &Engine, project: &str) -> Result<HashMap<String, Service>> {
    let list = engine.services(&[(LABEL_PROJECT, project)]).await?;
    Ok(list
        .into_iter()
        .filter_map(|s| Some((s.spec.as_ref()?.name.clone()?, s)))
        .collect())
}

pub async fn tasks(engine: &Engine, service: &str) -> Result<Vec<Task>> {
    engine.tasks(service).await
}

/// The reference a service runs: the repository digest when the image came
/// from a registry (its own repository's, else one under the stack's
/// registry: the Debian-built images are pushed there under a repository of
/// their own), else the image id (the engine then never pulls, and a tag
/// that moves later does not change what runs).
async fn pinned(engine: &Engine, reference: &str, registry: Option<&str>) -> Result<String> {
    let Some(i) = engine.image(reference).await? else {
        return Err(Error::MissingImage {
            image: reference.into(),
            hint: "run `stackctl build` (service images) or `stackctl setup` (infrastructure images) first".into(),
        });
    };
    let repo = match reference.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => reference,
    };
    let digests = i.repo_digests.unwrap_or_default();
    let under_registry = |d: &&String| {
        registry
            .filter(|r| !r.is_empty())
            .is_some_and(|r| d.starts_with(&format!("{}/", r.trim_end_matches('/'))))
    };
    if let Some(d) = digests
        .iter()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo))
        .or_else(|| digests.iter().find(under_registry))
    {
        return Ok(d.clone());
    }
    i.id.ok_or_else(|| Error::engine(format!("inspect image {reference}"), "no id"))
}

/// The stack as Swarm services: the containers the local target would run
/// (optional parts without an image skipped), each with its pinned image,
/// its secrets and configs (created when `create`), and its spec hash.
pub async fn plan(env: &StackEnv<'_>, ui: &Ui, create: bool) -> Result<Vec<Planned>> {
    let artifacts = env.artifacts()?;
    let desired = env.desired(&artifacts, ui).await?;
    let mut specs: Vec<&ContainerSpec> = Vec::new();
    for d in &desired {
        if !specs.iter().any(|s| s.name == d.spec.name) {
            specs.push(&d.spec);
        }
    }
    let project = env.project.as_str();
    let stack_name = env.stack.name.as_str();
    let engine = &env.engine;
    // Listed once: placement, CPU capacity and the registry check read them.
    let nodes = engine.nodes().await?;

    // Secrets, named after their content.
    let existing: HashMap<String, String> = engine
        .secrets(&[(LABEL_PROJECT, project)])
        .await?
        .into_iter()
        .map(|s| (s.name, s.id))
        .collect();
    if create {
        crate::runtime::secrets::refresh_redis_acl(env.stack)?;
        place_volumes(env, &specs, &nodes, ui).await?;
    }
    let dir = crate::runtime::secrets::secrets_dir(env.stack);
    let mut secrets: HashMap<String, ObjectRef> = HashMap::new();
    for s in specs.iter().flat_map(|c| c.secrets.iter()) {
        if secrets.contains_key(s) {
            continue;
        }
        let bytes = crate::engine::create::read_secret(&dir, s)?;
        let name = spec::object_name(project, s, &bytes);
        let id = match existing.get(&name) {
            Some(id) => id.clone(),
            None if create => {
                engine
                    .create_secret(
                        &name,
                        spec::object_labels(project, stack_name, "secret"),
                        &bytes,
                    )
                    .await?
            }
            None => String::new(),
        };
        secrets.insert(s.clone(), ObjectRef { name, id });
    }

    // Rendered files the containers mount, as configs named after their content.
    let existing: HashMap<String, String> = engine
        .configs(&[(LABEL_PROJECT, project), (LABEL_OBJECT, "config")])
        .await?
        .into_iter()
        .map(|c| (c.name, c.id))
        .collect();
    let mut configs: HashMap<String, Vec<ConfigFile>> = HashMap::new();
    for c in &specs {
        for m in &c.mounts {
            let Source::Rendered { path } = &m.source else {
                continue;
            };
            if configs.contains_key(path) {
                continue;
            }
            let prefix = format!("{path}/");
            let mut files = Vec::new();
            for (p, bytes) in &artifacts.files {
                let rel = if p == path {
                    String::new()
                } else if let Some(r) = p.strip_prefix(&prefix) {
                    r.to_string()
                } else {
                    continue;
                };
                let name = spec::object_name(project, p, bytes);
                let id = match existing.get(&name) {
                    Some(id) => id.clone(),
                    None if create => {
                        engine
                            .create_config(
                                &name,
                                spec::object_labels(project, stack_name, "config"),
                                bytes,
                            )
                            .await?
                    }
                    None => String::new(),
                };
                files.push(ConfigFile {
                    rel,
                    object: ObjectRef { name, id },
                });
            }
            if files.is_empty() {
                return Err(Error::usage(
                    format!("{}: nothing was rendered at {path}", c.name),
                    "check the templates (stackctl render shows what is produced)",
                ));
            }
            configs.insert(path.clone(), files);
        }
    }

    let reserve_cpus = cpu_reservations_fit(&nodes, &specs, ui, create);
    let ctx = spec::Ctx {
        project,
        secrets: &secrets,
        configs: &configs,
        reserve_cpus,
        vip: endpoint_vip()?,
    };
    let tag = crate::runtime::image_tag(env.stack);
    let mut out = Vec::new();
    for c in specs {
        for p in c.ports.iter().filter(|p| p.loopback() && create) {
            ui.warn(format!(
                "{}: port {} is bound to {} in stack.toml; Swarm cannot bind a published port to one address, so it is not published (reach it with `docker exec` on its node, or publish it on purpose with \"0.0.0.0:{}:{}\")",
                c.name,
                p.host,
                p.ip.as_deref().unwrap_or_default(),
                p.host,
                p.container
            ));
        }
        let image = crate::engine::create::image_ref(c, &tag);
        let pin = pinned(&env.engine, &image, env.stack.registry.as_deref()).await?;
        if create && nodes.len() > 1 && !pin.contains('@') {
            return Err(Error::usage(
                format!(
                    "the swarm has {} nodes, but {} runs image {image}, which is only on this engine (it did not come from a registry): the other nodes cannot get it",
                    nodes.len(),
                    c.name
                ),
                "push the stack's images to a registry every node can reach and deploy from there: set [stack] registry (or --registry HOST:PORT/PREFIX), run `stackctl build --push`, then deploy again (README: \"From one host to a swarm of several\")",
            ));
        }
        let s = spec::service_spec(c, &pin, &image, &ctx);
        out.push(Planned {
            name: c.name.clone(),
            service: service_name(project, &c.name),
            image,
            pinned: pin,
            hash: spec::spec_hash(&s),
            spec: s,
        });
    }
    Ok(out)
}

/// Label the node that holds each of the stack's volumes
/// (`io.stackctl.volume.<name>=true`, see [`spec::volume_label`]): the
/// containers using a volume run there and nowhere else, so a local volume
/// is never left behind on one node and made anew, empty, on another. A
/// volume no node is labelled for yet stays where its service runs now (a
/// stack deployed before the label existed), else goes to the manager
/// stackctl talks to.
async fn place_volumes(
    env: &StackEnv<'_>,
    specs: &[&ContainerSpec],
    nodes: &[Node],
    ui: &Ui,
) -> Result<()> {
    let labelled = |key: &str| {
        nodes.iter().any(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.labels.as_ref())
                .and_then(|l| l.get(key))
                .is_some_and(|v| v == "true")
        })
    };
    let mut here: Option<String> = None;
    for c in specs {
        let missing: Vec<String> = c
            .volumes()
            .map(|v| spec::volume_label(&volume_name(&env.project, v)))
            .filter(|k| !labelled(k))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let running_on = env
            .engine
            .tasks(&service_name(&env.project, &c.name))
            .await?
            .into_iter()
            .filter(|t| task_state(t) == Some(TaskState::RUNNING))
            .find_map(|t| t.node_id);
        let node = match running_on {
            Some(n) => n,
            None => match &here {
                Some(h) => h.clone(),
                None => {
                    let h = env.engine.swarm_info().await?.node_id.unwrap_or_default();
                    here = Some(h.clone());
                    h
                }
            },
        };
        let labels: Vec<(&str, &str)> = missing.iter().map(|k| (k.as_str(), "true")).collect();
        env.engine.label_node(&node, &labels).await?;
        let host = nodes
            .iter()
            .find(|n| n.id.as_deref() == Some(node.as_str()))
            .and_then(|n| n.description.as_ref()?.hostname.clone())
            .unwrap_or(node);
        ui.info(format!(
            "{}: its volumes stay on node {host} (node label {})",
            c.name,
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `STACKCTL_SWARM_ENDPOINT_MODE`: `dnsrr` (default) or `vip`. Swarm's
/// virtual IPs and its ingress routing mesh need IPVS in the host kernel,
/// which many kernels (containers, micro-VMs) lack; DNS round-robin and
/// ports published on the task's node work on every kernel.
fn endpoint_vip() -> Result<bool> {
    match std::env::var("STACKCTL_SWARM_ENDPOINT_MODE").as_deref() {
        Err(_) | Ok("") | Ok("dnsrr") => Ok(false),
        Ok("vip") => Ok(true),
        Ok(other) => Err(Error::usage(
            format!("STACKCTL_SWARM_ENDPOINT_MODE=`{other}` is not a Swarm endpoint mode"),
            "use dnsrr (DNS round-robin, ports published on the node; works on every kernel) or vip (virtual IPs and the ingress routing mesh; needs IPVS)",
        )),
    }
}

/// CPU reservations are kept only when they fit the swarm's CPUs (with room
/// for the one extra task a start-first update runs); otherwise tasks would
/// wait forever for a node. Limits always apply.
fn cpu_reservations_fit(nodes: &[Node], specs: &[&ContainerSpec], ui: &Ui, report: bool) -> bool {
    let capacity: i64 = nodes
        .iter()
        .filter_map(|n| n.description.as_ref()?.resources.as_ref()?.nano_cpus)
        .sum();
    let wanted: f64 = specs
        .iter()
        .map(|c| c.resources.reserve_cpus * c.replicas as f64)
        .sum::<f64>()
        + specs
            .iter()
            .map(|c| c.resources.reserve_cpus)
            .fold(0.0, f64::max);
    let fits = wanted * 1e9 <= capacity as f64;
    if !fits && report {
        ui.warn(format!(
            "stack.toml reserves {wanted:.2} CPUs (with room for a rolling update) but the swarm has {:.0}: CPU reservations are left out so every task can be scheduled (CPU limits and memory reservations still apply)",
            capacity as f64 / 1e9
        ));
    }
    fits
}

/// Create the overlay networks the services attach to; the ones created.
async fn ensure_networks(env: &StackEnv<'_>, planned: &[Planned]) -> Result<Vec<String>> {
    let mut wanted: Vec<String> = planned
        .iter()
        .flat_map(|p| {
            p.spec
                .task_template
                .as_ref()
                .and_then(|t| t.networks.clone())
                .unwrap_or_default()
        })
        .filter_map(|n| n.target)
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut created = Vec::new();
    for name in wanted {
        let short = name
            .strip_prefix(&format!("{}_", env.project))
            .unwrap_or(&name)
            .to_string();
        let internal = env
            .stack
            .networks
            .iter()
            .find(|n| n.name == short)
            .is_some_and(|n| n.internal);
        if let Some(n) = env.engine.network(&name).await? {
            if n.driver.as_deref() != Some("overlay") {
                return Err(Error::usage(
                    format!(
                        "network {name} exists with driver {} (Swarm services need an overlay network)",
                        n.driver.unwrap_or_default()
                    ),
                    format!("remove it (docker network rm {name}) or deploy under another project (-p)"),
                ));
            }
            continue;
        }
        let mut labels = spec::object_labels(&env.project, &env.stack.name, "network");
        labels.insert("com.docker.stack.namespace".into(), env.project.clone());
        env.engine
            .create_overlay_network(&name, internal, labels)
            .await?;
        created.push(name);
    }
    Ok(created)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceAction {
    Created,
    Updated,
    Removed,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    pub service: String,
    pub action: ServiceAction,
    pub at: chrono::DateTime<chrono::Utc>,
    pub image: String,
}

/// Make the swarm run `planned` (create, update what differs, remove
/// services no longer planned), labelling what changes with `revision`.
async fn apply(
    env: &StackEnv<'_>,
    planned: &[Planned],
    revision: u64,
    ui: &Ui,
) -> Result<Vec<Change>> {
    let engine = &env.engine;
    let existing = services(engine, &env.project).await?;
    let mut changes = Vec::new();
    for p in planned {
        let mut s = p.spec.clone();
        let labels = s.labels.get_or_insert_with(HashMap::new);
        labels.insert(LABEL_REVISION.into(), revision.to_string());
        labels.insert(LABEL_CONFIG_HASH.into(), p.hash.clone());
        let at = chrono::Utc::now();
        let action = match existing.get(&p.service) {
            None => {
                engine.create_service(s).await?;
                ServiceAction::Created
            }
            Some(cur) => {
                let same = cur
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(LABEL_CONFIG_HASH))
                    == Some(&p.hash);
                if same {
                    continue;
                }
                let version = cur.version.as_ref().and_then(|v| v.index).unwrap_or(0);
                engine
                    .update_service(
                        &p.service,
                        s,
                        version,
                        &format!("update service {}", p.service),
                    )
                    .await?;
                ServiceAction::Updated
            }
        };
        ui.detail(format!("{} {:?}", p.service, action));
        changes.push(Change {
            name: p.name.clone(),
            service: p.service.clone(),
            action,
            at,
            image: p.image.clone(),
        });
    }
    for (name, s) in &existing {
        if planned.iter().any(|p| &p.service == name) {
            continue;
        }
        if !engine.remove_service(name).await? {
            continue;
        }
        let short = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(crate::model::containers::LABEL_SERVICE))
            .cloned()
            .unwrap_or_else(|| name.clone());
        changes.push(Change {
            name: short,
            service: name.clone(),
            action: ServiceAction::Removed,
            at: chrono::Utc::now(),
            image: String::new(),
        });
    }
    Ok(changes)
}

pub(super) fn task_state(t: &Task) -> Option<TaskState> {
    t.status.as_ref().and_then(|s| s.state)
}

fn task_failed(t: &Task) -> bool {
    matches!(task_state(t), Some(TaskState::FAILED | TaskState::REJECTED))
}

/// The newest failed or rejected task's error, with its exit code.
pub fn last_error(tasks: &[Task]) -> Option<(String, String)> {
    let mut failed: Vec<&Task> = tasks.iter().filter(|t| task_failed(t)).collect();
    failed.sort_by_key(|t| t.status.as_ref().and_then(|s| s.timestamp.clone()));
    let t = failed.last()?;
    let st = t.status.clone().unwrap_or_default();
    let code = st
        .container_status
        .as_ref()
        .and_then(|c| c.exit_code)
        .map(|c| format!(" (exit code {c})"))
        .unwrap_or_default();
    let what = st
        .err
        .filter(|e| !e.is_empty())
        .or(st.message)
        .unwrap_or_default();
    Some((t.id.clone().unwrap_or_default(), format!("{what}{code}")))
}

/// Running tasks, and tasks meant to run that are not running yet.
fn counts(tasks: &[Task]) -> (usize, usize) {
    let live: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .collect();
    let running = live
        .iter()
        .filter(|t| task_state(t) == Some(TaskState::RUNNING))
        .count();
    (running, live.len() - running)
}

fn replicas(s: &Service) -> usize {
    s.spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1) as usize
}

/// How waiting for one service ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Converged(f64),
    RolledBack(String),
    Failed(String),
}

/// Wait until every created or updated service runs its desired tasks, all
/// healthy (a Swarm task with a health check counts as running only once
/// healthy), and any rolling update completed; or Swarm rolled it back.
async fn converge(env: &StackEnv<'_>, changes: &[Change], timeout: Duration) -> Vec<Outcome> {
    let t0 = Instant::now();
    let mut out: Vec<Option<Outcome>> = changes
        .iter()
        .map(|c| (c.action == ServiceAction::Removed).then_some(Outcome::Converged(0.0)))
        .collect();
    loop {
        let current = services(&env.engine, &env.project)
            .await
            .unwrap_or_default();
        for (i, c) in changes.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let Some(s) = current.get(&c.service) else {
                out[i] = Some(Outcome::Failed("the service disappeared".into()));
                continue;
            };
            let tasks = tasks(&env.engine, &c.service).await.unwrap_or_default();
            let (running, pending) = counts(&tasks);
            let settled = running == replicas(s) && pending == 0;
            let elapsed = t0.elapsed().as_secs_f64();
            let fresh = s.update_status.as_ref().filter(|u| {
                u.started_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| {
                        t.with_timezone(&chrono::Utc) >= c.at - chrono::Duration::seconds(2)
                    })
            });
            let state = fresh
                .and_then(|u| u.state)
                .map(|s| s.to_string())
                .unwrap_or_default();
            let message = fresh.and_then(|u| u.message.clone()).unwrap_or_default();
            let why = || {
                let last = last_error(&tasks)
                    .map(|(_, e)| format!("; last task error: {e}"))
                    .unwrap_or_default();
                format!("{message}{last}")
            };
            out[i] = match state.as_str() {
                "completed" if settled => Some(Outcome::Converged(elapsed)),
                "rollback_completed" => Some(Outcome::RolledBack(why())),
                "paused" | "rollback_paused" => {
                    Some(Outcome::Failed(format!("the update is {state}: {}", why())))
                }
                "" if settled && (c.action == ServiceAction::Created || elapsed > 3.0) => {
                    Some(Outcome::Converged(elapsed))
                }
                _ => None,
            };
            if out[i].is_none() && c.action == ServiceAction::Created {
                let failures = tasks.iter().filter(|t| task_failed(t)).count();
                if failures >= 8 {
                    out[i] = Some(Outcome::Failed(format!("{failures} tasks failed{}", why())));
                }
            }
            if out[i].is_none() && t0.elapsed() > timeout {
                out[i] = Some(Outcome::Failed(format!(
                    "not converged after {} s: {running} of {} tasks running, {pending} starting{}",
                    timeout.as_secs(),
                    replicas(s),
                    why()
                )));
            }
        }
        if out.iter().all(Option::is_some) {
            return out.into_iter().flatten().collect();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// The last log lines of a task, for error reports.
async fn task_tail(engine: &Engine, task: &str, n: usize) -> String {
    use futures::StreamExt;
    let mut s = engine.task_logs(task, n);
    let mut out = String::new();
    let fut = async {
        while let Some(Ok(chunk)) = s.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
    out
}

fn next_revision(revs: &[SwarmRevision], current: &HashMap<String, Service>) -> u64 {
    let recorded = revs.last().map(|r| r.revision).unwrap_or(0);
    let labelled = current
        .values()
        .filter_map(|s| {
            s.spec
                .as_ref()?
                .labels
                .as_ref()?
                .get(LABEL_REVISION)?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0);
    recorded.max(labelled) + 1
}

/// Apply, wait, record, collect garbage, report: what deploy and rollback share.
async fn roll_out(
    env: &StackEnv<'_>,
    planned: Vec<Planned>,
    rollback_of: Option<u64>,
    verb: &str,
    ui: &Ui,
) -> Result<i32> {
    let t0 = Instant::now();
    let engine = &env.engine;
    let stored = revisions::load(engine, &env.project).await?;
    let revs: Vec<SwarmRevision> = stored.iter().map(|(_, r)| r.clone()).collect();
    let current = services(engine, &env.project).await?;
    let revision = next_revision(&revs, &current);
    let created = ensure_networks(env, &planned).await?;
    for n in &created {
        ui.ok(format!("overlay network {n} created"));
    }
    let changes = apply(env, &planned, revision, ui).await?;
    if changes.is_empty() {
        ui.ok(format!(
            "nothing to {verb}: all {} services already match{}",
            planned.len(),
            revs.last()
                .map(|r| format!(" (revision {})", r.revision))
                .unwrap_or_default()
        ));
        if ui.json {
            ui.print_json(
                &serde_json::json!({"revision": revs.last().map(|r| r.revision), "changed": []}),
            );
        }
        return Ok(0);
    }
    ui.info(format!(
        "revision {revision}: {} services to converge ({})",
        changes.len(),
        changes
            .iter()
            .map(|c| format!(
                "{} {}",
                c.name,
                match c.action {
                    ServiceAction::Created => "new",
                    ServiceAction::Updated => "updated",
                    ServiceAction::Removed => "removed",
                }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let outcomes = converge(env, &changes, wait_timeout()).await;
    let mut failed = Vec::new();
    let mut rolled_back = false;
    for (c, o) in changes.iter().zip(&outcomes) {
        match o {
            Outcome::Converged(s) => ui.ok(format!(
                "{} {} in {s:.1}s",
                c.name,
                match c.action {
                    ServiceAction::Created => "created, running",
                    ServiceAction::Updated => "updated, running",
                    ServiceAction::Removed => "removed",
                }
            )),
            Outcome::RolledBack(why) => {
                rolled_back = true;
                failed.push((
                    c,
                    format!("Swarm rolled {} back to its previous spec: {why}", c.name),
                ));
            }
            Outcome::Failed(why) => failed.push((c, why.clone())),
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let status = if failed.is_empty() {
        SwarmStatus::Deployed
    } else if rolled_back {
        SwarmStatus::RolledBackBySwarm
    } else {
        SwarmStatus::Failed
    };
    let record = SwarmRevision {
        revision,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        status,
        message: failed
            .iter()
            .map(|(c, w)| format!("{}: {w}", c.name))
            .collect::<Vec<_>>()
            .join("; "),
        rollback_of,
        tag: crate::runtime::image_tag(env.stack),
        changed: changes.iter().map(|c| c.name.clone()).collect(),
        seconds,
        services: planned,
    };
    revisions::store(engine, &env.project, &env.stack.name, &record).await?;
    let mut all = stored;
    all.push((String::new(), record.clone()));
    let kept = revisions::prune(engine, all).await?;
    let removed = gc(env, &kept).await?;
    if removed > 0 {
        ui.detail(format!(
            "removed {removed} Swarm secrets/configs no longer used"
        ));
    }
    if ui.json {
        ui.print_json(&serde_json::json!({
            "revision": revision,
            "status": status,
            "seconds": seconds,
            "changed": changes.iter().zip(&outcomes).map(|(c, o)| serde_json::json!({
                "service": c.name,
                "action": format!("{:?}", c.action).to_lowercase(),
                "outcome": match o { Outcome::Converged(_) => "converged".to_string(), Outcome::RolledBack(w) => format!("rolled back: {w}"), Outcome::Failed(w) => format!("failed: {w}") },
            })).collect::<Vec<_>>(),
        }));
    }
    if failed.is_empty() {
        ui.ok(format!(
            "revision {revision} {}: {} services converged in {seconds:.1}s",
            if rollback_of.is_some() {
                "rolled back"
            } else {
                "deployed"
            },
            changes.len()
        ));
        return Ok(0);
    }
    let names: Vec<&str> = failed.iter().map(|(c, _)| c.name.as_str()).collect();
    let reason = failed
        .iter()
        .map(|(_, w)| w.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut logs = String::new();
    if let Some((c, _)) = failed.first() {
        let t = tasks(engine, &c.service).await.unwrap_or_default();
        if let Some((id, _)) = last_error(&t) {
            let tail = task_tail(engine, &id, 15).await;
            if !tail.trim().is_empty() {
                logs = format!(
                    "\n  last log lines of the failed task:\n{}",
                    tail.lines()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
    Err(Error::NotReady {
        container: names.join(", "),
        reason: format!("revision {revision} {status}: {reason}"),
        logs,
        hint: if rolled_back {
            "the failing services run their previous spec again; fix the image or config and deploy again (`stackctl --target swarm history` lists revisions)".into()
        } else {
            "see the task error above and `stackctl --target swarm logs SERVICE`; `stackctl --target swarm rollback` returns to the previous revision".into()
        },
    })
}

/// Remove secrets and configs of the project that no service and no kept
/// revision refers to.
async fn gc(env: &StackEnv<'_>, kept: &[SwarmRevision]) -> Result<usize> {
    let engine = &env.engine;
    let mut used: HashSet<String> = HashSet::new();
    let mut note = |spec: &crate::engine::models::ServiceSpec| {
        if let Some(cs) = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
        {
            for s in cs.secrets.iter().flatten() {
                used.extend(s.secret_name.clone());
            }
            for c in cs.configs.iter().flatten() {
                used.extend(c.config_name.clone());
            }
        }
    };
    for s in services(&env.engine, &env.project).await?.values() {
        if let Some(spec) = &s.spec {
            note(spec);
        }
    }
    for r in kept {
        for p in &r.services {
            note(&p.spec);
        }
    }
    let mut removed = 0;
    // An object still in use (a task not yet gone) is left for next time.
    for s in engine
        .secrets(&[(LABEL_PROJECT, &env.project), (LABEL_OBJECT, "secret")])
        .await?
    {
        if !used.contains(&s.name) && engine.remove_secret(&s.id).await.is_ok() {
            removed += 1;
        }
    }
    for c in engine
        .configs(&[(LABEL_PROJECT, &env.project), (LABEL_OBJECT, "config")])
        .await?
    {
        if !used.contains(&c.name) && engine.remove_config(&c.id).await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `deploy --target swarm`: the stack as Swarm services, one new revision.
pub async fn deploy(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    env.ensure_infra_images(ui, true).await?;
    let planned = plan(&env, ui, true).await?;
    roll_out(&env, planned, None, "deploy", ui).await
}

/// `rollback --target swarm`: apply an earlier revision's recorded specs
/// (pinned images, the secrets and configs they used) as a new revision.
pub async fn rollback(stack: &Stack, to: Option<&str>, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let revs: Vec<SwarmRevision> = revisions::load(&env.engine, &env.project)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let running: HashMap<String, String> = services(&env.engine, &env.project)
        .await?
        .into_iter()
        .map(|(name, s)| {
            let hash = s
                .spec
                .and_then(|s| s.labels)
                .and_then(|l| l.get(LABEL_CONFIG_HASH).cloned())
                .unwrap_or_default();
            (name, hash)
        })
        .collect();
    let target = revisions::target(&revs, to, &running)?.clone();
    // What it needs must still be there: images by id or digest, secrets, configs.
    for p in &target.services {
        if env.engine.image(&p.pinned).await?.is_none() {
            return Err(Error::MissingImage {
                image: format!("{} ({})", p.image, p.pinned),
                hint: format!(
                    "revision {} ran this image, which is no longer on this host; rebuild or load it, or roll back to another revision",
                    target.revision
                ),
            });
        }
    }
    ui.info(format!(
        "rolling back to revision {} ({}, tag {})",
        target.revision, target.created, target.tag
    ));
    roll_out(
        &env,
        target.services.clone(),
        Some(target.revision),
        "roll back",
        ui,
    )
    .await
}

/// `history --target swarm`: the recorded revisions, newest last.
pub async fn history(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let revs: Vec<SwarmRevision> = revisions::load(&env.engine, &env.project)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let current = services(&env.engine, &env.project).await?;
    if ui.json {
        ui.print_json(&serde_json::json!(revs
            .iter()
            .map(|r| serde_json::json!({
                "revision": r.revision, "created": r.created, "status": r.status, "message": r.message,
                "rollback_of": r.rollback_of, "tag": r.tag, "changed": r.changed, "seconds": r.seconds,
                "images": r.services.iter().map(|p| serde_json::json!({"service": p.name, "image": p.image, "pinned": p.pinned})).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()));
        return Ok(0);
    }
    if revs.is_empty() {
        ui.info(
            "no revisions recorded for this project on the swarm (stackctl --target swarm deploy)",
        );
        return Ok(0);
    }
    println!(
        "{:>4}  {:<20}  {:<20}  {:>7}  CHANGES",
        "REV", "CREATED", "STATUS", "SECONDS"
    );
    for r in &revs {
        let changes: Vec<String> = r
            .changed
            .iter()
            .map(|n| match r.services.iter().find(|p| &p.name == n) {
                Some(p) => format!("{n} ({})", p.image),
                None => format!("{n} (removed)"),
            })
            .collect();
        let prefix = r
            .rollback_of
            .map(|to| format!("rollback to {to}: "))
            .unwrap_or_default();
        println!(
            "{:>4}  {:<20}  {:<20}  {:>7.1}  {prefix}{}",
            r.revision,
            r.created,
            r.status,
            r.seconds,
            changes.join(", ")
        );
        if !r.message.is_empty() {
            println!("{:>4}  {}", "", r.message);
        }
    }
    let running: Vec<String> = current
        .values()
        .filter_map(|s| {
            let l = s.spec.as_ref()?.labels.as_ref()?;
            Some(format!(
                "{}@{}",
                l.get(crate::model::containers::LABEL_SERVICE)?,
                l.get(LABEL_REVISION)?
            ))
        })
        .collect();
    ui.detail(format!("services at revision: {}", running.join(" ")));
    Ok(0)
}

/// Parse `SERVICE=N`.
fn parse_assignment(a: &str) -> Result<(String, u64)> {
    let bad = || {
        Error::usage(
            format!("`{a}` is not SERVICE=N"),
            "e.g. stackctl --target swarm scale api-gateway=3",
        )
    };
    let (s, n) = a.split_once('=').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if s.trim().is_empty() {
        return Err(bad());
    }
    Ok((s.trim().to_string(), n))
}

/// `scale SERVICE=N`: set replicas and wait until that many tasks run.
/// The revision is unchanged; a later deploy that updates the service
/// sets stack.toml's replicas again.
pub async fn scale(stack: &Stack, assignments: &[String], ui: &Ui) -> Result<i32> {
    let wanted: Vec<(String, u64)> = assignments
        .iter()
        .map(|a| parse_assignment(a))
        .collect::<Result<_>>()?;
    let env = connect(stack).await?;
    let current = services(&env.engine, &env.project).await?;
    let t0 = Instant::now();
    let mut changes = Vec::new();
    for (name, n) in &wanted {
        let Some(spec) = env.containers.iter().find(|c| &c.name == name) else {
            return Err(Error::usage(
                format!("no service `{name}` in this stack"),
                format!(
                    "choose from: {}",
                    env.containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if spec.stateful && *n > 1 {
            return Err(Error::usage(
                format!("{name} keeps its data in one volume: it cannot run {n} replicas"),
                "scale stateless services only (the application services, nginx)",
            ));
        }
        let svc = service_name(&env.project, name);
        let Some(cur) = current.get(&svc) else {
            return Err(Error::usage(
                format!("{name} is not deployed on the swarm"),
                "deploy first: stackctl --target swarm deploy",
            ));
        };
        let mut s = cur.spec.clone().unwrap_or_default();
        s.mode = Some(crate::engine::models::ServiceSpecMode {
            replicated: Some(crate::engine::models::ServiceSpecModeReplicated {
                replicas: Some(*n as i64),
            }),
            ..Default::default()
        });
        let version = cur.version.as_ref().and_then(|v| v.index).unwrap_or(0);
        env.engine
            .update_service(&svc, s, version, &format!("scale {svc}"))
            .await?;
        changes.push(Change {
            name: name.clone(),
            service: svc,
            action: ServiceAction::Updated,
            at: chrono::Utc::now(),
            image: String::new(),
        });
    }
    let outcomes = converge(&env, &changes, wait_timeout()).await;
    let mut bad = Vec::new();
    for ((c, o), (_, n)) in changes.iter().zip(&outcomes).zip(&wanted) {
        match o {
            Outcome::Converged(s) => ui.ok(format!(
                "{} scaled to {n}: {n} tasks running in {s:.1}s",
                c.name
            )),
            Outcome::RolledBack(w) | Outcome::Failed(w) => bad.push(format!("{}: {w}", c.name)),
        }
    }
    if ui.json {
        ui.print_json(&serde_json::json!({
            "scaled": wanted.iter().map(|(s, n)| serde_json::json!({"service": s, "replicas": n})).collect::<Vec<_>>(),
            "seconds": t0.elapsed().as_secs_f64(),
            "ok": bad.is_empty(),
        }));
    }
    if bad.is_empty() {
        Ok(0)
    } else {
        Err(Error::NotReady {
            container: changes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: bad.join("; "),
            logs: String::new(),
            hint: "see `stackctl --target swarm health` and `stackctl --target swarm logs SERVICE`"
                .into(),
        })
    }
}

/// `down --target swarm`: remove the project's services, overlay networks,
/// secrets, configs and revision records; its volumes too with --volumes.
pub async fn down(stack: &Stack, volumes: bool, yes: bool, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let engine = &env.engine;
    let vols: Vec<String> = {
        let mut v: Vec<String> = env
            .containers
            .iter()
            .flat_map(|c| c.volumes().map(|v| volume_name(&env.project, v)))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    if volumes && !yes {
        return Err(Error::usage(
            format!(
                "--volumes deletes {} volumes with all their data ({})",
                vols.len(),
                vols.join(", ")
            ),
            "add --yes to confirm, or drop --volumes to keep the data",
        ));
    }
    let current = services(&env.engine, &env.project).await?;
    for name in current.keys() {
        if engine.remove_service(name).await? {
            ui.ok(format!("service {name} removed"));
        }
    }
    // Tasks' containers go asynchronously; networks and volumes only after them.
    let t0 = Instant::now();
    loop {
        let left = env
            .engine
            .containers(&[(LABEL_PROJECT, &env.project)])
            .await?
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("com.docker.swarm.service.name"))
            })
            .count();
        if left == 0 || t0.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nets = engine
        .networks(&[(LABEL_PROJECT, &env.project), (LABEL_OBJECT, "network")])
        .await?;
    for n in nets {
        let name = n.name.unwrap_or_default();
        // Tasks' endpoints leave the network a moment after the containers.
        let removed = retry(20, || engine.try_remove_network(&name)).await?;
        if removed {
            ui.ok(format!("network {name} removed"));
        }
    }
    let mut objects = 0;
    let project = [(LABEL_PROJECT, env.project.as_str())];
    for s in engine.secrets(&project).await? {
        engine.remove_secret(&s.id).await?;
        objects += 1;
    }
    for c in engine.configs(&project).await? {
        engine.remove_config(&c.id).await?;
        objects += 1;
    }
    ui.ok(format!(
        "{objects} Swarm secrets, configs and revision records removed"
    ));
    if volumes {
        for v in &vols {
            if retry(40, || engine.remove_volume(v)).await? {
                ui.ok(format!("volume {v} removed"));
            }
        }
    } else {
        ui.info(format!(
            "volumes kept ({}); `--target swarm down --volumes --yes` deletes them",
            vols.len()
        ));
    }
    Ok(0)
}

/// `op` until it succeeds, at most `tries` more times 500 ms apart: the
/// engine refuses to remove a network or volume while the containers of
/// removed tasks still hold it. The last error when it never succeeds.
async fn retry<T, F, Fut>(tries: u32, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut left = tries;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if left == 0 => return Err(e),
            Err(_) => {
                left -= 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scale_assignments_parse() {
        assert_eq!(
            super::parse_assignment("api-gateway=3").unwrap(),
            ("api-gateway".to_string(), 3)
        );
        assert!(super::parse_assignment("api-gateway").is_err());
        assert!(super::parse_assignment("=3").is_err());
        assert!(super::parse_assignment("x=three").is_err());
    }
}
