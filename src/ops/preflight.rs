//! `stackctl validate --against-engine`: can this engine run the plan?
//! Images present or buildable, host ports free, secrets and volumes.

use crate::engine::create::{host_port, image_ref};
use crate::error::{Error, Result};
use crate::model::containers::Image;
use crate::model::Stack;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use std::collections::HashMap;

pub async fn preflight(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let tag = crate::runtime::image_tag(stack);
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Images.
    for c in &env.containers {
        let image = image_ref(c, &tag);
        if env.engine.image(&image).await?.is_some() {
            continue;
        }
        match &c.image {
            Image::App { .. } => {
                let svc = stack.services.iter().find(|s| s.name == c.name);
                match svc {
                    Some(s) if stack.root.join(&s.path).join("Cargo.toml").exists() => notes.push(
                        format!("{}: image {image} is missing; `stackctl build` (or deploy) builds it from {}", c.name, s.path),
                    ),
                    _ => problems.push(format!("{}: image {image} is missing and there is no crate to build it from", c.name)),
                }
            }
            Image::Infra { local: true, .. } => notes.push(format!(
                "{}: image {image} is missing; `stackctl setup` builds it from Debian packages",
                c.name
            )),
            Image::Infra { local: false, .. } if matches!(c.group.as_str(), "monitoring" | "logging") => notes.push(format!(
                "{}: image {image} is not on this host and cannot be pulled; it will be skipped",
                c.name
            )),
            Image::Infra { local: false, .. } => problems.push(format!(
                "{}: image {image} is not on this host (no registry reachable): `docker load` it or set build = \"debian\"",
                c.name
            )),
        }
    }

    // Host ports: who publishes them now.
    let mut published: HashMap<u16, String> = HashMap::new();
    for c in env.engine.running_containers().await? {
        let name = crate::engine::name_of(&c);
        let project = c
            .labels
            .unwrap_or_default()
            .get(crate::engine::LABEL_PROJECT)
            .cloned()
            .unwrap_or_default();
        for p in c.ports.unwrap_or_default() {
            if let Some(pp) = p.public_port {
                if project != env.project {
                    published.insert(pp, name.clone());
                }
            }
        }
    }
    let ours: Vec<String> = env
        .running()
        .await?
        .into_iter()
        .filter(crate::engine::is_running)
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let local_engine = env.engine.host.starts_with("unix://");
    let mut ports = 0;
    for c in &env.containers {
        for pb in &c.ports {
            let p = pb.container;
            let h = host_port(&c.name, pb.host, p);
            ports += 1;
            if let Some(other) = published.get(&h) {
                problems.push(format!(
                    "{}: host port {h} is published by container {other} (not of this stack); set PORT_{}_{p} or change stack.toml",
                    c.name,
                    crate::model::env_name(&c.name)
                ));
            } else if local_engine
                && !ours.iter().any(|n| {
                    n.trim_start_matches('/')
                        .starts_with(&format!("{}-{}-", env.project, c.name))
                })
                && std::net::TcpListener::bind(("0.0.0.0", h)).is_err()
            {
                problems.push(format!(
                    "{}: host port {h} is in use by a process on this host; stop it, or set PORT_{}_{p}",
                    c.name,
                    crate::model::env_name(&c.name)
                ));
            }
        }
    }

    // Secrets and volumes.
    let secrets = crate::runtime::secrets::secrets_dir(stack);
    let missing: Vec<&str> = env
        .containers
        .iter()
        .flat_map(|c| c.secrets.iter())
        .filter(|s| !secrets.join(s).exists())
        .map(String::as_str)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "secrets missing in {}: {}; run `stackctl setup`",
            secrets.display(),
            missing.join(", ")
        ));
    }
    let mut present = 0;
    let volumes = env.volume_names();
    for v in &volumes {
        if env.engine.volume_exists(v).await? {
            present += 1;
        }
    }
    notes.push(format!(
        "volumes: {present} of {} present (data kept), {} to create",
        volumes.len(),
        volumes.len() - present
    ));

    if ui.json {
        ui.print_json(&serde_json::json!({
            "engine": env.engine.host, "project": env.project, "problems": problems, "notes": notes,
            "ports_checked": ports,
        }));
    } else {
        for n in &notes {
            ui.info(format!("  {n}"));
        }
        for p in &problems {
            ui.warn(format!("  {p}"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Preflight {
            problems: format!("{} problem(s) listed above", problems.len()),
            hint: "fix each, then run `stackctl validate --against-engine` again".into(),
        });
    }
    ui.ok(format!(
        "the engine at {} can run {}: {} containers, {ports} host ports free, images present or buildable",
        env.engine.host,
        env.project,
        env.containers.len()
    ));
    Ok(0)
}
