//! The stack as a list of containers: the one description that compose
//! files, engine calls and other targets are all derived from.

use super::*;
use std::collections::BTreeMap;

/// Which part of the stack a container belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
            Kind::Component => "component",
        }
    }

    /// Keeps data that must survive a redeploy (never recreated lightly).
    fn stateful(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Redis | Kind::Elasticsearch)
    }

    fn group(self) -> &'static str {
        match self {
            Kind::App | Kind::Component => "services",
            Kind::Postgres | Kind::Redis => "data",
            Kind::Nginx => "edge",
            Kind::Prometheus | Kind::Grafana => "monitoring",
            Kind::Elasticsearch | Kind::Kibana | Kind::Filebeat => "logging",
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

fn vol(name: &str, target: &str) -> Mount {
    Mount {
        source: Source::Volume { name: name.into() },
        target: target.into(),
        read_only: false,
    }
}

fn rendered(path: &str, target: &str) -> Mount {
    Mount {
        source: Source::Rendered { path: path.into() },
        target: target.into(),
        read_only: true,
    }
}

fn host(path: &str, target: &str) -> Mount {
    Mount {
        source: Source::Host { path: path.into() },
        target: target.into(),
        read_only: true,
    }
}

/// Published on loopback only: reachable from this host, not from outside.
fn local(host: u16, container: u16) -> Publish {
    Publish {
        ip: Some("127.0.0.1".into()),
        host,
        container,
    }
}

fn infra_image(src: &ImageSource) -> Image {
    Image::Infra {
        image: src.image().to_string(),
        local: matches!(src, ImageSource::Debian { .. }),
    }
}

/// Every container of the stack, in start order (dependencies first).
pub fn containers(stack: &Stack) -> Vec<ContainerSpec> {
    let d = &stack.defaults;
    let base = |name: &str, kind: Kind, image: Image, resources: Resources| {
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
            stateful: kind.stateful(),
            group: kind.group().to_string(),
        }
    };
    let mut out = Vec::new();
    let infra_health = d.healthcheck;

    if let Some(r) = &stack.redis {
        let mut c = base(&r.name, Kind::Redis, infra_image(&r.image), r.resources);
        c.command = vec![
            "redis-server".into(),
            "/usr/local/etc/redis/redis.conf".into(),
        ];
        c.expose = vec![r.port];
        c.networks = r.networks.clone();
        c.mounts = vec![
            vol("redis-data", "/data"),
            rendered("redis/redis.conf", "/usr/local/etc/redis/redis.conf"),
        ];
        c.secrets = vec![r.acl_secret.clone(), r.password_secret.clone()];
        c.cap_add = vec!["CHOWN".into(), "SETGID".into(), "SETUID".into()];
        c.healthcheck = Some(HealthSpec {
            test: vec![
                "CMD-SHELL".into(),
                format!(
                    "redis-cli -p {} --no-auth-warning -a \"$(cat {SECRETS_DIR}/{})\" ping | grep -q PONG",
                    r.port, r.password_secret
                ),
            ],
            timing: infra_health,
        });
        out.push(c);
    }

    for p in &stack.postgres {
        let mut c = base(&p.name, Kind::Postgres, infra_image(&p.image), p.resources);
        c.env.insert("POSTGRES_DB".into(), p.database.clone());
        c.env.insert("POSTGRES_USER".into(), p.user.clone());
        c.env.insert(
            "POSTGRES_PASSWORD_FILE".into(),
            format!("{SECRETS_DIR}/{}", p.password_secret),
        );
        c.env
            .insert("PGDATA".into(), "/var/lib/postgresql/data/pgdata".into());
        c.command = vec![
            "postgres".into(),
            "-c".into(),
            format!("max_connections={}", p.max_connections),
            "-c".into(),
            format!("shared_buffers={}kB", p.shared_buffers.bytes() / 1024),
        ];
        c.expose = vec![5432];
        c.networks = p.networks.clone();
        c.mounts = vec![
            vol(&format!("{}-data", p.name), "/var/lib/postgresql/data"),
            rendered(
                &format!("postgres/{}/init.sql", p.name),
                "/docker-entrypoint-initdb.d/10-init.sql",
            ),
        ];
        c.secrets = vec![p.password_secret.clone()];
        c.tmpfs = vec!["/tmp".into(), "/var/run/postgresql".into()];
        // The entrypoint initialises the data directory as root, then drops to `postgres`.
        c.cap_add = vec![
            "CHOWN".into(),
            "DAC_OVERRIDE".into(),
            "FOWNER".into(),
            "SETGID".into(),
            "SETUID".into(),
        ];
        c.healthcheck = Some(HealthSpec {
            test: vec![
                "CMD".into(),
                "pg_isready".into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-U".into(),
                p.user.clone(),
                "-d".into(),
                p.database.clone(),
            ],
            timing: infra_health,
        });
        out.push(c);
    }

    for s in &stack.services {
        let mut c = base(
            &s.name,
            Kind::App,
            Image::App {
                repo: stack.image_repo(&s.name),
                build: None,
            },
            s.resources,
        );
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
        if s.redis {
            if let Some(r) = &stack.redis {
                c.env.insert(
                    "REDIS_URL".into(),
                    format!("redis://{}:{}/0", r.name, r.port),
                );
                c.env.insert(
                    "REDIS_PASSWORD_FILE".into(),
                    format!("{SECRETS_DIR}/{}", r.password_secret),
                );
                c.secrets.push(r.password_secret.clone());
                c.depends_on.push(r.name.clone());
            }
        }
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
            c.ports.push(local(p, s.port));
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
        out.push(c);
    }

    if let Some(n) = &stack.nginx {
        let mut c = base(&n.name, Kind::Nginx, infra_image(&n.image), n.resources);
        // The one public entry: every interface.
        c.ports = vec![
            Publish {
                ip: None,
                host: n.http_port,
                container: 80,
            },
            Publish {
                ip: None,
                host: n.https_port,
                container: 443,
            },
        ];
        c.networks = n.networks.clone();
        c.mounts = vec![rendered("nginx/nginx.conf", "/etc/nginx/nginx.conf")];
        c.secrets = vec![n.tls_cert_secret.clone(), n.tls_key_secret.clone()];
        c.tmpfs = vec![
            "/tmp".into(),
            "/var/cache/nginx".into(),
            "/var/lib/nginx".into(),
            "/run".into(),
        ];
        c.cap_add = vec![
            "CHOWN".into(),
            "NET_BIND_SERVICE".into(),
            "SETGID".into(),
            "SETUID".into(),
        ];
        c.depends_on = vec![n.upstream.clone()];
        c.healthcheck = Some(HealthSpec {
            test: http_probe("http://127.0.0.1:80/nginx-health"),
            timing: infra_health,
        });
        out.push(c);
    }

    if let Some(m) = &stack.monitoring {
        let p = &m.prometheus;
        let mut c = base(
            &p.name,
            Kind::Prometheus,
            infra_image(&p.image),
            p.resources,
        );
        c.command = vec![
            "--config.file=/etc/prometheus/prometheus.yml".into(),
            "--storage.tsdb.path=/prometheus".into(),
            format!("--storage.tsdb.retention.time={}", m.retention),
        ];
        c.ports = vec![local(p.port, 9090)];
        c.networks = vec![m.network.clone()];
        c.mounts = vec![
            vol("prometheus-data", "/prometheus"),
            rendered("prometheus", "/etc/prometheus"),
        ];
        c.user = Some("65534:65534".into());
        c.healthcheck = Some(HealthSpec {
            test: http_probe("http://127.0.0.1:9090/-/ready"),
            timing: infra_health,
        });
        out.push(c);
        if let Some(g) = &m.grafana {
            let mut c = base(&g.name, Kind::Grafana, infra_image(&g.image), g.resources);
            if let Some(s) = &g.admin_password_secret {
                c.env.insert(
                    "GF_SECURITY_ADMIN_PASSWORD__FILE".into(),
                    format!("{SECRETS_DIR}/{s}"),
                );
                c.secrets.push(s.clone());
            }
            c.env
                .insert("GF_USERS_ALLOW_SIGN_UP".into(), "false".into());
            c.env.insert(
                "GF_PATHS_PROVISIONING".into(),
                "/etc/grafana/provisioning".into(),
            );
            c.ports = vec![local(g.port, 3000)];
            c.networks = vec![m.network.clone()];
            c.mounts = vec![
                vol("grafana-data", "/var/lib/grafana"),
                rendered("grafana/provisioning", "/etc/grafana/provisioning"),
                rendered("grafana/dashboards", "/var/lib/grafana-dashboards"),
            ];
            c.user = Some("472:0".into());
            c.depends_on = vec![p.name.clone()];
            c.healthcheck = Some(HealthSpec {
                test: http_probe("http://127.0.0.1:3000/api/health"),
                timing: infra_health,
            });
            out.push(c);
        }
    }

    if let Some(l) = &stack.logging {
        let es = &l.elasticsearch;
        let mut c = base(
            &es.name,
            Kind::Elasticsearch,
            infra_image(&es.image),
            es.resources,
        );
        c.env.insert("discovery.type".into(), "single-node".into());
        c.env
            .insert("xpack.security.enabled".into(), "false".into());
        let heap = (es.resources.memory.mib() / 2).max(256);
        c.env
            .insert("ES_JAVA_OPTS".into(), format!("-Xms{heap}m -Xmx{heap}m"));
        c.ports = vec![local(es.port, 9200)];
        c.networks = vec![l.network.clone()];
        c.mounts = vec![vol("elasticsearch-data", "/usr/share/elasticsearch/data")];
        c.read_only = false;
        c.user = Some("1000:0".into());
        c.healthcheck = Some(HealthSpec {
            test: http_probe(
                "'http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=5s'",
            ),
            timing: infra_health,
        });
        out.push(c);

        let k = &l.kibana;
        let mut c = base(&k.name, Kind::Kibana, infra_image(&k.image), k.resources);
        c.env.insert(
            "ELASTICSEARCH_HOSTS".into(),
            format!("http://{}:9200", es.name),
        );
        c.ports = vec![local(k.port, 5601)];
        c.networks = vec![l.network.clone()];
        c.read_only = false;
        c.user = Some("1000:0".into());
        c.depends_on = vec![es.name.clone()];
        c.healthcheck = Some(HealthSpec {
            test: http_probe("http://127.0.0.1:5601/api/status"),
            timing: infra_health,
        });
        out.push(c);

        let f = &l.filebeat;
        let mut c = base(&f.name, Kind::Filebeat, infra_image(&f.image), f.resources);
        c.command = vec![
            "filebeat".into(),
            "-e".into(),
            "--strict.perms=false".into(),
        ];
        c.networks = vec![l.network.clone()];
        c.mounts = vec![
            rendered("filebeat/filebeat.yml", "/usr/share/filebeat/filebeat.yml"),
            rendered(
                "filebeat/ilm-policy.json",
                "/usr/share/filebeat/ilm-policy.json",
            ),
            host("/var/lib/docker/containers", "/var/lib/docker/containers"),
            host("/var/run/docker.sock", "/var/run/docker.sock"),
        ];
        c.mounts
            .push(vol("filebeat-data", "/usr/share/filebeat/data"));
        // Reading other containers' log files needs root; it keeps no capabilities.
        c.user = Some("0:0".into());
        c.depends_on = vec![es.name.clone()];
        c.healthcheck = Some(HealthSpec {
            test: vec![
                "CMD".into(),
                "filebeat".into(),
                "test".into(),
                "output".into(),
            ],
            timing: infra_health,
        });
        out.push(c);
    }
    for comp in &stack.components {
        out.push(component(
            comp,
            base(
                &comp.name,
                Kind::Component,
                match &comp.source {
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
                },
                comp.resources,
            ),
        ));
    }
    start_order(out)
}

/// A component's container: everything comes from its resolved definition.
fn component(comp: &Component, mut c: ContainerSpec) -> ContainerSpec {
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
    c.cap_add = comp.cap_add.clone();
    c.labels.extend(comp.labels.clone());
    if let Some(p) = &comp.preset {
        c.labels.insert(LABEL_PRESET.to_string(), p.clone());
    }
    c.stateful = comp.stateful();
    c.group = comp.group.clone();
    c
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
