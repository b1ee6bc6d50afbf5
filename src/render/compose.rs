//! docker-compose.yml, built as typed data from the container list and
//! serialised to YAML (never templated text), plus per-environment overrides.

use super::Layout;
use crate::error::{Error, Result};
use crate::model::containers::{ContainerSpec, Image, Source};
use crate::model::{Resources, Stack};
use indexmap::IndexMap;
use serde::Serialize;
use serde_norway::Value;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct ComposeFile {
    pub services: IndexMap<String, ComposeService>,
    pub networks: IndexMap<String, ComposeNetwork>,
    pub volumes: IndexMap<String, ComposeVolume>,
    pub secrets: IndexMap<String, ComposeSecret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeService {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<ComposeBuild>,
    /// Optional parts (monitoring, logging, services some environment drops).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    pub networks: ServiceNetworks,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub depends_on: IndexMap<String, DependsOn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ComposeHealth>,
    pub restart: String,
    pub read_only: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub stop_grace_period: String,
    /// Most processes and threads (docker-compose 1.29 applies this key,
    /// not `deploy.resources.limits.pids`).
    pub pids_limit: u32,
    pub deploy: ComposeDeploy,
    pub labels: BTreeMap<String, String>,
    pub logging: ComposeLogging,
}

/// A service's networks: a plain list, or a map when it has aliases.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    List(Vec<String>),
    Aliased(IndexMap<String, NetworkAttach>),
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkAttach {
    pub aliases: Vec<String>,
}

impl ServiceNetworks {
    fn of(c: &ContainerSpec) -> ServiceNetworks {
        if c.aliases.is_empty() {
            return ServiceNetworks::List(c.networks.clone());
        }
        let attach = NetworkAttach {
            aliases: c.aliases.clone(),
        };
        ServiceNetworks::Aliased(
            c.networks
                .iter()
                .map(|n| (n.clone(), attach.clone()))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeBuild {
    pub context: String,
    pub dockerfile: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DependsOn {
    pub condition: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeHealth {
    pub test: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub retries: u32,
    pub start_period: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeDeploy {
    pub replicas: u32,
    pub resources: ComposeResources,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeResources {
    pub limits: ComposeLimit,
    pub reservations: ComposeLimit,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeLimit {
    pub cpus: String,
    pub memory: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeLogging {
    pub driver: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct ComposeNetwork {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct ComposeVolume {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct ComposeSecret {
    pub file: String,
}

/// Compose interpolates `$`: a literal dollar is written `$$`.
fn esc(s: &str) -> String {
    s.replace('$', "$$")
}

fn cpus(c: f64) -> String {
    let s = format!("{c:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn limits(r: &Resources) -> ComposeResources {
    ComposeResources {
        limits: ComposeLimit {
            cpus: cpus(r.cpus),
            memory: r.memory.to_string(),
        },
        reservations: ComposeLimit {
            cpus: cpus(r.reserve_cpus),
            memory: r.reserve_memory.to_string(),
        },
    }
}

fn stack_labels(stack: &Stack) -> BTreeMap<String, String> {
    BTreeMap::from([(
        crate::model::containers::LABEL_STACK.to_string(),
        stack.name.clone(),
    )])
}

/// The compose profile a container belongs to, if it is optional: the
/// monitoring and logging groups, and app services `optional` names.
pub fn profile(c: &ContainerSpec, optional: &[String]) -> Option<String> {
    match c.group.as_str() {
        "monitoring" | "logging" => Some(c.group.clone()),
        _ if optional.contains(&c.name) => Some(c.name.clone()),
        _ => None,
    }
}

/// The variable a published host port is read from: `PORT_NGINX_443`.
pub fn port_var(container: &str, port: u16) -> String {
    format!("PORT_{}_{port}", crate::model::env_name(container))
}

pub fn compose(
    stack: &Stack,
    containers: &[ContainerSpec],
    layout: &Layout,
    optional: &[String],
) -> ComposeFile {
    let mut services = IndexMap::new();
    let mut volumes = IndexMap::new();
    let mut used_secrets: Vec<String> = Vec::new();
    for c in containers {
        let (image, build) = match &c.image {
            Image::App { repo, build } => (
                format!("{repo}:${{IMAGE_TAG:-{}}}", layout.tag),
                Some(match build {
                    None => ComposeBuild {
                        context: layout.root_from_out.clone(),
                        dockerfile: format!(
                            "{}/services/{}/Dockerfile",
                            layout.out_from_root, c.name
                        ),
                    },
                    Some(b) => ComposeBuild {
                        context: format!("{}/{}", layout.root_from_out, b.context),
                        dockerfile: b.dockerfile.clone(),
                    },
                }),
            ),
            Image::Infra { image, .. } => (image.clone(), None),
        };
        let mut mounts = Vec::new();
        for m in &c.mounts {
            let src = match &m.source {
                Source::Volume { name } => {
                    volumes.insert(
                        name.clone(),
                        ComposeVolume {
                            labels: stack_labels(stack),
                        },
                    );
                    name.clone()
                }
                Source::Rendered { path } => format!("./{path}"),
                Source::Host { path } => path.clone(),
            };
            mounts.push(format!(
                "{src}:{}{}",
                m.target,
                if m.read_only { ":ro" } else { "" }
            ));
        }
        for s in &c.secrets {
            if !used_secrets.contains(s) {
                used_secrets.push(s.clone());
            }
        }
        let mut labels = c.labels.clone();
        labels.insert("io.stackctl.managed-by".into(), "docker-compose".into());
        services.insert(
            c.name.clone(),
            ComposeService {
                image,
                build,
                profiles: profile(c, optional).into_iter().collect(),
                entrypoint: c
                    .entrypoint
                    .as_ref()
                    .map(|e| e.iter().map(|s| esc(s)).collect()),
                command: c.command.iter().map(|s| esc(s)).collect(),
                user: c.user.clone(),
                environment: c.env.iter().map(|(k, v)| (k.clone(), esc(v))).collect(),
                ports: c
                    .ports
                    .iter()
                    .map(|p| {
                        let ip = p.ip.as_ref().map(|ip| format!("{ip}:")).unwrap_or_default();
                        format!(
                            "{ip}${{{}:-{}}}:{}",
                            port_var(&c.name, p.container),
                            p.host,
                            p.container
                        )
                    })
                    .collect(),
                expose: c.expose.iter().map(|p| p.to_string()).collect(),
                networks: ServiceNetworks::of(c),
                volumes: mounts,
                secrets: c.secrets.clone(),
                depends_on: c
                    .depends_on
                    .iter()
                    .map(|d| {
                        (
                            d.clone(),
                            DependsOn {
                                condition: "service_healthy".into(),
                            },
                        )
                    })
                    .collect(),
                healthcheck: c.healthcheck.as_ref().map(|h| ComposeHealth {
                    test: h.test.iter().map(|s| esc(s)).collect(),
                    interval: h.timing.interval.to_string(),
                    timeout: h.timing.timeout.to_string(),
                    retries: h.timing.retries,
                    start_period: h.timing.start_period.to_string(),
                }),
                restart: c.restart.clone(),
                read_only: c.read_only,
                tmpfs: c.tmpfs.clone(),
                cap_drop: vec!["ALL".into()],
                cap_add: c.cap_add.clone(),
                security_opt: vec!["no-new-privileges:true".into()],
                stop_grace_period: c.stop_grace_period.to_string(),
                pids_limit: c.resources.pids,
                deploy: ComposeDeploy {
                    replicas: c.replicas,
                    resources: limits(&c.resources),
                },
                labels,
                logging: ComposeLogging {
                    driver: "json-file".into(),
                    options: BTreeMap::from([
                        ("max-size".into(), "10m".into()),
                        ("max-file".into(), "3".into()),
                    ]),
                },
            },
        );
    }
    // One-shot jobs: their service's container with the job's command, run
    // once; the services they gate wait for them to complete successfully.
    for job in &stack.jobs {
        let Some(base) = services.get(&job.service).cloned() else {
            continue;
        };
        let name = format!("job-{}", job.name);
        let mut j = base;
        j.command = job.command.iter().map(|s| esc(s)).collect();
        j.ports.clear();
        j.restart = "no".into();
        j.healthcheck = None;
        j.build = None;
        j.deploy.replicas = 1;
        j.labels.insert("io.stackctl.role".into(), "job".into());
        j.labels
            .remove(super::super::model::containers::LABEL_SERVICE);
        for b in &job.before {
            if let Some(svc) = services.get_mut(b) {
                svc.depends_on.insert(
                    name.clone(),
                    DependsOn {
                        condition: "service_completed_successfully".into(),
                    },
                );
            }
        }
        services.insert(name, j);
    }
    let networks = stack
        .networks
        .iter()
        .filter(|n| containers.iter().any(|c| c.networks.contains(&n.name)))
        .map(|n| {
            (
                n.name.clone(),
                ComposeNetwork {
                    internal: n.internal,
                    labels: stack_labels(stack),
                },
            )
        })
        .collect();
    let secrets = used_secrets
        .into_iter()
        .map(|s| {
            let file = format!(
                "${{STACKCTL_SECRETS:-{}/secrets}}/{s}",
                layout.root_from_out
            );
            (s, ComposeSecret { file })
        })
        .collect();
    ComposeFile {
        services,
        networks,
        volumes,
        secrets,
    }
}

const HEADER: &str = "# Rendered by stackctl from stack.toml. Do not edit: change stack.toml and run `stackctl render`.\n";

pub fn to_yaml(c: &ComposeFile) -> Result<String> {
    let body = serde_norway::to_string(c)
        .map_err(|e| Error::Other(anyhow::anyhow!("compose YAML: {e}")))?;
    Ok(format!("{HEADER}{}", quote_sexagesimal(&body)))
}

pub fn to_yaml_value(v: &Value) -> Result<String> {
    let body = serde_norway::to_string(v)
        .map_err(|e| Error::Other(anyhow::anyhow!("compose YAML: {e}")))?;
    Ok(format!("{HEADER}{}", quote_sexagesimal(&body)))
}

/// YAML 1.1 (docker-compose's PyYAML) reads a plain `472:0` or `22:22` as a
/// base-60 number; such scalars are quoted so they stay strings.
fn quote_sexagesimal(yaml: &str) -> String {
    fn is_sexagesimal(v: &str) -> bool {
        let mut parts = v.split(':');
        let first = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        !rest.is_empty()
            && !first.is_empty()
            && first.bytes().all(|b| b.is_ascii_digit())
            && rest.iter().all(|p| {
                (1..=2).contains(&p.len())
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u8>().is_ok_and(|n| n < 60)
            })
    }
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let (prefix, value) = match line.trim_start().strip_prefix("- ") {
            Some(v) => (&line[..line.len() - v.len()], v),
            None => match line.rfind(": ") {
                Some(i) => (&line[..i + 2], &line[i + 2..]),
                None => (line, ""),
            },
        };
        // YAML 1.1 booleans too: `restart: no` would read as false.
        let yaml11_bool = matches!(value, "no" | "yes" | "on" | "off" | "y" | "n");
        if is_sexagesimal(value) || yaml11_bool {
            out.push_str(prefix);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The variables docker-compose reads: project name, image tag, active
/// profiles and published ports. `.env` holds the base; `.env.<env>` an
/// environment's, for `docker-compose --env-file .env.<env>`.
pub fn dotenv(
    stack: &Stack,
    containers: &[ContainerSpec],
    layout: &Layout,
    optional: &[String],
) -> String {
    let project = match &stack.environment {
        Some(e) if layout.env_files => format!("{}-{e}", stack.name),
        _ => stack.name.clone(),
    };
    let mut profiles: Vec<String> = containers
        .iter()
        .filter_map(|c| profile(c, optional))
        .collect();
    // First appearance order, each once (components may follow later groups).
    let mut seen = std::collections::HashSet::new();
    profiles.retain(|p| seen.insert(p.clone()));
    let mut s = format!(
        "# Rendered by stackctl from stack.toml{}.\n\
         COMPOSE_PROJECT_NAME={project}\nIMAGE_TAG={}\nCOMPOSE_PROFILES={}\n",
        stack
            .environment
            .as_deref()
            .map(|e| format!(" (environment {e})"))
            .unwrap_or_default(),
        layout.tag,
        profiles.join(",")
    );
    for c in containers {
        for p in &c.ports {
            s.push_str(&format!("{}={}\n", port_var(&c.name, p.container), p.host));
        }
    }
    s
}

/// The keys of `over` that differ from `base`, as an override file.
///
/// docker-compose merges list values of an override into the base one
/// (ports, expose, volumes are added to, not replaced), so a changed list
/// is only expressible when the base has none; otherwise it is an error
/// that says so rather than an override file that silently does the wrong thing.
pub fn overrides(base: &ComposeFile, over: &ComposeFile) -> Result<Value> {
    let b = serde_norway::to_value(base).map_err(|e| Error::Other(e.into()))?;
    let o = serde_norway::to_value(over).map_err(|e| Error::Other(e.into()))?;
    let mut out = serde_norway::Mapping::new();
    let mut services = serde_norway::Mapping::new();
    if let (Some(bs), Some(os)) = (
        b.get("services").and_then(Value::as_mapping),
        o.get("services").and_then(Value::as_mapping),
    ) {
        for (name, osvc) in os {
            match bs.get(name) {
                None => {
                    services.insert(name.clone(), osvc.clone());
                }
                Some(bsvc) => {
                    let d = diff(bsvc, osvc);
                    if let Some(d) = d {
                        services.insert(name.clone(), d);
                    }
                }
            }
        }
    }
    out.insert("services".into(), Value::Mapping(services));
    for key in ["networks", "volumes", "secrets"] {
        if let (Some(bm), Some(om)) = (
            b.get(key).and_then(Value::as_mapping),
            o.get(key).and_then(Value::as_mapping),
        ) {
            let extra: serde_norway::Mapping = om
                .iter()
                .filter(|(k, _)| !bm.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !extra.is_empty() {
                out.insert(key.into(), Value::Mapping(extra));
            }
        }
    }
    Ok(Value::Mapping(out))
}

/// Mappings recurse; anything else is taken whole when it differs.
fn diff(base: &Value, over: &Value) -> Option<Value> {
    if base == over {
        return None;
    }
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            let mut m = serde_norway::Mapping::new();
            for (k, ov) in o {
                match b.get(k) {
                    None => {
                        m.insert(k.clone(), ov.clone());
                    }
                    Some(bv) => {
                        if let Some(d) = diff(bv, ov) {
                            m.insert(k.clone(), d);
                        }
                    }
                }
            }
            (!m.is_empty()).then_some(Value::Mapping(m))
        }
        _ => Some(over.clone()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base_sixty_lookalikes_are_quoted() {
        let y = "user: 472:0\nports:\n- 22:22\n- 8080:80\nother: 1001:1001\n";
        assert_eq!(
            super::quote_sexagesimal(y),
            "user: '472:0'\nports:\n- '22:22'\n- 8080:80\nother: 1001:1001\n"
        );
    }
}
