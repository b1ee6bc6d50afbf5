//! `render --target kubernetes`: every manifest checked by kubernetes-validate
//! (base and each overlay applied), snapshots of every file, security and
//! probes on every workload, and no secret value anywhere.

mod common;
use common::*;
use serde::Deserialize;
use serde_json::Value;
use stackctl::render::k8s;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const K8S_VERSION: &str = "1.30.0";

fn stacks() -> Vec<(&'static str, &'static str)> {
    vec![
        ("repo", "."),
        ("minimal", "examples/minimal"),
        ("registry-images", "examples/registry-images"),
        ("components", "examples/components"),
    ]
}

/// A temp copy of the stack at the same relative place, rendered for Kubernetes.
fn rendered(rel: &str, extra: &[&str]) -> (Project, PathBuf) {
    let text = std::fs::read_to_string(repo().join(rel).join("stack.toml")).unwrap();
    rendered_text(rel, &text, extra)
}

fn rendered_text(rel: &str, text: &str, extra: &[&str]) -> (Project, PathBuf) {
    let p = Project::at(rel, text);
    let mut args = extra.to_vec();
    args.extend(["render", "--target", "kubernetes"]);
    let o = p.run(&args);
    assert_eq!(o.status.code(), Some(0), "render {rel}: {}", stderr(&o));
    let out = p.path().join("deploy/kubernetes");
    (p, out)
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                m.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    m
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every object of base/ (all files but kustomization.yaml).
fn base_objects(out: &Path) -> Vec<Value> {
    files(&out.join("base"))
        .iter()
        .filter(|(f, _)| f.as_str() != "kustomization.yaml")
        .flat_map(|(_, t)| docs(t))
        .collect()
}

/// What `kubectl apply -k overlays/ENV` would create: base + patches + added objects.
fn overlay_objects(out: &Path, env: &str) -> Vec<Value> {
    let dir = out.join("overlays").join(env);
    let k = &docs(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())[0];
    let mut patches = Vec::new();
    for p in k["patches"].as_array().cloned().unwrap_or_default() {
        let text = std::fs::read_to_string(dir.join(p["path"].as_str().unwrap())).unwrap();
        patches.extend(docs(&text));
    }
    let mut added = Vec::new();
    for r in k["resources"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        if r != "../../base" {
            added.extend(docs(&std::fs::read_to_string(dir.join(r)).unwrap()));
        }
    }
    k8s::apply_overlay(&base_objects(out), &patches, &added)
}

fn validate(objects: &[Value], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool("kubernetes-validate"));
    cmd.args(["-k", K8S_VERSION, "--strict", "--quiet"]);
    for (i, o) in objects.iter().enumerate() {
        let (kind, name) = k8s::key(o);
        let f = dir.path().join(format!("{i:03}-{kind}-{name}.yaml"));
        std::fs::write(&f, k8s::to_yaml(std::slice::from_ref(o)).unwrap()).unwrap();
        cmd.arg(f);
    }
    let said = check(&mut cmd, &format!("{what}: kubernetes-validate"));
    assert!(!said.contains("ERROR"), "{what}: {said}");
}

/// Lists of named elements compare as sets (kustomize appends new ones).
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
        }
        Value::Array(a) => {
            let mut a: Vec<Value> = a.iter().map(normalise).collect();
            if a.iter()
                .all(|e| e.get("name").is_some() || e.get("mountPath").is_some())
            {
                a.sort_by_key(|e| e.to_string());
            }
            Value::Array(a)
        }
        v => v.clone(),
    }
}

fn by_key(objects: &[Value]) -> BTreeMap<(String, String), Value> {
    objects
        .iter()
        .map(|o| (k8s::key(o), normalise(o)))
        .collect()
}

#[test]
fn every_manifest_validates_and_every_overlay_gives_its_environment() {
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let base = base_objects(&out);
        assert!(base.len() > 5, "{name}: {} objects", base.len());
        // The files themselves, as kubectl would read them.
        let mut cmd = Command::new(tool("kubernetes-validate"));
        cmd.current_dir(out.join("base"))
            .args(["-k", K8S_VERSION, "--strict", "--quiet"]);
        for f in files(&out.join("base"))
            .keys()
            .filter(|f| *f != "kustomization.yaml")
        {
            cmd.arg(f);
        }
        let said = check(&mut cmd, &format!("{name}: kubernetes-validate base"));
        assert!(!said.contains("ERROR"), "{name}: {said}");

        let envs: Vec<String> = match std::fs::read_dir(out.join("overlays")) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        };
        for env in envs {
            let merged = overlay_objects(&out, &env);
            validate(&merged, &format!("{name} overlay {env}"));
            // base + overlay is exactly what rendering that environment gives.
            let (_q, env_out) = rendered(rel, &["--env", &env]);
            assert!(
                !env_out.join("overlays").exists(),
                "an --env render has no overlays"
            );
            assert_eq!(
                by_key(&merged),
                by_key(&base_objects(&env_out)),
                "{name}: base + overlays/{env} differs from `--env {env}`"
            );
        }
    }
}

#[test]
fn kustomizations_list_every_file_and_patch_only_base_objects() {
    let (_p, out) = rendered(".", &[]);
    let base = files(&out.join("base"));
    let k = &docs(&base["kustomization.yaml"])[0];
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let present: BTreeSet<&str> = base
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let base_keys: BTreeSet<_> = base_objects(&out).iter().map(k8s::key).collect();
    for env in ["staging", "production"] {
        let dir = out.join("overlays").join(env);
        let all = files(&dir);
        let k = &docs(&all["kustomization.yaml"])[0];
        let patches: BTreeSet<String> = k["patches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap().to_string())
            .collect();
        let on_disk: BTreeSet<String> = all
            .keys()
            .filter(|f| f.starts_with("patches/"))
            .cloned()
            .collect();
        assert_eq!(patches, on_disk, "{env}");
        for p in &patches {
            for d in docs(&all[p]) {
                assert!(
                    base_keys.contains(&k8s::key(&d)),
                    "{env}: {p} patches no base object"
                );
            }
        }
    }
    // Only what each environment changes.
    let prod = files(&out.join("overlays/production"));
    let gw = &docs(&prod["patches/deployment-api-gateway.yaml"])[0];
    assert_eq!(
        gw["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert!(
        gw["spec"]["template"]["spec"]["containers"][0]
            .get("env")
            .is_none(),
        "{gw}"
    );
    let sim = &docs(&prod["patches/deployment-onec-simulator.yaml"])[0];
    assert_eq!(sim["$patch"], "delete");
    assert!(
        !prod.contains_key("patches/deployment-security.yaml"),
        "security is unchanged"
    );
    let staging = files(&out.join("overlays/staging"));
    assert!(
        staging.keys().all(|f| !f.contains("elasticsearch")),
        "logging is not in k8s"
    );
}

#[test]
fn snapshots_of_every_kubernetes_file() {
    let mut written = std::collections::BTreeSet::new();
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let all = files(&out);
        assert!(all.contains_key("base/kustomization.yaml"), "{name}");
        for (path, text) in all {
            // Job names carry a hash of their spec (a Job is immutable):
            // the snapshot is named without it, so it stays one file.
            let stable = match path.rsplit_once('-') {
                Some((head, tail))
                    if tail.len() == "0123456789.yaml".len()
                        && tail.ends_with(".yaml")
                        && tail[..10].bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    format!("{head}.yaml")
                }
                _ => path.clone(),
            };
            let snap = format!("{name}__{}", stable.replace(['/', '.'], "_"));
            written.insert(snap.clone());
            insta::assert_snapshot!(snap, text);
        }
    }
    reject_orphan_snapshots("k8s", &written);
}

#[test]
fn every_workload_has_probes_limits_and_a_locked_down_security_context() {
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let mut workloads = 0;
        for o in base_objects(&out) {
            let (kind, oname) = k8s::key(&o);
            if kind != "Deployment" && kind != "StatefulSet" {
                continue;
            }
            workloads += 1;
            let pod = &o["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}/{oname}");
            for c in pod["containers"].as_array().unwrap() {
                let w = format!("{name}/{oname}");
                for p in ["readinessProbe", "livenessProbe"] {
                    let probe = &c[p];
                    assert!(
                        probe.get("httpGet").is_some()
                            || probe.get("exec").is_some()
                            || probe.get("tcpSocket").is_some(),
                        "{w}: no {p}"
                    );
                    assert!(probe["periodSeconds"].as_u64().unwrap() > 0, "{w}");
                    assert!(probe["timeoutSeconds"].as_u64().unwrap() > 0, "{w}");
                }
                for r in ["limits", "requests"] {
                    assert!(c["resources"][r]["cpu"].is_string(), "{w}: {r}");
                    assert!(c["resources"][r]["memory"].is_string(), "{w}: {r}");
                }
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{w}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{w}"
                );
                assert!(sc["readOnlyRootFilesystem"].is_boolean(), "{w}");
                if o["metadata"]["labels"]["app.kubernetes.io/component"] == "app" {
                    // A service of the stack: non-root, read-only, /tmp writable.
                    assert_eq!(sc["runAsNonRoot"], true, "{w}");
                    assert_eq!(sc["runAsUser"], 1001, "{w}");
                    assert_eq!(sc["runAsGroup"], 1001, "{w}");
                    assert_eq!(sc["readOnlyRootFilesystem"], true, "{w}");
                    assert!(sc["capabilities"].get("add").is_none(), "{w}");
                    let mounts = c["volumeMounts"].as_array().unwrap();
                    assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"), "{w}");
                    assert!(c["image"].as_str().unwrap().ends_with(":snapshot"), "{w}");
                    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live", "{w}");
                }
            }
        }
        assert!(workloads >= 3, "{name}: {workloads} workloads");
    }
}

#[test]
fn the_repo_stack_gets_autoscalers_statefulsets_ingress_and_network_isolation() {
    let (_p, out) = rendered(".", &[]);
    let objects = by_key(&base_objects(&out));
    let get = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    };
    for s in ["api-gateway", "ai-assistant"] {
        let hpa = get("HorizontalPodAutoscaler", s);
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(hpa["spec"]["maxReplicas"], 6);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        assert!(
            get("Deployment", s)["spec"].get("replicas").is_none(),
            "the HPA owns {s}'s replicas"
        );
    }
    assert!(!objects.contains_key(&("HorizontalPodAutoscaler".into(), "security".into())));
    for s in [
        "security",
        "user-management",
        "analytics",
        "1c-integration",
        "ai-assistant",
        "api-gateway",
    ] {
        get("Deployment", s);
        get("Service", s);
        get("PodDisruptionBudget", s);
    }
    for db in [
        "postgres-ai",
        "postgres-1c",
        "postgres-user",
        "postgres-analytics",
        "postgres-security",
        "redis",
    ] {
        let st = get("StatefulSet", db);
        assert_eq!(
            st["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
        let probe =
            &st["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"];
        let text = probe.to_string();
        assert!(
            text.contains("pg_isready") || text.contains("redis-cli"),
            "{db}: {text}"
        );
    }
    let pg = get("StatefulSet", "postgres-user");
    let env = pg["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("/run/secrets/postgres-user-password"), "{env}");
    get("Deployment", "nginx");
    get("Deployment", "prometheus");
    for k in [
        "grafana",
        "elasticsearch",
        "kibana",
        "filebeat",
        "node-exporter",
    ] {
        assert!(
            !objects.keys().any(|(_, n)| n == k),
            "{k} is not part of the Kubernetes target"
        );
    }
    let prom = get("ConfigMap", "prometheus-config");
    assert!(prom["data"]["prometheus.yml"]
        .as_str()
        .unwrap()
        .contains("job_name: api-gateway"));
    assert!(!prom["data"]["prometheus.yml"]
        .as_str()
        .unwrap()
        .contains("node-exporter"));
    assert!(prom["data"].get("alerts.yml").is_some());
    let nginx = get("ConfigMap", "nginx-config")["data"]["nginx.conf"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        nginx.contains("resolver kube-dns.kube-system.svc.cluster.local"),
        "{nginx}"
    );
    assert!(nginx.contains("http://api-gateway.ai-assistants-1c.svc.cluster.local:3000;"));
    get("ConfigMap", "redis-config");
    get("ConfigMap", "postgres-ai-config");
    let ing = get("Ingress", "api-gateway");
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "ingress-tls");
    assert_eq!(ing["spec"]["rules"][0]["http"]["paths"][0]["path"], "/api");
    // Networks: default deny, then one policy per network; backend has no way out.
    get("NetworkPolicy", "default-deny");
    let backend = get("NetworkPolicy", "network-backend");
    assert_eq!(
        backend["spec"]["egress"].as_array().unwrap().len(),
        1,
        "{backend}"
    );
    let frontend = get("NetworkPolicy", "network-frontend");
    assert!(frontend["spec"]["egress"].to_string().contains("0.0.0.0/0"));
    let gw_labels = &get("Deployment", "api-gateway")["spec"]["template"]["metadata"]["labels"];
    for n in ["frontend", "backend"] {
        assert_eq!(gw_labels[format!("stackctl.io/network-{n}")], "true");
    }
    // The services are off the monitoring network; Prometheus joins theirs.
    assert!(gw_labels.get("stackctl.io/network-monitoring").is_none());
    let prom_labels = &get("Deployment", "prometheus")["spec"]["template"]["metadata"]["labels"];
    for n in ["monitoring", "backend"] {
        assert_eq!(prom_labels[format!("stackctl.io/network-{n}")], "true");
    }
    let db_labels = &get("StatefulSet", "postgres-ai")["spec"]["template"]["metadata"]["labels"];
    assert!(db_labels.get("stackctl.io/network-frontend").is_none());
}

#[test]
fn no_secret_value_is_ever_rendered() {
    let text = std::fs::read_to_string(repo().join("stack.toml")).unwrap();
    let p = Project::at(".", &text);
    // Secret files as `stackctl setup` leaves them, each with a unique value.
    let secrets = p.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let mut values = Vec::new();
    for name in [
        "admin-password",
        "encryption-key",
        "service-token",
        "ingest-token",
        "onec-password",
        "redis-password",
        "postgres-ai-password",
        "nginx-tls-key",
    ] {
        let v = format!("s3cr3t-{name}-Zq81xK");
        std::fs::write(secrets.join(name), &v).unwrap();
        values.push(v);
    }
    let o = p.run(&["render", "--target", "kubernetes"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all = files(&p.path().join("deploy/kubernetes"));
    assert!(all.len() > 10);
    for (f, t) in &all {
        for v in &values {
            assert!(!t.contains(v.as_str()), "{f} contains a secret value");
        }
        assert!(!t.contains("kind: Secret\n"), "{f} defines a Secret object");
    }
    // They are referenced by name, and the base says how to create them.
    let k = &all["base/kustomization.yaml"];
    assert!(k.contains("create secret generic admin-password --from-file=admin-password=secrets/admin-password"), "{k}");
    assert!(k.contains("create secret tls ingress-tls"), "{k}");
}

#[test]
fn autoscale_is_checked_like_every_other_table() {
    let cases = [
        ("autoscale = { min = 2, mx = 6 }", 11, "did you mean `max`"),
        (
            "autoscale = { min = 4, max = 2 }",
            14,
            "do not make a range",
        ),
        ("autoscale = { min = 2 }", 15, "needs a `max`"),
        (
            "autoscale = { max = 4, cpu_percent = 0 }",
            14,
            "not a percentage",
        ),
    ];
    for (line, code, says) in cases {
        let stack = BASE.replacen("port = 3000\n", &format!("port = 3000\n{line}\n"), 1);
        let p = Project::new(&stack);
        let o = p.run(&["validate"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
        assert!(
            err.contains("stack.toml:12:"),
            "{line}: names the line: {err}"
        );
    }
    // A valid one becomes an HPA; compose output is unaffected by it.
    let stack = BASE.replacen("port = 3000\n", "port = 3000\nautoscale = { max = 3 }\n", 1);
    let (_p, out) = rendered_text(".", &stack, &[]);
    let api = docs(&std::fs::read_to_string(out.join("base/api.yaml")).unwrap());
    let hpa = api
        .iter()
        .find(|o| o["kind"] == "HorizontalPodAutoscaler")
        .expect("an HPA");
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 3);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
}

#[test]
fn kubernetes_rendering_is_deterministic() {
    let (p, out) = rendered(".", &[]);
    let first = files(&out);
    std::fs::remove_dir_all(&out).unwrap();
    let o = p.run(&["render", "--target", "kubernetes"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(first, files(&out));
    // The default target is still compose, and it writes no manifests.
    let q = Project::at(
        ".",
        &std::fs::read_to_string(repo().join("stack.toml")).unwrap(),
    );
    let o = q.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(q.path().join("deploy/docker-compose.yml").is_file());
    assert!(!q.path().join("deploy/kubernetes").exists());
}

#[test]
fn jobs_become_kubernetes_jobs_that_no_service_selects() {
    let (p, out) = rendered(".", &[]);
    let objects = base_objects(&out);
    let jobs: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Job").collect();
    // The repo stack's five migration jobs, each its service's pod running `migrate`.
    assert_eq!(jobs.len(), 5, "{jobs:#?}");
    let deployment = |svc: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == svc)
            .unwrap_or_else(|| panic!("no Deployment {svc}"))
    };
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    for j in &jobs {
        let name = j["metadata"]["name"].as_str().unwrap();
        let job = j["metadata"]["annotations"]["stackctl.io/job"]
            .as_str()
            .unwrap();
        let svc = j["metadata"]["annotations"]["stackctl.io/service"]
            .as_str()
            .unwrap();
        assert_eq!(job, format!("migrate-{svc}"));
        assert!(
            name.starts_with(&format!("job-{job}-")) && name.len() <= 63,
            "{name}"
        );
        assert_eq!(j["spec"]["backoffLimit"], 0, "{name}: a job is not retried");
        assert!(
            j["spec"]["activeDeadlineSeconds"].as_u64().unwrap() > 0,
            "{name}"
        );
        let pod = &j["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{name}");
        let c = &pod["containers"][0];
        assert_eq!(c["args"], serde_json::json!(["migrate"]), "{name}");
        for k in ["readinessProbe", "livenessProbe", "ports"] {
            assert!(c.get(k).is_none(), "{name}: {k}");
        }
        // The service's image, environment, secrets and limits.
        let s = &deployment(svc)["spec"]["template"];
        let sc = &s["spec"]["containers"][0];
        for k in [
            "image",
            "env",
            "resources",
            "securityContext",
            "volumeMounts",
        ] {
            assert_eq!(c[k], sc[k], "{name}: {k} differs from {svc}'s");
        }
        // The service's networks (NetworkPolicies), but not its name: no
        // Service (nor the PodDisruptionBudget) selects the job's pod.
        let labels = j["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (k, v) in s["metadata"]["labels"].as_object().unwrap() {
            if k.starts_with(k8s::NETWORK_LABEL) {
                assert_eq!(labels.get(k), Some(v), "{name}: {k}");
            }
        }
        for service in &services {
            let sel = service["spec"]["selector"].as_object().unwrap();
            assert!(
                !sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{name}: Service {} selects the job's pod",
                service["metadata"]["name"]
            );
        }
    }
    validate(
        &jobs.iter().map(|j| (*j).clone()).collect::<Vec<_>>(),
        "jobs",
    );

    // Same inputs, same Job (re-applying changes nothing); a new image is a
    // new Job, which runs once.
    let names = |objs: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = objs
            .iter()
            .filter(|o| o["kind"] == "Job")
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let before = names(&objects);
    let again = p.run(&["render", "--target", "kubernetes"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(names(&base_objects(&out)), before);
    let o = bin()
        .current_dir(p.path())
        .env("IMAGE_TAG", "v2")
        .args(["render", "--target", "kubernetes"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let after = names(&base_objects(&out));
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().all(|n| !before.contains(n)),
        "{before:?} {after:?}"
    );
}
