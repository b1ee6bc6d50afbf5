//! `status`, `health` and `logs` against the Swarm target.

use super::revisions::LABEL_REVISION;
use super::{connect, counts, last_error, plan, replicas, service_name, services, tasks};
use crate::engine::models::Service;
use crate::engine::LABEL_CONFIG_HASH;
use crate::error::{Error, Result};
use crate::model::containers::LABEL_SERVICE;
use crate::model::Stack;
use crate::ui::Ui;
use serde_json::json;

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

/// Desired (stack.toml) against the swarm: missing, outdated, scaled, extra.
pub async fn status(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let planned = plan(&env, &ui.clone_quiet(), false).await?;
    let current = services(&env.engine, &env.project).await?;
    let mut rows = Vec::new();
    for p in &planned {
        let (tasks, rev, verdict) = match current.get(&p.service) {
            None => ("-".to_string(), "-".to_string(), "missing".to_string()),
            Some(s) => {
                let running = s
                    .service_status
                    .as_ref()
                    .and_then(|st| st.running_tasks)
                    .unwrap_or(0);
                let want = replicas(s);
                let planned_replicas = p
                    .spec
                    .mode
                    .as_ref()
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas)
                    .unwrap_or(1) as usize;
                let verdict = if label(s, LABEL_CONFIG_HASH).as_deref() != Some(&p.hash) {
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
                };
                (
                    format!("{running}/{want}"),
                    label(s, LABEL_REVISION).unwrap_or_else(|| "-".into()),
                    verdict,
                )
            }
        };
        rows.push((p.name.clone(), tasks, rev, verdict));
    }
    for (name, s) in &current {
        if !planned.iter().any(|p| &p.service == name) {
            rows.push((
                label(s, LABEL_SERVICE).unwrap_or_else(|| name.clone()),
                "-".into(),
                label(s, LABEL_REVISION).unwrap_or_else(|| "-".into()),
                "extra (not in stack.toml)".into(),
            ));
        }
    }
    let drift = rows
        .iter()
        .filter(|r| !r.3.starts_with("up to date") && !r.3.starts_with("scaled"))
        .count();
    if ui.json {
        ui.print_json(&json!({
            "in_sync": drift == 0,
            "services": rows.iter().map(|(n, t, r, v)| json!({"service": n, "tasks": t, "revision": r, "status": v})).collect::<Vec<_>>(),
        }));
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(7).max(7);
        println!("{:<w$}  {:<7} {:>4}  STATUS", "SERVICE", "TASKS", "REV");
        for (n, t, r, v) in &rows {
            println!("{n:<w$}  {t:<7} {r:>4}  {v}");
        }
        println!("{} of {} match stack.toml", rows.len() - drift, rows.len());
    }
    Ok(if drift == 0 { 0 } else { 1 })
}

/// Tasks running against desired, their health, any update in progress and
/// the last task error; exit 0 only when every service is fully up.
pub async fn health(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = connect(stack).await?;
    let current = services(&env.engine, &env.project).await?;
    let mut rows = Vec::new();
    for c in &env.containers {
        let svc = service_name(&env.project, &c.name);
        let Some(s) = current.get(&svc) else {
            continue;
        };
        let t = tasks(&env.engine, &svc).await?;
        let (running, starting) = counts(&t);
        let want = replicas(s);
        let update = update_state(s);
        let bad_update = matches!(
            update.as_str(),
            "updating" | "paused" | "rollback_paused" | "rollback_started"
        );
        let ok = running >= want && !bad_update;
        let health = if c.healthcheck.is_none() {
            "no check".to_string()
        } else if starting > 0 {
            format!("{running} healthy, {starting} starting")
        } else {
            format!("{running} healthy")
        };
        // A failure from before the current tasks started is history, not news.
        let err = last_error(&t)
            .map(|(_, e)| e)
            .filter(|_| !ok)
            .unwrap_or_default();
        rows.push((
            c.name.clone(),
            format!("{running}/{want}"),
            health,
            update,
            err,
            ok,
        ));
    }
    if rows.is_empty() {
        return Err(Error::usage(
            format!("no service of project {} is on the swarm", env.project),
            "deploy first: stackctl --target swarm deploy",
        ));
    }
    let bad = rows.iter().filter(|r| !r.5).count();
    if ui.json {
        ui.print_json(&json!({
            "healthy": bad == 0,
            "services": rows.iter().map(|r| json!({
                "service": r.0, "tasks": r.1, "health": r.2, "update": r.3, "last_error": r.4, "ok": r.5,
            })).collect::<Vec<_>>(),
        }));
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(7).max(7);
        println!(
            "{:<w$}  {:<6} {:<22} {:<18}  LAST ERROR",
            "SERVICE", "TASKS", "HEALTH", "UPDATE"
        );
        for r in &rows {
            let mark = if r.5 {
                console::style("✓").green()
            } else {
                console::style("✗").red()
            };
            println!(
                "{:<w$}  {:<6} {:<22} {:<18}  {} {}",
                r.0,
                r.1,
                r.2,
                if r.3.is_empty() { "-" } else { &r.3 },
                mark,
                r.4
            );
        }
        println!("{} of {} services healthy", rows.len() - bad, rows.len());
    }
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
