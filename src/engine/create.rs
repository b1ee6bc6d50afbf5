//! A [`ContainerSpec`] as an Engine API container: the same description the
//! compose file is rendered from, turned into create-container calls.

use super::{container_name, network_name, volume_name, LABEL_CONFIG_HASH, LABEL_PROJECT};
use crate::model::containers::{ContainerSpec, Image, Source, SECRETS_DIR};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, HostConfigLogConfig,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a container's host-side files live.
pub struct Paths {
    /// Rendered artifacts (deploy/).
    pub out: PathBuf,
    /// Per-container copies of the secrets it may read.
    pub run: PathBuf,
}

/// One container to run: a replica of a spec, with its create body.
pub struct Desired {
    pub spec: ContainerSpec,
    pub replica: u32,
    pub name: String,
    pub image: String,
    pub body: ContainerCreateBody,
    /// sha256 of everything that makes this container what it is.
    pub hash: String,
}

/// The host port a container port is published on: `PORT_<CONTAINER>_<port>`
/// from the environment when set (the variable the compose file reads too),
/// else stack.toml's.
pub fn host_port(container: &str, host: u16, port: u16) -> u16 {
    std::env::var(crate::render::compose::port_var(container, port))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(host)
}

/// The image reference a spec runs, given the app image tag.
pub fn image_ref(spec: &ContainerSpec, tag: &str) -> String {
    match &spec.image {
        Image::App { repo, .. } => format!("{repo}:{tag}"),
        Image::Infra { image, .. } => image.clone(),
    }
}

pub fn secret_dir(paths: &Paths, container: &str) -> PathBuf {
    paths.run.join(container)
}

/// The create body of one replica. `image_id` and `inputs` (the bytes of
/// every rendered file it mounts) go into the config hash, so a new image or
/// a changed config file makes the container outdated.
pub fn desired(
    spec: &ContainerSpec,
    project: &str,
    replica: u32,
    image: &str,
    image_id: &str,
    paths: &Paths,
    inputs: &[u8],
) -> Desired {
    let name = container_name(project, &spec.name, replica);
    let ns = |d: crate::model::Duration| d.nanos();
    let mut binds = Vec::new();
    let mut tmpfs = HashMap::new();
    for m in &spec.mounts {
        let ro = if m.read_only { ":ro" } else { "" };
        match &m.source {
            Source::Rendered { path } => binds.push(format!(
                "{}:{}{ro}",
                paths.out.join(path).display(),
                m.target
            )),
            Source::Host { path } => binds.push(format!("{path}:{}{ro}", m.target)),
            Source::Volume { name: v } => {
                binds.push(format!("{}:{}{ro}", volume_name(project, v), m.target))
            }
        }
    }
    for s in &spec.secrets {
        binds.push(format!(
            "{}:{SECRETS_DIR}/{s}:ro",
            secret_dir(paths, &name).join(s).display()
        ));
    }
    for t in &spec.tmpfs {
        tmpfs.insert(t.clone(), "rw,nosuid,nodev,size=64m".to_string());
    }
    let mut port_bindings = HashMap::new();
    let mut exposed = Vec::new();
    let mut published = Vec::new();
    for p in &spec.expose {
        exposed.push(format!("{p}/tcp"));
    }
    for p in &spec.ports {
        let c = p.container;
        let h = host_port(&spec.name, p.host, c);
        published.push((h, c));
        exposed.push(format!("{c}/tcp"));
        port_bindings.insert(
            format!("{c}/tcp"),
            Some(vec![PortBinding {
                host_ip: p.ip.clone(),
                host_port: Some(h.to_string()),
            }]),
        );
    }
    exposed.sort();
    exposed.dedup();
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_PROJECT.into(), project.into());
    labels.insert("io.stackctl.replica".into(), replica.to_string());
    labels.insert("io.stackctl.image".into(), image.into());
    let restart = match spec.restart.as_str() {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        "no" => RestartPolicyNameEnum::NO,
        _ => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let first_net = spec.networks.first().cloned().unwrap_or_default();
    let mut body = ContainerCreateBody {
        hostname: Some(spec.name.chars().take(63).collect()),
        image: Some(image.to_string()),
        entrypoint: spec.entrypoint.clone(),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: spec.user.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(labels),
        stop_timeout: Some((spec.stop_grace_period.millis() / 1000).max(1) as i64),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(ns(h.timing.interval)),
            timeout: Some(ns(h.timing.timeout)),
            retries: Some(h.timing.retries as i64),
            start_period: Some(ns(h.timing.start_period)),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            binds: Some(binds),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            readonly_rootfs: Some(spec.read_only),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            memory: Some(spec.resources.memory.bytes() as i64),
            memory_reservation: Some(spec.resources.reserve_memory.bytes() as i64),
            nano_cpus: Some((spec.resources.cpus * 1e9) as i64),
            pids_limit: Some(spec.resources.pids as i64),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".into(), "10m".into()),
                    ("max-file".into(), "3".into()),
                ])),
            }),
            network_mode: Some(network_name(project, &first_net)),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network_name(project, &first_net),
                EndpointSettings {
                    aliases: Some(spec.dns_names()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    h.update(image_id.as_bytes());
    h.update(inputs);
    h.update(format!("{published:?}").as_bytes());
    // Where its files are on the daemon's host (a project's deploy/ here,
    // or HOST_DIR on a daemon reached over the network).
    h.update(format!("{}\0{}", paths.out.display(), paths.run.display()).as_bytes());
    let hash = hex::encode(h.finalize());
    if let Some(l) = body.labels.as_mut() {
        l.insert(LABEL_CONFIG_HASH.into(), hash.clone());
    }
    Desired {
        spec: spec.clone(),
        replica,
        name,
        image: image.to_string(),
        body,
        hash,
    }
}

/// One secret file of the stack; missing, it is an error saying to run setup.
pub fn read_secret(dir: &Path, name: &str) -> crate::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|_| {
        crate::Error::usage(
            format!(
                "secret `{name}` is missing ({} does not exist)",
                path.display()
            ),
            "run `stackctl setup` to create the stack's secrets",
        )
    })
}

/// The secret files a container reads, copied where only it mounts them:
/// the directory is root-only, the files readable inside the container
/// whatever user it runs as (as Swarm secrets are: 0444).
pub fn stage_secrets(
    secrets_src: &Path,
    paths: &Paths,
    container: &str,
    secrets: &[String],
) -> crate::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = secret_dir(paths, container);
    std::fs::create_dir_all(&dir).map_err(|source| crate::Error::Write {
        path: dir.clone(),
        source,
    })?;
    for base in [&paths.run, &dir] {
        let _ = std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700));
    }
    for s in secrets {
        let bytes = read_secret(secrets_src, s)?;
        let dst = dir.join(s);
        let tmp = dir.join(format!(".{s}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444)))
            .and_then(|_| std::fs::rename(&tmp, &dst))
            .map_err(|source| crate::Error::Write {
                path: dst.clone(),
                source,
            })?;
    }
    Ok(())
}
