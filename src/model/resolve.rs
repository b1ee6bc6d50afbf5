//! Loading stack.toml and turning it into a validated [`Stack`].

use super::schema::{self, Merge, StackFile};
use super::units::{Duration, Memory, BAD_DURATION, BAD_MEMORY};
use super::*;
use crate::error::{Error, ModelError, ModelErrorKind as K};
use indexmap::IndexMap;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use toml::Spanned;

mod components;
pub mod presets;

pub const STACK_FILE: &str = "stack.toml";

/// Find stack.toml in `start` or the nearest parent directory.
pub fn find_stack_file(start: &Path) -> Result<PathBuf, Error> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(STACK_FILE);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(Error::StackNotFound {
        searched: start.to_path_buf(),
    })
}

/// Read, parse and resolve a stack file for an environment (None: the base).
pub fn load(file: &Path, env: Option<&str>) -> Result<Stack, Error> {
    let src = std::fs::read_to_string(file).map_err(|source| Error::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let root = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    // Every path stackctl derives from the root (secret and config bind
    // mounts, build contexts) reaches the engine, which takes only absolute
    // paths, whatever `-f` was given.
    let root = std::path::absolute(&root).map_err(|source| Error::Read {
        path: file.to_path_buf(),
        source,
    })?;
    Ok(load_str(&src, file, &root, env, true)?)
}

/// Parse and resolve stack text. `check_paths` checks crate paths on disk.
pub fn load_str(
    src: &str,
    file: &Path,
    root: &Path,
    env: Option<&str>,
    check_paths: bool,
) -> Result<Stack, ModelError> {
    let cx = Cx { src, file };
    // Syntax first, so a TOML error is reported as such.
    if let Err(e) = src.parse::<toml::Table>() {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        return Err(cx.err(
            K::Syntax,
            offset,
            e.message().trim(),
            "fix the TOML syntax at this position (strings need quotes, tables need [brackets])",
        ));
    }
    let parsed: StackFile = toml::from_str(src).map_err(|e| cx.classify(&e))?;
    Resolver {
        cx,
        root,
        check_paths,
    }
    .resolve(parsed, env)
}

#[derive(Clone, Copy)]
struct Cx<'a> {
    src: &'a str,
    file: &'a Path,
}

impl Cx<'_> {
    fn err(
        &self,
        kind: K,
        offset: usize,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) -> ModelError {
        ModelError::at(kind, self.file, self.src, offset, msg, hint)
    }

    fn classify(&self, e: &toml::de::Error) -> ModelError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let msg = e.message().trim().to_string();
        let (kind, hint) = if msg.starts_with("unknown field") {
            (K::UnknownKey, unknown_key_hint(&msg))
        } else if msg.contains(BAD_DURATION) {
            (K::BadDuration, String::new())
        } else if msg.contains(BAD_MEMORY) {
            (K::BadMemory, String::new())
        } else if msg.contains("expected a borrowed string") {
            return self.err(
                K::InvalidValue,
                offset,
                "this table is only defined through its sub-tables or dotted keys",
                "give it a header of its own, e.g. [services.NAME] before [services.NAME.resources]",
            );
        } else if msg.starts_with("missing field") {
            (K::MissingKey, "add the key to this table".to_string())
        } else {
            (
                K::InvalidValue,
                "see the stack.toml reference in README.md for the expected type".to_string(),
            )
        };
        self.err(kind, offset, msg, hint)
    }
}

/// "unknown field `prots`, expected one of `port`, ..." -> "did you mean `port`?".
fn unknown_key_hint(msg: &str) -> String {
    let names: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    let Some((bad, valid)) = names.split_first() else {
        return "remove the key".into();
    };
    let best = valid
        .iter()
        .map(|v| (edit_distance(bad, v), *v))
        .filter(|(d, _)| *d <= 2.max(bad.len() / 3))
        .min();
    match best {
        Some((_, v)) => format!("did you mean `{v}`? Otherwise remove the key"),
        None => "remove the key, or check the spelling against the expected keys".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A service as resolved, with its definition (for spans) and its secret references.
type Resolved<'a> = (
    &'a Spanned<schema::ServiceDef>,
    Service,
    Vec<Spanned<String>>,
);

struct Resolver<'a> {
    cx: Cx<'a>,
    root: &'a Path,
    check_paths: bool,
}

const RESTARTS: &[&str] = &["no", "always", "on-failure", "unless-stopped"];

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && !n.ends_with('-')
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Resolver<'_> {
    fn err(
        &self,
        kind: K,
        offset: usize,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) -> ModelError {
        self.cx.err(kind, offset, msg, hint)
    }

    fn resolve(&self, mut f: StackFile, env: Option<&str>) -> Result<Stack, ModelError> {
        let environments: Vec<String> = f.environments.keys().cloned().collect();
        // Every overlay must name only services that exist, whichever is chosen.
        for (env_name, overlay) in &f.environments {
            if !valid_name(env_name) {
                return Err(self.err(
                    K::InvalidValue,
                    header_offset(self.cx.src, &format!("environments.{env_name}")),
                    format!("environment name `{env_name}` is not valid"),
                    "use lower-case letters, digits and '-'",
                ));
            }
            for (svc, def) in &overlay.services {
                if !f.services.contains_key(svc) {
                    return Err(self.err(
                        K::UnknownDependency,
                        def.span().start,
                        format!("environment `{env_name}` overrides service `{svc}`, which stack.toml does not define"),
                        format!("define [services.{svc}] or fix the name; services: {}", names(f.services.keys())),
                    ));
                }
            }
        }
        if let Some(env) = env {
            let Some(overlay) = f.environments.get(env).cloned() else {
                let offset = f
                    .environments
                    .keys()
                    .next()
                    .map(|e| header_offset(self.cx.src, &format!("environments.{e}")))
                    .unwrap_or(0);
                return Err(self.err(
                    K::UnknownEnvironment,
                    offset,
                    format!("no environment `{env}` in this stack"),
                    if environments.is_empty() {
                        "add an [environments.NAME] table, or drop --env".to_string()
                    } else {
                        format!("choose one of: {}", environments.join(", "))
                    },
                ));
            };
            let o = overlay;
            if let Some(d) = &o.defaults {
                f.defaults.merge(d);
            }
            for (name, def) in &o.services {
                f.services.get_mut(name).expect("checked above").merge(def);
            }
            merge_opt(&mut f.infra, o.infra.as_ref());
            merge_opt(&mut f.monitoring, o.monitoring.as_ref());
            merge_opt(&mut f.logging, o.logging.as_ref());
            for (name, def) in &o.components {
                match f.components.get_mut(name) {
                    Some(base) => base.merge(def),
                    None => {
                        f.components.insert(name.clone(), def.clone());
                    }
                }
            }
        }
        self.build(f, env, environments)
    }

    fn build(
        &self,
        mut f: StackFile,
        env: Option<&str>,
        environments: Vec<String>,
    ) -> Result<Stack, ModelError> {
        let stack_sec = f.stack.get_ref();
        let name = stack_sec.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(self.err(
                K::InvalidValue,
                stack_sec.name.span().start,
                format!("stack name `{name}` is not valid"),
                "use lower-case letters, digits and '-' (it names images, networks and volumes)",
            ));
        }
        let tag = match &stack_sec.tag {
            None => TagStrategy::Git,
            Some(t) => match t.get_ref().as_str() {
                "git" => TagStrategy::Git,
                "hash" => TagStrategy::Hash,
                lit if valid_tag(lit) => TagStrategy::Literal(lit.to_string()),
                lit => {
                    return Err(self.err(
                        K::InvalidValue,
                        t.span().start,
                        format!("`{lit}` is not a valid image tag strategy"),
                        "use \"git\" (short commit), \"hash\" (content hash) or a literal tag of letters, digits, '_', '.', '-'",
                    ))
                }
            },
        };

        let defaults = self.defaults(&f.defaults)?;

        // Networks.
        let mut networks = Vec::new();
        for (n, def) in &f.networks {
            if !valid_name(n) {
                return Err(self.err(
                    K::InvalidValue,
                    def.span().start,
                    format!("network name `{n}` is not valid"),
                    "use lower-case letters, digits and '-'",
                ));
            }
            networks.push(Network {
                name: n.clone(),
                internal: def.get_ref().internal,
                description: def.get_ref().description.clone(),
            });
        }
        let net_names: Vec<String> = networks.iter().map(|n| n.name.clone()).collect();
        let check_net = |n: &Spanned<String>, owner: &str| -> Result<String, ModelError> {
            if net_names.contains(n.get_ref()) {
                Ok(n.get_ref().clone())
            } else {
                Err(self.err(
                    K::UndefinedNetwork,
                    n.span().start,
                    format!(
                        "{owner} is on network `{}`, which is not defined",
                        n.get_ref()
                    ),
                    format!(
                        "add [networks.{}] or use one of: {}",
                        n.get_ref(),
                        names(net_names.iter())
                    ),
                ))
            }
        };
        let first_net = |pref: &str| -> String {
            if net_names.iter().any(|n| n == pref) {
                pref.to_string()
            } else {
                net_names.first().cloned().unwrap_or_default()
            }
        };
        if net_names.is_empty() {
            return Err(self.err(
                K::MissingKey,
                f.stack.span().start,
                "the stack defines no networks",
                "add e.g. [networks.backend] with internal = true",
            ));
        }

        // Secrets declared in the file.
        let mut secrets: Vec<Secret> = Vec::new();
        for (n, def) in &f.secrets {
            let d = def.get_ref();
            if !valid_name(n) {
                return Err(self.err(
                    K::InvalidValue,
                    def.span().start,
                    format!("secret name `{n}` is not valid"),
                    "use lower-case letters, digits and '-'",
                ));
            }
            let Some(kind) = SecretKind::parse(d.generate.get_ref()) else {
                return Err(self.err(
                    K::InvalidValue,
                    d.generate.span().start,
                    format!("unknown secret kind `{}`", d.generate.get_ref()),
                    format!("use one of: {}", SecretKind::NAMES.join(", ")),
                ));
            };
            secrets.push(Secret {
                name: n.clone(),
                generate: kind,
                from: d.from.as_ref().map(|s| s.get_ref().clone()),
                description: d.description.clone(),
                implied: false,
            });
        }
        let mut imply = |name: &str, kind: SecretKind, from: Option<&str>, what: &str| {
            if !secrets.iter().any(|s| s.name == name) {
                secrets.push(Secret {
                    name: name.to_string(),
                    generate: kind,
                    from: from.map(str::to_string),
                    description: Some(what.to_string()),
                    implied: true,
                });
            }
        };

        // Application services (a disabled one is left out, and nothing may depend on it).
        let disabled: Vec<String> = f
            .services
            .iter()
            .filter(|(_, d)| d.get_ref().enabled == Some(false))
            .map(|(n, _)| n.clone())
            .collect();
        for (sname, sdef) in &f.services {
            for dep in sdef.get_ref().depends_on.as_deref().unwrap_or_default() {
                if disabled.contains(dep.get_ref()) && !disabled.contains(sname) {
                    return Err(self.err(
                        K::UnknownDependency,
                        dep.span().start,
                        format!(
                            "service `{sname}` depends on `{}`, which is disabled{}",
                            dep.get_ref(),
                            env.map(|e| format!(" in environment `{e}`"))
                                .unwrap_or_default()
                        ),
                        "disable the dependent service too, or remove the dependency",
                    ));
                }
            }
        }
        f.services.retain(|n, _| !disabled.contains(n));
        let svc_names: Vec<String> = f.services.keys().cloned().collect();
        let comp_names: Vec<String> = components::enabled(&f.components).collect();
        let mut services = Vec::new();
        let mut postgres = Vec::new();
        let pg_infra = f.infra.postgres.clone().unwrap_or_default();
        let pg_image = self.image(
            &pg_infra.image,
            &pg_infra.build,
            "postgres:16-alpine",
            Some("stackctl/postgres:15-bookworm"),
            "postgres",
        )?;
        let pg_resources = self.resources(
            pg_infra.resources.as_ref(),
            &defaults.resources,
            defaults.reservation_percent,
        )?;
        for (sname, sdef) in &f.services {
            let at = sdef.span().start;
            let d = sdef.get_ref();
            if !valid_name(sname) {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("service name `{sname}` is not valid"),
                    "use lower-case letters, digits and '-' (it becomes a host name)",
                ));
            }
            let Some(path) = &d.path else {
                return Err(self.err(
                    K::MissingKey,
                    at,
                    format!("service `{sname}` has no `path`"),
                    format!("add path = \"services/{sname}\" (the Rust crate that builds it)"),
                ));
            };
            if self.check_paths {
                let dir = self.root.join(path.get_ref());
                if !dir.join("Cargo.toml").is_file() {
                    return Err(self.err(
                        K::MissingCratePath,
                        path.span().start,
                        format!("service `{sname}`: no crate at `{}` ({} has no Cargo.toml)", path.get_ref(), dir.display()),
                        "fix the path (relative to stack.toml) or create the crate with `cargo new --lib`",
                    ));
                }
            }
            let Some(port) = &d.port else {
                return Err(self.err(
                    K::MissingKey,
                    at,
                    format!("service `{sname}` has no `port`"),
                    "add port = NUMBER, the port the service listens on",
                ));
            };
            if *port.get_ref() == 0 {
                return Err(self.err(
                    K::InvalidValue,
                    port.span().start,
                    "port 0 is not a valid port",
                    "use a port between 1 and 65535",
                ));
            }
            let mut nets = Vec::new();
            for n in d.networks.as_deref().unwrap_or_default() {
                nets.push(check_net(n, &format!("service `{sname}`"))?);
            }
            if nets.is_empty() {
                nets.push(first_net("backend"));
            }
            let mut deps = Vec::new();
            for dep in d.depends_on.as_deref().unwrap_or_default() {
                if !svc_names.contains(dep.get_ref()) && !comp_names.contains(dep.get_ref()) {
                    return Err(self.err(
                        K::UnknownDependency,
                        dep.span().start,
                        format!("service `{sname}` depends on `{}`, which is not a service or component of this stack", dep.get_ref()),
                        format!("use one of: {}", names(svc_names.iter().chain(&comp_names).filter(|n| *n != sname))),
                    ));
                }
                if dep.get_ref() == sname {
                    return Err(self.err(
                        K::DependencyCycle,
                        dep.span().start,
                        format!("service `{sname}` depends on itself"),
                        "remove it from its own depends_on",
                    ));
                }
                deps.push(dep.get_ref().clone());
            }
            let replicas = match &d.replicas {
                Some(r) if *r.get_ref() == 0 => {
                    return Err(self.err(
                        K::InvalidValue,
                        r.span().start,
                        "replicas must be at least 1",
                        "use `stackctl stop SERVICE` to stop a service instead",
                    ))
                }
                Some(r) => *r.get_ref(),
                None => 1,
            };
            let autoscale = match &d.autoscale {
                None => None,
                Some(a) => {
                    let ad = a.get_ref();
                    let at = a.span().start;
                    let Some(max) = ad.max else {
                        return Err(self.err(
                            K::MissingKey,
                            at,
                            format!("service `{sname}`: autoscale needs a `max`"),
                            "write autoscale = { min = 2, max = 6, cpu_percent = 70 }",
                        ));
                    };
                    let min = ad.min.unwrap_or(replicas);
                    let cpu_percent = ad.cpu_percent.unwrap_or(70);
                    if min == 0 || max < min {
                        return Err(self.err(
                            K::InvalidValue,
                            at,
                            format!("service `{sname}`: autoscale min {min} and max {max} do not make a range"),
                            "use 1 <= min <= max",
                        ));
                    }
                    if !(1..=100).contains(&cpu_percent) {
                        return Err(self.err(
                            K::InvalidValue,
                            at,
                            format!("service `{sname}`: autoscale cpu_percent {cpu_percent} is not a percentage"),
                            "use a value from 1 to 100 (share of the CPU reservation)",
                        ));
                    }
                    Some(Autoscale {
                        min,
                        max,
                        cpu_percent,
                    })
                }
            };
            let health = self.health(d.healthcheck.as_ref(), &defaults.healthcheck);
            let resources = self.resources(
                d.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?;
            let mut svc_secrets = Vec::new();
            for s in d.secrets.as_deref().unwrap_or_default() {
                svc_secrets.push(s.clone());
            }
            let pg = match &d.postgres {
                None => None,
                Some(p) => {
                    let pd = p.get_ref();
                    let Some(db) = &pd.database else {
                        return Err(self.err(
                            K::MissingKey,
                            p.span().start,
                            format!("service `{sname}`: postgres needs a `database`"),
                            "add database = \"NAME_db\"",
                        ));
                    };
                    if db.get_ref().is_empty()
                        || !db
                            .get_ref()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(self.err(
                            K::InvalidValue,
                            db.span().start,
                            format!("database name `{}` is not valid", db.get_ref()),
                            "use letters, digits and '_'",
                        ));
                    }
                    let inst = pd
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("postgres-{sname}"));
                    if !valid_name(&inst) {
                        return Err(self.err(
                            K::InvalidValue,
                            p.span().start,
                            format!("postgres instance name `{inst}` is not valid"),
                            "use lower-case letters, digits and '-'",
                        ));
                    }
                    let secret = format!("{inst}-password");
                    imply(
                        &secret,
                        SecretKind::Password,
                        None,
                        &format!("password of {inst}"),
                    );
                    let res = match &pd.resources {
                        Some(r) => {
                            self.resources(Some(r), &pg_resources, defaults.reservation_percent)?
                        }
                        None => pg_resources,
                    };
                    postgres.push(Postgres {
                        name: inst.clone(),
                        service: sname.clone(),
                        database: db.get_ref().clone(),
                        user: pd.user.clone().unwrap_or_else(|| sname.replace('-', "_")),
                        password_secret: secret,
                        image: pg_image.clone(),
                        resources: res,
                        max_connections: pg_infra.max_connections.unwrap_or(100),
                        shared_buffers: pg_infra
                            .shared_buffers
                            .unwrap_or(Memory(128 * 1024 * 1024)),
                        networks: vec![first_net("backend")],
                    });
                    Some(inst)
                }
            };
            let package = d.package.clone().unwrap_or_else(|| sname.clone());
            services.push((
                sdef,
                Service {
                    name: sname.clone(),
                    path: path.get_ref().clone(),
                    binary: d.binary.clone().unwrap_or_else(|| package.clone()),
                    package,
                    description: d.description.clone(),
                    port: *port.get_ref(),
                    publish: d.publish.as_ref().map(|p| *p.get_ref()),
                    networks: nets,
                    depends_on: deps,
                    env: d.env.clone().unwrap_or_default(),
                    secrets: svc_secrets.iter().map(|s| s.get_ref().clone()).collect(),
                    resources,
                    replicas,
                    health_path: d
                        .health_path
                        .clone()
                        .unwrap_or_else(|| "/health/ready".into()),
                    healthcheck: health,
                    postgres: pg,
                    redis: d.redis.unwrap_or(false),
                    debug: d.debug.unwrap_or(false),
                    public: d.public.unwrap_or(false),
                    args: d.args.clone().unwrap_or_default(),
                    read_only: d.read_only.unwrap_or(defaults.read_only),
                    user: d.user.clone().unwrap_or_else(|| defaults.user.clone()),
                    autoscale,
                },
                svc_secrets,
            ));
        }

        // Redis.
        let redis_def = f.infra.redis.clone().unwrap_or_default();
        let uses_redis = services.iter().any(|(_, s, _)| s.redis);
        let redis = if redis_def.enabled.unwrap_or(uses_redis) {
            let password_secret = redis_def
                .password_secret
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "redis-password".into());
            let acl_secret = redis_def
                .acl_secret
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "redis-acl".into());
            imply(
                &password_secret,
                SecretKind::Password,
                None,
                "password of the Redis user the services use",
            );
            imply(
                &acl_secret,
                SecretKind::RedisAcl,
                Some(&password_secret),
                "Redis ACL file granting that password",
            );
            Some(Redis {
                name: "redis".into(),
                image: self.image(
                    &redis_def.image,
                    &redis_def.build,
                    "redis:7-alpine",
                    Some("stackctl/redis:7-bookworm"),
                    "redis",
                )?,
                port: redis_def
                    .port
                    .as_ref()
                    .map(|p| *p.get_ref())
                    .unwrap_or(6379),
                maxmemory: redis_def.maxmemory.unwrap_or(Memory(200 * 1024 * 1024)),
                maxmemory_policy: redis_def
                    .maxmemory_policy
                    .clone()
                    .unwrap_or_else(|| "noeviction".into()),
                appendonly: redis_def.appendonly.unwrap_or(true),
                password_secret,
                acl_secret,
                resources: self.resources(
                    redis_def.resources.as_ref(),
                    &defaults.resources,
                    defaults.reservation_percent,
                )?,
                networks: vec![first_net("backend")],
            })
        } else {
            if uses_redis {
                let (sdef, s, _) = services
                    .iter()
                    .find(|(_, s, _)| s.redis)
                    .expect("uses_redis");
                return Err(self.err(
                    K::InvalidValue,
                    sdef.span().start,
                    format!(
                        "service `{}` uses Redis, but [infra.redis] is disabled",
                        s.name
                    ),
                    "enable [infra.redis] or set redis = false on the service",
                ));
            }
            None
        };

        // Nginx.
        let ng = f.infra.nginx.clone().unwrap_or_default();
        let nginx = if ng.enabled.unwrap_or(true) {
            let public: Vec<&Service> = services
                .iter()
                .map(|(_, s, _)| s)
                .filter(|s| s.public)
                .collect();
            let Some(up) = public.first() else {
                return Err(self.err(
                    K::MissingKey,
                    f.stack.span().start,
                    "Nginx is enabled but no service is marked public = true",
                    "set public = true on the gateway service, or [infra.nginx] enabled = false",
                ));
            };
            if public.len() > 1 {
                let (sdef, _, _) = services
                    .iter()
                    .filter(|(_, s, _)| s.public)
                    .nth(1)
                    .expect("two public");
                return Err(self.err(
                    K::InvalidValue,
                    sdef.span().start,
                    format!(
                        "services `{}` and `{}` are both public; Nginx fronts exactly one gateway",
                        public[0].name, public[1].name
                    ),
                    "set public = true on the gateway only",
                ));
            }
            let cert = ng
                .tls_cert_secret
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "nginx-tls-cert".into());
            let key = ng
                .tls_key_secret
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "nginx-tls-key".into());
            imply(
                &cert,
                SecretKind::TlsCert,
                Some(&key),
                "self-signed TLS certificate Nginx serves",
            );
            imply(
                &key,
                SecretKind::TlsKey,
                None,
                "private key of that certificate",
            );
            let mut nets = Vec::new();
            for n in ng.networks.as_deref().unwrap_or_default() {
                nets.push(check_net(n, "nginx")?);
            }
            if nets.is_empty() {
                nets.push(first_net("frontend"));
            }
            Some(Nginx {
                name: "nginx".into(),
                image: self.image(
                    &ng.image,
                    &ng.build,
                    "nginx:1.27-alpine",
                    Some("stackctl/nginx:1.22-bookworm"),
                    "nginx",
                )?,
                http_port: ng.http_port.as_ref().map(|p| *p.get_ref()).unwrap_or(80),
                https_port: ng.https_port.as_ref().map(|p| *p.get_ref()).unwrap_or(443),
                server_name: ng.server_name.clone().unwrap_or_else(|| "localhost".into()),
                tls_cert_secret: cert,
                tls_key_secret: key,
                rate_limit: ng.rate_limit.unwrap_or(10).max(1),
                rate_burst: ng.rate_burst.unwrap_or(20),
                client_max_body_size: ng.client_max_body_size.unwrap_or(Memory(10 * 1024 * 1024)),
                networks: nets,
                resources: self.resources(
                    ng.resources.as_ref(),
                    &defaults.resources,
                    defaults.reservation_percent,
                )?,
                upstream: up.name.clone(),
                upstream_port: up.port,
                upstream_replicas: up.replicas,
            })
        } else {
            None
        };

        // Monitoring.
        let m = f.monitoring.clone();
        let monitoring = if m.enabled.unwrap_or(true) {
            let network = match &m.network {
                Some(n) => check_net(n, "monitoring")?,
                None => first_net("monitoring"),
            };
            let p = m.prometheus.clone().unwrap_or_default();
            let comp = |c: Option<&schema::AddonDef>,
                        name: &str,
                        image: &str,
                        port: u16|
             -> Result<Option<Addon>, ModelError> {
                let c = c.cloned().unwrap_or_default();
                if !c.enabled.unwrap_or(true) {
                    return Ok(None);
                }
                Ok(Some(Addon {
                    name: name.into(),
                    image: ImageSource::Registry {
                        image: c.image.clone().unwrap_or_else(|| image.into()),
                    },
                    port: c.port.as_ref().map(|p| *p.get_ref()).unwrap_or(port),
                    resources: self.resources(
                        c.resources.as_ref(),
                        &defaults.resources,
                        defaults.reservation_percent,
                    )?,
                    admin_password_secret: c
                        .admin_password_secret
                        .as_ref()
                        .map(|s| s.get_ref().clone()),
                }))
            };
            let mut grafana = comp(
                m.grafana.as_ref(),
                "grafana",
                "grafana/grafana:11.2.0",
                3001,
            )?;
            if let Some(g) = grafana.as_mut() {
                let s = g
                    .admin_password_secret
                    .get_or_insert_with(|| "grafana-admin-password".into())
                    .clone();
                imply(&s, SecretKind::Password, None, "Grafana admin password");
            }
            let a = m.alerts.clone().unwrap_or_default();
            Some(Monitoring {
                network,
                prometheus: Addon {
                    name: "prometheus".into(),
                    image: self.image(
                        &p.image,
                        &p.build,
                        "prom/prometheus:v2.54.1",
                        Some("stackctl/prometheus:2-bookworm"),
                        "prometheus",
                    )?,
                    port: p.port.as_ref().map(|p| *p.get_ref()).unwrap_or(9090),
                    resources: self.resources(
                        p.resources.as_ref(),
                        &defaults.resources,
                        defaults.reservation_percent,
                    )?,
                    admin_password_secret: None,
                },
                scrape_interval: p.scrape_interval.unwrap_or(Duration::from_secs(15)),
                retention: p.retention.unwrap_or(Duration::from_secs(15 * 86_400)),
                grafana,
                alerts: Alerts {
                    error_rate: a.error_rate.unwrap_or(0.05),
                    latency_p99: a.latency_p99.unwrap_or(Duration(1000)),
                    memory_ratio: a.memory_ratio.unwrap_or(0.9),
                    for_duration: a.for_duration.unwrap_or(Duration::from_secs(300)),
                    down_for: a.down_for.unwrap_or(Duration::from_secs(60)),
                },
            })
        } else {
            None
        };

        // `[monitoring.node_exporter]` (the older form) is the node-exporter preset.
        if monitoring.is_some() {
            self.legacy_node_exporter(&mut f.components, m.node_exporter.as_ref())?;
        }

        // Logging.
        let l = f.logging.clone();
        let logging = if l.enabled.unwrap_or(true) {
            let c = |def: Option<&schema::AddonDef>,
                     name: &str,
                     image: &str,
                     port: u16|
             -> Result<Addon, ModelError> {
                let d = def.cloned().unwrap_or_default();
                Ok(Addon {
                    name: name.into(),
                    image: ImageSource::Registry {
                        image: d.image.clone().unwrap_or_else(|| image.into()),
                    },
                    port: d.port.as_ref().map(|p| *p.get_ref()).unwrap_or(port),
                    resources: self.resources(
                        d.resources.as_ref(),
                        &defaults.resources,
                        defaults.reservation_percent,
                    )?,
                    admin_password_secret: None,
                })
            };
            Some(Logging {
                network: monitoring
                    .as_ref()
                    .map(|m| m.network.clone())
                    .unwrap_or_else(|| first_net("monitoring")),
                elasticsearch: c(
                    l.elasticsearch.as_ref(),
                    "elasticsearch",
                    "docker.elastic.co/elasticsearch/elasticsearch:8.15.0",
                    9200,
                )?,
                kibana: c(
                    l.kibana.as_ref(),
                    "kibana",
                    "docker.elastic.co/kibana/kibana:8.15.0",
                    5601,
                )?,
                filebeat: c(
                    l.filebeat.as_ref(),
                    "filebeat",
                    "docker.elastic.co/beats/filebeat:8.15.0",
                    5066,
                )?,
                retention: l.retention.unwrap_or(Duration::from_secs(7 * 86_400)),
            })
        } else {
            None
        };

        // Components, over presets that may refer to the infrastructure above.
        // Every container they may depend on, with the part of the stack it is in.
        let infra_names: Vec<(String, &str)> = postgres
            .iter()
            .map(|p| (p.name.clone(), "postgres"))
            .chain(redis.iter().map(|r| (r.name.clone(), "redis")))
            .chain(nginx.iter().map(|n| (n.name.clone(), "nginx")))
            .chain(monitoring.iter().flat_map(|m| {
                let mut v = vec![(m.prometheus.name.clone(), "monitoring")];
                v.extend(m.grafana.iter().map(|g| (g.name.clone(), "monitoring")));
                v
            }))
            .chain(logging.iter().flat_map(|l| {
                [
                    l.elasticsearch.name.clone(),
                    l.kibana.name.clone(),
                    l.filebeat.name.clone(),
                ]
                .map(|n| (n, "logging"))
            }))
            .collect();
        let container_names: Vec<String> = services
            .iter()
            .map(|(_, s, _)| s.name.clone())
            .chain(infra_names.iter().map(|(n, _)| n.clone()))
            // (with the node-exporter the older [monitoring.node_exporter] became)
            .chain(components::enabled(&f.components))
            .collect();
        let secret_names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
        let components = self.components(
            &f.components,
            &presets::PresetCx {
                postgres: &postgres,
                redis: redis.as_ref(),
                nginx: nginx.as_ref(),
                monitoring: monitoring
                    .as_ref()
                    .map(|m| m.network.clone())
                    .unwrap_or_else(|| first_net("monitoring")),
                backend: first_net("backend"),
            },
            &defaults,
            &components::Names {
                networks: &net_names,
                containers: &container_names,
                secrets: &secret_names,
            },
        )?;
        self.check_cycles(&services, &components, &f.components)?;

        // Every secret a service names must be declared.
        for (_, s, refs) in &services {
            for r in refs {
                if !secrets.iter().any(|x| &x.name == r.get_ref()) {
                    return Err(self.err(
                        K::UnknownSecret,
                        r.span().start,
                        format!(
                            "service `{}` uses secret `{}`, which is not declared",
                            s.name,
                            r.get_ref()
                        ),
                        format!(
                            "add [secrets.{}] with generate = \"password\" (or another kind: {})",
                            r.get_ref(),
                            SecretKind::NAMES.join(", ")
                        ),
                    ));
                }
            }
        }
        for s in &secrets {
            if s.generate == SecretKind::RedisAcl
                && s.from
                    .as_deref()
                    .is_none_or(|f| !secrets.iter().any(|x| x.name == f))
            {
                let at = f.secrets.get(&s.name).map(|d| d.span().start).unwrap_or(0);
                return Err(self.err(
                    K::UnknownSecret,
                    at,
                    format!(
                        "redis-acl secret `{}` needs `from`, naming a declared password secret",
                        s.name
                    ),
                    "add from = \"redis-password\"",
                ));
            }
        }

        // Names must be unique across every container of the stack.
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (_, s, _) in &services {
            seen.insert(s.name.clone(), "services");
        }
        let all = infra_names
            .into_iter()
            .chain(components.iter().map(|c| (c.name.clone(), "components")));
        for (n, what) in all {
            if let Some(prev) = seen.insert(n.clone(), what) {
                let at = f.services.get(&n).map(|d| d.span().start).unwrap_or(0);
                return Err(self.err(
                    K::DuplicateName,
                    at,
                    format!("`{n}` names both a container of [{prev}] and one of [{what}]"),
                    "rename the service or the postgres instance (postgres = { name = \"...\" })",
                ));
            }
        }

        // Ports: each service port once; each published host port once.
        let mut ports: HashMap<u16, (String, usize)> = HashMap::new();
        for (sdef, s, _) in &services {
            let d = sdef.get_ref();
            let at = d.port.as_ref().map(|p| p.span().start).unwrap_or(0);
            if let Some((other, _)) = ports.insert(s.port, (s.name.clone(), at)) {
                return Err(self.err(
                    K::DuplicatePort,
                    at,
                    format!("port {} is used by both `{other}` and `{}`", s.port, s.name),
                    "give each service its own port",
                ));
            }
        }
        let mut host: HashMap<u16, String> = HashMap::new();
        let mut published: Vec<(u16, String, usize)> = Vec::new();
        for (sdef, s, _) in &services {
            if let Some(p) = s.publish {
                published.push((
                    p,
                    format!("service `{}` (publish)", s.name),
                    sdef.get_ref()
                        .publish
                        .as_ref()
                        .map(|x| x.span().start)
                        .unwrap_or(0),
                ));
            }
        }
        if let Some(n) = &nginx {
            let at = |p: &Option<Spanned<u16>>| p.as_ref().map(|x| x.span().start).unwrap_or(0);
            published.push((n.http_port, "nginx http_port".into(), at(&ng.http_port)));
            published.push((n.https_port, "nginx https_port".into(), at(&ng.https_port)));
        }
        if let Some(m) = &monitoring {
            published.push((m.prometheus.port, "prometheus".into(), 0));
            for c in m.grafana.iter() {
                published.push((c.port, c.name.clone(), 0));
            }
        }
        if let Some(l) = &logging {
            published.push((l.elasticsearch.port, "elasticsearch".into(), 0));
            published.push((l.kibana.port, "kibana".into(), 0));
        }
        for c in &components {
            let at = f
                .components
                .get(&c.name)
                .map(|d| d.span().start)
                .unwrap_or(0);
            for p in &c.publish {
                published.push((p.host, format!("component `{}`", c.name), at));
            }
        }
        for (p, who, at) in published {
            if p == 0 {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{who}: port 0 is not a valid port"),
                    "use a port between 1 and 65535",
                ));
            }
            if let Some(other) = host.insert(p, who.clone()) {
                return Err(self.err(
                    K::DuplicatePort,
                    at,
                    format!("host port {p} is published by both {other} and {who}"),
                    "change one of them (environments may override ports to avoid clashes)",
                ));
            }
        }

        // Dependency order (cycles are errors).
        let order = self.topo(&services)?;
        let mut by_name: HashMap<String, Service> = services
            .into_iter()
            .map(|(_, s, _)| (s.name.clone(), s))
            .collect();
        let services: Vec<Service> = order
            .iter()
            .map(|n| by_name.remove(n).expect("ordered"))
            .collect();

        let deploy = self.deploy(&f.deploy)?;
        let jobs = self.jobs(&f.jobs, &services)?;

        Ok(Stack {
            name,
            description: stack_sec.description.clone(),
            registry: stack_sec.registry.clone().filter(|r| !r.is_empty()),
            tag,
            version: stack_sec.version.clone().unwrap_or_else(|| "0.1.0".into()),
            environment: env.map(str::to_string),
            environments,
            root: self.root.to_path_buf(),
            file: self.cx.file.to_path_buf(),
            source: self.cx.src.to_string(),
            project: None,
            defaults,
            networks,
            secrets,
            services,
            postgres,
            redis,
            nginx,
            monitoring,
            logging,
            deploy,
            jobs,
            components,
        })
    }

    fn deploy(&self, d: &schema::DeployDef) -> Result<DeploySettings, ModelError> {
        let keep = match &d.keep {
            Some(k) if *k.get_ref() == 0 => {
                return Err(self.err(
                    K::InvalidValue,
                    k.span().start,
                    "deploy.keep = 0 would keep no revision to roll back to",
                    "keep at least 1 (default 5)",
                ))
            }
            Some(k) => *k.get_ref(),
            None => 5,
        };
        Ok(DeploySettings {
            ready_timeout: d.ready_timeout.unwrap_or(Duration::from_secs(120)),
            drain: d.drain.unwrap_or(Duration::from_secs(2)),
            watch: d.watch.unwrap_or(Duration::from_secs(30)),
            keep,
            lock_ttl: d.lock_ttl.unwrap_or(Duration::from_secs(30 * 60)),
        })
    }

    fn jobs(
        &self,
        defs: &IndexMap<String, Spanned<schema::JobDef>>,
        services: &[Service],
    ) -> Result<Vec<Job>, ModelError> {
        let svc_names = || names(services.iter().map(|s| &s.name));
        let mut out = Vec::new();
        for (name, def) in defs {
            let at = def.span().start;
            let j = def.get_ref();
            if !valid_name(name) {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("job name `{name}` is not valid"),
                    "use lower-case letters, digits and '-'",
                ));
            }
            let svc = j.service.get_ref();
            if !services.iter().any(|s| &s.name == svc) {
                return Err(self.err(
                    K::UnknownDependency,
                    j.service.span().start,
                    format!("job `{name}` runs in service `{svc}`, which is not defined (or not enabled)"),
                    format!("use one of: {}", svc_names()),
                ));
            }
            if j.command.is_empty() {
                return Err(self.err(
                    K::MissingKey,
                    at,
                    format!("job `{name}` has an empty command"),
                    "give the binary's arguments, e.g. command = [\"migrate\"]",
                ));
            }
            let mut before = Vec::new();
            for b in j.before.iter().flatten() {
                if !services.iter().any(|s| &s.name == b.get_ref()) {
                    return Err(self.err(
                        K::UnknownDependency,
                        b.span().start,
                        format!(
                            "job `{name}` must run before `{}`, which is not a service",
                            b.get_ref()
                        ),
                        format!("use one of: {}", svc_names()),
                    ));
                }
                // The job waits for its service's dependencies; a service
                // among them cannot also wait for the job.
                let mut deps: Vec<&String> = Vec::new();
                let mut todo = vec![svc];
                while let Some(n) = todo.pop() {
                    for d in services
                        .iter()
                        .filter(|s| &s.name == n)
                        .flat_map(|s| &s.depends_on)
                    {
                        if !deps.contains(&d) {
                            deps.push(d);
                            todo.push(d);
                        }
                    }
                }
                if deps.contains(&b.get_ref()) {
                    return Err(self.err(
                        K::DependencyCycle,
                        b.span().start,
                        format!(
                            "job `{name}` must run before `{}`, but its service `{svc}` depends on `{}`: each would wait for the other",
                            b.get_ref(),
                            b.get_ref()
                        ),
                        format!("drop `{}` from `before`, or run the job in a service that does not depend on it", b.get_ref()),
                    ));
                }
                before.push(b.get_ref().clone());
            }
            if before.is_empty() {
                before.push(svc.clone());
            }
            out.push(Job {
                name: name.clone(),
                service: svc.clone(),
                command: j.command.clone(),
                before,
                timeout: j.timeout.unwrap_or(Duration::from_secs(300)),
                description: j.description.clone(),
            });
        }
        Ok(out)
    }

    fn topo(&self, services: &[Resolved<'_>]) -> Result<Vec<String>, ModelError> {
        let mut done: Vec<String> = Vec::new();
        let mut left: Vec<&Service> = services.iter().map(|(_, s, _)| s).collect();
        while !left.is_empty() {
            let ready = left.iter().position(|s| {
                s.depends_on
                    .iter()
                    .all(|d| done.contains(d) || !left.iter().any(|l| &l.name == d))
            });
            match ready {
                Some(i) => done.push(left.remove(i).name.clone()),
                None => {
                    // Walk from any remaining service until a node repeats: that is the cycle.
                    let mut path = vec![left[0].name.clone()];
                    loop {
                        let cur = path.last().expect("non-empty");
                        let s = left.iter().find(|s| &s.name == cur).expect("remaining");
                        let next = s
                            .depends_on
                            .iter()
                            .find(|d| !done.contains(d) && left.iter().any(|l| &l.name == *d))
                            .expect("blocked")
                            .clone();
                        if let Some(pos) = path.iter().position(|p| *p == next) {
                            let cycle: Vec<String> =
                                path[pos..].iter().cloned().chain([next.clone()]).collect();
                            let from = &path[path.len() - 1];
                            let at = services
                                .iter()
                                .find(|(_, s, _)| &s.name == from)
                                .and_then(|(d, _, _)| {
                                    d.get_ref()
                                        .depends_on
                                        .as_ref()?
                                        .iter()
                                        .find(|x| *x.get_ref() == next)
                                        .map(|x| x.span().start)
                                })
                                .unwrap_or(0);
                            return Err(self.err(
                                K::DependencyCycle,
                                at,
                                format!("services depend on each other in a cycle: {}", cycle.join(" -> ")),
                                "remove one of these depends_on entries so the services can start in order",
                            ));
                        }
                        path.push(next);
                    }
                }
            }
        }
        Ok(done)
    }

    fn defaults(&self, d: &schema::Defaults) -> Result<Defaults, ModelError> {
        let restart = match &d.restart {
            Some(r) if !RESTARTS.contains(&r.get_ref().as_str()) => {
                return Err(self.err(
                    K::InvalidValue,
                    r.span().start,
                    format!("unknown restart policy `{}`", r.get_ref()),
                    format!("use one of: {}", RESTARTS.join(", ")),
                ))
            }
            Some(r) => r.get_ref().clone(),
            None => "unless-stopped".into(),
        };
        let pct = match &d.reservation_percent {
            Some(p) if !(1..=100).contains(p.get_ref()) => {
                return Err(self.err(
                    K::InvalidValue,
                    p.span().start,
                    format!("reservation_percent {} is out of range", p.get_ref()),
                    "use a percentage from 1 to 100",
                ))
            }
            Some(p) => *p.get_ref(),
            None => 50,
        };
        let base_health = Health {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            retries: 3,
            start_period: Duration::from_secs(60),
        };
        let base_res = Resources {
            memory: Memory(256 * 1024 * 1024),
            cpus: 0.5,
            reserve_memory: Memory(128 * 1024 * 1024),
            reserve_cpus: 0.25,
        };
        Ok(Defaults {
            user: d.user.clone().unwrap_or_else(|| "1001:1001".into()),
            read_only: d.read_only.unwrap_or(true),
            restart,
            healthcheck: self.health(d.healthcheck.as_ref(), &base_health),
            resources: self.resources(d.resources.as_ref(), &base_res, pct)?,
            reservation_percent: pct,
            stop_grace_period: d.stop_grace_period.unwrap_or(Duration::from_secs(10)),
        })
    }

    fn health(&self, h: Option<&schema::HealthDef>, base: &Health) -> Health {
        let Some(h) = h else { return *base };
        Health {
            interval: h.interval.unwrap_or(base.interval),
            timeout: h.timeout.unwrap_or(base.timeout),
            retries: h.retries.unwrap_or(base.retries),
            start_period: h.start_period.unwrap_or(base.start_period),
        }
    }

    /// Limits from `r` (falling back to `base`); reservations default to `pct` % of the limits.
    fn resources(
        &self,
        r: Option<&schema::ResourcesDef>,
        base: &Resources,
        pct: u8,
    ) -> Result<Resources, ModelError> {
        let Some(r) = r else { return Ok(*base) };
        let memory = r.memory.unwrap_or(base.memory);
        let cpus = match &r.cpus {
            Some(c) if !(*c.get_ref() > 0.0 && *c.get_ref() <= 1024.0) => {
                return Err(self.err(
                    K::InvalidValue,
                    c.span().start,
                    format!("cpus = {} is out of range", c.get_ref()),
                    "use a positive number of CPUs, e.g. 0.5",
                ))
            }
            Some(c) => *c.get_ref(),
            None => base.cpus,
        };
        let reserve_memory = r.reserve_memory.unwrap_or_else(|| memory.percent(pct));
        let reserve_cpus = match &r.reserve_cpus {
            Some(c) if !(*c.get_ref() > 0.0 && *c.get_ref() <= cpus) => {
                return Err(self.err(
                    K::InvalidValue,
                    c.span().start,
                    format!(
                        "reserve_cpus = {} must be positive and at most cpus = {cpus}",
                        c.get_ref()
                    ),
                    "lower the reservation or raise the limit",
                ))
            }
            Some(c) => *c.get_ref(),
            None => (cpus * pct as f64 / 100.0 * 1000.0).round() / 1000.0,
        };
        if reserve_memory > memory {
            return Err(self.err(
                K::BadMemory,
                0,
                format!("reserve_memory {reserve_memory} is larger than the memory limit {memory}"),
                "lower the reservation or raise the limit",
            ));
        }
        Ok(Resources {
            memory,
            cpus,
            reserve_memory,
            reserve_cpus,
        })
    }

    fn image(
        &self,
        image: &Option<String>,
        build: &Option<Spanned<String>>,
        default: &str,
        local: Option<&str>,
        what: &str,
    ) -> Result<ImageSource, ModelError> {
        match build {
            None => Ok(ImageSource::Registry { image: image.clone().unwrap_or_else(|| default.into()) }),
            Some(b) if b.get_ref() == "debian" => match local {
                Some(l) => Ok(ImageSource::Debian { image: image.clone().unwrap_or_else(|| l.into()) }),
                None => Err(self.err(K::InvalidValue, b.span().start, format!("{what} cannot be built from Debian packages"), "remove `build` and use a registry image")),
            },
            Some(b) => Err(self.err(K::InvalidValue, b.span().start, format!("unknown build source `{}` for {what}", b.get_ref()), "use build = \"debian\" (built locally from Debian packages) or remove it to pull `image`")),
        }
    }
}

/// Where `[path` or `[path.` first appears (tables spans are not kept for
/// implicit tables), or 0.
fn header_offset(src: &str, path: &str) -> usize {
    let exact = format!("[{path}]");
    let prefix = format!("[{path}.");
    src.find(&exact)
        .or_else(|| src.find(&prefix))
        .map(|i| i + 1)
        .unwrap_or(0)
}

fn merge_opt<T: Merge + Clone>(base: &mut T, over: Option<&T>) {
    if let Some(o) = over {
        base.merge(o);
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: BTreeSet<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.into_iter().collect::<Vec<_>>().join(", ")
    }
}
