//! `status`, `health` and `logs` against the Swarm target.
//!
//! `status` and `health` first list the swarm's nodes (a node that is not
//! ready is called out), then per service the nodes its running tasks are
//! on, the slots whose task moved to another node, and why a slot waits
//! (its node is down: a service pinned there cannot run elsewhere). The pure
//! parts ([`NodeMap`], [`moves`], [`placement`]) only read engine objects.

use super::revisions::{Planned, LABEL_REVISION};
use super::{connect, last_error, plan, replicas, service_name, services, task_state, tasks};
use crate::engine::models::{
    Node, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Service, Task, TaskState,
};
use crate::engine::{Engine, LABEL_CONFIG_HASH};
use crate::error::{Error, Result};
use crate::model::containers::{ContainerSpec, LABEL_SERVICE};
use crate::model::Stack;
use crate::ui::Ui;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn label(s: &Service, key: &str) -> Option<String> {
    s.spec.as_ref()?.labels.as_ref()?.get(key).cloned()
}

fn update_state(s: &Service) -> String {
    s.update_status
        .as_ref()
        .and_then(|u| u.state)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The first 12 characters of an id, as `docker node ls` shows it.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// One node of the swarm as `status` and `health` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub addr: String,
    pub role: Option<NodeSpecRoleEnum>,
    pub leader: bool,
    pub state: NodeState,
    pub availability: Option<NodeSpecAvailabilityEnum>,
    /// This project's tasks running there.
    pub tasks: usize,
}

impl NodeRow {
    pub fn new(n: &Node) -> NodeRow {
        let id = n.id.clone().unwrap_or_default();
        let spec = n.spec.clone().unwrap_or_default();
        let status = n.status.clone().unwrap_or_default();
        let manager = n.manager_status.clone().unwrap_or_default();
        let hostname = n
            .description
            .as_ref()
            .and_then(|d| d.hostname.clone())
            .or(spec.name)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| short_id(&id));
        // A manager may report 0.0.0.0: its manager address says where it is.
        let addr = match status.addr.filter(|a| !a.is_empty() && a != "0.0.0.0") {
            Some(a) => a,
            None => manager
                .addr
                .as_deref()
                .map(|a| a.rsplit_once(':').map_or(a, |(host, _)| host).to_string())
                .unwrap_or_default(),
        };
        NodeRow {
            id,
            hostname,
            addr,
            role: spec.role,
            leader: manager.leader.unwrap_or(false),
            state: status.state.unwrap_or(NodeState::UNKNOWN),
            availability: spec.availability,
            tasks: 0,
        }
    }

    pub fn ready(&self) -> bool {
        self.state == NodeState::READY
    }

    fn role_text(&self) -> String {
        let role = self.role.map(|r| r.to_string()).unwrap_or_default();
        match (role.is_empty(), self.leader) {
            (true, _) => "-".into(),
            (false, true) => format!("{role} (leader)"),
            (false, false) => role,
        }
    }

    fn availability_text(&self) -> String {
        self.availability
            .map(|a| a.to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "-".into())
    }

    fn json(&self) -> Value {
        json!({
            "hostname": self.hostname,
            "addr": self.addr,
            "role": self.role.map(|r| r.to_string()).unwrap_or_default(),
            "leader": self.leader,
            "state": self.state.to_string(),
            "availability": self.availability.map(|a| a.to_string()).unwrap_or_default(),
            "tasks": self.tasks,
        })
    }

    /// The warning for a node that is not ready, `None` for a ready one.
    fn warning(&self) -> Option<String> {
        let at = if self.addr.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.addr)
        };
        let what = match self.state {
            NodeState::READY => return None,
            NodeState::UNKNOWN => "is in state unknown (no heartbeat yet): its tasks are rescheduled if it does not come back",
            NodeState::DOWN => "is down: its tasks were rescheduled or are waiting",
            NodeState::DISCONNECTED => "is disconnected: its tasks were rescheduled or are waiting",
        };
        Some(format!("node {}{at} {what}", self.hostname))
    }
}

/// The swarm's nodes (sorted by hostname) with this project's running tasks
/// counted on each.
#[derive(Debug, Clone, Default)]
pub struct NodeMap {
    pub nodes: Vec<NodeRow>,
}

impl NodeMap {
    pub fn new(nodes: &[Node]) -> NodeMap {
        let mut nodes: Vec<NodeRow> = nodes.iter().map(NodeRow::new).collect();
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        NodeMap { nodes }
    }

    /// Count one service's running tasks on their nodes.
    pub fn count(&mut self, tasks: &[Task]) {
        let on: Vec<String> = tasks
            .iter()
            .filter(|t| self.runs(t))
            .filter_map(|t| t.node_id.clone())
            .collect();
        for id in on {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
                n.tasks += 1;
            }
        }
    }

    fn node(&self, id: &str) -> Option<&NodeRow> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// A node's hostname (a short id for a node no longer in the swarm).
    pub fn hostname(&self, id: &str) -> String {
        self.node(id)
            .map(|n| n.hostname.clone())
            .unwrap_or_else(|| short_id(id))
    }

    fn ready(&self, id: &str) -> bool {
        self.node(id).is_some_and(NodeRow::ready)
    }

    /// Down or gone from the swarm: as for the engine's own running count,
    /// a task there does not run (a node in state unknown still counts).
    fn lost(&self, id: &str) -> bool {
        self.node(id).is_none_or(|n| n.state == NodeState::DOWN)
    }

    /// A task meant to run that runs, on a node not lost.
    pub fn runs(&self, t: &Task) -> bool {
        t.desired_state == Some(TaskState::RUNNING)
            && task_state(t) == Some(TaskState::RUNNING)
            && t.node_id.as_deref().is_some_and(|n| !self.lost(n))
    }

    /// Why a slot placed on this node waits, when the node is not ready.
    fn lost_reason(&self, id: &str) -> Option<String> {
        match self.node(id) {
            None => Some(format!("its node {} left the swarm", short_id(id))),
            Some(n) if !n.ready() => Some(format!("its node {} is {}", n.hostname, n.state)),
            Some(_) => None,
        }
    }

    /// The node table, header first.
    pub fn lines(&self) -> Vec<String> {
        let w = self
            .nodes
            .iter()
            .map(|n| n.hostname.len())
            .max()
            .unwrap_or(4);
        let a = self.nodes.iter().map(|n| n.addr.len()).max().unwrap_or(7);
        let (w, a) = (w.max(4), a.max(7));
        let mut out = vec![format!(
            "{:<w$}  {:<a$}  {:<16}  {:<12}  {:<12}  TASKS",
            "NODE", "ADDRESS", "ROLE", "STATE", "AVAILABILITY"
        )];
        for n in &self.nodes {
            out.push(format!(
                "{:<w$}  {:<a$}  {:<16}  {:<12}  {:<12}  {}",
                n.hostname,
                if n.addr.is_empty() { "-" } else { &n.addr },
                n.role_text(),
                n.state.to_string(),
                n.availability_text(),
                n.tasks
            ));
        }
        out
    }

    /// One warning per node that is not ready.
    pub fn warnings(&self) -> Vec<String> {
        self.nodes.iter().filter_map(NodeRow::warning).collect()
    }

    pub fn json(&self) -> Value {
        Value::Array(self.nodes.iter().map(NodeRow::json).collect())
    }
}

/// A slot whose newest task, running, is on another node than the task
/// that ran there before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub slot: i64,
    pub from: String,
    pub to: String,
    /// When the newer task was created (RFC 3339, UTC, seconds).
    pub at: String,
}

impl Move {
    fn json(&self) -> Value {
        json!({"slot": self.slot, "from": self.from, "to": self.to, "at": self.at})
    }
}

/// When a task was created, for ordering (its version breaks ties).
fn created(t: &Task) -> (Option<chrono::DateTime<chrono::Utc>>, u64) {
    let at = t
        .created_at
        .as_deref()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        .map(|c| c.with_timezone(&chrono::Utc));
    (at, t.version.as_ref().and_then(|v| v.index).unwrap_or(0))
}

fn created_text(t: &Task) -> String {
    match created(t).0 {
        Some(at) => at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => t.created_at.clone().unwrap_or_default(),
    }
}

/// A service's tasks per slot, oldest first (the engine keeps a few ended
/// tasks per slot). Tasks without a slot (a global service's) are left out.
fn slots(tasks: &[Task]) -> BTreeMap<i64, Vec<&Task>> {
    let mut by: BTreeMap<i64, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if let Some(s) = t.slot {
            by.entry(s).or_default().push(t);
        }
    }
    for ts in by.values_mut() {
        ts.sort_by_key(|t| created(t));
    }
    by
}

fn node_of(t: &Task) -> Option<&str> {
    t.node_id.as_deref().filter(|n| !n.is_empty())
}

/// The newest of `earlier` that was placed on a node.
fn placed_before<'a>(earlier: &[&'a Task]) -> Option<&'a Task> {
    earlier.iter().rev().find(|t| node_of(t).is_some()).copied()
}

/// Ended by the orchestrator (shut down, orphaned) or on a node now not ready.
fn retired(t: &Task, c: &NodeMap) -> bool {
    t.desired_state != Some(TaskState::RUNNING)
        || matches!(
            task_state(t),
            Some(TaskState::SHUTDOWN | TaskState::ORPHANED)
        )
        || node_of(t).is_some_and(|n| !c.ready(n))
}

/// Per slot, the newest task when it runs on another node than the task
/// placed in that slot before it (which the orchestrator retired).
pub fn moves(tasks: &[Task], c: &NodeMap) -> Vec<Move> {
    let mut out = Vec::new();
    for (slot, ts) in slots(tasks) {
        let Some((newest, earlier)) = ts.split_last() else {
            continue;
        };
        let Some(before) = placed_before(earlier) else {
            continue;
        };
        let (Some(to), Some(from)) = (node_of(newest), node_of(before)) else {
            continue;
        };
        if c.runs(newest) && to != from && retired(before, c) {
            out.push(Move {
                slot,
                from: c.hostname(from),
                to: c.hostname(to),
                at: created_text(newest),
            });
        }
    }
    out
}

/// Why slots meant to run do not: their node (or, for a task not placed
/// yet, the node of the slot's previous task) is not ready, or for a task
/// the scheduler has not placed, its message. Each reason once.
pub fn waiting(tasks: &[Task], c: &NodeMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ts in slots(tasks).values() {
        let Some((newest, earlier)) = ts.split_last() else {
            continue;
        };
        if newest.desired_state != Some(TaskState::RUNNING) || c.runs(newest) {
            continue;
        }
        let node = node_of(newest).or_else(|| placed_before(earlier).and_then(node_of));
        let unplaced = matches!(
            task_state(newest),
            Some(TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING)
        );
        let why = node.and_then(|n| c.lost_reason(n)).or_else(|| {
            let st = newest.status.clone().unwrap_or_default();
            let msg = st.err.filter(|e| !e.is_empty()).or(st.message);
            msg.filter(|m| unplaced && !m.is_empty())
        });
        if let Some(w) = why.filter(|w| !out.contains(w)) {
            out.push(w);
        }
    }
    out
}

/// Where one service's tasks are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Hostnames of the nodes its running tasks are on, sorted, once each.
    pub nodes: Vec<String>,
    pub moved: Vec<Move>,
    /// Why slots that should run do not (see [`waiting`]).
    pub waiting: Vec<String>,
}

pub fn placement(tasks: &[Task], c: &NodeMap) -> Placement {
    let mut nodes: Vec<String> = tasks
        .iter()
        .filter(|t| c.runs(t))
        .filter_map(node_of)
        .map(|n| c.hostname(n))
        .collect();
    nodes.sort();
    nodes.dedup();
    Placement {
        nodes,
        moved: moves(tasks, c),
        waiting: waiting(tasks, c),
    }
}

impl Placement {
    /// `api (2/2) on sc-node1, sc-node2`, then one line per move.
    pub fn lines(&self, name: &str, tasks: &str) -> Vec<String> {
        let mut head = format!("{name} ({tasks})");
        if !self.nodes.is_empty() {
            head.push_str(&format!(" on {}", self.nodes.join(", ")));
        }
        if !self.waiting.is_empty() {
            let sep = if self.nodes.is_empty() { "" } else { ";" };
            head.push_str(&format!("{sep} waiting: {}", self.waiting.join("; ")));
        } else if self.nodes.is_empty() {
            head.push_str(" on no node");
        }
        let mut out = vec![head];
        for m in &self.moved {
            out.push(format!(
                "  moved: slot {}: {} → {} at {}",
                m.slot, m.from, m.to, m.at
            ));
        }
        out
    }

    /// Adds `nodes`, `moved` and `waiting` to a service's JSON object.
    fn extend_json(&self, v: &mut Value) {
        if let Value::Object(o) = v {
            o.insert("nodes".into(), json!(self.nodes));
            o.insert(
                "moved".into(),
                Value::Array(self.moved.iter().map(Move::json).collect()),
            );
            o.insert("waiting".into(), json!(self.waiting));
        }
    }
}

/// The per-service placement lines are worth printing: more than one node,
/// or something moved or waits.
fn show_placement<'a>(c: &NodeMap, mut ps: impl Iterator<Item = &'a Placement>) -> bool {
    c.nodes.len() > 1 || ps.any(|p| !p.moved.is_empty() || !p.waiting.is_empty())
}

/// The tasks of each of the project's services, by Swarm service name.
async fn all_tasks(
    engine: &Engine,
    current: &HashMap<String, Service>,
) -> Result<HashMap<String, Vec<Task>>> {
    let mut out = HashMap::new();
    for name in current.keys() {
        out.insert(name.clone(), tasks(engine, name).await?);
    }
    Ok(out)
}

/// The swarm's nodes with the project's running tasks counted.
async fn cluster(engine: &Engine, tasks: &HashMap<String, Vec<Task>>) -> Result<NodeMap> {
    let mut c = NodeMap::new(&engine.nodes().await?);
    for t in tasks.values() {
        c.count(t);
    }
    Ok(c)
}

/// The node table, then a warning per node that is not ready (text output).
fn print_nodes(ui: &Ui, c: &NodeMap) {
    for l in c.lines() {
        println!("{l}");
    }
    for w in c.warnings() {
        ui.warn(w);
    }
    println!();
}

/// One service in `status`.
struct StatusRow {
    name: String,
    tasks: String,
    rev: String,
    verdict: String,
    placement: Option<Placement>,
}

fn verdict(p: &Planned, s: &Service, running: u64, want: usize) -> String {
    let planned_replicas = p
        .spec
        .mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1) as usize;
    if label(s, LABEL_CONFIG_HASH).as_deref() != Some(&p.hash) {
        match label(s, super::spec::LABEL_IMAGE) {
            Some(i) if i != p.image => format!("outdated (image {i} -> {})", p.image),
            _ => "outdated (spec, config, secret or image content)".to_string(),
        }
    } else if want != planned_replicas {
        format!("scaled ({want} replicas, stack.toml says {planned_replicas})")
    } else if running < want as u64 {
        "up to date, not all tasks running".to_string()
    } else {
        "up to date".to_string()
    }
}

fn status_row(p: &Planned, s: Option<&Service>, tasks: &[Task], c: &NodeMap) -> StatusRow {
    let Some(s) = s else {
        return StatusRow {
            name: p.name.clone(),
            tasks: "-".into(),
            rev: "-".into(),
            verdict: "missing".into(),
            placement: None,
        };
    };
    // Counted as `health` counts: a task on a node that is down is not
    // running (the engine's own count keeps it until the node returns).
    let running = tasks.iter().filter(|t| c.runs(t)).count() as u64;
    let want = replicas(s);
    StatusRow {
        name: p.name.clone(),
        tasks: format!("{running}/{want}"),
        rev: label(s, LABEL_REVISION).unwrap_or_else(|| "-".into()),
        verdict: verdict(p, s, running, want),
        placement: Some(placement(tasks, c)),
    }
}

fn print_status(ui: &Ui, rows: &[StatusRow], c: &NodeMap, drift: usize) {
    if ui.json {
        let services = rows.iter().map(|r| {
            let mut v = json!({"service": r.name, "tasks": r.tasks, "revision": r.rev, "status": r.verdict});
            r.placement.clone().unwrap_or_default().extend_json(&mut v);
            v
        });
        ui.print_json(&json!({
            "in_sync": drift == 0,
            "nodes": c.json(),
            "services": services.collect::<Vec<_>>(),
        }));
        return;
    }
    print_nodes(ui, c);
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(7).max(7);
    println!("{:<w$}  {:<7} {:>4}  STATUS", "SERVICE", "TASKS", "REV");
    for r in rows {
        println!("{:<w$}  {:<7} {:>4}  {}", r.name, r.tasks, r.rev, r.verdict);
    }
    let placed = || rows.iter().filter_map(|r| r.placement.as_ref());
    if show_placement(c, placed()) {
        println!();
        for r in rows {
            for l in r.placement.iter().flat_map(|p| p.lines(&r.name, &r.tasks)) {
                println!("{l}");
            }
        }
    }
    println!("{} of {} match stack.toml", rows.len() - drift, rows.len());
}

/// Desired (stack.toml) against the swarm: missing, outdated, scaled, extra;
/// the nodes, and where each service's tasks run.
pub async fn status(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let planned = plan(&env, &ui.clone_quiet(), false).await?;
    let current = services(&env.engine, &env.project).await?;
    let all = all_tasks(&env.engine, &current).await?;
    let c = cluster(&env.engine, &all).await?;
    let none = Vec::new();
    let mut rows: Vec<StatusRow> = planned
        .iter()
        .map(|p| {
            let t = all.get(&p.service).unwrap_or(&none);
            status_row(p, current.get(&p.service), t, &c)
        })
        .collect();
    for (name, s) in &current {
        if !planned.iter().any(|p| &p.service == name) {
            rows.push(StatusRow {
                name: label(s, LABEL_SERVICE).unwrap_or_else(|| name.clone()),
                tasks: "-".into(),
                rev: label(s, LABEL_REVISION).unwrap_or_else(|| "-".into()),
                verdict: "extra (not in stack.toml)".into(),
                placement: None,
            });
        }
    }
    let drift = rows
        .iter()
        .filter(|r| !r.verdict.starts_with("up to date") && !r.verdict.starts_with("scaled"))
        .count();
    print_status(ui, &rows, &c, drift);
    Ok(if drift == 0 { 0 } else { 1 })
}

/// One service in `health`.
struct HealthRow {
    name: String,
    tasks: String,
    health: String,
    update: String,
    err: String,
    ok: bool,
    placement: Placement,
}

/// Tasks meant to run that run (on a node not lost), and those that do not
/// (yet).
fn live_counts(tasks: &[Task], c: &NodeMap) -> (usize, usize) {
    let live = tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING));
    let running = live.clone().filter(|t| c.runs(t)).count();
    (running, live.count() - running)
}

fn health_row(spec: &ContainerSpec, s: &Service, t: &[Task], c: &NodeMap) -> HealthRow {
    let (running, starting) = live_counts(t, c);
    let want = replicas(s);
    let update = update_state(s);
    let bad_update = matches!(
        update.as_str(),
        "updating" | "paused" | "rollback_paused" | "rollback_started"
    );
    // A down node is no reason for alarm while every service has its tasks.
    let ok = running >= want && !bad_update;
    let placement = placement(t, c);
    let pending = if placement.waiting.is_empty() {
        "starting"
    } else {
        "waiting"
    };
    let health = if spec.healthcheck.is_none() {
        "no check".to_string()
    } else if starting > 0 {
        format!("{running} healthy, {starting} {pending}")
    } else {
        format!("{running} healthy")
    };
    // A failure from before the current tasks started is history, not news.
    let err = last_error(t)
        .map(|(_, e)| e)
        .filter(|_| !ok)
        .unwrap_or_default();
    HealthRow {
        name: spec.name.clone(),
        tasks: format!("{running}/{want}"),
        health,
        update,
        err,
        ok,
        placement,
    }
}

fn print_health(ui: &Ui, rows: &[HealthRow], c: &NodeMap, bad: usize) {
    if ui.json {
        let services = rows.iter().map(|r| {
            let mut v = json!({
                "service": r.name, "tasks": r.tasks, "health": r.health, "update": r.update, "last_error": r.err, "ok": r.ok,
            });
            r.placement.extend_json(&mut v);
            v
        });
        ui.print_json(&json!({
            "healthy": bad == 0,
            "nodes": c.json(),
            "services": services.collect::<Vec<_>>(),
        }));
        return;
    }
    print_nodes(ui, c);
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(7).max(7);
    println!(
        "{:<w$}  {:<6} {:<22} {:<18}  LAST ERROR",
        "SERVICE", "TASKS", "HEALTH", "UPDATE"
    );
    for r in rows {
        let mark = if r.ok {
            console::style("✓").green()
        } else {
            console::style("✗").red()
        };
        let update = if r.update.is_empty() { "-" } else { &r.update };
        let (n, t, h) = (&r.name, &r.tasks, &r.health);
        println!("{n:<w$}  {t:<6} {h:<22} {update:<18}  {mark} {}", r.err);
    }
    if show_placement(c, rows.iter().map(|r| &r.placement)) {
        println!();
        for r in rows {
            for l in r.placement.lines(&r.name, &r.tasks) {
                println!("{l}");
            }
        }
    }
    println!("{} of {} services healthy", rows.len() - bad, rows.len());
}

/// The nodes; tasks running against desired, where they run, their health,
/// any update in progress and the last task error; exit 0 only when every
/// service is fully up (a down node alone is a warning).
pub async fn health(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let current = services(&env.engine, &env.project).await?;
    let all = all_tasks(&env.engine, &current).await?;
    let c = cluster(&env.engine, &all).await?;
    let rows: Vec<HealthRow> = env
        .containers
        .iter()
        .filter_map(|spec| {
            let svc = service_name(&env.project, &spec.name);
            Some(health_row(spec, current.get(&svc)?, all.get(&svc)?, &c))
        })
        .collect();
    if rows.is_empty() {
        return Err(Error::usage(
            format!("no service of project {} is on the swarm", env.project),
            "deploy first: stackctl --target swarm deploy",
        ));
    }
    let bad = rows.iter().filter(|r| !r.ok).count();
    print_health(ui, &rows, &c, bad);
    if bad == 0 {
        Ok(0)
    } else {
        Err(Error::Unhealthy {
            unhealthy: bad,
            total: rows.len(),
        })
    }
}

/// Service logs (all tasks of each service) through the service logs API,
/// interleaved by time, each line prefixed with its service.
pub async fn logs(
    stack: &Stack,
    names: &[String],
    follow: bool,
    tail: Option<usize>,
    ui: &Ui,
) -> Result<i32> {
    let env = connect(stack).await?;
    for n in names {
        if !env.containers.iter().any(|c| &c.name == n) {
            return Err(Error::usage(
                format!("no service `{n}` in this stack"),
                format!(
                    "choose from: {}",
                    env.containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let current = services(&env.engine, &env.project).await?;
    let mut chosen: Vec<(String, String)> = current
        .iter()
        .filter_map(|(svc, s)| {
            let short = label(s, LABEL_SERVICE).unwrap_or_else(|| svc.clone());
            let id = s.id.clone()?;
            (names.is_empty() || names.contains(&short)).then_some((short, id))
        })
        .collect();
    chosen.sort();
    if chosen.is_empty() {
        ui.warn("no services of this stack are on the swarm (stackctl --target swarm deploy)");
        return Ok(0);
    }
    let shorts: Vec<String> = chosen.iter().map(|c| c.0.clone()).collect();
    let streams = crate::ops::logs::prefixes(&shorts)
        .into_iter()
        .zip(&chosen)
        .map(|(prefix, (_, id))| {
            let stream = env.engine.service_logs(id, follow, tail);
            (prefix, stream)
        })
        .collect();
    crate::ops::logs::print_interleaved(streams, follow, Some("read service logs")).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::models::{
        ManagerStatus, NodeDescription, NodeSpec, NodeStatus, ObjectVersion, TaskStatus,
    };

    fn node(id: &str, host: &str, addr: &str, manager: bool, state: NodeState) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                role: Some(if manager {
                    NodeSpecRoleEnum::MANAGER
                } else {
                    NodeSpecRoleEnum::WORKER
                }),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some(host.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(state),
                addr: Some(addr.into()),
                ..Default::default()
            }),
            manager_status: manager.then(|| ManagerStatus {
                leader: Some(true),
                addr: Some(format!("{addr}:2377")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Manager sc-node1 (leader), workers sc-node2 and sc-node3; sc-node3 down.
    fn nodes() -> Vec<Node> {
        vec![
            node("n3", "sc-node3", "10.213.5.3", false, NodeState::DOWN),
            node("n1", "sc-node1", "10.213.5.1", true, NodeState::READY),
            node("n2", "sc-node2", "10.213.5.2", false, NodeState::READY),
        ]
    }

    fn task(
        slot: i64,
        node: Option<&str>,
        created: &str,
        desired: TaskState,
        state: TaskState,
    ) -> Task {
        Task {
            id: Some(format!("t{slot}-{created}")),
            slot: Some(slot),
            node_id: node.map(String::from),
            created_at: Some(created.into()),
            version: Some(ObjectVersion { index: Some(1) }),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    use TaskState::{FAILED, PENDING, RUNNING, SHUTDOWN};

    /// api, 2 replicas: slot 1 stayed on sc-node2 (one restart after a
    /// failure there); slot 2 ran on sc-node3, which went down, and now
    /// runs on sc-node1.
    fn api() -> Vec<Task> {
        vec![
            task(1, Some("n2"), "2025-03-01T10:00:00Z", SHUTDOWN, FAILED),
            task(1, Some("n2"), "2025-03-01T10:01:00.5Z", RUNNING, RUNNING),
            task(2, Some("n3"), "2025-03-01T10:00:00Z", SHUTDOWN, RUNNING),
            task(
                2,
                Some("n1"),
                "2025-03-01T11:30:07.123456789Z",
                RUNNING,
                RUNNING,
            ),
        ]
    }

    /// db, pinned to sc-node3 (down): its task waits, not placed.
    fn db() -> Vec<Task> {
        let mut waiting = task(1, None, "2025-03-01T11:30:07Z", RUNNING, PENDING);
        waiting.status.as_mut().unwrap().err =
            Some("no suitable node (scheduling constraints not satisfied on 2 nodes)".into());
        vec![
            task(1, Some("n3"), "2025-03-01T10:00:00Z", SHUTDOWN, RUNNING),
            waiting,
        ]
    }

    fn cluster() -> NodeMap {
        let mut c = NodeMap::new(&nodes());
        c.count(&api());
        c.count(&db());
        c
    }

    #[test]
    fn the_node_table_counts_tasks_and_calls_out_a_down_node() {
        let c = cluster();
        let hosts: Vec<&str> = c.nodes.iter().map(|n| n.hostname.as_str()).collect();
        assert_eq!(hosts, ["sc-node1", "sc-node2", "sc-node3"]);
        let tasks: Vec<usize> = c.nodes.iter().map(|n| n.tasks).collect();
        assert_eq!(tasks, [1, 1, 0], "a task on a down node does not run");
        assert_eq!(
            c.lines(),
            [
                "NODE      ADDRESS     ROLE              STATE         AVAILABILITY  TASKS",
                "sc-node1  10.213.5.1  manager (leader)  ready         active        1",
                "sc-node2  10.213.5.2  worker            ready         active        1",
                "sc-node3  10.213.5.3  worker            down          active        0",
            ]
        );
        assert_eq!(
            c.warnings(),
            ["node sc-node3 (10.213.5.3) is down: its tasks were rescheduled or are waiting"]
        );
        assert_eq!(
            c.json()[0],
            json!({"hostname": "sc-node1", "addr": "10.213.5.1", "role": "manager",
                   "leader": true, "state": "ready", "availability": "active", "tasks": 1})
        );
        assert_eq!(c.json()[2]["state"], "down");
    }

    #[test]
    fn a_manager_reporting_0_0_0_0_shows_its_manager_address() {
        let mut n = node("n1", "sc-node1", "0.0.0.0", true, NodeState::READY);
        n.manager_status.as_mut().unwrap().addr = Some("10.213.5.1:2377".into());
        assert_eq!(NodeRow::new(&n).addr, "10.213.5.1");
    }

    #[test]
    fn a_slot_whose_node_went_down_moved_and_one_that_did_not() {
        let c = cluster();
        assert_eq!(
            moves(&api(), &c),
            [Move {
                slot: 2,
                from: "sc-node3".into(),
                to: "sc-node1".into(),
                at: "2025-03-01T11:30:07Z".into(),
            }],
            "slot 1 restarted on the same node: no move"
        );
        let p = placement(&api(), &c);
        assert_eq!(p.nodes, ["sc-node1", "sc-node2"]);
        assert!(p.waiting.is_empty());
        assert_eq!(
            p.lines("api", "2/2"),
            [
                "api (2/2) on sc-node1, sc-node2",
                "  moved: slot 2: sc-node3 → sc-node1 at 2025-03-01T11:30:07Z",
            ]
        );
        let mut v = json!({"service": "api", "tasks": "2/2"});
        p.extend_json(&mut v);
        assert_eq!(v["service"], "api");
        assert_eq!(v["nodes"], json!(["sc-node1", "sc-node2"]));
        assert_eq!(
            v["moved"],
            json!([{"slot": 2, "from": "sc-node3", "to": "sc-node1", "at": "2025-03-01T11:30:07Z"}])
        );
    }

    #[test]
    fn a_slot_still_on_its_node_or_never_rescheduled_did_not_move() {
        let c = cluster();
        // One task only; and a newest task that does not run (yet).
        let one = vec![task(
            1,
            Some("n1"),
            "2025-03-01T10:00:00Z",
            RUNNING,
            RUNNING,
        )];
        assert!(moves(&one, &c).is_empty());
        let starting = vec![
            task(1, Some("n3"), "2025-03-01T10:00:00Z", SHUTDOWN, RUNNING),
            task(
                1,
                Some("n2"),
                "2025-03-01T10:05:00Z",
                RUNNING,
                TaskState::STARTING,
            ),
        ];
        assert!(moves(&starting, &c).is_empty());
    }

    #[test]
    fn tasks_are_ordered_by_creation_whatever_their_fraction_digits() {
        // As strings, "10:00:00.5Z" sorts after "10:00:00.123Z" and before
        // "10:00:00Z"; as times 10:00:00 < .123 < .5.
        let ts = vec![
            task(1, Some("n2"), "2025-03-01T10:00:00.5Z", RUNNING, RUNNING),
            task(
                1,
                Some("n1"),
                "2025-03-01T10:00:00.123Z",
                SHUTDOWN,
                SHUTDOWN,
            ),
            task(1, Some("n3"), "2025-03-01T10:00:00Z", SHUTDOWN, RUNNING),
        ];
        let m = moves(&ts, &cluster());
        assert_eq!(
            (m[0].from.as_str(), m[0].to.as_str()),
            ("sc-node1", "sc-node2")
        );
    }

    #[test]
    fn a_stateful_service_waits_for_its_down_node() {
        let c = cluster();
        let p = placement(&db(), &c);
        assert!(p.nodes.is_empty() && p.moved.is_empty());
        assert_eq!(p.waiting, ["its node sc-node3 is down"]);
        assert_eq!(
            p.lines("db", "0/1"),
            ["db (0/1) waiting: its node sc-node3 is down"]
        );
        assert_eq!(live_counts(&db(), &c), (0, 1));
        // Not rescheduled yet: the task still meant to run on the down node.
        let stale = vec![task(
            1,
            Some("n3"),
            "2025-03-01T10:00:00Z",
            RUNNING,
            RUNNING,
        )];
        assert_eq!(waiting(&stale, &c), ["its node sc-node3 is down"]);
        assert_eq!(live_counts(&stale, &c), (0, 1));
    }

    #[test]
    fn an_unplaced_task_on_ready_nodes_waits_with_the_schedulers_message() {
        let mut t = task(1, None, "2025-03-01T10:00:00Z", RUNNING, PENDING);
        t.status.as_mut().unwrap().err = Some("no suitable node (insufficient memory)".into());
        assert_eq!(
            waiting(&[t], &cluster()),
            ["no suitable node (insufficient memory)"]
        );
    }

    #[test]
    fn a_node_gone_from_the_swarm_shows_by_short_id() {
        let c = cluster();
        let ts = vec![task(
            1,
            Some("abcdef0123456789"),
            "2025-03-01T10:00:00Z",
            RUNNING,
            RUNNING,
        )];
        assert!(!c.runs(&ts[0]));
        assert_eq!(waiting(&ts, &c), ["its node abcdef012345 left the swarm"]);
    }

    #[test]
    fn placement_lines_are_shown_for_several_nodes_or_news() {
        let one = NodeMap::new(&[node("n1", "solo", "10.0.0.1", true, NodeState::READY)]);
        let quiet = Placement {
            nodes: vec!["solo".into()],
            ..Default::default()
        };
        assert!(!show_placement(&one, [&quiet].into_iter()));
        assert!(show_placement(&cluster(), [&quiet].into_iter()));
    }
}
