//! The typed model of the stack: `load` reads stack.toml (with spans),
//! `resolve` applies defaults and an environment overlay and validates, and
//! every output of stackctl is derived from the resulting [`Stack`].

pub mod containers;
mod resolve;
pub mod schema;
pub mod units;

pub use containers::{containers, ContainerSpec};
pub use resolve::presets;
pub use resolve::{find_stack_file, load, load_str};
pub use units::{Duration, Memory};

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The resolved, validated stack: defaults applied, environment overlaid,
/// services in dependency order.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    pub tag: TagStrategy,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Environments stack.toml defines (overlays over this base).
    pub environments: Vec<String>,
    /// Directory holding stack.toml: crate paths are relative to it.
    #[serde(skip)]
    pub root: PathBuf,
    #[serde(skip)]
    pub file: PathBuf,
    /// Overrides the name prefix of the stack's objects on the Docker host.
    #[serde(skip)]
    pub project: Option<String>,
    /// The text of stack.toml, so environments can be resolved from it again.
    #[serde(skip)]
    pub source: String,
    pub defaults: Defaults,
    pub networks: Vec<Network>,
    pub secrets: Vec<Secret>,
    /// Application services, dependencies before dependents.
    pub services: Vec<Service>,
    pub postgres: Vec<Postgres>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx: Option<Nginx>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Monitoring>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    pub deploy: DeploySettings,
    /// One-shot jobs, in stack.toml order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<Job>,
    /// Every other container: `[components.NAME]`, presets expanded.
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploySettings {
    pub ready_timeout: Duration,
    pub drain: Duration,
    pub watch: Duration,
    pub keep: u32,
    pub lock_ttl: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub service: String,
    pub command: Vec<String>,
    pub before: Vec<String>,
    pub timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagStrategy {
    /// The short git commit of the stack's repository.
    Git,
    /// A hash of the image's inputs.
    Hash,
    Literal(String),
}

impl Serialize for TagStrategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TagStrategy::Git => s.serialize_str("git"),
            TagStrategy::Hash => s.serialize_str("hash"),
            TagStrategy::Literal(t) => s.serialize_str(t),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    pub user: String,
    pub read_only: bool,
    pub restart: String,
    pub healthcheck: Health,
    pub resources: Resources,
    pub reservation_percent: u8,
    pub stop_grace_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Health {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub memory: Memory,
    pub cpus: f64,
    pub reserve_memory: Memory,
    pub reserve_cpus: f64,
    /// Most processes and threads the container may have (a fork bomb stops there).
    pub pids: u32,
}

impl Serialize for Resources {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Resources", 6)?;
        st.serialize_field("memory", &self.memory)?;
        st.serialize_field("cpus", &self.cpus)?;
        st.serialize_field("reserve_memory", &self.reserve_memory)?;
        st.serialize_field("reserve_cpus", &self.reserve_cpus)?;
        st.serialize_field("pids", &self.pids)?;
        // For templates, which cannot parse "256M".
        st.serialize_field("memory_bytes", &self.memory.bytes())?;
        st.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    pub internal: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// 32 random URL-safe characters.
    Password,
    /// 32 random bytes, hex.
    HexKey,
    /// A self-signed TLS certificate (PEM) for the stack's server name.
    TlsCert,
    /// The private key of that certificate (PEM).
    TlsKey,
    /// A Redis ACL file granting the password named by `from`.
    RedisAcl,
    /// Provided by the operator; setup only checks it exists.
    File,
}

impl SecretKind {
    pub const NAMES: &'static [&'static str] = &[
        "password",
        "hex-key",
        "tls-cert",
        "tls-key",
        "redis-acl",
        "file",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "password" => SecretKind::Password,
            "hex-key" => SecretKind::HexKey,
            "tls-cert" => SecretKind::TlsCert,
            "tls-key" => SecretKind::TlsKey,
            "redis-acl" => SecretKind::RedisAcl,
            "file" => SecretKind::File,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Secret {
    pub name: String,
    pub generate: SecretKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Declared by stackctl itself (a database password, the Redis ACL, ...).
    pub implied: bool,
}

impl Secret {
    /// The environment variable that points a container at this secret's file.
    pub fn env_var(name: &str) -> String {
        format!("{}_FILE", env_name(name))
    }
}

/// `user-management` -> `USER_MANAGEMENT`.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub path: String,
    pub package: String,
    pub binary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<u16>,
    pub networks: Vec<String>,
    pub depends_on: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub resources: Resources,
    pub replicas: u32,
    pub health_path: String,
    pub healthcheck: Health,
    /// Name of its own PostgreSQL instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    /// Its own Redis ACL user, when it uses Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisAccess>,
    pub debug: bool,
    pub public: bool,
    pub args: Vec<String>,
    pub read_only: bool,
    pub user: String,
    /// Horizontal autoscaling (Kubernetes HorizontalPodAutoscaler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// A service's own Redis ACL user: named after the service, with its own
/// password secret, limited to its key patterns and commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisAccess {
    pub user: String,
    pub password_secret: String,
    /// Key patterns read and written.
    pub keys: Vec<String>,
    /// Key patterns only read.
    pub read: Vec<String>,
    /// Key patterns only written.
    pub write: Vec<String>,
    /// Commands and `@categories` allowed besides `@connection`.
    pub commands: Vec<String>,
    /// @dangerous commands allowed by name, after `-@dangerous`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dangerous: Vec<String>,
}

impl RedisAccess {
    /// The ACL rules after `user NAME on <password>`: no other keys or
    /// channels, nothing but its commands, `@dangerous` off except the
    /// ones named in `dangerous`.
    pub fn rules(&self) -> String {
        let mut r = vec!["resetkeys".to_string(), "resetchannels".into()];
        r.extend(self.keys.iter().map(|k| format!("~{k}")));
        r.extend(self.read.iter().map(|k| format!("%R~{k}")));
        r.extend(self.write.iter().map(|k| format!("%W~{k}")));
        r.extend(["-@all".to_string(), "+@connection".into()]);
        r.extend(self.commands.iter().map(|c| format!("+{c}")));
        r.push("-@dangerous".into());
        r.extend(self.dangerous.iter().map(|c| format!("+{c}")));
        r.join(" ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    pub cpu_percent: u32,
}

/// Where an infrastructure image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum ImageSource {
    /// Pulled from a registry.
    Registry { image: String },
    /// Built by stackctl from Debian packages (no registry needed).
    Debian { image: String },
}

impl ImageSource {
    pub fn image(&self) -> &str {
        match self {
            ImageSource::Registry { image } | ImageSource::Debian { image } => image,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Postgres {
    pub name: String,
    pub service: String,
    pub database: String,
    pub user: String,
    pub password_secret: String,
    pub image: ImageSource,
    pub resources: Resources,
    pub max_connections: u32,
    pub shared_buffers: Memory,
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Redis {
    pub name: String,
    pub image: ImageSource,
    pub port: u16,
    pub maxmemory: Memory,
    pub maxmemory_policy: String,
    pub appendonly: bool,
    pub password_secret: String,
    pub acl_secret: String,
    pub resources: Resources,
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nginx {
    pub name: String,
    pub image: ImageSource,
    pub http_port: u16,
    pub https_port: u16,
    pub server_name: String,
    pub tls_cert_secret: String,
    pub tls_key_secret: String,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub client_max_body_size: Memory,
    pub networks: Vec<String>,
    pub resources: Resources,
    /// The public service Nginx proxies to, and its port.
    pub upstream: String,
    pub upstream_port: u16,
    pub upstream_replicas: u32,
}

/// A third-party add-on of [monitoring] or [logging] (Grafana, the Elastic stack).
#[derive(Debug, Clone, Serialize)]
pub struct Addon {
    pub name: String,
    pub image: ImageSource,
    /// Port inside the container; published on the host under the same number.
    pub port: u16,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Monitoring {
    pub network: String,
    pub prometheus: Addon,
    pub scrape_interval: Duration,
    pub retention: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grafana: Option<Addon>,
    pub alerts: Alerts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    pub error_rate: f64,
    pub latency_p99: Duration,
    pub memory_ratio: f64,
    pub for_duration: Duration,
    pub down_for: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Logging {
    pub network: String,
    pub elasticsearch: Addon,
    pub kibana: Addon,
    pub filebeat: Addon,
    /// The read-only Docker API proxy (Filebeat's container metadata),
    /// alone with Filebeat on `docker_api_network`.
    pub docker_api: Addon,
    pub docker_api_network: String,
    /// Elasticsearch's users, each password a secret: `elastic` (the
    /// administrator, for people), Kibana's and Filebeat's own.
    pub elastic_password_secret: String,
    pub kibana_password_secret: String,
    pub filebeat_password_secret: String,
    pub retention: Duration,
}

/// The Elasticsearch role Filebeat writes with (in the rendered roles.yml).
pub const LOGS_WRITER_ROLE: &str = "stackctl_logs_writer";
/// Kibana's and Filebeat's own Elasticsearch users (file realm, made by
/// Elasticsearch's start from their password secrets).
pub const ES_KIBANA_USER: &str = "kibana";
pub const ES_FILEBEAT_USER: &str = "filebeat";

/// Where a component's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ComponentSource {
    /// Pulled from a registry (stackctl never builds it).
    Registry { image: String },
    /// Built by stackctl from Debian packages: a built-in recipe when
    /// `packages` is empty, else those packages on the shared base.
    Debian {
        image: String,
        packages: Vec<String>,
    },
    /// Built by `stackctl build` from its Dockerfile: the context relative
    /// to stack.toml, the Dockerfile relative to the context.
    Dockerfile { context: String, dockerfile: String },
}

impl ComponentSource {
    /// The image it names, if any (a Dockerfile build is named after the component).
    pub fn image(&self) -> Option<&str> {
        match self {
            ComponentSource::Registry { image } | ComponentSource::Debian { image, .. } => {
                Some(image)
            }
            ComponentSource::Dockerfile { .. } => None,
        }
    }
}

/// A published port: `ip` None means every interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub host: u16,
    pub container: u16,
}

impl Publish {
    /// Bound to a loopback address: reachable from this host only.
    pub fn loopback(&self) -> bool {
        self.ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    }
}

/// A config file rendered from a template and mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentFile {
    /// Absolute path inside the container.
    pub target: String,
    /// Template name (built-in, or in the project's templates/).
    pub template: String,
    /// Where it is rendered, relative to the output directory.
    pub rendered: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub port: u16,
    pub path: String,
}

/// One container of `[components.NAME]`, presets applied and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: String,
    /// What it is: an infrastructure preset (postgres, redis, nginx, ...)
    /// or `component` for anything else.
    pub kind: containers::Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub source: ComponentSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub publish: Vec<Publish>,
    pub networks: Vec<String>,
    /// More host names it answers to on its networks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub mounts: Vec<containers::Mount>,
    pub tmpfs: Vec<String>,
    /// Whether `backup` archives its named volumes, and how.
    pub backup: VolumeBackup,
    pub files: Vec<ComponentFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<containers::HealthSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub read_only: bool,
    pub resources: Resources,
    pub restart: String,
    pub replicas: u32,
    pub depends_on: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    pub settings: toml::Table,
    /// Its own Redis ACL user, when it uses Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisAccess>,
    /// The part of the stack it belongs to (compose profile, architecture).
    pub group: String,
}

/// How `stackctl backup` treats a component's named volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeBackup {
    /// Not archived (its data is rebuilt, or backed up another way).
    Off,
    /// Archived with the component stopped, so the files are consistent.
    Stopped,
    /// Archived while it runs (for data written only now and then).
    Live,
}

impl Component {
    /// Keeps data in a named volume: recreated only when its config changed.
    pub fn stateful(&self) -> bool {
        containers::has_volume(&self.mounts)
    }
}

impl Stack {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The component made from `preset`, if the stack has one.
    pub fn preset(&self, preset: &str) -> Option<&Component> {
        self.components
            .iter()
            .find(|c| c.preset.as_deref() == Some(preset))
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name == name)
    }

    /// The image reference of an application service, without the tag.
    pub fn image_repo(&self, service: &str) -> String {
        match &self.registry {
            Some(r) if !r.is_empty() => {
                format!("{}/{}/{}", r.trim_end_matches('/'), self.name, service)
            }
            _ => format!("{}/{}", self.name, service),
        }
    }
}
