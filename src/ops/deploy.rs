//! `deploy`, `rollback`, `history`, `diff`: revisions rolled onto the local
//! engine without downtime.
//!
//! A rollout, for deploy and rollback alike:
//! 1. per dependency level (services of a level in parallel, replicas one at
//!    a time): one-shot jobs first, then each changed service's new container
//!    starts beside the old one as `<name>-next`, under the same network
//!    alias, and must become ready (readiness probe every 500 ms) within the
//!    timeout. Stateful containers (PostgreSQL, Redis) are recreated only when
//!    their configuration changed, backed up first.
//! 2. Old and new serve together for the drain time, so DNS caches (Nginx
//!    re-resolves every second) include the new containers.
//! 3. Cutover: each old container is stopped gracefully (SIGTERM, drain,
//!    SIGKILL after its grace period), removed, and the new one renamed.
//!
//! If a new container fails in 1, the new ones are removed and the old ones,
//! untouched, keep serving. After cutover health stays watched; a failure
//! inside the window rolls the stack back to the previous revision.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::containers::LABEL_SERVICE;
use crate::model::{Job, Stack};
use crate::render::Artifacts;
use crate::runtime::lock::Lock;
use crate::runtime::revision::{
    self, LocalRevision, RevisionKind, ServiceRev, Unit, LABEL_REVISION, LABEL_ROLE,
};
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub struct DeployOpts {
    pub dry_run: bool,
    pub backup: bool,
    pub no_build: bool,
    /// Override stack.toml's deploy.watch (0 turns the watch off).
    pub watch: Option<Duration>,
    pub ready_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    /// Running with this configuration: untouched.
    Keep,
    /// Exists with this configuration but stopped: started.
    Start,
    /// Does not exist: created.
    Create,
    /// Changed, stateless: new beside old, then cutover.
    Roll,
    /// Changed, stateful or publishing host ports: replaced in place.
    Recreate,
}

impl UnitAction {
    fn label(self) -> &'static str {
        match self {
            UnitAction::Keep => "unchanged",
            UnitAction::Start => "start",
            UnitAction::Create => "create",
            UnitAction::Roll => "roll",
            UnitAction::Recreate => "recreate",
        }
    }
}

pub struct Step {
    pub unit: Unit,
    pub action: UnitAction,
    /// The running container's image id, when it exists.
    pub current_image: Option<String>,
}

pub struct Plan {
    pub steps: Vec<Step>,
    /// Containers of the project no revision wants any more.
    pub remove: Vec<(String, u64)>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action != UnitAction::Keep)
            .count()
            + self.remove.len()
    }
}

/// A failed rollout: which container, why, its last log lines.
struct Failure {
    container: String,
    reason: String,
    logs: String,
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// sha256 of the resolved stack and every rendered artifact.
pub fn config_hash(stack: &Stack, artifacts: &Artifacts) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(stack).unwrap_or_default());
    for (p, b) in &artifacts.files {
        h.update(p.as_bytes());
        h.update(b);
    }
    hex::encode(h.finalize())
}

/// What runs now: container name -> (config hash, image id, running).
async fn current(env: &StackEnv<'_>) -> Result<HashMap<String, (String, String, bool)>> {
    let mut out = HashMap::new();
    for c in env.running().await? {
        let name = crate::engine::name_of(&c);
        out.insert(
            name,
            (
                crate::engine::config_hash_of(c.labels.as_ref())
                    .unwrap_or_default()
                    .to_string(),
                c.image_id.clone().unwrap_or_default(),
                crate::engine::is_running(&c),
            ),
        );
    }
    Ok(out)
}

/// Compare the units with what runs. `scope` limits removals to containers
/// of those services (a rollback touches only the services).
async fn plan(
    env: &StackEnv<'_>,
    units: Vec<Unit>,
    scope: Option<&BTreeSet<String>>,
) -> Result<Plan> {
    let now = current(env).await?;
    let mut steps = Vec::new();
    for u in units {
        let action = match now.get(&u.name) {
            None => UnitAction::Create,
            Some((hash, _, running)) if *hash == u.hash => {
                if *running {
                    UnitAction::Keep
                } else {
                    UnitAction::Start
                }
            }
            Some(_) if u.stateful || publishes_ports(&u) => UnitAction::Recreate,
            Some(_) => UnitAction::Roll,
        };
        let current_image = now.get(&u.name).map(|c| c.1.clone());
        steps.push(Step {
            unit: u,
            action,
            current_image,
        });
    }
    let wanted: BTreeSet<&str> = steps.iter().map(|s| s.unit.name.as_str()).collect();
    let mut remove = Vec::new();
    for c in env.running().await? {
        let labels = c.labels.clone().unwrap_or_default();
        let svc = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let name = crate::engine::name_of(&c);
        if wanted.contains(name.as_str()) || name.ends_with("-next") {
            continue;
        }
        if scope.is_some_and(|s| !s.contains(&svc)) {
            continue;
        }
        // Only containers of the stack's own services and parts.
        if svc.is_empty() {
            continue;
        }
        let grace = env
            .containers
            .iter()
            .find(|s| s.name == svc)
            .map(|s| (s.stop_grace_period.millis() / 1000).max(1))
            .unwrap_or(10);
        remove.push((name, grace));
    }
    Ok(Plan { steps, remove })
}

fn publishes_ports(u: &Unit) -> bool {
    u.body
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
        .is_some_and(|p| !p.is_empty())
}

fn print_plan(plan: &Plan, ui: &Ui) {
    for s in &plan.steps {
        if s.action == UnitAction::Keep {
            ui.detail(format!("{}: unchanged", s.unit.name));
            continue;
        }
        let image = match &s.current_image {
            Some(old) if *old != s.unit.image_id => {
                format!(" image {} -> {}", short(old), short(&s.unit.image_id))
            }
            Some(_) => " configuration changed".to_string(),
            None => format!(" image {}", short(&s.unit.image_id)),
        };
        ui.info(format!("  {:<9} {}{image}", s.action.label(), s.unit.name));
    }
    for (name, _) in &plan.remove {
        ui.info(format!("  {:<9} {name}", "remove"));
    }
}

/// The units of the current stack.toml, with their image ids.
async fn desired_units(env: &StackEnv<'_>, artifacts: &Artifacts, ui: &Ui) -> Result<Vec<Unit>> {
    let desired = env.desired(artifacts, ui).await?;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for d in &desired {
        if !ids.contains_key(&d.image) {
            let id = env
                .engine
                .image(&d.image)
                .await?
                .and_then(|i| i.id)
                .unwrap_or_default();
            ids.insert(d.image.clone(), id);
        }
        out.push(Unit::from_desired(&env.project, d, &ids[&d.image]));
    }
    Ok(out)
}

/// App services (those with images stackctl builds) whose image at the
/// current tag is missing.
async fn missing_app_images(env: &StackEnv<'_>) -> Result<Vec<String>> {
    let tag = crate::runtime::image_tag(env.stack);
    let mut missing = Vec::new();
    for c in &env.containers {
        if let crate::model::containers::Image::App { .. } = &c.image {
            let image = crate::engine::create::image_ref(c, &tag);
            if env.engine.image(&image).await?.is_none() {
                missing.push(c.name.clone());
            }
        }
    }
    Ok(missing)
}

fn level_of(units: &[&Unit]) -> BTreeMap<String, usize> {
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    let deps: HashMap<&str, &Vec<String>> = units
        .iter()
        .map(|u| (u.service.as_str(), &u.depends_on))
        .collect();
    fn walk(
        s: &str,
        deps: &HashMap<&str, &Vec<String>>,
        level: &mut BTreeMap<String, usize>,
        depth: usize,
    ) -> usize {
        if let Some(l) = level.get(s) {
            return *l;
        }
        let l = if depth > 64 {
            0
        } else {
            deps.get(s)
                .map(|d| {
                    d.iter()
                        .filter(|x| deps.contains_key(x.as_str()))
                        .map(|x| walk(x, deps, level, depth + 1) + 1)
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        level.insert(s.to_string(), l);
        l
    }
    for u in units {
        walk(&u.service, &deps, &mut level, 0);
    }
    level
}

async fn create_unit(
    engine: &Engine,
    project: &str,
    u: &Unit,
    name: &str,
    revision: u32,
) -> Result<()> {
    let mut body = u.body.clone();
    if let Some(l) = body.labels.as_mut() {
        l.insert(LABEL_REVISION.into(), revision.to_string());
    }
    let _ = project;
    let aliases: Vec<String> = std::iter::once(&u.alias)
        .chain(&u.more_aliases)
        .cloned()
        .collect();
    engine
        .create_and_start(name, body, &u.networks[1.min(u.networks.len())..], &aliases)
        .await?;
    Ok(())
}

fn next_name(name: &str) -> String {
    format!("{name}-next")
}

/// A deploy or rollback killed midway leaves `-next` containers: one whose
/// old container is gone already was cut over (renamed now); the others never
/// were (removed: the old ones still serve).
async fn recover(env: &StackEnv<'_>, ui: &Ui) -> Result<()> {
    let now = current(env).await?;
    for (name, _) in now.iter().filter(|(n, _)| n.ends_with("-next")) {
        let canonical = name.trim_end_matches("-next");
        if now.contains_key(canonical) {
            env.engine.stop_and_remove(name, 1).await?;
            ui.warn(format!(
                "removed {name}, left by an interrupted deploy before its cutover"
            ));
        } else {
            env.engine.rename(name, canonical).await?;
            ui.warn(format!(
                "completed the cutover of {canonical}, left by an interrupted deploy"
            ));
        }
    }
    for c in env
        .engine
        .containers(&[
            (crate::engine::LABEL_PROJECT, &env.project),
            (LABEL_ROLE, "job"),
        ])
        .await?
    {
        if let Some(id) = c.id {
            env.engine.stop_and_remove(&id, 1).await?;
        }
    }
    Ok(())
}

/// Run a one-shot job to completion in its service's image; its exit code
/// gates the deploy. Never restarted, never left behind.
pub(crate) async fn run_job(
    env: &StackEnv<'_>,
    job: &Job,
    unit: &Unit,
    timeout: Duration,
    ui: &Ui,
) -> Result<f64> {
    let t0 = Instant::now();
    let name = format!("{}-job-{}", env.project, job.name);
    let mut u = unit.clone();
    u.body.cmd = Some(job.command.clone());
    u.body.healthcheck = Some(crate::engine::models::HealthConfig {
        test: Some(vec!["NONE".into()]),
        ..Default::default()
    });
    u.body.hostname = Some(format!("job-{}", job.name).chars().take(63).collect());
    if let Some(h) = u.body.host_config.as_mut() {
        h.port_bindings = None;
        h.restart_policy = Some(crate::engine::models::RestartPolicy {
            name: Some(crate::engine::models::RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        });
    }
    if let Some(l) = u.body.labels.as_mut() {
        l.insert(LABEL_ROLE.into(), "job".into());
        l.remove(LABEL_SERVICE);
    }
    // Not reachable under the service's alias.
    u.alias = format!("job-{}", job.name);
    u.more_aliases.clear();
    if let Some(nc) = u.body.networking_config.as_mut() {
        for ep in nc.endpoints_config.iter_mut().flat_map(|m| m.values_mut()) {
            ep.aliases = None;
        }
    }
    env.engine.stop_and_remove(&name, 1).await?;
    create_unit(&env.engine, &env.project, &u, &name, 0).await?;
    let code = match env.engine.wait_exit(&name, timeout).await {
        Ok(code) => code,
        Err(e) => {
            let logs = env.engine.tail(&name, 30).await;
            env.engine.stop_and_remove(&name, 1).await?;
            return Err(Error::JobFailed {
                job: job.name.clone(),
                reason: format!("waiting for it failed: {e}"),
                logs: indent_logs(&logs),
                hint: "see the log lines above".into(),
            });
        }
    };
    let logs = env.engine.tail(&name, 30).await;
    env.engine.stop_and_remove(&name, 1).await?;
    match code {
        Some(0) => {
            ui.ok(format!(
                "job {} ({} {}) succeeded in {:.1}s",
                job.name,
                job.service,
                job.command.join(" "),
                t0.elapsed().as_secs_f64()
            ));
            Ok(t0.elapsed().as_secs_f64())
        }
        Some(c) => Err(Error::JobFailed {
            job: job.name.clone(),
            reason: format!("exit code {c}"),
            logs: indent_logs(&logs),
            hint: "the services it gates were left as they were (a deploy keeps the previous revision serving): fix the job, then run again".into(),
        }),
        None => Err(Error::JobFailed {
            job: job.name.clone(),
            reason: format!("still running after {} s (stopped and removed)", timeout.as_secs()),
            logs: indent_logs(&logs),
            hint: "raise the job's `timeout` in stack.toml, or find why it hangs".into(),
        }),
    }
}

fn indent_logs(s: &str) -> String {
    if s.trim().is_empty() {
        return String::new();
    }
    format!(
        "\n  last log lines:\n{}",
        s.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

struct Rollout<'a> {
    env: &'a StackEnv<'a>,
    revision: u32,
    ready_timeout: Duration,
    drain: Duration,
    jobs: Vec<(Job, Unit)>,
    /// Stateful containers to back up before they are recreated.
    backup_before_recreate: bool,
    /// Every service in one level (rollback), instead of dependency order.
    all_at_once: bool,
}

impl Rollout<'_> {
    /// Phases 1-3. On failure nothing was cut over; the new containers are gone.
    async fn run(&self, plan: &Plan, ui: &Ui) -> std::result::Result<Vec<String>, Failure> {
        let units: Vec<&Unit> = plan.steps.iter().map(|s| &s.unit).collect();
        // A rollback starts every service at once: the running versions keep
        // serving the new ones' dependencies until the cutover.
        let levels = if self.all_at_once {
            units.iter().map(|u| (u.service.clone(), 0)).collect()
        } else {
            level_of(&units)
        };
        let max = levels.values().copied().max().unwrap_or(0);
        let changing: BTreeSet<&str> = plan
            .steps
            .iter()
            .filter(|s| s.action != UnitAction::Keep)
            .map(|s| s.unit.service.as_str())
            .collect();
        let mut jobs_done: BTreeSet<String> = BTreeSet::new();
        let mut started_next: Vec<String> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        let fail = |started_next: Vec<String>, f: Failure| async move {
            for n in &started_next {
                let _ = self.env.engine.stop_and_remove(n, 1).await;
            }
            Err(f)
        };
        for level in 0..=max {
            let here: Vec<&Step> = plan
                .steps
                .iter()
                .filter(|s| levels.get(&s.unit.service) == Some(&level))
                .collect();
            // Jobs that must finish before a changing service of this level.
            for (job, unit) in &self.jobs {
                if jobs_done.contains(&job.name) {
                    continue;
                }
                let gates_here = job.before.iter().any(|b| {
                    changing.contains(b.as_str()) && here.iter().any(|s| &s.unit.service == b)
                });
                if !gates_here {
                    continue;
                }
                jobs_done.insert(job.name.clone());
                if let Err(e) = run_job(self.env, job, unit, job.timeout.as_std(), ui).await {
                    let f = Failure {
                        container: format!("job {}", job.name),
                        reason: e.to_string(),
                        logs: String::new(),
                    };
                    return fail(started_next, f).await;
                }
            }
            // Services of this level in parallel; a service's replicas in order.
            let mut services: Vec<&str> = here.iter().map(|s| s.unit.service.as_str()).collect();
            services.dedup();
            let tasks = services.iter().map(|svc| {
                let steps: Vec<&Step> = here
                    .iter()
                    .copied()
                    .filter(|s| s.unit.service == *svc)
                    .collect();
                async move {
                    let mut next = Vec::new();
                    let mut done = Vec::new();
                    for s in steps {
                        match self.step(s, ui).await {
                            Ok(Some(n)) => next.push(n),
                            Ok(None) => {}
                            Err(f) => return (next, done, Some(f)),
                        }
                        if s.action != UnitAction::Keep {
                            done.push(s.unit.name.clone());
                        }
                    }
                    (next, done, None)
                }
            });
            let mut failure = None;
            for (next, done, f) in join_all(tasks).await {
                started_next.extend(next);
                touched.extend(done);
                if failure.is_none() {
                    failure = f;
                }
            }
            if let Some(f) = failure {
                return fail(started_next, f).await;
            }
        }
        if !started_next.is_empty() {
            ui.detail(format!(
                "draining for {:.1}s: old and new serve together",
                self.drain.as_secs_f64()
            ));
            tokio::time::sleep(self.drain).await;
        }
        // Cutover: old ones stop gracefully, the new ones take their names.
        let rolls: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| s.action == UnitAction::Roll)
            .collect();
        let cut = rolls.iter().map(|s| async move {
            let old = &s.unit.name;
            self.env
                .engine
                .stop_and_remove(old, s.unit.grace_secs)
                .await?;
            self.env.engine.rename(&next_name(old), old).await
        });
        for r in join_all(cut).await {
            if let Err(e) = r {
                return Err(Failure {
                    container: "cutover".into(),
                    reason: e.to_string(),
                    logs: String::new(),
                });
            }
        }
        let removals = plan
            .remove
            .iter()
            .map(|(name, grace)| self.env.engine.stop_and_remove(name, *grace));
        for r in join_all(removals).await {
            if let Err(e) = r {
                ui.warn(format!("{e}"));
            }
        }
        for (name, _) in &plan.remove {
            ui.ok(format!("{name} removed"));
        }
        Ok(touched)
    }

    /// One container's step; the name of a `-next` container it started.
    async fn step(&self, s: &Step, ui: &Ui) -> std::result::Result<Option<String>, Failure> {
        let u = &s.unit;
        let env = self.env;
        let err = |container: &str, e: Error| Failure {
            container: container.to_string(),
            reason: e.to_string(),
            logs: String::new(),
        };
        let t0 = Instant::now();
        let target = match s.action {
            UnitAction::Keep => return Ok(None),
            UnitAction::Start => {
                env.engine
                    .start(&u.name)
                    .await
                    .map_err(|e| err(&u.name, e))?;
                u.name.clone()
            }
            UnitAction::Create => {
                create_unit(&env.engine, &env.project, u, &u.name, self.revision)
                    .await
                    .map_err(|e| err(&u.name, e))?;
                u.name.clone()
            }
            UnitAction::Recreate => {
                // Databases and Redis are dumped first; other volumes are kept as they are.
                if u.stateful
                    && self.backup_before_recreate
                    && super::backup::covers(env.stack, &u.service)
                {
                    ui.info(format!(
                        "{}: configuration changed; backing it up before recreating it",
                        u.name
                    ));
                    let made =
                        super::backup::backup_on(env, std::slice::from_ref(&u.service), None, ui)
                            .await
                            .map_err(|e| err(&u.name, e))?;
                    ui.ok(made.summary());
                }
                env.engine
                    .stop_and_remove(&u.name, u.grace_secs)
                    .await
                    .map_err(|e| err(&u.name, e))?;
                create_unit(&env.engine, &env.project, u, &u.name, self.revision)
                    .await
                    .map_err(|e| err(&u.name, e))?;
                u.name.clone()
            }
            UnitAction::Roll => {
                let n = next_name(&u.name);
                let _ = env.engine.stop_and_remove(&n, 1).await;
                create_unit(&env.engine, &env.project, u, &n, self.revision)
                    .await
                    .map_err(|e| err(&n, e))?;
                n
            }
        };
        match super::up::wait_ready(&env.engine, &target, u.probe.as_deref(), self.ready_timeout)
            .await
        {
            Ok(_) => {
                ui.ok(format!(
                    "{} {} ({}), ready in {:.1}s",
                    u.name,
                    match s.action {
                        UnitAction::Roll => "rolled",
                        UnitAction::Create => "created",
                        UnitAction::Recreate => "recreated",
                        _ => "started",
                    },
                    short(&u.image_id),
                    t0.elapsed().as_secs_f64()
                ));
                Ok((s.action == UnitAction::Roll).then_some(target))
            }
            Err(why) => {
                let logs = env.engine.tail(&target, 20).await;
                if s.action == UnitAction::Roll {
                    let _ = env.engine.stop_and_remove(&target, 1).await;
                }
                Err(Failure {
                    container: target,
                    reason: why,
                    logs,
                })
            }
        }
    }
}

/// Watch the changed containers for `window`: a container that exits, or
/// whose readiness probe fails three times in a row, fails the deploy.
async fn watch(env: &StackEnv<'_>, units: &[&Unit], window: Duration, ui: &Ui) -> Option<Failure> {
    if window.is_zero() || units.is_empty() {
        return None;
    }
    ui.info(format!(
        "watching {} containers for {} s after cutover",
        units.len(),
        window.as_secs()
    ));
    let t0 = Instant::now();
    let mut fails: HashMap<&str, u32> = HashMap::new();
    while t0.elapsed() < window {
        for u in units {
            let state = env
                .engine
                .container(&u.name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.state);
            let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
            let restarting = state.as_ref().and_then(|s| s.restarting).unwrap_or(false);
            let ok = if !running || restarting {
                false
            } else if let Some(p) = &u.probe {
                matches!(env.engine.exec(&u.name, p, None).await, Ok((0, _)))
            } else {
                true
            };
            let n = fails.entry(u.name.as_str()).or_default();
            *n = if ok { 0 } else { *n + 1 };
            let stopped = state.is_none() || (!running && !restarting);
            if *n >= 3 || stopped || restarting {
                let logs = env.engine.tail(&u.name, 20).await;
                return Some(Failure {
                    container: u.name.clone(),
                    reason: format!(
                        "{} {:.0} s after cutover",
                        if stopped {
                            "it stopped"
                        } else if restarting {
                            "it is restarting (it crashed)"
                        } else {
                            "its readiness probe failed 3 times in a row"
                        },
                        t0.elapsed().as_secs_f64()
                    ),
                    logs,
                });
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ui.ok(format!(
        "healthy throughout the {} s watch",
        window.as_secs()
    ));
    None
}

fn git_commit(stack: &Stack) -> Option<String> {
    crate::runtime::git_short_sha(&stack.root)
}

/// The revision record of units about to go live.
fn new_revision(
    env: &StackEnv<'_>,
    id: u32,
    kind: RevisionKind,
    from: Option<u32>,
    config_hash: String,
    units: &[Unit],
) -> LocalRevision {
    let mut services: BTreeMap<String, ServiceRev> = BTreeMap::new();
    for u in units.iter().filter(|u| u.is_app()) {
        let e = services
            .entry(u.service.clone())
            .or_insert_with(|| ServiceRev {
                image: u.image.clone(),
                image_id: u.image_id.clone(),
                digest: None,
                revision_tag: revision::revision_tag(&u.image, &env.project, id),
                units: Vec::new(),
            });
        e.units.push(u.clone());
    }
    LocalRevision {
        id,
        time: revision::now_rfc3339(),
        kind,
        from,
        git: git_commit(env.stack),
        config_hash,
        environment: env.stack.environment.clone(),
        project: env.project.clone(),
        by: revision::operator(),
        services,
    }
}

/// Point each app unit at its immutable revision tag (tagging it first), so
/// containers name the revision they run, never a movable tag.
async fn pin_images(env: &StackEnv<'_>, rev: &LocalRevision, units: &mut [Unit]) -> Result<()> {
    for u in units.iter_mut().filter(|u| u.is_app()) {
        let Some(s) = rev.services.get(&u.service) else {
            continue;
        };
        env.engine.tag(&s.image_id, &s.revision_tag).await?;
        u.body.image = Some(s.revision_tag.clone());
        if let Some(l) = u.body.labels.as_mut() {
            l.insert("io.stackctl.image".into(), s.revision_tag.clone());
        }
    }
    Ok(())
}

fn lock_image(units: &[Unit]) -> String {
    units
        .iter()
        .find(|u| !u.image_id.is_empty())
        .map(|u| u.image_id.clone())
        .unwrap_or_default()
}

pub async fn deploy(stack: &Stack, opts: &DeployOpts, ui: &Ui) -> Result<i32> {
    let t0 = Instant::now();
    let env = StackEnv::connect(stack).await?;
    let settings = &stack.deploy;
    let ready_timeout = opts
        .ready_timeout
        .unwrap_or(settings.ready_timeout.as_std());
    let window = opts.watch.unwrap_or(settings.watch.as_std());

    // Build what is missing, unless told not to.
    if !opts.dry_run {
        env.ensure_infra_images(ui, true).await?;
        let mut missing = missing_app_images(&env).await?;
        if !missing.is_empty() {
            missing = super::push::pull_missing(&env, &missing, ui).await?;
        }
        if !missing.is_empty() {
            if opts.no_build {
                return Err(Error::MissingImage {
                    image: format!("of {}", missing.join(", ")),
                    hint: "run `stackctl build --push` in CI for this commit (IMAGE_TAG), or `stackctl build` here (or drop --no-build)".into(),
                });
            }
            ui.info(format!("building {} (image missing)", missing.join(", ")));
            super::build::build(stack, &missing, false, false, ui).await?;
        }
    }
    let artifacts = env.artifacts()?;
    let units = desired_units(&env, &artifacts, ui).await?;
    let history = revision::list(&env.engine, &stack.root, &env.project).await?;
    let live = history.last().map(|(r, _)| r.clone());
    let id = live.as_ref().map(|r| r.id + 1).unwrap_or(1);
    let plan = plan(&env, units.clone(), None).await?;
    let chash = config_hash(stack, &artifacts);

    if opts.dry_run {
        ui.info(format!(
            "plan for revision {id} of {} ({} changes){}:",
            env.project,
            plan.changes(),
            live.as_ref()
                .map(|r| format!(", revision {} is live", r.id))
                .unwrap_or_default()
        ));
        print_plan(&plan, ui);
        if ui.json {
            ui.print_json(&plan_json(&plan));
        }
        return Ok(0);
    }

    let lock = Lock::acquire(
        &env.engine,
        &env.project,
        "deploy",
        &lock_image(&units),
        settings.lock_ttl.as_std(),
        ui,
    )
    .await?;
    drop(plan);
    let result = deploy_locked(
        &env,
        opts,
        &units,
        live,
        id,
        chash,
        &artifacts,
        ready_timeout,
        window,
        ui,
    )
    .await;
    lock.release(&env.engine).await?;
    let r = result?;
    ui.ok(format!(
        "deploy finished in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(r)
}

fn plan_json(plan: &Plan) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "container": s.unit.name,
                "service": s.unit.service,
                "action": s.action.label(),
                "image_id": s.unit.image_id,
                "current_image_id": s.current_image,
            })
        })
        .collect();
    serde_json::json!({ "steps": steps, "remove": plan.remove.iter().map(|r| &r.0).collect::<Vec<_>>() })
}

#[allow(clippy::too_many_arguments)]
async fn deploy_locked(
    env: &StackEnv<'_>,
    opts: &DeployOpts,
    units: &[Unit],
    live: Option<LocalRevision>,
    id: u32,
    chash: String,
    artifacts: &Artifacts,
    ready_timeout: Duration,
    window: Duration,
    ui: &Ui,
) -> Result<i32> {
    let stack = env.stack;
    recover(env, ui).await?;
    // Recompute after recovery: an interrupted cutover may have finished.
    let plan = plan(env, units.to_vec(), None).await?;
    let same_as_live = live.as_ref().is_some_and(|r| r.config_hash == chash);
    if plan.changes() == 0 && same_as_live {
        ui.ok(format!(
            "nothing to deploy: revision {} is live and unchanged",
            live.as_ref().map(|r| r.id).unwrap_or(0)
        ));
        return Ok(0);
    }
    ui.info(format!(
        "deploying revision {id} of {} ({} changes):",
        env.project,
        plan.changes()
    ));
    print_plan(&plan, ui);
    if opts.backup {
        let running_data = plan
            .steps
            .iter()
            .any(|s| s.unit.stateful && s.current_image.is_some());
        if running_data {
            ui.ok(super::backup::backup_on(env, &[], None, ui)
                .await?
                .summary());
        } else {
            ui.info("no running database to back up yet");
        }
    }
    artifacts.write(&env.out)?;
    env.ensure_networks().await?;
    env.ensure_volumes().await?;
    let rev = new_revision(env, id, RevisionKind::Deploy, None, chash, units);
    let mut units = units.to_vec();
    pin_images(env, &rev, &mut units).await?;
    env.stage_files(
        Some(artifacts),
        units
            .iter()
            .map(|u| (u.name.as_str(), u.secrets.as_slice(), u.image.as_str())),
    )
    .await?;
    let plan = plan_with_units(plan, &units);
    let jobs = job_units(env, &units);
    let rollout = Rollout {
        env,
        revision: id,
        ready_timeout,
        drain: stack.deploy.drain.as_std(),
        jobs,
        backup_before_recreate: true,
        all_at_once: false,
    };
    let t_roll = Instant::now();
    let touched = match rollout.run(&plan, ui).await {
        Ok(t) => t,
        Err(f) => {
            return Err(Error::DeployFailed {
                reason: format!("{}: {}", f.container, f.reason),
                logs: indent_logs(&f.logs),
                outcome: match &live {
                    Some(r) => format!("rolled back automatically: nothing was cut over, revision {} kept serving throughout", r.id),
                    None => "nothing was cut over".to_string(),
                },
                hint: "fix the cause above and deploy again; `stackctl logs SERVICE` shows more".into(),
            })
        }
    };
    ui.ok(format!(
        "cut over {} containers in {:.1}s",
        touched.len(),
        t_roll.elapsed().as_secs_f64()
    ));
    revision::record(&env.engine, &stack.root, &rev).await?;
    ui.ok(format!("revision {id} is live"));

    // Watch what changed.
    let watched: Vec<&Unit> = units.iter().filter(|u| touched.contains(&u.name)).collect();
    if let Some(f) = watch(env, &watched, window, ui).await {
        let outcome = match &live {
            Some(prev) => {
                ui.warn(format!(
                    "{} failed after cutover: rolling back to revision {}",
                    f.container, prev.id
                ));
                let t = Instant::now();
                let back = rollback_to(env, prev, id + 1, RevisionKind::AutoRollback, ui).await;
                match back {
                    Ok(()) => format!(
                        "rolled back automatically to revision {} in {:.1}s (recorded as revision {})",
                        prev.id,
                        t.elapsed().as_secs_f64(),
                        id + 1
                    ),
                    Err(e) => format!("the automatic rollback failed too: {e}"),
                }
            }
            None => {
                "no previous revision to roll back to: the first deploy stays; fix and deploy again"
                    .to_string()
            }
        };
        return Err(Error::DeployFailed {
            reason: format!("{}: {}", f.container, f.reason),
            logs: indent_logs(&f.logs),
            outcome,
            hint: "fix the cause above and deploy again".into(),
        });
    }
    let kept = revision::prune(
        &env.engine,
        &stack.root,
        &env.project,
        stack.deploy.keep,
        &[id],
    )
    .await?;
    if !kept.is_empty() {
        ui.detail(format!(
            "forgot revisions {kept:?} (keep = {})",
            stack.deploy.keep
        ));
    }
    Ok(0)
}

/// The plan's steps with the pinned units (same order, same actions).
fn plan_with_units(plan: Plan, units: &[Unit]) -> Plan {
    let by_name: HashMap<&str, &Unit> = units.iter().map(|u| (u.name.as_str(), u)).collect();
    Plan {
        steps: plan
            .steps
            .into_iter()
            .map(|s| Step {
                unit: by_name
                    .get(s.unit.name.as_str())
                    .map(|u| (*u).clone())
                    .unwrap_or(s.unit),
                action: s.action,
                current_image: s.current_image,
            })
            .collect(),
        remove: plan.remove,
    }
}

fn job_units(env: &StackEnv<'_>, units: &[Unit]) -> Vec<(Job, Unit)> {
    env.stack
        .jobs
        .iter()
        .filter_map(|j| {
            units
                .iter()
                .find(|u| u.service == j.service && u.replica == 1)
                .map(|u| (j.clone(), u.clone()))
        })
        .collect()
}

/// Roll the services back to `target`'s units, by image id; record the
/// result as revision `id`.
async fn rollback_to(
    env: &StackEnv<'_>,
    target: &LocalRevision,
    id: u32,
    kind: RevisionKind,
    ui: &Ui,
) -> Result<()> {
    for (svc, s) in &target.services {
        if env.engine.image(&s.image_id).await?.is_none() {
            return Err(Error::Revision {
                revision: target.id.to_string(),
                reason: format!("the image of {svc} ({}) is no longer on this host", short(&s.image_id)),
                hint: "it was removed outside stackctl (docker rmi); pull or rebuild it, or roll back to another revision (`stackctl history`)".into(),
            });
        }
    }
    let mut units: Vec<Unit> = target
        .services
        .values()
        .flat_map(|s| s.units.clone())
        .collect();
    let scope: BTreeSet<String> = env
        .containers
        .iter()
        .filter(|c| matches!(c.kind, crate::model::containers::Kind::App))
        .map(|c| c.name.clone())
        .chain(target.services.keys().cloned())
        .collect();
    let mut rev = target.clone();
    rev.id = id;
    rev.kind = kind;
    rev.from = Some(target.id);
    rev.time = revision::now_rfc3339();
    rev.by = revision::operator();
    for s in rev.services.values_mut() {
        s.revision_tag = revision::revision_tag(&s.image, &env.project, id);
    }
    pin_images(env, &rev, &mut units).await?;
    for (svc, s) in rev.services.iter_mut() {
        s.units = units
            .iter()
            .filter(|u| &u.service == svc)
            .cloned()
            .collect();
    }
    // The rendered files a revision's containers mount are already on the
    // host (put there by its deploy); only the secrets are staged again.
    env.stage_files(
        None,
        units
            .iter()
            .map(|u| (u.name.as_str(), u.secrets.as_slice(), u.image.as_str())),
    )
    .await?;
    let plan = plan(env, units, Some(&scope)).await?;
    print_plan(&plan, ui);
    let rollout = Rollout {
        env,
        revision: id,
        ready_timeout: env.stack.deploy.ready_timeout.as_std(),
        drain: env.stack.deploy.drain.as_std(),
        jobs: Vec::new(),
        backup_before_recreate: true,
        all_at_once: true,
    };
    rollout
        .run(&plan, ui)
        .await
        .map_err(|f| Error::DeployFailed {
            reason: format!("{}: {}", f.container, f.reason),
            logs: indent_logs(&f.logs),
            outcome: "the rollback was not cut over: what ran before it keeps serving".into(),
            hint: "see the cause above; `stackctl history` lists other revisions".into(),
        })?;
    revision::record(&env.engine, &env.stack.root, &rev).await?;
    Ok(())
}

/// `stackctl rollback [--to REV]`.
pub async fn rollback(stack: &Stack, to: Option<&str>, ui: &Ui) -> Result<i32> {
    let t0 = Instant::now();
    let env = StackEnv::connect(stack).await?;
    let history = revision::list(&env.engine, &stack.root, &env.project).await?;
    let Some((live, _)) = history.last() else {
        return Err(Error::Revision {
            revision: "live".into(),
            reason: format!("{} has no deploy history on this host", env.project),
            hint: "deploy first (`stackctl deploy`); history is kept per project and environment"
                .into(),
        });
    };
    let target = match to {
        Some(t) => {
            let n: u32 = t.trim_start_matches(['r', 'R']).parse().map_err(|_| {
                Error::usage(
                    format!("`{t}` is not a revision number"),
                    "give a number from `stackctl history`, e.g. --to 3",
                )
            })?;
            history
                .iter()
                .find(|(r, _)| r.id == n)
                .map(|(r, _)| r.clone())
                .ok_or_else(|| Error::Revision {
                    revision: n.to_string(),
                    reason: "no such revision (it may have been forgotten by retention)".into(),
                    hint: format!(
                        "choose one of: {}",
                        history
                            .iter()
                            .map(|(r, _)| r.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?
        }
        None => match history.iter().rev().nth(1) {
            Some((r, _)) => r.clone(),
            None => {
                return Err(Error::Revision {
                    revision: live.id.to_string(),
                    reason: "it is the only revision: there is nothing to roll back to".into(),
                    hint: "deploy a fixed version instead".into(),
                })
            }
        },
    };
    if target.id == live.id {
        ui.ok(format!("revision {} is already live", live.id));
        return Ok(0);
    }
    let id = live.id + 1;
    let images: Vec<String> = target
        .services
        .values()
        .map(|s| s.image_id.clone())
        .collect();
    let lock = Lock::acquire(
        &env.engine,
        &env.project,
        "rollback",
        images.first().map(String::as_str).unwrap_or(""),
        stack.deploy.lock_ttl.as_std(),
        ui,
    )
    .await?;
    ui.info(format!(
        "rolling {} back from revision {} to revision {}:",
        env.project, live.id, target.id
    ));
    let r = async {
        recover(&env, ui).await?;
        rollback_to(&env, &target, id, RevisionKind::Rollback, ui).await
    }
    .await;
    lock.release(&env.engine).await?;
    r?;
    ui.ok(format!(
        "rolled back to revision {} in {:.1}s (recorded as revision {id})",
        target.id,
        t0.elapsed().as_secs_f64()
    ));
    Ok(0)
}

/// `stackctl history`.
pub async fn history(stack: &Stack, ui: &Ui) -> Result<i32> {
    let engine = Engine::connect().await?;
    let project = crate::engine::project(stack);
    let all = revision::list(&engine, &stack.root, &project).await?;
    if ui.json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .enumerate()
            .map(|(i, (r, host))| {
                serde_json::json!({
                    "id": r.id, "time": r.time, "kind": r.kind, "from": r.from, "git": r.git,
                    "config_hash": r.config_hash, "by": r.by, "live": i + 1 == all.len(), "on_host": host,
                    "services": r.services.iter().map(|(k, s)| (k.clone(), serde_json::json!({
                        "image": s.image, "image_id": s.image_id, "tag": s.revision_tag, "digest": s.digest,
                        "replicas": s.units.len(),
                    }))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        ui.print_json(&serde_json::Value::Array(v));
        return Ok(0);
    }
    if all.is_empty() {
        ui.info(format!(
            "{project} has no revisions yet: `stackctl deploy` records the first"
        ));
        return Ok(0);
    }
    println!(
        "{:<5} {:<21} {:<14} {:<13} {:<13} {:<20} services",
        "REV", "TIME", "KIND", "GIT", "CONFIG", "BY"
    );
    let mut prev: Option<&LocalRevision> = None;
    for (i, (r, host)) in all.iter().enumerate() {
        let changed: Vec<String> = r
            .services
            .iter()
            .filter(|(k, s)| {
                prev.and_then(|p| p.services.get(*k))
                    .is_none_or(|p| p.image_id != s.image_id)
            })
            .map(|(k, s)| format!("{k}@{}", short(&s.image_id)))
            .collect();
        let kind = match r.from {
            Some(f) => format!("{} to {f}", r.kind),
            None => r.kind.to_string(),
        };
        println!(
            "{:<5} {:<21} {:<14} {:<13} {:<13} {:<20} {}{}{}",
            r.id,
            r.time,
            kind,
            r.git.clone().unwrap_or_else(|| "-".into()),
            &r.config_hash[..12.min(r.config_hash.len())],
            r.by,
            if changed.is_empty() {
                "(no image changes)".to_string()
            } else {
                changed.join(" ")
            },
            if i + 1 == all.len() { "  <- live" } else { "" },
            if *host { "" } else { "  (local copy only)" }
        );
        prev = Some(r);
    }
    Ok(0)
}

/// `stackctl diff [REV]`: what a deploy would change against what runs, or
/// against a recorded revision.
pub async fn diff(stack: &Stack, rev: Option<&str>, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let artifacts = env.artifacts()?;
    let units = desired_units(&env, &artifacts, &ui.clone_quiet()).await?;
    let chash = config_hash(stack, &artifacts);
    let Some(rev) = rev else {
        let plan = plan(&env, units, None).await?;
        let history = revision::list(&env.engine, &stack.root, &env.project).await?;
        if let Some((live, _)) = history.last() {
            ui.info(format!(
                "against live revision {}: config {}",
                live.id,
                if live.config_hash == chash {
                    "unchanged"
                } else {
                    "changed"
                }
            ));
        }
        if plan.changes() == 0 {
            ui.ok("no changes: a deploy would do nothing");
            return Ok(0);
        }
        print_plan(&plan, ui);
        if ui.json {
            ui.print_json(&plan_json(&plan));
        }
        return Ok(0);
    };
    let history = revision::list(&env.engine, &stack.root, &env.project).await?;
    let n: u32 = rev.trim_start_matches(['r', 'R']).parse().map_err(|_| {
        Error::usage(
            format!("`{rev}` is not a revision number"),
            "see `stackctl history`",
        )
    })?;
    let Some((r, _)) = history.iter().find(|(r, _)| r.id == n) else {
        return Err(Error::Revision {
            revision: n.to_string(),
            reason: "no such revision".into(),
            hint: "see `stackctl history`".into(),
        });
    };
    ui.info(format!(
        "revision {} -> now: config {}",
        r.id,
        if r.config_hash == chash {
            "unchanged"
        } else {
            "changed"
        }
    ));
    let mut changes = 0;
    let now_svcs: BTreeSet<&str> = units
        .iter()
        .filter(|u| u.is_app())
        .map(|u| u.service.as_str())
        .collect();
    for svc in now_svcs.iter() {
        let now: Vec<&Unit> = units.iter().filter(|u| u.service == *svc).collect();
        match r.services.get(*svc) {
            None => {
                changes += 1;
                println!("  + {svc} (new, {} replicas)", now.len());
            }
            Some(s) => {
                let mut what = Vec::new();
                if s.image_id != now[0].image_id {
                    what.push(format!(
                        "image {} -> {}",
                        short(&s.image_id),
                        short(&now[0].image_id)
                    ));
                }
                if s.units.len() != now.len() {
                    what.push(format!("replicas {} -> {}", s.units.len(), now.len()));
                }
                if s.units.first().map(|u| &u.hash) != Some(&now[0].hash)
                    && s.image_id == now[0].image_id
                {
                    what.push("configuration".into());
                }
                if !what.is_empty() {
                    changes += 1;
                    println!("  ~ {svc}: {}", what.join(", "));
                }
            }
        }
    }
    for svc in r.services.keys().filter(|k| !now_svcs.contains(k.as_str())) {
        changes += 1;
        println!("  - {svc} (gone)");
    }
    if changes == 0 {
        ui.ok(format!("the services are as at revision {}", r.id));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(service: &str, deps: &[&str]) -> Unit {
        Unit {
            service: service.into(),
            replica: 1,
            name: format!("p-{service}-1"),
            kind: crate::model::containers::Kind::App,
            stateful: false,
            image: "x:y".into(),
            image_id: "sha256:1".into(),
            hash: "h".into(),
            networks: vec![],
            alias: service.into(),
            more_aliases: vec![],
            probe: None,
            grace_secs: 1,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            secrets: vec![],
            body: Default::default(),
        }
    }

    #[test]
    fn levels_follow_dependencies_within_the_plan() {
        let us = [
            unit("gateway", &["users", "security"]),
            unit("users", &["security", "postgres-user"]),
            unit("security", &[]),
        ];
        let refs: Vec<&Unit> = us.iter().collect();
        let l = level_of(&refs);
        assert_eq!(l["security"], 0);
        assert_eq!(
            l["users"], 1,
            "a dependency outside the plan does not count"
        );
        assert_eq!(l["gateway"], 2);
    }
}
