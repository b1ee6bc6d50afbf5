//! Rendering: every artifact is a pure function of the resolved [`Stack`],
//! returned as a sorted map of relative path -> bytes, so a render is
//! deterministic and its sha256 is a stable config hash.

pub mod compose;
mod grafana;
pub mod k8s;
pub mod templates;

use crate::error::{Error, Result};
use crate::model::Stack;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Rendered files by path relative to the output directory.
#[derive(Debug, Default, Clone)]
pub struct Artifacts {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Artifacts {
    pub fn add(&mut self, path: impl Into<String>, content: impl Into<Vec<u8>>) {
        self.files.insert(path.into(), content.into());
    }

    pub fn get(&self, path: &str) -> Option<&str> {
        self.files
            .get(path)
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// sha256 over every path and content, in order.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (p, c) in &self.files {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
            h.update((c.len() as u64).to_le_bytes());
            h.update(c);
        }
        hex::encode(h.finalize())
    }

    /// Write every file under `out`, each atomically (temp file + rename);
    /// files whose bytes are unchanged are left alone. Returns how many changed.
    pub fn write(&self, out: &Path) -> Result<usize> {
        let mut changed = 0;
        for (rel, content) in &self.files {
            let path = out.join(rel);
            if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
                continue;
            }
            let dir = path.parent().unwrap_or(out);
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_path_buf(),
                source,
            })?;
            let tmp = dir.join(format!(
                ".{}.stackctl-tmp",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            std::fs::write(&tmp, content)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|source| Error::Write {
                    path: path.clone(),
                    source,
                })?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// Where the artifacts go and how they refer to the stack's other files.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Output directory.
    pub out: PathBuf,
    /// The output directory relative to the stack root ("deploy").
    pub out_from_root: String,
    /// The stack root relative to the output directory ("..").
    pub root_from_out: String,
    /// The image tag compose files use unless IMAGE_TAG is set.
    pub tag: String,
    /// Rendering an environment's env file beside the base (project name gets a suffix).
    pub env_files: bool,
}

impl Layout {
    pub fn new(stack: &Stack, out: Option<&Path>, tag: String) -> Layout {
        let root = absolute(&stack.root);
        let out = out.map(absolute).unwrap_or_else(|| root.join("deploy"));
        Layout {
            out_from_root: relative(&root, &out),
            root_from_out: relative(&out, &root),
            out,
            tag,
            env_files: false,
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    // Lexical normalisation: the out dir may not exist yet.
    let mut n = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                n.pop();
            }
            Component::CurDir => {}
            c => n.push(c),
        }
    }
    n
}

/// `to` relative to `from`, with '/' separators ("." when equal).
fn relative(from: &Path, to: &Path) -> String {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// The host's CA bundle (Debian's ca-certificates), copied into scratch images.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Every artifact of the stack.
pub fn render(stack: &Stack, layout: &Layout) -> Result<Artifacts> {
    let t = templates::Templates::load(&stack.root)?;
    let mut a = Artifacts::default();
    let containers = crate::model::containers(stack);

    let ctx = templates::context(stack, layout)?;
    for s in &stack.services {
        let mut c = ctx.clone();
        c.insert("service", s);
        c.insert(
            "binary_path",
            &format!("target/{}/release/{}", templates::TARGET, s.binary),
        );
        let dir = format!("services/{}", s.name);
        a.add(
            format!("{dir}/Dockerfile"),
            t.render("Dockerfile.scratch.tera", &c)?,
        );
        a.add(
            format!("{dir}/Dockerfile.multistage"),
            t.render("Dockerfile.multistage.tera", &c)?,
        );
        a.add(
            format!("{dir}/.dockerignore"),
            t.render("dockerignore.tera", &c)?,
        );
        a.add(
            format!("{dir}/Dockerfile.multistage.dockerignore"),
            t.render("dockerignore.multistage.tera", &c)?,
        );
    }
    for p in &stack.postgres {
        let mut c = ctx.clone();
        c.insert("pg", p);
        a.add(
            format!("postgres/{}/init.sql", p.name),
            t.render("postgres-init.sql.tera", &c)?,
        );
    }
    if stack.redis.is_some() {
        a.add("redis/redis.conf", t.render("redis.conf.tera", &ctx)?);
    }
    if stack.nginx.is_some() {
        a.add("nginx/nginx.conf", t.render("nginx.conf.tera", &ctx)?);
    }
    if let Some(m) = &stack.monitoring {
        a.add(
            "prometheus/prometheus.yml",
            t.render("prometheus.yml.tera", &ctx)?,
        );
        a.add("prometheus/alerts.yml", t.render("alerts.yml.tera", &ctx)?);
        if m.grafana.is_some() {
            a.add(
                "grafana/provisioning/datasources/prometheus.yml",
                t.render("grafana-datasource.yml.tera", &ctx)?,
            );
            a.add(
                "grafana/provisioning/dashboards/stackctl.yml",
                t.render("grafana-dashboards.yml.tera", &ctx)?,
            );
            a.add("grafana/dashboards/stack.json", grafana::dashboard(stack));
        }
    }
    for comp in &stack.components {
        let mut c = ctx.clone();
        c.insert("component", comp);
        for f in &comp.files {
            a.add(f.rendered.clone(), t.render(&f.template, &c)?);
        }
    }
    if stack.logging.is_some() {
        a.add(
            "filebeat/filebeat.yml",
            t.render("filebeat.yml.tera", &ctx)?,
        );
        a.add(
            "filebeat/ilm-policy.json",
            t.render("filebeat-ilm-policy.json.tera", &ctx)?,
        );
        a.add(
            "elasticsearch/roles.yml",
            t.render("elasticsearch-roles.yml.tera", &ctx)?,
        );
    }

    // The scratch images need a CA bundle; the host's is copied next to them.
    if !stack.services.is_empty() {
        let ca = Path::new(CA_BUNDLE);
        let bytes = std::fs::read(ca).map_err(|source| Error::Read {
            path: ca.to_path_buf(),
            source,
        })?;
        a.add("certs/ca-certificates.crt", bytes);
    }

    // Without --env: the base plus, per environment, an override file holding
    // only what it changes and an env file (ports, profiles, project name).
    let envs: Vec<Stack> = if stack.environment.is_none() {
        stack
            .environments
            .iter()
            .map(|e| {
                crate::model::load_str(&stack.source, &stack.file, &stack.root, Some(e), false)
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![]
    };
    let optional: Vec<String> = stack
        .services
        .iter()
        .filter(|s| envs.iter().any(|e| e.service(&s.name).is_none()))
        .map(|s| s.name.clone())
        .collect();
    let base = compose::compose(stack, &containers, layout, &optional);
    a.add("docker-compose.yml", compose::to_yaml(&base)?);
    a.add(
        ".env",
        compose::dotenv(stack, &containers, layout, &optional),
    );
    for env_stack in &envs {
        let env = env_stack.environment.as_deref().unwrap_or_default();
        let env_containers = crate::model::containers(env_stack);
        let over = compose::compose(env_stack, &env_containers, layout, &optional);
        a.add(
            format!("docker-compose.{env}.yml"),
            compose::to_yaml_value(&compose::overrides(&base, &over)?)?,
        );
        let env_layout = Layout {
            env_files: true,
            ..layout.clone()
        };
        a.add(
            format!(".env.{env}"),
            compose::dotenv(env_stack, &env_containers, &env_layout, &optional),
        );
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/deploy")),
            "deploy"
        );
        assert_eq!(relative(Path::new("/a/b/deploy"), Path::new("/a/b")), "..");
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/c/d")), "../c/d");
        assert_eq!(relative(Path::new("/a"), Path::new("/a")), ".");
    }
}
