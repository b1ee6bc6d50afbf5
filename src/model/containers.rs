//! The stack as a list of containers: the one description that compose
//! files, engine calls and other targets are all derived from.

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Which part of the stack a container belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    App,
    Postgres,
    Redis,
    Nginx,
    Prometheus,
    Grafana,
    Elasticsearch,
    Kibana,
    Filebeat,
    /// The read-only Docker API proxy Filebeat asks for container metadata.
    DockerApi,
    /// A `[components.NAME]` container.
    Component,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Nginx => "nginx",
            Kind::Prometheus => "prometheus",
            Kind::Grafana => "grafana",
            Kind::Elasticsearch => "elasticsearch",
            Kind::Kibana => "kibana",
            Kind::Filebeat => "filebeat",
            Kind::DockerApi => "docker-api",
            Kind::Component => "component",
        }
    }

    /// The part of the stack it belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::App | Kind::Component => "services",
            Kind::Postgres | Kind::Redis => "data",
            Kind::Nginx => "edge",
            Kind::Prometheus | Kind::Grafana => "monitoring",
            Kind::Elasticsearch | Kind::Kibana | Kind::Filebeat | Kind::DockerApi => "logging",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Image {
    /// An image `stackctl build` makes: repository without tag. `build` is
    /// None for a crate of this workspace (the rendered scratch Dockerfile),
    /// else a component's own Dockerfile.
    App {
        repo: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        build: Option<DockerBuild>,
    },
    /// An infrastructure image: a registry reference or a locally built one.
    Infra { image: String, local: bool },
}

/// A Dockerfile build: the context relative to stack.toml, the Dockerfile
/// relative to the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerBuild {
    pub context: String,
    pub dockerfile: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Source {
    /// A named volume of the stack.
    Volume { name: String },
    /// A file or directory rendered by stackctl, relative to the output dir.
    Rendered { path: String },
    /// A path on the Docker host.
    Host { path: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mount {
    pub source: Source,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSpec {
    /// Engine form: ["CMD", ...] or ["CMD-SHELL", "..."].
    pub test: Vec<String>,
    pub timing: Health,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerSpec {
    pub name: String,
    pub kind: Kind,
    pub image: Image,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Ports published on the host.
    pub ports: Vec<Publish>,
    /// Ports the container listens on inside its networks.
    pub expose: Vec<u16>,
    pub networks: Vec<String>,
    /// Host names it answers to on its networks besides its name.
    pub aliases: Vec<String>,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<String>,
    pub tmpfs: Vec<String>,
    pub healthcheck: Option<HealthSpec>,
    /// Containers that must be healthy before this one starts.
    pub depends_on: Vec<String>,
    pub resources: Resources,
    pub replicas: u32,
    pub restart: String,
    pub user: Option<String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_grace_period: Duration,
    /// Keeps data that must survive a redeploy: recreated only when its
    /// config changed, never rolled side by side.
    pub stateful: bool,
    /// The part of the stack it belongs to: services, data, edge, monitoring, logging.
    pub group: String,
}

/// Whether any of the mounts is a named volume of the stack (data to keep).
pub fn has_volume(mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .any(|m| matches!(m.source, Source::Volume { .. }))
}

impl ContainerSpec {
    /// The health test as an exec command (what stackctl runs itself to
    /// see a container ready before Docker's next health check).
    pub fn probe_cmd(&self) -> Option<Vec<String>> {
        let h = self.healthcheck.as_ref()?;
        match h.test.first().map(String::as_str) {
            Some("CMD") => Some(h.test[1..].to_vec()),
            Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), h.test[1..].join(" ")]),
            _ => None,
        }
    }

    /// Every host name it answers to on its networks: its name, then its aliases.
    pub fn dns_names(&self) -> Vec<String> {
        std::iter::once(&self.name)
            .chain(&self.aliases)
            .cloned()
            .collect()
    }

    pub fn volumes(&self) -> impl Iterator<Item = &str> {
        self.mounts.iter().filter_map(|m| match &m.source {
            Source::Volume { name } => Some(name.as_str()),
            _ => None,
        })
    }
}

pub const SECRETS_DIR: &str = "/run/secrets";
pub const APP_DIR: &str = "/app";
pub const LABEL_STACK: &str = "io.stackctl.stack";
pub const LABEL_SERVICE: &str = "io.stackctl.service";
pub const LABEL_KIND: &str = "io.stackctl.kind";
pub const LABEL_PRESET: &str = "io.stackctl.preset";

/// A shell health probe that works with curl or busybox wget, whichever the image has.
pub(crate) fn http_probe(url: &str) -> Vec<String> {
    vec![
        "CMD-SHELL".into(),
        format!("curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url}"),
    ]
}

fn rendered(path: &str, target: &str) -> Mount {
    Mount {
        source: Source::Rendered { path: path.into() },
        target: target.into(),
        read_only: true,
    }
}

/// Every container of the stack, in start order (dependencies first): the
/// data stores, the services, then every other component, each in stack
/// order, reordered only where a dependency requires it.
pub fn containers(stack: &Stack) -> Vec<ContainerSpec> {
    let (data, rest): (Vec<&Component>, Vec<&Component>) = stack
        .components
        .iter()
        .partition(|c| matches!(c.kind, Kind::Postgres | Kind::Redis));
    let mut out: Vec<ContainerSpec> = data.into_iter().map(|c| component(stack, c)).collect();
    out.extend(stack.services.iter().map(|s| service(stack, s)));
    out.extend(rest.into_iter().map(|c| component(stack, c)));
    start_order(out)
}

/// What every container starts from: labels and the stack's defaults.
fn base(
    stack: &Stack,
    name: &str,
    kind: Kind,
    image: Image,
    resources: Resources,
) -> ContainerSpec {
    let d = &stack.defaults;
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_STACK.to_string(), stack.name.clone());
    labels.insert(LABEL_SERVICE.to_string(), name.to_string());
    labels.insert(LABEL_KIND.to_string(), kind.as_str().to_string());
    ContainerSpec {
        name: name.to_string(),
        kind,
        image,
        entrypoint: None,
        command: vec![],
        env: BTreeMap::new(),
        ports: vec![],
        expose: vec![],
        networks: vec![],
        aliases: vec![],
        mounts: vec![],
        secrets: vec![],
        tmpfs: vec!["/tmp".into()],
        healthcheck: None,
        depends_on: vec![],
        resources,
        replicas: 1,
        restart: d.restart.clone(),
        user: None,
        read_only: d.read_only,
        cap_add: vec![],
        labels,
        stop_grace_period: d.stop_grace_period,
        stateful: false,
        group: kind.group().to_string(),
    }
}

/// An application service: a crate of this workspace, wired to its
/// database, Redis and the services it depends on.
fn service(stack: &Stack, s: &Service) -> ContainerSpec {
    let image = Image::App {
        repo: stack.image_repo(&s.name),
        build: None,
    };
    let mut c = base(stack, &s.name, Kind::App, image, s.resources);
    c.env.insert("SERVICE_NAME".into(), s.name.clone());
    c.env.insert("PORT".into(), s.port.to_string());
    c.env.insert(
        "RUST_LOG".into(),
        if s.debug { "debug" } else { "info" }.into(),
    );
    if let Some(pg) = s
        .postgres
        .as_ref()
        .and_then(|n| stack.postgres.iter().find(|p| &p.name == n))
    {
        c.env.insert("DATABASE_HOST".into(), pg.name.clone());
        c.env.insert("DATABASE_PORT".into(), "5432".into());
        c.env.insert("DATABASE_NAME".into(), pg.database.clone());
        c.env.insert("DATABASE_USER".into(), pg.user.clone());
        c.env.insert(
            "DATABASE_PASSWORD_FILE".into(),
            format!("{SECRETS_DIR}/{}", pg.password_secret),
        );
        c.secrets.push(pg.password_secret.clone());
        c.depends_on.push(pg.name.clone());
    }
    redis_user(stack, &mut c, s.redis.as_ref());
    for dep in &s.depends_on {
        if let Some(ds) = stack.service(dep) {
            c.env.insert(
                format!("SERVICE_URL_{}", env_name(dep)),
                format!("http://{}:{}", ds.name, ds.port),
            );
        }
        c.depends_on.push(dep.clone());
    }
    for sec in &s.secrets {
        c.env
            .insert(Secret::env_var(sec), format!("{SECRETS_DIR}/{sec}"));
        c.secrets.push(sec.clone());
    }
    c.env.extend(s.env.clone());
    c.command = s.args.clone();
    c.expose = vec![s.port];
    if let Some(p) = s.publish {
        // Published on loopback only: reachable from this host, not from outside.
        c.ports.push(Publish {
            ip: Some("127.0.0.1".into()),
            host: p,
            container: s.port,
        });
    }
    c.networks = s.networks.clone();
    c.user = Some(s.user.clone());
    c.read_only = s.read_only;
    c.replicas = s.replicas;
    c.healthcheck = Some(HealthSpec {
        test: vec![
            "CMD".into(),
            format!("{APP_DIR}/{}", s.binary),
            "healthcheck".into(),
        ],
        timing: s.healthcheck,
    });
    c
}

/// A component's container (the infrastructure's too): everything comes
/// from its resolved definition.
fn component(stack: &Stack, comp: &Component) -> ContainerSpec {
    let image = match &comp.source {
        ComponentSource::Registry { image } => Image::Infra {
            image: image.clone(),
            local: false,
        },
        ComponentSource::Debian { image, .. } => Image::Infra {
            image: image.clone(),
            local: true,
        },
        ComponentSource::Dockerfile {
            context,
            dockerfile,
        } => Image::App {
            repo: stack.image_repo(&comp.name),
            build: Some(DockerBuild {
                context: context.clone(),
                dockerfile: dockerfile.clone(),
            }),
        },
    };
    let mut c = base(stack, &comp.name, comp.kind, image, comp.resources);
    c.entrypoint = comp.entrypoint.clone();
    c.command = comp.command.clone();
    c.env = comp.env.clone();
    c.secrets = comp.secrets.clone();
    c.expose = comp.port.into_iter().collect();
    if let Some(m) = &comp.metrics {
        if !c.expose.contains(&m.port) {
            c.expose.push(m.port);
        }
    }
    c.ports = comp.publish.clone();
    c.networks = comp.networks.clone();
    c.aliases = comp.aliases.clone();
    c.mounts = comp.mounts.clone();
    c.mounts
        .extend(comp.files.iter().map(|f| rendered(&f.rendered, &f.target)));
    c.tmpfs = comp.tmpfs.clone();
    c.healthcheck = comp.healthcheck.clone();
    c.user = comp.user.clone();
    c.read_only = comp.read_only;
    c.restart = comp.restart.clone();
    c.replicas = comp.replicas;
    c.depends_on = comp.depends_on.clone();
    redis_user(stack, &mut c, comp.redis.as_ref());
    c.cap_add = comp.cap_add.clone();
    c.labels.extend(comp.labels.clone());
    // The infrastructure's kind label already says what it is.
    if let (Kind::Component, Some(p)) = (comp.kind, &comp.preset) {
        c.labels.insert(LABEL_PRESET.to_string(), p.clone());
    }
    c.stateful = comp.stateful();
    c.group = comp.group.clone();
    c
}

/// A container with its own Redis ACL user: where Redis is, who it is,
/// its password file; it waits for Redis.
fn redis_user(stack: &Stack, c: &mut ContainerSpec, access: Option<&RedisAccess>) {
    let (Some(r), Some(access)) = (stack.redis.as_ref(), access) else {
        return;
    };
    c.env.insert(
        "REDIS_URL".into(),
        format!("redis://{}:{}/0", r.name, r.port),
    );
    c.env.insert("REDIS_USERNAME".into(), access.user.clone());
    c.env.insert(
        "REDIS_PASSWORD_FILE".into(),
        format!("{SECRETS_DIR}/{}", access.password_secret),
    );
    if !c.secrets.contains(&access.password_secret) {
        c.secrets.push(access.password_secret.clone());
    }
    if !c.depends_on.contains(&r.name) {
        c.depends_on.push(r.name.clone());
    }
}

/// Dependencies first, otherwise in the order given (the model rejects cycles).
fn start_order(mut left: Vec<ContainerSpec>) -> Vec<ContainerSpec> {
    let names: Vec<String> = left.iter().map(|c| c.name.clone()).collect();
    let mut out: Vec<ContainerSpec> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|c| {
                c.depends_on
                    .iter()
                    .all(|d| !names.contains(d) || out.iter().any(|o| &o.name == d))
            })
            .unwrap_or(0);
        out.push(left.remove(ready));
    }
    out
}
