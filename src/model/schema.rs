//! The schema of stack.toml exactly as written: serde types with spans.
//!
//! Every table denies unknown keys. Most fields are optional here; defaults
//! and required keys are applied by `resolve`, which turns a `StackFile`
//! (plus an environment overlay) into the validated `Stack`. Environment
//! overlays reuse these very types, so an overlay can say only what the base
//! can say, and `Merge` applies it field by field.

use super::units::{Duration, Memory};
use indexmap::IndexMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub stack: Spanned<StackSection>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub networks: IndexMap<String, Spanned<NetworkDef>>,
    #[serde(default)]
    pub secrets: IndexMap<String, Spanned<SecretDef>>,
    #[serde(default)]
    pub services: IndexMap<String, Spanned<ServiceDef>>,
    #[serde(default)]
    pub infra: InfraDef,
    #[serde(default)]
    pub monitoring: MonitoringDef,
    #[serde(default)]
    pub logging: LoggingDef,
    #[serde(default)]
    pub environments: IndexMap<String, EnvironmentDef>,
    #[serde(default)]
    pub deploy: DeployDef,
    #[serde(default)]
    pub jobs: IndexMap<String, Spanned<JobDef>>,
    /// Any other container of the stack: built from a Dockerfile, pulled from
    /// a registry or built from Debian packages, optionally from a preset.
    #[serde(default)]
    pub components: IndexMap<String, Spanned<ComponentDef>>,
}

/// `[components.NAME]`: one container of the stack that is not a crate of
/// this workspace. Its source is a Dockerfile (`context`), a registry
/// `image`, or Debian `packages` (`build = "debian"`); a `preset` fills in
/// what a well-known component needs, and every field here overrides it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDef {
    /// false leaves the component out (e.g. in one environment).
    pub enabled: Option<bool>,
    /// A built-in preset: node-exporter, postgres-exporter, redis-exporter,
    /// nginx-exporter, alertmanager, pgbouncer.
    pub preset: Option<Spanned<String>>,
    pub description: Option<String>,
    /// A registry image, or the tag of the image built from Debian packages.
    pub image: Option<Spanned<String>>,
    /// "debian": build `image` locally from Debian packages.
    pub build: Option<Spanned<String>>,
    /// The Debian packages of a `build = "debian"` image (none: a built-in recipe).
    pub packages: Option<Vec<String>>,
    /// A Dockerfile build context, relative to stack.toml.
    pub context: Option<Spanned<String>>,
    /// The Dockerfile inside the context (default "Dockerfile").
    pub dockerfile: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    /// Secrets mounted as files under /run/secrets.
    pub secrets: Option<Vec<Spanned<String>>>,
    /// The port it serves on inside the stack's networks.
    pub port: Option<Spanned<u16>>,
    /// Published ports: "HOST:CONTAINER" (bound to 127.0.0.1) or "IP:HOST:CONTAINER".
    pub ports: Option<Vec<Spanned<String>>>,
    pub networks: Option<Vec<Spanned<String>>>,
    /// More host names it answers to on each of its networks.
    pub aliases: Option<Vec<Spanned<String>>>,
    /// "VOLUME:/path" (a named volume of the stack) or "/host/path:/path", each optionally ":ro".
    pub volumes: Option<Vec<Spanned<String>>>,
    pub tmpfs: Option<Vec<String>>,
    /// Whether `stackctl backup` archives its named volumes: true (the
    /// component stopped for the archive), "live" (archived while it runs)
    /// or false (the default).
    pub backup: Option<Spanned<BackupDef>>,
    /// Config files rendered from templates and mounted read-only:
    /// container path = template name (built-in, or in the project's templates/).
    pub files: Option<IndexMap<String, Spanned<String>>>,
    pub healthcheck: Option<ComponentHealthDef>,
    pub user: Option<Spanned<String>>,
    pub read_only: Option<bool>,
    pub resources: Option<ResourcesDef>,
    pub restart: Option<Spanned<String>>,
    pub replicas: Option<Spanned<u32>>,
    /// Services or components that must be healthy first.
    pub depends_on: Option<Vec<Spanned<String>>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub cap_add: Option<Vec<String>>,
    /// Where Prometheus scrapes it.
    pub metrics: Option<MetricsDef>,
    /// Free settings its templates read (`component.settings`).
    pub settings: Option<toml::Table>,
    /// Its own Redis ACL user, as a service's `redis` (`true` or
    /// `{ keys, read, write, commands, dangerous }`).
    pub redis: Option<Spanned<RedisUseDef>>,
    /// Files the stack renderer itself writes (source relative to the
    /// output directory, target in the container), mounted read-only: set
    /// by the infrastructure presets only, never read from stack.toml.
    #[serde(skip)]
    pub rendered: Option<Vec<(String, String)>>,
}

/// `backup = true | false | "live"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BackupDef {
    Switch(bool),
    Mode(String),
}

/// A component's health check: an HTTP path, a command, or a shell line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentHealthDef {
    /// HTTP path probed with wget/curl inside the container.
    pub http: Option<String>,
    /// Port of the HTTP probe (default: the component's port).
    pub port: Option<u16>,
    /// A command run without a shell (exit 0 = healthy).
    pub command: Option<Vec<String>>,
    /// A shell line (exit 0 = healthy).
    pub shell: Option<String>,
    /// true: no health check.
    pub disabled: Option<bool>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsDef {
    pub port: Option<u16>,
    /// Default "/metrics".
    pub path: Option<String>,
}

/// How `stackctl deploy` and `rollback` behave.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployDef {
    /// How long a new container may take to become ready.
    pub ready_timeout: Option<Duration>,
    /// Both old and new serve this long before the old ones stop (DNS caches move on).
    pub drain: Option<Duration>,
    /// How long health stays watched after cutover; a failure inside it rolls back.
    pub watch: Option<Duration>,
    /// Revisions kept (their images are protected from `clean` and pruning).
    pub keep: Option<Spanned<u32>>,
    /// A deploy lock older than this is stale.
    pub lock_ttl: Option<Duration>,
}

/// A one-shot job (a migration, a seed) run to completion before the
/// services that need it roll.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDef {
    /// The service whose image, environment, secrets and networks the job uses.
    pub service: Spanned<String>,
    /// Arguments to the service's binary, e.g. ["migrate"].
    pub command: Vec<String>,
    /// Services that roll only after this job succeeded (default: its service).
    pub before: Option<Vec<Spanned<String>>>,
    pub timeout: Option<Duration>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Registry prefix for pushed images, e.g. "registry.example.com/ai1c".
    #[serde(default)]
    pub registry: Option<String>,
    /// "git" (short commit), "hash" (content hash) or a literal tag.
    #[serde(default)]
    pub tag: Option<Spanned<String>>,
    /// Version recorded in the images' OCI labels.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub user: Option<String>,
    pub read_only: Option<bool>,
    pub restart: Option<Spanned<String>>,
    pub healthcheck: Option<HealthDef>,
    pub resources: Option<ResourcesDef>,
    /// Reservations as a percentage of limits when a service names none.
    pub reservation_percent: Option<Spanned<u8>>,
    pub stop_grace_period: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDef {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDef {
    pub memory: Option<Memory>,
    pub cpus: Option<Spanned<f64>>,
    pub reserve_memory: Option<Memory>,
    pub reserve_cpus: Option<Spanned<f64>>,
    /// Most processes and threads (`pids_limit`).
    pub pids: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    /// How `stackctl setup` generates it: password, hex-key, ed25519, tls, redis-acl, file.
    pub generate: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// For `redis-acl`: the administrator's password secret (the services' users come from stack.toml).
    #[serde(default)]
    pub from: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    /// false drops the service (e.g. a simulator in production).
    pub enabled: Option<bool>,
    /// The Rust crate that builds this service, relative to stack.toml.
    pub path: Option<Spanned<String>>,
    /// Cargo package name (default: the service name).
    pub package: Option<String>,
    /// Binary name (default: the package name).
    pub binary: Option<String>,
    pub description: Option<String>,
    pub port: Option<Spanned<u16>>,
    /// Host port to publish (none by default: only Nginx is public).
    pub publish: Option<Spanned<u16>>,
    pub networks: Option<Vec<Spanned<String>>>,
    pub depends_on: Option<Vec<Spanned<String>>>,
    pub env: Option<BTreeMap<String, String>>,
    pub secrets: Option<Vec<Spanned<String>>>,
    pub resources: Option<ResourcesDef>,
    pub replicas: Option<Spanned<u32>>,
    pub health_path: Option<String>,
    pub healthcheck: Option<HealthDef>,
    pub postgres: Option<Spanned<PostgresDef>>,
    /// `true` (its own ACL user with the default access), or the access as
    /// `{ keys, read, write, commands }`.
    pub redis: Option<Spanned<RedisUseDef>>,
    pub debug: Option<bool>,
    /// Routed by Nginx to the outside world (the gateway).
    pub public: Option<bool>,
    /// Extra command-line arguments for the binary.
    pub args: Option<Vec<String>>,
    pub read_only: Option<bool>,
    pub user: Option<String>,
    /// Horizontal autoscaling where the target supports it (Kubernetes).
    pub autoscale: Option<Spanned<AutoscaleDef>>,
}

/// `redis = true | false | { keys, read, write, commands }`.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisUseDef {
    Switch(bool),
    Access(RedisAccessDef),
}

// By hand rather than `untagged`: a mistake inside the table is reported as
// itself ("unknown field `key`"), not as "did not match any variant".
impl<'de> Deserialize<'de> for RedisUseDef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RedisUseDef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a table { keys, read, write, commands, dangerous }")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<RedisUseDef, E> {
                Ok(RedisUseDef::Switch(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<RedisUseDef, A::Error> {
                RedisAccessDef::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RedisUseDef::Access)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a service's own Redis ACL user may touch.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisAccessDef {
    /// Key patterns it may read and write (default `["<service>:*", "revoked:*"]`).
    pub keys: Option<Vec<String>>,
    /// Key patterns it may only read.
    pub read: Option<Vec<String>>,
    /// Key patterns it may only write.
    pub write: Option<Vec<String>>,
    /// Commands and `@categories` it may run (default `["@read", "@write",
    /// "@scripting"]`); `@dangerous` ones are always off.
    pub commands: Option<Vec<String>>,
    /// The @dangerous commands it may run after all, each named (no
    /// categories): e.g. a metrics exporter's `info` and `config|get`.
    pub dangerous: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleDef {
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Target average CPU use, percent of the requested CPU.
    pub cpu_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDef {
    pub database: Option<Spanned<String>>,
    /// Container name of the instance (default "postgres-<service>").
    pub name: Option<String>,
    pub user: Option<String>,
    pub resources: Option<ResourcesDef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDef {
    /// A registry image, e.g. "postgres:16-alpine".
    pub image: Option<String>,
    /// Build the image locally from Debian packages instead ("debian").
    pub build: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfraDef {
    pub postgres: Option<PostgresInfraDef>,
    pub redis: Option<RedisDef>,
    pub nginx: Option<NginxDef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresInfraDef {
    pub image: Option<String>,
    pub build: Option<Spanned<String>>,
    pub resources: Option<ResourcesDef>,
    pub max_connections: Option<u32>,
    pub shared_buffers: Option<Memory>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisDef {
    pub enabled: Option<bool>,
    pub image: Option<String>,
    pub build: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub maxmemory: Option<Memory>,
    pub maxmemory_policy: Option<String>,
    pub appendonly: Option<bool>,
    pub password_secret: Option<Spanned<String>>,
    pub acl_secret: Option<Spanned<String>>,
    pub resources: Option<ResourcesDef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxDef {
    pub enabled: Option<bool>,
    pub image: Option<String>,
    pub build: Option<Spanned<String>>,
    pub http_port: Option<Spanned<u16>>,
    pub https_port: Option<Spanned<u16>>,
    pub server_name: Option<String>,
    pub tls_cert_secret: Option<Spanned<String>>,
    pub tls_key_secret: Option<Spanned<String>>,
    /// Requests per second per client IP, and the burst allowed above it.
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    pub client_max_body_size: Option<Memory>,
    pub networks: Option<Vec<Spanned<String>>>,
    pub resources: Option<ResourcesDef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringDef {
    pub enabled: Option<bool>,
    pub network: Option<Spanned<String>>,
    pub prometheus: Option<PrometheusDef>,
    pub grafana: Option<AddonDef>,
    pub node_exporter: Option<AddonDef>,
    pub alerts: Option<AlertsDef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusDef {
    pub image: Option<String>,
    pub build: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub scrape_interval: Option<Duration>,
    pub retention: Option<Duration>,
    pub resources: Option<ResourcesDef>,
}

/// A third-party add-on of [monitoring] or [logging]: its image, published
/// port and limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonDef {
    pub enabled: Option<bool>,
    pub image: Option<String>,
    pub port: Option<Spanned<u16>>,
    pub resources: Option<ResourcesDef>,
    pub admin_password_secret: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsDef {
    /// Fraction of 5xx responses above which the error-rate alert fires.
    pub error_rate: Option<f64>,
    /// p99 latency above which the latency alert fires.
    pub latency_p99: Option<Duration>,
    /// Fraction of the memory limit above which the memory alert fires.
    pub memory_ratio: Option<f64>,
    /// How long a condition must hold before firing.
    pub for_duration: Option<Duration>,
    /// How long a service or component may be unreachable before "down" fires.
    pub down_for: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingDef {
    pub enabled: Option<bool>,
    pub elasticsearch: Option<AddonDef>,
    pub kibana: Option<AddonDef>,
    pub filebeat: Option<AddonDef>,
    pub retention: Option<Duration>,
}

/// An environment overlay: the same shapes as the base, changing only what it names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentDef {
    pub description: Option<String>,
    pub defaults: Option<Defaults>,
    #[serde(default)]
    pub services: IndexMap<String, Spanned<ServiceDef>>,
    pub infra: Option<InfraDef>,
    pub monitoring: Option<MonitoringDef>,
    pub logging: Option<LoggingDef>,
    #[serde(default)]
    pub components: IndexMap<String, Spanned<ComponentDef>>,
}

/// Field-by-field overlay: `over` wins wherever it says something.
pub trait Merge {
    fn merge(&mut self, over: &Self);
}

macro_rules! merge_struct {
    ($ty:ty { $($plain:ident),* } nested { $($nested:ident),* }) => {
        impl Merge for $ty {
            #[allow(unused_variables)]
            fn merge(&mut self, over: &Self) {
                $( if over.$plain.is_some() { self.$plain = over.$plain.clone(); } )*
                $(
                    match (&mut self.$nested, &over.$nested) {
                        (Some(base), Some(o)) => base.merge(o),
                        (None, Some(o)) => self.$nested = Some(o.clone()),
                        _ => {}
                    }
                )*
            }
        }
    };
}

merge_struct!(Defaults { user, read_only, restart, reservation_percent, stop_grace_period } nested { healthcheck, resources });
merge_struct!(HealthDef { interval, timeout, retries, start_period } nested {});
merge_struct!(ResourcesDef { memory, cpus, reserve_memory, reserve_cpus, pids } nested {});
merge_struct!(PostgresDef { database, name, user } nested { resources });
merge_struct!(InfraDef {} nested { postgres, redis, nginx });
merge_struct!(PostgresInfraDef { image, build, max_connections, shared_buffers } nested { resources });
merge_struct!(RedisDef { enabled, image, build, port, maxmemory, maxmemory_policy, appendonly, password_secret, acl_secret } nested { resources });
merge_struct!(NginxDef { enabled, image, build, http_port, https_port, server_name, tls_cert_secret, tls_key_secret, rate_limit, rate_burst, client_max_body_size, networks } nested { resources });
merge_struct!(MonitoringDef { enabled, network } nested { prometheus, grafana, node_exporter, alerts });
merge_struct!(PrometheusDef { image, build, port, scrape_interval, retention } nested { resources });
merge_struct!(AddonDef { enabled, image, port, admin_password_secret } nested { resources });
merge_struct!(ComponentHealthDef { http, port, command, shell, disabled, interval, timeout, retries, start_period } nested {});
merge_struct!(MetricsDef { port, path } nested {});
merge_struct!(AlertsDef { error_rate, latency_p99, memory_ratio, for_duration, down_for } nested {});
merge_struct!(LoggingDef { enabled, retention } nested { elasticsearch, kibana, filebeat });

impl<T: Merge + Clone> Merge for Spanned<T> {
    fn merge(&mut self, over: &Self) {
        // Spans stay those of the base; the overlay's values win.
        let mut inner = self.get_ref().clone();
        inner.merge(over.get_ref());
        *self = Spanned::new(self.span(), inner);
    }
}

impl Merge for ServiceDef {
    fn merge(&mut self, over: &Self) {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            enabled,
            path,
            package,
            binary,
            description,
            port,
            publish,
            networks,
            depends_on,
            secrets,
            replicas,
            health_path,
            redis,
            debug,
            public,
            args,
            read_only,
            user,
            autoscale
        );
        // Environment variables merge by name; limits and health by field.
        if let Some(env) = &over.env {
            self.env
                .get_or_insert_with(BTreeMap::new)
                .extend(env.clone());
        }
        for (base, o) in [(&mut self.resources, &over.resources)] {
            match (base.as_mut(), o) {
                (Some(b), Some(o)) => b.merge(o),
                (None, Some(o)) => *base = Some(o.clone()),
                _ => {}
            }
        }
        match (self.healthcheck.as_mut(), &over.healthcheck) {
            (Some(b), Some(o)) => b.merge(o),
            (None, Some(o)) => self.healthcheck = Some(o.clone()),
            _ => {}
        }
        match (self.postgres.as_mut(), &over.postgres) {
            (Some(b), Some(o)) => b.merge(o),
            (None, Some(o)) => self.postgres = Some(o.clone()),
            _ => {}
        }
    }
}

impl Merge for ComponentDef {
    fn merge(&mut self, over: &Self) {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            enabled,
            preset,
            description,
            image,
            build,
            packages,
            context,
            dockerfile,
            entrypoint,
            command,
            secrets,
            port,
            ports,
            networks,
            aliases,
            volumes,
            tmpfs,
            backup,
            files,
            user,
            read_only,
            restart,
            replicas,
            depends_on,
            cap_add,
            redis,
            rendered
        );
        // Maps merge by key; limits, health and metrics by field.
        for (base, o) in [(&mut self.env, &over.env), (&mut self.labels, &over.labels)] {
            if let Some(o) = o {
                base.get_or_insert_with(BTreeMap::new).extend(o.clone());
            }
        }
        if let Some(o) = &over.settings {
            let b = self.settings.get_or_insert_with(toml::Table::new);
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        if let Some(o) = &over.resources {
            match self.resources.as_mut() {
                Some(b) => b.merge(o),
                None => self.resources = Some(o.clone()),
            }
        }
        if let Some(o) = &over.healthcheck {
            match self.healthcheck.as_mut() {
                Some(b) => b.merge(o),
                None => self.healthcheck = Some(o.clone()),
            }
        }
        if let Some(o) = &over.metrics {
            match self.metrics.as_mut() {
                Some(b) => b.merge(o),
                None => self.metrics = Some(o.clone()),
            }
        }
    }
}
