//! Kubernetes manifests, derived from the same resolved [`Stack`] and
//! [`ContainerSpec`] list as the compose files (no second description of the
//! stack), built as JSON values in code and serialised to YAML.
//!
//! `kubernetes/base/` holds every object and a kustomization.yaml listing the
//! files; `kubernetes/overlays/<env>/` holds, per environment of stack.toml,
//! only strategic-merge patches for the objects that environment changes
//! (plus `$patch: delete` for objects it drops and a file of objects it adds).
//! The patches are computed by diffing the environment's objects against the
//! base's, and [`apply`] applies them the way kustomize does, so tests can
//! check that base + overlay gives exactly the environment's objects.
//!
//! Secret values never appear: workloads mount Secrets by name, created by
//! `kubectl create secret` from the files `stackctl setup` writes.

use super::{Artifacts, Layout};
use crate::error::{Error, Result};
use crate::model::containers::{ContainerSpec, Image, Kind, Source, SECRETS_DIR};
use crate::model::{Health, Resources, Stack};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Where the manifests go inside the output directory.
pub const DIR: &str = "kubernetes";
/// Pod label marking membership of a stack.toml network (NetworkPolicies select on it).
pub const NETWORK_LABEL: &str = "stackctl.io/network-";
/// The TLS Secret (type kubernetes.io/tls) the Ingress terminates with.
pub const INGRESS_TLS_SECRET: &str = "ingress-tls";
/// Storage requested for data volumes; an overlay can patch it.
const POSTGRES_STORAGE: &str = "10Gi";
const REDIS_STORAGE: &str = "2Gi";
const PROMETHEUS_STORAGE: &str = "10Gi";

const NAME: &str = "app.kubernetes.io/name";
const PART_OF: &str = "app.kubernetes.io/part-of";
const COMPONENT: &str = "app.kubernetes.io/component";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// One manifest file: its name in base/ and its objects.
#[derive(Debug, Clone)]
pub struct File {
    pub name: String,
    pub objects: Vec<Value>,
}

/// Every Kubernetes artifact of the stack: the base and, when no environment
/// is selected, an overlay per environment.
pub fn render(stack: &Stack, layout: &Layout) -> Result<Artifacts> {
    let mut a = Artifacts::default();
    let base = manifests(stack, layout)?;
    let mut listed = Vec::new();
    for f in &base {
        a.add(format!("{DIR}/base/{}", f.name), to_yaml(&f.objects)?);
        listed.push(f.name.clone());
    }
    a.add(
        format!("{DIR}/base/kustomization.yaml"),
        base_kustomization(stack, &base, &listed)?,
    );
    if stack.environment.is_none() {
        let base_objects: Vec<Value> = base.iter().flat_map(|f| f.objects.clone()).collect();
        for env in &stack.environments {
            let env_stack =
                crate::model::load_str(&stack.source, &stack.file, &stack.root, Some(env), false)?;
            let env_objects: Vec<Value> = manifests(&env_stack, layout)?
                .into_iter()
                .flat_map(|f| f.objects)
                .collect();
            for (path, content) in overlay(env, &base_objects, &env_objects)? {
                a.add(format!("{DIR}/overlays/{env}/{path}"), content);
            }
        }
    }
    Ok(a)
}

/// The stack as Kubernetes sees it: Grafana and the Elastic stack are left
/// out (registry-only images), and so are components that mount host paths
/// (node-exporter would be a DaemonSet), so Prometheus' config does not
/// scrape them.
fn k8s_stack(stack: &Stack) -> Stack {
    let mut s = stack.clone();
    s.environments.clear();
    s.logging = None;
    if let Some(m) = &mut s.monitoring {
        m.grafana = None;
    }
    s.components.retain(|c| {
        !matches!(
            c.kind,
            Kind::Grafana | Kind::Elasticsearch | Kind::Kibana | Kind::Filebeat
        ) && !c
            .mounts
            .iter()
            .any(|m| matches!(m.source, crate::model::containers::Source::Host { .. }))
    });
    s
}

fn ns_fqdn(name: &str, ns: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// The objects of the stack, grouped into files (deterministic order).
pub fn manifests(stack: &Stack, layout: &Layout) -> Result<Vec<File>> {
    let ks = k8s_stack(stack);
    let art = super::render(&ks, layout)?;
    let containers = crate::model::containers(&ks);
    let ns = stack.name.clone();
    let mut files = vec![File {
        name: "namespace.yaml".into(),
        objects: vec![json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": ns, "labels": { PART_OF: ns, MANAGED_BY: "stackctl" } },
        })],
    }];
    let mut configmaps = Vec::new();
    let mut jobs = Vec::new();
    for c in &containers {
        let (maps, cm_mounts, hash) = config_maps(stack, &art, c, &ns)?;
        configmaps.extend(maps);
        let pod = pod_spec(stack, layout, c, &cm_mounts)?;
        if c.kind == Kind::App {
            for j in ks.jobs.iter().filter(|j| j.service == c.name) {
                jobs.push(job(j, &pod, c, &ns));
            }
        }
        let mut template = json!({
            "metadata": { "labels": pod_labels(c, &ns) },
            "spec": pod,
        });
        // A changed config rolls the pods.
        if !cm_mounts.is_empty() {
            template["metadata"]["annotations"] = json!({ "stackctl.io/config-hash": &hash[..16] });
        }
        let Some(objects) = workload(stack, c, &ns, template) else {
            continue;
        };
        files.push(File {
            name: format!("{}.yaml", c.name),
            objects,
        });
    }
    if !configmaps.is_empty() {
        files.push(File {
            name: "configmaps.yaml".into(),
            objects: configmaps,
        });
    }
    if !jobs.is_empty() {
        files.push(File {
            name: "jobs.yaml".into(),
            objects: jobs,
        });
    }
    files.push(File {
        name: "network-policies.yaml".into(),
        objects: network_policies(&ks, &containers, &ns),
    });
    if let Some(n) = &ks.nginx {
        files.push(ingress(n, &ns));
    }
    Ok(files)
}

/// A ConfigMap as a pod mounts it: its name, the file's key when the mount
/// is one file (not a directory), and the mount path.
type ConfigMount = (String, Option<String>, String);

/// The ConfigMaps of a container's rendered files (one per mount), how its
/// pod mounts them, and the sha256 of their content (hex).
fn config_maps(
    stack: &Stack,
    art: &Artifacts,
    c: &ContainerSpec,
    ns: &str,
) -> Result<(Vec<Value>, Vec<ConfigMount>, String)> {
    let mut configmaps = Vec::new();
    let mut config_hash = Sha256::new();
    let mut cm_mounts = Vec::new();
    for (i, m) in c.mounts.iter().enumerate() {
        let Source::Rendered { path } = &m.source else {
            continue;
        };
        let cm_name = if cm_mounts.is_empty() {
            format!("{}-config", c.name)
        } else {
            format!("{}-config-{}", c.name, i + 1)
        };
        let mut data = Map::new();
        let single = art.files.contains_key(path.as_str());
        for (p, bytes) in &art.files {
            let key = if single {
                if p != path {
                    continue;
                }
                p.rsplit('/').next().unwrap_or(p).to_string()
            } else {
                match p.strip_prefix(&format!("{path}/")) {
                    Some(k) if !k.contains('/') => k.to_string(),
                    _ => continue,
                }
            };
            let text = String::from_utf8(bytes.clone())
                .map_err(|_| Error::Other(anyhow::anyhow!("{p} is not UTF-8 text")))?;
            let text = if c.kind == Kind::Nginx {
                adapt_nginx(stack, &text, ns)
            } else {
                text
            };
            config_hash.update(p.as_bytes());
            config_hash.update(text.as_bytes());
            data.insert(key, Value::String(text));
        }
        if data.is_empty() {
            return Err(Error::Other(anyhow::anyhow!(
                "{}: rendered config `{path}` is missing",
                c.name
            )));
        }
        configmaps.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(&cm_name, ns, c),
            "data": data,
        }));
        cm_mounts.push((
            cm_name,
            single.then(|| path.rsplit('/').next().unwrap_or(path).to_string()),
            m.target.clone(),
        ));
    }
    Ok((configmaps, cm_mounts, hex::encode(config_hash.finalize())))
}

/// The workload of one container (Deployment or StatefulSet) with its
/// Service and, for the stack's own services, disruption budget and
/// autoscaler; `None` for kinds outside the Kubernetes target.
fn workload(stack: &Stack, c: &ContainerSpec, ns: &str, template: Value) -> Option<Vec<Value>> {
    let mut objects = Vec::new();
    let selector = json!({ "matchLabels": selector_labels(c, ns) });
    match c.kind {
        Kind::App => {
            let svc = stack.service(&c.name);
            let autoscale = svc.and_then(|s| s.autoscale);
            let mut spec = json!({
                "selector": selector,
                "revisionHistoryLimit": 5,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 },
                },
                "template": template,
            });
            // With an autoscaler the replica count is the autoscaler's to set.
            if autoscale.is_none() {
                spec["replicas"] = json!(c.replicas);
            }
            objects.push(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta(&c.name, ns, c),
                "spec": spec,
            }));
            objects.extend(service(c, ns, true));
            objects.push(json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": meta(&c.name, ns, c),
                "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector_labels(c, ns) } },
            }));
            if let Some(a) = autoscale {
                objects.push(json!({
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": meta(&c.name, ns, c),
                    "spec": {
                        "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": c.name },
                        "minReplicas": a.min.max(c.replicas).min(a.max),
                        "maxReplicas": a.max,
                        "metrics": [{
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": { "type": "Utilization", "averageUtilization": a.cpu_percent },
                            },
                        }],
                    },
                }));
            }
        }
        Kind::Postgres | Kind::Redis => {
            let storage = if c.kind == Kind::Postgres {
                POSTGRES_STORAGE
            } else {
                REDIS_STORAGE
            };
            objects.push(json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": meta(&c.name, ns, c),
                "spec": {
                    "serviceName": c.name,
                    "replicas": 1,
                    "selector": selector,
                    "updateStrategy": { "type": "RollingUpdate" },
                    "template": template,
                    "volumeClaimTemplates": [{
                        "metadata": { "name": "data" },
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": { "requests": { "storage": storage } },
                        },
                    }],
                },
            }));
            objects.extend(service(c, ns, true));
        }
        Kind::Nginx | Kind::Prometheus | Kind::Component => {
            for v in c.volumes() {
                objects.push(json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": meta(v, ns, c),
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": { "requests": { "storage": PROMETHEUS_STORAGE } },
                    },
                }));
            }
            // A volume is written by one pod at a time: replace, don't overlap.
            let strategy = if c.volumes().next().is_some() {
                json!({ "type": "Recreate" })
            } else {
                json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } })
            };
            objects.push(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta(&c.name, ns, c),
                "spec": {
                    "replicas": c.replicas,
                    "revisionHistoryLimit": 5,
                    "selector": selector,
                    "strategy": strategy,
                    "template": template,
                },
            }));
            objects.extend(service(c, ns, false));
        }
        // Not part of the Kubernetes target (see k8s_stack).
        _ => return None,
    }
    Some(objects)
}

/// The Ingress in front of the API (TLS, rate limits for ingress-nginx).
fn ingress(n: &crate::model::Nginx, ns: &str) -> File {
    let host_ok = !n.server_name.is_empty()
        && n.server_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let mut tls = json!({ "secretName": INGRESS_TLS_SECRET });
    let mut rule = json!({
        "http": { "paths": [{
            "path": "/api",
            "pathType": "Prefix",
            "backend": { "service": { "name": n.upstream, "port": { "number": n.upstream_port } } },
        }] },
    });
    if host_ok {
        tls["hosts"] = json!([n.server_name]);
        rule["host"] = json!(n.server_name);
    }
    let burst = (n.rate_burst as f64 / n.rate_limit.max(1) as f64)
        .ceil()
        .max(1.0) as u64;
    File {
        name: "ingress.yaml".into(),
        objects: vec![json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": n.upstream,
                "namespace": ns,
                "labels": { NAME: n.upstream, PART_OF: ns, COMPONENT: "ingress", MANAGED_BY: "stackctl" },
                // ingress-nginx reads these; other controllers ignore them.
                "annotations": {
                    "nginx.ingress.kubernetes.io/limit-rps": n.rate_limit.to_string(),
                    "nginx.ingress.kubernetes.io/limit-burst-multiplier": burst.to_string(),
                    "nginx.ingress.kubernetes.io/proxy-body-size": format!("{}m", n.client_max_body_size.mib().max(1)),
                    "nginx.ingress.kubernetes.io/proxy-buffering": "off",
                },
            },
            "spec": { "tls": [tls], "rules": [rule] },
        })],
    }
}

/// A `[jobs.NAME]` as a Job: its service's pod (image, env, secrets, config,
/// networks, limits) running the job's command once, no probes, no retry,
/// killed after the job's timeout. The name carries a hash of the pod, so a
/// new image or config is a new Job that runs once (Jobs are immutable) and
/// re-applying the same manifests changes nothing; finished Jobs are deleted
/// after a day. The services it runs `before` are named in an annotation:
/// Kubernetes has no ordering between objects, so the gated services must
/// tolerate starting first (the repo's services migrate at startup too).
fn job(j: &crate::model::Job, service_pod: &Value, c: &ContainerSpec, ns: &str) -> Value {
    let mut pod = service_pod.clone();
    pod["restartPolicy"] = json!("Never");
    if let Some(ct) = pod["containers"][0].as_object_mut() {
        for k in ["readinessProbe", "livenessProbe", "ports"] {
            ct.remove(k);
        }
        ct.insert("name".into(), json!("job"));
        ct.insert("args".into(), json!(j.command));
    }
    let digest = hex::encode(Sha256::digest(pod.to_string().as_bytes()));
    // A Job's name is also its pods' `job-name` label: at most 63 characters.
    let short: String = j.name.chars().take(63 - "job--".len() - 10).collect();
    let name = format!("job-{}-{}", short.trim_end_matches('-'), &digest[..10]);
    // Not the service's name label: its Service and PodDisruptionBudget
    // must not select the job's pod. Its networks, for the NetworkPolicies.
    let mut labels = labels(c, ns);
    labels.insert(NAME.into(), json!(format!("job-{}", j.name)));
    labels.insert(COMPONENT.into(), json!("job"));
    let mut pod_labels = labels.clone();
    for n in &c.networks {
        pod_labels.insert(format!("{NETWORK_LABEL}{n}"), json!("true"));
    }
    let mut annotations = Map::new();
    annotations.insert("stackctl.io/job".into(), json!(j.name));
    annotations.insert("stackctl.io/service".into(), json!(j.service));
    if !j.before.is_empty() {
        annotations.insert("stackctl.io/before".into(), json!(j.before.join(",")));
    }
    if let Some(d) = &j.description {
        annotations.insert("stackctl.io/description".into(), json!(d));
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "namespace": ns, "labels": labels, "annotations": annotations },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": secs(j.timeout).max(1),
            "ttlSecondsAfterFinished": 86400,
            "template": { "metadata": { "labels": pod_labels }, "spec": pod },
        },
    })
}

/// nginx.conf as rendered for Docker, pointed at the cluster's DNS: nginx's
/// resolver uses no search domains, so the gateway gets its full name.
fn adapt_nginx(stack: &Stack, text: &str, ns: &str) -> String {
    let mut t = text
        .replace(
            "# Docker's embedded DNS: the gateway's",
            "# The cluster's DNS (kube-dns): the gateway's",
        )
        .replace(
            "resolver 127.0.0.11 ",
            "resolver kube-dns.kube-system.svc.cluster.local ",
        );
    if let Some(n) = &stack.nginx {
        t = t.replace(
            &format!("http://{}:{};", n.upstream, n.upstream_port),
            &format!("http://{}:{};", ns_fqdn(&n.upstream, ns), n.upstream_port),
        );
    }
    t
}

fn selector_labels(c: &ContainerSpec, ns: &str) -> Value {
    json!({ NAME: c.name, PART_OF: ns })
}

fn labels(c: &ContainerSpec, ns: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(NAME.into(), json!(c.name));
    m.insert(PART_OF.into(), json!(ns));
    m.insert(COMPONENT.into(), json!(c.kind.as_str()));
    m.insert(MANAGED_BY.into(), json!("stackctl"));
    m
}

fn pod_labels(c: &ContainerSpec, ns: &str) -> Value {
    let mut m = labels(c, ns);
    for n in &c.networks {
        m.insert(format!("{NETWORK_LABEL}{n}"), json!("true"));
    }
    Value::Object(m)
}

fn meta(name: &str, ns: &str, c: &ContainerSpec) -> Value {
    json!({ "name": name, "namespace": ns, "labels": labels(c, ns) })
}

fn port_name(c: &ContainerSpec, port: u16) -> String {
    match (c.kind, port) {
        (Kind::Nginx, 443) => "https".into(),
        (Kind::Postgres, _) => "postgres".into(),
        (Kind::Redis, _) => "redis".into(),
        _ => "http".into(),
    }
}

/// Ports the container listens on: its exposed ports and the container side of published ones.
fn ports(c: &ContainerSpec) -> Vec<u16> {
    let mut p: Vec<u16> = c.expose.clone();
    for pb in &c.ports {
        if !p.contains(&pb.container) {
            p.push(pb.container);
        }
    }
    p
}

/// App services and databases are headless: like Docker's DNS, the name
/// resolves to every ready replica (Prometheus' dns_sd finds each one).
/// A component's aliases are Services of their own over the same pods.
fn service(c: &ContainerSpec, ns: &str, headless: bool) -> Vec<Value> {
    let mut spec = json!({
        "selector": selector_labels(c, ns),
        "ports": ports(c).iter().map(|p| json!({
            "name": port_name(c, *p), "port": p, "targetPort": p, "protocol": "TCP",
        })).collect::<Vec<_>>(),
    });
    if headless {
        spec["clusterIP"] = json!("None");
    }
    c.dns_names()
        .iter()
        .map(|name| json!({ "apiVersion": "v1", "kind": "Service", "metadata": meta(name, ns, c), "spec": spec }))
        .collect()
}

fn cpu(c: f64) -> String {
    format!("{}m", (c * 1000.0).round() as u64)
}

fn memory(m: crate::model::Memory) -> String {
    let b = m.bytes();
    if b.is_multiple_of(1024 * 1024) {
        format!("{}Mi", b / (1024 * 1024))
    } else {
        b.to_string()
    }
}

fn resources(r: &Resources) -> Value {
    json!({
        "requests": { "cpu": cpu(r.reserve_cpus), "memory": memory(r.reserve_memory) },
        "limits": { "cpu": cpu(r.cpus), "memory": memory(r.memory) },
    })
}

fn secs(d: crate::model::Duration) -> u64 {
    d.millis().div_ceil(1000).max(1)
}

fn probe(action: Value, h: &Health, initial_delay: bool) -> Value {
    let mut p = action;
    p["periodSeconds"] = json!(secs(h.interval));
    p["timeoutSeconds"] = json!(secs(h.timeout));
    p["failureThreshold"] = json!(h.retries.max(1));
    if initial_delay {
        p["initialDelaySeconds"] = json!(h.start_period.millis() / 1000);
    }
    p
}

fn http_get(path: &str, port: u16) -> Value {
    json!({ "httpGet": { "path": path, "port": port } })
}

/// Readiness and liveness probes: HTTP where the container serves it, else
/// the compose health check's own command.
fn probes(stack: &Stack, c: &ContainerSpec) -> Option<(Value, Value)> {
    let Some(h) = c.healthcheck.as_ref() else {
        // No health command (an image without tools): its port accepting connections.
        let port = ports(c).first().copied()?;
        let tcp = json!({ "tcpSocket": { "port": port } });
        let t = &stack.defaults.healthcheck;
        return Some((probe(tcp.clone(), t, false), probe(tcp, t, true)));
    };
    let t = &h.timing;
    let (ready, live) = match c.kind {
        Kind::App => {
            let s = stack.service(&c.name)?;
            (
                http_get(&s.health_path, s.port),
                http_get("/health/live", s.port),
            )
        }
        Kind::Nginx => (http_get("/nginx-health", 80), http_get("/nginx-health", 80)),
        Kind::Prometheus => (http_get("/-/ready", 9090), http_get("/-/healthy", 9090)),
        _ => {
            let cmd: Vec<String> = match h.test.first().map(String::as_str) {
                Some("CMD") => h.test[1..].to_vec(),
                Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), h.test[1..].join(" ")],
                _ => h.test.clone(),
            };
            let e = json!({ "exec": { "command": cmd } });
            (e.clone(), e)
        }
    };
    Some((probe(ready, t, false), probe(live, t, true)))
}

fn volume_name(path: &str) -> String {
    let s: String = path
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("tmpfs-{s}")
}

fn pod_spec(
    stack: &Stack,
    layout: &Layout,
    c: &ContainerSpec,
    config: &[ConfigMount],
) -> Result<Value> {
    let image = match &c.image {
        // The tag compose files default to ($IMAGE_TAG, else the stack's tag strategy).
        Image::App { repo, .. } => format!("{repo}:{}", layout.tag),
        Image::Infra { image, .. } => image.clone(),
    };
    let ids: Option<(u64, u64)> = c.user.as_deref().and_then(|u| {
        let (a, b) = u.split_once(':').unwrap_or((u, u));
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    let non_root = ids.filter(|(u, _)| *u != 0);
    let mut sc = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": c.read_only,
        "capabilities": { "drop": ["ALL"] },
    });
    if !c.cap_add.is_empty() {
        sc["capabilities"]["add"] = json!(c.cap_add);
    }
    let mut pod_sc = json!({ "seccompProfile": { "type": "RuntimeDefault" } });
    if let Some((u, g)) = non_root {
        sc["runAsNonRoot"] = json!(true);
        sc["runAsUser"] = json!(u);
        sc["runAsGroup"] = json!(g);
        pod_sc["fsGroup"] = json!(g);
    }
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for t in &c.tmpfs {
        let name = volume_name(t);
        mounts.push(json!({ "name": name, "mountPath": t }));
        volumes
            .push(json!({ "name": name, "emptyDir": { "medium": "Memory", "sizeLimit": "64Mi" } }));
    }
    if !c.secrets.is_empty() {
        mounts.push(json!({ "name": "secrets", "mountPath": SECRETS_DIR, "readOnly": true }));
        let sources: Vec<Value> = c
            .secrets
            .iter()
            .map(|s| json!({ "secret": { "name": s, "items": [{ "key": s, "path": s }] } }))
            .collect();
        // Group-readable through fsGroup for non-root pods; root-started images drop privileges themselves.
        let mode = if non_root.is_some() { 0o440 } else { 0o444 };
        volumes.push(
            json!({ "name": "secrets", "projected": { "defaultMode": mode, "sources": sources } }),
        );
    }
    for (i, (cm, file, target)) in config.iter().enumerate() {
        let name = format!("config-{}", i + 1);
        let mut m = json!({ "name": name, "mountPath": target, "readOnly": true });
        if let Some(f) = file {
            m["subPath"] = json!(f);
        }
        mounts.push(m);
        volumes.push(json!({ "name": name, "configMap": { "name": cm } }));
    }
    for m in &c.mounts {
        if let Source::Volume { name } = &m.source {
            match c.kind {
                // StatefulSets claim theirs through volumeClaimTemplates.
                Kind::Postgres | Kind::Redis => {
                    mounts.push(json!({ "name": "data", "mountPath": m.target }));
                }
                _ => {
                    mounts.push(json!({ "name": "data", "mountPath": m.target }));
                    volumes.push(
                        json!({ "name": "data", "persistentVolumeClaim": { "claimName": name } }),
                    );
                }
            }
        }
    }
    let mut container = json!({
        "name": c.name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": c.env.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
        "ports": ports(c).iter().map(|p| json!({
            "name": port_name(c, *p), "containerPort": p, "protocol": "TCP",
        })).collect::<Vec<_>>(),
        "resources": resources(&c.resources),
        "securityContext": sc,
        "volumeMounts": mounts,
    });
    if let Some(e) = &c.entrypoint {
        // Compose's `entrypoint` is what Kubernetes calls the command.
        container["command"] = json!(e);
    }
    if !c.command.is_empty() {
        // Compose's `command` is the image's CMD: Kubernetes calls it args.
        container["args"] = json!(c.command);
    }
    if let Some((ready, live)) = probes(stack, c) {
        container["readinessProbe"] = ready;
        container["livenessProbe"] = live;
    }
    Ok(json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": pod_sc,
        "terminationGracePeriodSeconds": secs(c.stop_grace_period),
        "containers": [container],
        "volumes": volumes,
    }))
}

/// Mirrors the compose networks: everything denied, DNS allowed, pods talk
/// within each network they share; networks that are not `internal` may
/// reach outside; the public entry takes traffic from the Ingress controller.
fn network_policies(stack: &Stack, containers: &[ContainerSpec], ns: &str) -> Vec<Value> {
    let np = |name: &str, spec: Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": name, "namespace": ns, "labels": { PART_OF: ns, MANAGED_BY: "stackctl" } },
            "spec": spec,
        })
    };
    let mut out = vec![
        np(
            "default-deny",
            json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
        ),
        np(
            "allow-dns",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } } }],
                    "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
                }],
            }),
        ),
    ];
    for n in &stack.networks {
        if !containers.iter().any(|c| c.networks.contains(&n.name)) {
            continue;
        }
        let sel = json!({ "matchLabels": { format!("{NETWORK_LABEL}{}", n.name): "true" } });
        let mut egress = vec![json!({ "to": [{ "podSelector": sel }] })];
        if !n.internal {
            egress.push(json!({ "to": [{ "ipBlock": { "cidr": "0.0.0.0/0" } }] }));
        }
        out.push(np(
            &format!("network-{}", n.name),
            json!({
                "podSelector": sel,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{ "from": [{ "podSelector": sel }] }],
                "egress": egress,
            }),
        ));
    }
    if let Some(n) = &stack.nginx {
        out.push(np(
            "public-entry",
            json!({
                "podSelector": { "matchLabels": { NAME: n.upstream, PART_OF: ns } },
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{ "namespaceSelector": {} }],
                    "ports": [{ "protocol": "TCP", "port": n.upstream_port }],
                }],
            }),
        ));
        out.push(np(
            "nginx-public",
            json!({
                "podSelector": { "matchLabels": { NAME: n.name, PART_OF: ns } },
                "policyTypes": ["Ingress"],
                "ingress": [{ "ports": [{ "protocol": "TCP", "port": 80 }, { "protocol": "TCP", "port": 443 }] }],
            }),
        ));
    }
    out
}

const HEADER: &str = "# Rendered by stackctl from stack.toml. Do not edit: change stack.toml and run `stackctl render --target kubernetes`.\n";

/// Objects as one multi-document YAML file.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    let mut s = String::from(HEADER);
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            s.push_str("---\n");
        }
        s.push_str(&quote_yaml11(&serde_norway::to_string(o).map_err(|e| {
            Error::Other(anyhow::anyhow!("Kubernetes YAML: {e}"))
        })?));
    }
    Ok(s)
}

/// kubectl reads YAML 1.1, where a plain `off`, `yes` or `22:22` is a bool or
/// a base-60 number, not a string; serde_norway writes YAML 1.2 (it quotes a
/// string `true` itself and writes booleans as true/false). Such plain scalars
/// are quoted (block scalars, i.e. config file contents, are left alone).
fn quote_yaml11(yaml: &str) -> String {
    fn special(v: &str) -> bool {
        const WORDS: &[&str] = &[
            "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off",
            "Off", "OFF",
        ];
        if WORDS.contains(&v) {
            return true;
        }
        let parts: Vec<&str> = v.split(':').collect();
        parts.len() > 1
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }
    let mut out = String::with_capacity(yaml.len() + 16);
    let mut block: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(b) = block {
            if line.trim().is_empty() || indent > b {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let (prefix, value) = match line.trim_start().strip_prefix("- ") {
            Some(v) if !v.contains(": ") => (&line[..line.len() - v.len()], v),
            _ => match line.find(": ") {
                Some(i) => (&line[..i + 2], &line[i + 2..]),
                None => (line, ""),
            },
        };
        if value.starts_with('|') || value.starts_with('>') {
            block = Some(indent);
        }
        if special(value) {
            out.push_str(&format!("{prefix}'{value}'"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn base_kustomization(stack: &Stack, files: &[File], listed: &[String]) -> Result<String> {
    let ns = &stack.name;
    let mut secrets: Vec<String> = Vec::new();
    for f in files {
        for o in &f.objects {
            collect_secret_refs(o, &mut secrets);
        }
    }
    secrets.sort();
    secrets.dedup();
    let mut head = String::from(HEADER);
    head.push_str(&format!(
        "#\n# Apply: kubectl apply -k kubernetes/base (or an overlay: kubectl apply -k kubernetes/overlays/ENV).\n\
         #\n# Secrets are referenced by name and never rendered. Create them from the files\n\
         # `stackctl setup` writes under secrets/ (before the first apply):\n\
         #   kubectl create namespace {ns}\n"
    ));
    for s in &secrets {
        head.push_str(&format!(
            "#   kubectl -n {ns} create secret generic {s} --from-file={s}=secrets/{s}\n"
        ));
    }
    if let Some(n) = &stack.nginx {
        head.push_str(&format!(
            "#   kubectl -n {ns} create secret tls {INGRESS_TLS_SECRET} --cert=secrets/{} --key=secrets/{}\n",
            n.tls_cert_secret, n.tls_key_secret
        ));
    }
    head.push_str(
        "#\n# Images: the services' images must be pushed to a registry the cluster pulls from\n\
         # (`stackctl build --push` with [stack].registry); images stackctl builds from Debian\n\
         # packages must be pushed or loaded into the nodes as well.\n\
         #\n# Left out of Kubernetes: Grafana and the Elastic stack (Elasticsearch, Kibana,\n\
         # Filebeat) come only from registries and belong to the cluster's own monitoring and\n\
         # logging; Node Exporter would be a DaemonSet with host paths, which a cluster\n\
         # normally runs already. Prometheus here scrapes the stack's services.\n",
    );
    let k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": listed,
    });
    Ok(format!(
        "{head}{}",
        serde_norway::to_string(&k).map_err(|e| Error::Other(e.into()))?
    ))
}

fn collect_secret_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(s)) = m.get("secret") {
                if let Some(Value::String(n)) = s.get("name") {
                    out.push(n.clone());
                }
            }
            m.values().for_each(|v| collect_secret_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_secret_refs(v, out)),
        _ => {}
    }
}

/// (kind, name) of an object.
pub fn key(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The files of an environment's overlay: kustomization.yaml, a patch per
/// changed or dropped object, and the objects it adds.
pub fn overlay(env: &str, base: &[Value], over: &[Value]) -> Result<BTreeMap<String, String>> {
    let b: BTreeMap<_, _> = base.iter().map(|o| (key(o), o)).collect();
    let o: BTreeMap<_, _> = over.iter().map(|o| (key(o), o)).collect();
    let mut files = BTreeMap::new();
    let mut patches = Vec::new();
    let mut added = Vec::new();
    let file_of = |(kind, name): &(String, String)| {
        format!("patches/{}-{name}.yaml", kind.to_ascii_lowercase())
    };
    for (k, bo) in &b {
        let patch = match o.get(k) {
            None => {
                let mut p = head(bo);
                p["$patch"] = json!("delete");
                p
            }
            Some(oo) => match diff(bo, oo, "") {
                None => continue,
                Some(d) => {
                    let mut p = head(bo);
                    merge_into(&mut p, d);
                    p
                }
            },
        };
        let f = file_of(k);
        files.insert(f.clone(), to_yaml(&[patch])?);
        patches.push(json!({ "path": f }));
    }
    for (k, oo) in &o {
        if !b.contains_key(k) {
            added.push((*oo).clone());
        }
    }
    let mut resources = vec![json!("../../base")];
    if !added.is_empty() {
        files.insert("added.yaml".into(), to_yaml(&added)?);
        resources.push(json!("added.yaml"));
    }
    let mut k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    });
    if !patches.is_empty() {
        k["patches"] = json!(patches);
    }
    files.insert(
        "kustomization.yaml".into(),
        format!(
            "{HEADER}# Environment `{env}`: the base plus only what {env} changes.\n{}",
            serde_norway::to_string(&k).map_err(|e| Error::Other(e.into()))?
        ),
    );
    Ok(files)
}

fn head(o: &Value) -> Value {
    json!({
        "apiVersion": o["apiVersion"],
        "kind": o["kind"],
        "metadata": { "name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"] },
    })
}

fn merge_into(p: &mut Value, d: Value) {
    if let (Value::Object(pm), Value::Object(dm)) = (p, d) {
        for (k, v) in dm {
            match pm.get_mut(&k) {
                Some(existing @ Value::Object(_)) if v.is_object() => merge_into(existing, v),
                _ => {
                    pm.insert(k, v);
                }
            }
        }
    }
}

/// The strategic-merge key of a list field, as Kubernetes defines it.
fn merge_key(field: &str, elem: &Value) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" if elem.get("containerPort").is_some() => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
    .filter(|k| elem.get(*k).is_some())
}

/// A strategic-merge patch turning `base` into `over`, or None when equal.
pub fn diff(base: &Value, over: &Value, field: &str) -> Option<Value> {
    if base == over {
        return None;
    }
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut m = Map::new();
            for (k, ov) in o {
                match b.get(k) {
                    None => {
                        m.insert(k.clone(), ov.clone());
                    }
                    Some(bv) => {
                        if let Some(d) = diff(bv, ov, k) {
                            m.insert(k.clone(), d);
                        }
                    }
                }
            }
            for k in b.keys() {
                if !o.contains_key(k) {
                    m.insert(k.clone(), Value::Null);
                }
            }
            (!m.is_empty()).then_some(Value::Object(m))
        }
        (Value::Array(b), Value::Array(o)) => {
            let mk = b
                .first()
                .or(o.first())
                .and_then(|e| merge_key(field, e))
                .filter(|k| b.iter().chain(o).all(|e| e.get(*k).is_some()));
            let Some(mk) = mk else {
                return Some(over.clone());
            };
            // New elements go last, as kustomize appends them; order within lists of named
            // elements (env, volumes, mounts) carries no meaning here.
            let mut out = Vec::new();
            for oe in o {
                match b.iter().find(|be| be[mk] == oe[mk]) {
                    None => out.push(oe.clone()),
                    Some(be) => {
                        if let Some(Value::Object(mut d)) = diff(be, oe, "") {
                            d.insert(mk.to_string(), oe[mk].clone());
                            out.push(Value::Object(d));
                        }
                    }
                }
            }
            for be in b {
                if !o.iter().any(|oe| oe[mk] == be[mk]) {
                    out.push(json!({ mk: be[mk], "$patch": "delete" }));
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        _ => Some(over.clone()),
    }
}

/// Apply a strategic-merge patch as kustomize does (the subset [`diff`] writes).
pub fn apply(base: &Value, patch: &Value, field: &str) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut m = b.clone();
            for (k, pv) in p {
                if k == "$patch" {
                    continue;
                }
                if pv.is_null() {
                    m.remove(k);
                } else if let Some(bv) = b.get(k) {
                    m.insert(k.clone(), apply(bv, pv, k));
                } else {
                    m.insert(k.clone(), pv.clone());
                }
            }
            Value::Object(m)
        }
        (Value::Array(b), Value::Array(p)) => {
            let Some(mk) = p.first().and_then(|e| merge_key(field, e)) else {
                return patch.clone();
            };
            let mut out = b.clone();
            for pe in p {
                let pos = out.iter().position(|be| be.get(mk) == pe.get(mk));
                if pe.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                } else if let Some(i) = pos {
                    out[i] = apply(&out[i], pe, "");
                } else {
                    out.push(pe.clone());
                }
            }
            Value::Array(out)
        }
        _ => patch.clone(),
    }
}

/// The objects an overlay yields: base objects with each patch applied
/// (`$patch: delete` removes one), plus the overlay's added objects.
pub fn apply_overlay(base: &[Value], patches: &[Value], added: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for b in base {
        let mut o = Some(b.clone());
        for p in patches.iter().filter(|p| key(p) == key(b)) {
            if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                o = None;
            } else if let Some(cur) = &o {
                o = Some(apply(cur, p, ""));
            }
        }
        out.extend(o);
    }
    out.extend(added.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_lookalikes_are_quoted_outside_block_scalars() {
        let y = "a: off\nb:\n- yes\n- name: on\n  value: 22:22\nc: |\n  proxy_buffering off;\n  x: on\nd: 'off'\ne: offset\n";
        assert_eq!(
            quote_yaml11(y),
            "a: 'off'\nb:\n- 'yes'\n- name: 'on'\n  value: '22:22'\nc: |\n  proxy_buffering off;\n  x: on\nd: 'off'\ne: offset\n"
        );
    }

    #[test]
    fn a_patch_from_diff_applies_back_to_the_target() {
        let base = json!({
            "spec": { "replicas": 1, "template": { "spec": { "containers": [{
                "name": "a", "image": "x:1",
                "env": [{ "name": "A", "value": "1" }, { "name": "B", "value": "2" }],
                "args": ["--one"],
            }] } } },
            "gone": true,
        });
        let over = json!({
            "spec": { "replicas": 3, "template": { "spec": { "containers": [{
                "name": "a", "image": "x:1",
                "env": [{ "name": "A", "value": "9" }, { "name": "C", "value": "3" }],
                "args": ["--two", "--three"],
            }] } } },
        });
        let d = diff(&base, &over, "").unwrap();
        assert_eq!(d["spec"]["replicas"], json!(3));
        assert_eq!(d["gone"], Value::Null);
        assert_eq!(apply(&base, &d, ""), over);
        assert_eq!(diff(&over, &over, ""), None);
    }
}
