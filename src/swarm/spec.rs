//! A [`ContainerSpec`] as a Swarm service: the same description the local
//! containers and the compose file come from, turned into a `ServiceSpec`.
//! Secrets and rendered config files become Swarm secrets and configs named
//! after their content, so a changed file is a new object and a new service spec.

use super::{network_name, volume_name};
use crate::engine::create::host_port;
use crate::engine::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, Limit, Mount, MountTmpfsOptions, MountType,
    MountVolumeOptions, NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
    TaskSpecContainerSpecSecrets, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use crate::engine::LABEL_PROJECT;
use crate::model::containers::{ContainerSpec, Source, SECRETS_DIR};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Swarm objects (secrets, configs) have names of at most 64 characters.
const MAX_NAME: usize = 64;

/// How long Swarm watches each updated task for failure before going on.
pub const MONITOR_SECS: i64 = 15;
/// The pause between two updated tasks of a service.
pub const UPDATE_DELAY_SECS: i64 = 5;

/// A Swarm secret or config: its name (content-addressed) and id.
#[derive(Debug, Clone, Default)]
pub struct ObjectRef {
    pub name: String,
    pub id: String,
}

/// One file of a rendered mount as a Swarm config.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Path below the mount's source (empty when the mount is the file itself).
    pub rel: String,
    pub object: ObjectRef,
}

/// What a service spec refers to besides the container spec.
pub struct Ctx<'a> {
    pub project: &'a str,
    /// Secret name in stack.toml -> Swarm secret.
    pub secrets: &'a HashMap<String, ObjectRef>,
    /// Rendered mount source path -> its files as Swarm configs.
    pub configs: &'a HashMap<String, Vec<ConfigFile>>,
    /// Whether CPU reservations fit the swarm (else they are left out).
    pub reserve_cpus: bool,
    /// Virtual-IP endpoints and the ingress routing mesh (both need IPVS in
    /// the kernel); else DNS round-robin and ports published on the node
    /// running the task.
    pub vip: bool,
}

/// `<project>-<what>-<8 hex of sha256(content)>`, shortened to fit 64 characters.
pub fn object_name(project: &str, what: &str, content: &[u8]) -> String {
    let hash = hex::encode(Sha256::digest(content));
    let slug: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let room = MAX_NAME.saturating_sub(project.len() + 2 + 8);
    let slug: String = slug.chars().take(room).collect();
    format!("{project}-{}-{}", slug.trim_matches('-'), &hash[..8])
}

/// Objects stackctl labels as its own.
pub fn object_labels(project: &str, stack: &str, kind: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROJECT.to_string(), project.to_string()),
        (
            crate::model::containers::LABEL_STACK.to_string(),
            stack.to_string(),
        ),
        (super::LABEL_OBJECT.to_string(), kind.to_string()),
    ])
}

fn nanos(d: crate::model::Duration) -> i64 {
    d.nanos()
}

/// The node label saying that node holds the (local) volume `volume` (the
/// engine's name, with the project): `io.stackctl.volume.<name>=true`.
pub fn volume_label(volume: &str) -> String {
    format!("io.stackctl.volume.{volume}")
}

/// The Swarm service spec of one container spec, without the revision and
/// hash labels (those are added when it is applied). `image` is the pinned
/// reference (digest or image id); `image_ref` the human one, kept as a label.
pub fn service_spec(c: &ContainerSpec, image: &str, image_ref: &str, ctx: &Ctx) -> ServiceSpec {
    let project = ctx.project;
    let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
    labels.insert(LABEL_PROJECT.into(), project.into());
    let mut service_labels = labels.clone();
    service_labels.insert(LABEL_IMAGE.into(), image_ref.into());
    // One data directory cannot have two writers; a port published on the
    // node cannot be bound by two tasks there: those stop first.
    let stop_first = c.stateful || (!ctx.vip && !c.ports.is_empty());
    let (update_config, rollback_config) = update_policies(stop_first);
    ServiceSpec {
        name: Some(super::service_name(project, &c.name)),
        labels: Some(service_labels),
        task_template: Some(task_spec(c, container_spec(c, image, labels, ctx), ctx)),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(c.replicas as i64),
            }),
            ..Default::default()
        }),
        update_config: Some(update_config),
        rollback_config: Some(rollback_config),
        endpoint_spec: Some(endpoint_spec(c, ctx)),
        ..Default::default()
    }
}

/// The container's volumes, host paths and tmpfs as Swarm mounts, and its
/// rendered files as Swarm configs (sorted by path).
fn mounts_and_configs(
    c: &ContainerSpec,
    ctx: &Ctx,
) -> (Vec<Mount>, Vec<TaskSpecContainerSpecConfigs>) {
    let project = ctx.project;
    let mut mounts = Vec::new();
    let mut configs = Vec::new();
    for m in &c.mounts {
        match &m.source {
            Source::Volume { name } => mounts.push(Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume_name(project, name)),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                volume_options: Some(MountVolumeOptions {
                    labels: Some(HashMap::from([(
                        LABEL_PROJECT.to_string(),
                        project.to_string(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Source::Host { path } => mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(path.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            }),
            Source::Rendered { path } => {
                for f in ctx.configs.get(path).into_iter().flatten() {
                    let target = if f.rel.is_empty() {
                        m.target.clone()
                    } else {
                        format!("{}/{}", m.target.trim_end_matches('/'), f.rel)
                    };
                    configs.push(TaskSpecContainerSpecConfigs {
                        file: Some(TaskSpecContainerSpecFile1 {
                            name: Some(target),
                            uid: Some("0".into()),
                            gid: Some("0".into()),
                            mode: Some(0o444),
                        }),
                        config_id: Some(f.object.id.clone()),
                        config_name: Some(f.object.name.clone()),
                        ..Default::default()
                    });
                }
            }
        }
    }
    for t in &c.tmpfs {
        mounts.push(Mount {
            typ: Some(MountType::TMPFS),
            target: Some(t.clone()),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(64 << 20),
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    configs.sort_by(|a, b| {
        a.file
            .as_ref()
            .and_then(|f| f.name.clone())
            .cmp(&b.file.as_ref().and_then(|f| f.name.clone()))
    });
    (mounts, configs)
}

/// The container's secrets as Swarm secrets, files under /run/secrets.
fn secrets_of(c: &ContainerSpec, ctx: &Ctx) -> Vec<TaskSpecContainerSpecSecrets> {
    let mut secret_names = c.secrets.clone();
    secret_names.sort();
    secret_names.dedup();
    let secrets: Vec<TaskSpecContainerSpecSecrets> = secret_names
        .iter()
        .map(|s| {
            let o = ctx.secrets.get(s).cloned().unwrap_or_default();
            TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    // Relative names land in /run/secrets/, where the services read them.
                    name: Some(s.clone()),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o444),
                }),
                secret_id: Some(o.id),
                secret_name: Some(o.name),
            }
        })
        .collect();
    debug_assert!(SECRETS_DIR == "/run/secrets");
    secrets
}

/// What the task's container runs: image, command, environment, user,
/// mounts, configs, secrets, health check, capabilities.
fn container_spec(
    c: &ContainerSpec,
    image: &str,
    labels: HashMap<String, String>,
    ctx: &Ctx,
) -> TaskSpecContainerSpec {
    let (mounts, configs) = mounts_and_configs(c, ctx);
    let secrets = secrets_of(c, ctx);
    TaskSpecContainerSpec {
        image: Some(image.to_string()),
        labels: Some(labels),
        command: c.entrypoint.clone(),
        args: (!c.command.is_empty()).then(|| c.command.clone()),
        hostname: Some(c.name.chars().take(63).collect()),
        env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: c.user.clone(),
        read_only: Some(c.read_only),
        mounts: Some(mounts),
        stop_grace_period: Some(nanos(c.stop_grace_period)),
        health_check: c.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(nanos(h.timing.interval)),
            timeout: Some(nanos(h.timing.timeout)),
            retries: Some(h.timing.retries as i64),
            start_period: Some(nanos(h.timing.start_period)),
            ..Default::default()
        }),
        secrets: (!secrets.is_empty()).then_some(secrets),
        configs: (!configs.is_empty()).then_some(configs),
        capability_drop: Some(vec!["ALL".into()]),
        capability_add: (!c.cap_add.is_empty()).then(|| c.cap_add.clone()),
        ..Default::default()
    }
}

/// The task: its container, resources, restart policy, placement,
/// networks (with the container's DNS names) and log driver.
fn task_spec(c: &ContainerSpec, container: TaskSpecContainerSpec, ctx: &Ctx) -> TaskSpec {
    let project = ctx.project;
    let r = &c.resources;
    let restart = match c.restart.as_str() {
        "no" => TaskSpecRestartPolicyConditionEnum::NONE,
        "on-failure" => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
        _ => TaskSpecRestartPolicyConditionEnum::ANY,
    };
    // A local-driver volume lives on one node: a container with one runs
    // only on the node labelled as holding it (`swarm::place_volumes` sets
    // the label before the first deploy). Everything else may run anywhere.
    let constraints: Vec<String> = c
        .volumes()
        .map(|v| {
            format!(
                "node.labels.{} == true",
                volume_label(&volume_name(project, v))
            )
        })
        .collect();
    TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: Some((r.cpus * 1e9) as i64),
                memory_bytes: Some(r.memory.bytes() as i64),
                pids: Some(r.pids as i64),
            }),
            reservations: Some(ResourceObject {
                nano_cpus: ctx
                    .reserve_cpus
                    .then_some((r.reserve_cpus * 1e9) as i64)
                    .filter(|n| *n > 0),
                memory_bytes: Some(r.reserve_memory.bytes() as i64),
                ..Default::default()
            }),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(restart),
            delay: Some(5_000_000_000),
            max_attempts: Some(0),
            window: Some(0),
        }),
        placement: Some(TaskSpecPlacement {
            constraints: (!constraints.is_empty()).then_some(constraints),
            ..Default::default()
        }),
        networks: Some(
            c.networks
                .iter()
                .map(|n| NetworkAttachmentConfig {
                    target: Some(network_name(project, n)),
                    aliases: Some(c.dns_names()),
                    ..Default::default()
                })
                .collect(),
        ),
        log_driver: Some(TaskSpecLogDriver {
            name: Some("json-file".into()),
            options: Some(HashMap::from([
                ("max-size".into(), "10m".into()),
                ("max-file".into(), "3".into()),
            ])),
        }),
        ..Default::default()
    }
}

/// How clients reach the service: DNS round-robin (or a virtual IP) and
/// its published ports.
fn endpoint_spec(c: &ContainerSpec, ctx: &Ctx) -> EndpointSpec {
    // Swarm publishes on every interface of a node: a port stack.toml
    // binds to loopback is not published at all (see `plan`).
    let ports: Vec<EndpointPortConfig> = c
        .ports
        .iter()
        .filter(|pb| !pb.loopback())
        .map(|pb| (&pb.host, &pb.container))
        .map(|(h, p)| EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(*p as i64),
            published_port: Some(host_port(&c.name, *h, *p) as i64),
            publish_mode: Some(if ctx.vip {
                EndpointPortConfigPublishModeEnum::INGRESS
            } else {
                EndpointPortConfigPublishModeEnum::HOST
            }),
            ..Default::default()
        })
        .collect();
    EndpointSpec {
        mode: Some(if ctx.vip {
            EndpointSpecModeEnum::VIP
        } else {
            EndpointSpecModeEnum::DNSRR
        }),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

/// Rolling updates and Swarm's own rollback: one task at a time, watched
/// for [`MONITOR_SECS`]; a failed update rolls back, a failed rollback
/// pauses; `stop_first` when two tasks cannot overlap.
fn update_policies(stop_first: bool) -> (ServiceSpecUpdateConfig, ServiceSpecRollbackConfig) {
    (
        ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(UPDATE_DELAY_SECS * 1_000_000_000),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(MONITOR_SECS * 1_000_000_000),
            max_failure_ratio: Some(0.0),
            order: Some(if stop_first {
                ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
            } else {
                ServiceSpecUpdateConfigOrderEnum::START_FIRST
            }),
        },
        ServiceSpecRollbackConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor: Some(MONITOR_SECS * 1_000_000_000),
            max_failure_ratio: Some(0.0),
            order: Some(if stop_first {
                ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
            } else {
                ServiceSpecRollbackConfigOrderEnum::START_FIRST
            }),
        },
    )
}

/// JSON with every object's keys sorted, whatever map type produced it.
fn canonical(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The service label naming the image as stack.toml does (repo:tag).
pub const LABEL_IMAGE: &str = "io.stackctl.image";

/// sha256 of a service spec in canonical JSON: equal specs, equal hashes.
/// The image's name (a tag) is left out: what runs is the pinned image, so a
/// new tag on the same image changes nothing.
pub fn spec_hash(spec: &ServiceSpec) -> String {
    let mut spec = spec.clone();
    if let Some(l) = spec.labels.as_mut() {
        l.remove(LABEL_IMAGE);
    }
    let v = canonical(serde_json::to_value(&spec).unwrap_or_default());
    hex::encode(Sha256::digest(
        serde_json::to_vec(&v).unwrap_or_default().as_slice(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_content_addressed_and_fit_swarm_limits() {
        let a = object_name(
            "stackctl-swarm-e2e",
            "postgres/postgres-analytics/init.sql",
            b"x",
        );
        let b = object_name(
            "stackctl-swarm-e2e",
            "postgres/postgres-analytics/init.sql",
            b"y",
        );
        assert_ne!(a, b);
        assert!(a.len() <= MAX_NAME, "{a}");
        assert!(a.starts_with("stackctl-swarm-e2e-postgres-postgres-analytics"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    }

    #[test]
    fn specs_of_the_repo_stack_map_onto_swarm_services() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let stack = crate::model::load(&root.join("stack.toml"), Some("staging")).unwrap();
        let specs = crate::model::containers(&stack);
        let secrets: HashMap<String, ObjectRef> = specs
            .iter()
            .flat_map(|c| c.secrets.clone())
            .map(|s| {
                (
                    s.clone(),
                    ObjectRef {
                        name: format!("p-{s}-00000000"),
                        id: format!("id-{s}"),
                    },
                )
            })
            .collect();
        let configs = HashMap::from([(
            "nginx/nginx.conf".to_string(),
            vec![ConfigFile {
                rel: String::new(),
                object: ObjectRef {
                    name: "p-nginx-nginx.conf-00000000".into(),
                    id: "cfg1".into(),
                },
            }],
        )]);
        let ctx = Ctx {
            project: "p",
            secrets: &secrets,
            configs: &configs,
            reserve_cpus: false,
            vip: false,
        };
        let pg = specs.iter().find(|c| c.name == "postgres-user").unwrap();
        let s = service_spec(pg, "sha256:abc", "stackctl/postgres:15-bookworm", &ctx);
        assert_eq!(s.name.as_deref(), Some("p_postgres-user"));
        let u = s.update_config.as_ref().unwrap();
        assert_eq!(u.order, Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST));
        assert_eq!(
            u.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        let t = s.task_template.as_ref().unwrap();
        let cs = t.container_spec.as_ref().unwrap();
        assert_eq!(
            cs.secrets.as_ref().unwrap()[0].secret_name.as_deref(),
            Some("p-postgres-user-password-00000000")
        );
        assert_eq!(
            t.placement.as_ref().unwrap().constraints,
            Some(vec![
                "node.labels.io.stackctl.volume.p_postgres-user-data == true".to_string()
            ])
        );
        let vol = &cs.mounts.as_ref().unwrap()[0];
        assert_eq!(vol.source.as_deref(), Some("p_postgres-user-data"));

        let nginx = specs.iter().find(|c| c.name == "nginx").unwrap();
        let s = service_spec(nginx, "sha256:def", "stackctl/nginx:1.22-bookworm", &ctx);
        let cs = s
            .task_template
            .as_ref()
            .unwrap()
            .container_spec
            .as_ref()
            .unwrap();
        let cfg = &cs.configs.as_ref().unwrap()[0];
        assert_eq!(
            cfg.file.as_ref().unwrap().name.as_deref(),
            Some("/etc/nginx/nginx.conf")
        );
        let ports = s.endpoint_spec.as_ref().unwrap().ports.clone().unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        // Published on the node: the old task frees the port first.
        assert_eq!(
            s.update_config.as_ref().unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
        let gw = specs.iter().find(|c| c.name == "api-gateway").unwrap();
        let g = service_spec(gw, "sha256:1", "x:1", &ctx);
        assert_eq!(
            g.update_config.as_ref().unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(
            g.endpoint_spec.as_ref().unwrap().mode,
            Some(EndpointSpecModeEnum::DNSRR)
        );
        // The same inputs give the same hash; a different image does not.
        let again = service_spec(nginx, "sha256:def", "stackctl/nginx:1.22-bookworm", &ctx);
        assert_eq!(spec_hash(&s), spec_hash(&again));
        let other = service_spec(nginx, "sha256:000", "stackctl/nginx:1.22-bookworm", &ctx);
        assert_ne!(spec_hash(&s), spec_hash(&other));
        // Another tag of the same image is the same spec.
        let retagged = service_spec(nginx, "sha256:def", "stackctl/nginx:other", &ctx);
        assert_eq!(spec_hash(&s), spec_hash(&retagged));
        // Prometheus is published on loopback only: Swarm cannot bind one
        // address, so it is not published at all rather than on every one.
        let prom = specs.iter().find(|c| c.name == "prometheus").unwrap();
        assert!(!prom.ports.is_empty() && prom.ports.iter().all(|p| p.loopback()));
        let s = service_spec(prom, "sha256:9", "stackctl/prometheus:2-bookworm", &ctx);
        let published = s.endpoint_spec.and_then(|e| e.ports).unwrap_or_default();
        assert!(published.is_empty(), "{published:?}");
    }
}
