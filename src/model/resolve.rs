//! Loading stack.toml and turning it into a validated [`Stack`].

use super::containers::Kind;
use super::schema::{self, Merge, StackFile};
use super::units::{Duration, Memory, BAD_DURATION, BAD_MEMORY};
use super::*;
use crate::error::{Error, ModelError, ModelErrorKind as K};
use indexmap::IndexMap;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use toml::Spanned;

mod components;
mod infra;
pub mod presets;
mod services;
mod settings;

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
    // paths, whatever `-f` was given. Canonical, too: the bind-mount paths
    // enter each container's config hash, so `-f ../stack.toml` from a
    // subdirectory must name the same files as `stackctl` run at the root
    // (or every container would look changed and be recreated).
    let root = std::fs::canonicalize(&root).map_err(|source| Error::Read {
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

/// The stack's networks, by name.
struct Nets(Vec<String>);

impl Nets {
    /// `pref` when the stack defines it, else its first network.
    fn first(&self, pref: &str) -> String {
        if self.0.iter().any(|n| n == pref) {
            pref.to_string()
        } else {
            self.0.first().cloned().unwrap_or_default()
        }
    }
}

/// Prometheus joins, besides its own, a network of each target it shares
/// none with (an `internal` one first), so the services need not sit on the
/// monitoring network beside Grafana, the exporters and logging: Prometheus
/// is the only monitoring container that reaches them.
fn scrape_networks(prometheus: &mut Vec<String>, targets: &[Vec<String>], all: &[Network]) {
    for t in targets {
        if t.is_empty() || t.iter().any(|n| prometheus.contains(n)) {
            continue;
        }
        let internal = |n: &&String| all.iter().any(|a| &a.name == *n && a.internal);
        let join = t.iter().find(internal).unwrap_or(&t[0]);
        prometheus.push(join.clone());
    }
}

/// Declares a secret stackctl needs (a database password, the TLS pair),
/// unless stack.toml declares it already.
fn imply(secrets: &mut Vec<Secret>, name: &str, kind: SecretKind, from: Option<&str>, what: &str) {
    if !secrets.iter().any(|s| s.name == name) {
        secrets.push(Secret {
            name: name.to_string(),
            generate: kind,
            from: from.map(str::to_string),
            description: Some(what.to_string()),
            implied: true,
        });
    }
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
        let (name, tag) = self.header(&f)?;
        let defaults = self.defaults(&f.defaults)?;
        let mut networks = self.networks(&f)?;
        let mut nets = Nets(networks.iter().map(|n| n.name.clone()).collect());
        let mut secrets = self.declared_secrets(&f)?;

        // Application services (a disabled one is left out).
        self.drop_disabled(&mut f, env)?;
        let svc_names: Vec<String> = f.services.keys().cloned().collect();
        let comp_names: Vec<String> = components::enabled(&f.components).collect();
        let names = services::ServiceNames {
            nets: &nets,
            services: &svc_names,
            components: &comp_names,
        };
        let pg_base = self.pg_base(
            &f.infra.postgres.clone().unwrap_or_default(),
            &defaults,
            nets.first("backend"),
        )?;
        let mut services = Vec::new();
        let mut postgres = Vec::new();
        for (sname, sdef) in &f.services {
            let (svc, pg) = self.service(sname, sdef, &defaults, &names, &pg_base, &mut secrets)?;
            services.push(svc);
            postgres.extend(pg);
        }

        // The infrastructure's settings, then every container other than the services.
        let redis = self.redis(&f, &services, &defaults, &nets, &mut secrets)?;
        let nginx = self.nginx(&f, &services, &defaults, &nets, &mut secrets)?;
        let monitoring = self.monitoring(&f.monitoring, &defaults, &nets, &mut secrets)?;
        if monitoring.is_some() {
            // `[monitoring.node_exporter]` (the older form) is the node-exporter preset.
            let legacy = f.monitoring.node_exporter.clone();
            self.legacy_node_exporter(&mut f.components, legacy.as_ref())?;
        }
        let monitoring_net = monitoring
            .as_ref()
            .map(|m| m.network.clone())
            .unwrap_or_else(|| nets.first("monitoring"));
        let logging = self.logging(&f.logging, monitoring_net.clone(), &defaults, &mut secrets)?;
        if let Some(l) = &logging {
            if !nets.0.contains(&l.docker_api_network) {
                networks.push(Network {
                    name: l.docker_api_network.clone(),
                    internal: true,
                    description: Some(
                        "Filebeat and the read-only Docker API proxy, no one else".into(),
                    ),
                });
                nets.0.push(l.docker_api_network.clone());
            }
        }
        let infra = infra::infra(&infra::Infra {
            postgres: &postgres,
            redis: redis.as_ref(),
            nginx: nginx.as_ref(),
            monitoring: monitoring.as_ref(),
            logging: logging.as_ref(),
        });
        let container_names: Vec<String> = services
            .iter()
            .map(|(_, s, _)| s.name.clone())
            .chain(infra.iter().map(|i| i.name.clone()))
            .chain(components::enabled(&f.components))
            .collect();
        let secret_names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
        let cnames = components::Names {
            networks: &nets.0,
            containers: &container_names,
            secrets: &secret_names,
            redis: redis.is_some(),
        };
        let mut components =
            self.infra_components(infra, &mut f.components, &defaults, &cnames, &mut secrets)?;
        let cx = presets::PresetCx {
            postgres: &postgres,
            redis: redis.as_ref(),
            nginx: nginx.as_ref(),
            monitoring: monitoring_net,
            backend: nets.first("backend"),
        };
        components.extend(self.components(&f.components, &cx, &defaults, &cnames, &mut secrets)?);
        if let Some(m) = &monitoring {
            let targets = services
                .iter()
                .map(|(_, s, _)| &s.networks)
                .chain(
                    components
                        .iter()
                        .filter(|c| c.metrics.is_some())
                        .map(|c| &c.networks),
                )
                .cloned()
                .collect::<Vec<_>>();
            if let Some(p) = components.iter_mut().find(|c| c.name == m.prometheus.name) {
                scrape_networks(&mut p.networks, &targets, &networks);
            }
        }
        self.check_cycles(&services, &components, &f.components)?;
        self.check_secrets(&f, &services, &secrets)?;
        self.check_names(&f, &services, &components)?;
        self.check_ports(&f, &services, &components)?;

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
        let stack_sec = f.stack.get_ref();
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

    /// The stack's name and image tag strategy.
    fn header(&self, f: &StackFile) -> Result<(String, TagStrategy), ModelError> {
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
        Ok((name, tag))
    }

    fn networks(&self, f: &StackFile) -> Result<Vec<Network>, ModelError> {
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
        if networks.is_empty() {
            return Err(self.err(
                K::MissingKey,
                f.stack.span().start,
                "the stack defines no networks",
                "add e.g. [networks.backend] with internal = true",
            ));
        }
        Ok(networks)
    }

    /// A network a table names: it must be defined.
    fn net(&self, nets: &Nets, n: &Spanned<String>, owner: &str) -> Result<String, ModelError> {
        if nets.0.contains(n.get_ref()) {
            return Ok(n.get_ref().clone());
        }
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
                names(nets.0.iter())
            ),
        ))
    }

    /// The secrets stack.toml declares.
    fn declared_secrets(&self, f: &StackFile) -> Result<Vec<Secret>, ModelError> {
        let mut secrets = Vec::new();
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
        Ok(secrets)
    }

    /// `owner` names secret `name`, which stack.toml does not declare.
    fn unknown_secret(&self, at: usize, owner: &str, name: &str) -> ModelError {
        self.err(
            K::UnknownSecret,
            at,
            format!("{owner} uses secret `{name}`, which is not declared"),
            format!(
                "add [secrets.{name}] with generate = \"password\" (or another kind: {})",
                SecretKind::NAMES.join(", ")
            ),
        )
    }

    /// Every secret a service names is declared; a Redis ACL names its password.
    fn check_secrets(
        &self,
        f: &StackFile,
        services: &[Resolved<'_>],
        secrets: &[Secret],
    ) -> Result<(), ModelError> {
        for (_, s, refs) in services {
            for r in refs {
                if !secrets.iter().any(|x| &x.name == r.get_ref()) {
                    return Err(self.unknown_secret(
                        r.span().start,
                        &format!("service `{}`", s.name),
                        r.get_ref(),
                    ));
                }
            }
        }
        for s in secrets {
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
        Ok(())
    }

    /// Names are unique across every container of the stack.
    fn check_names(
        &self,
        f: &StackFile,
        services: &[Resolved<'_>],
        components: &[Component],
    ) -> Result<(), ModelError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (_, s, _) in services {
            seen.insert(&s.name, "services");
        }
        for c in components {
            let what = match c.kind {
                Kind::Component => "components",
                k => k.group(),
            };
            if let Some(prev) = seen.insert(&c.name, what) {
                let at = f.services.get(&c.name).map(|d| d.span().start).unwrap_or(0);
                return Err(self.err(
                    K::DuplicateName,
                    at,
                    format!(
                        "`{}` names both a container of [{prev}] and one of [{what}]",
                        c.name
                    ),
                    "rename one of them (a service's PostgreSQL instance is renamed with postgres = { name = \"...\" })",
                ));
            }
        }
        // An alias is one more host name on the same networks.
        let mut owner: HashMap<&str, &str> = seen.keys().map(|n| (*n, *n)).collect();
        for c in components {
            for a in &c.aliases {
                if let Some(prev) = owner.insert(a, &c.name) {
                    let at = f
                        .components
                        .get(&c.name)
                        .map(|d| d.span().start)
                        .unwrap_or(0);
                    return Err(self.err(
                        K::DuplicateName,
                        at,
                        format!(
                            "alias `{a}` of component `{}` is already a name of `{prev}`",
                            c.name
                        ),
                        "choose another alias: each host name of the stack names one container",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each service port once; each published host port once.
    fn check_ports(
        &self,
        f: &StackFile,
        services: &[Resolved<'_>],
        components: &[Component],
    ) -> Result<(), ModelError> {
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for (sdef, s, _) in services {
            let at = sdef
                .get_ref()
                .port
                .as_ref()
                .map(|p| p.span().start)
                .unwrap_or(0);
            if let Some(other) = ports.insert(s.port, &s.name) {
                return Err(self.err(
                    K::DuplicatePort,
                    at,
                    format!("port {} is used by both `{other}` and `{}`", s.port, s.name),
                    "give each service its own port",
                ));
            }
        }
        let mut published: Vec<(u16, String, usize)> = Vec::new();
        for (sdef, s, _) in services {
            if let (Some(p), Some(at)) = (s.publish, &sdef.get_ref().publish) {
                published.push((
                    p,
                    format!("service `{}` (publish)", s.name),
                    at.span().start,
                ));
            }
        }
        for c in components {
            // Where the ports were given: the component's table, else its settings' table.
            let at = match f.components.get(&c.name) {
                Some(d) => d.span().start,
                None => header_offset(self.cx.src, &format!("infra.{}", c.kind.as_str())),
            };
            for p in &c.publish {
                let who = match c.kind {
                    Kind::Component => format!("component `{}`", c.name),
                    _ => c.name.clone(),
                };
                published.push((p.host, who, at));
            }
        }
        let mut host: HashMap<u16, String> = HashMap::new();
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
        Ok(())
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
            pids: 1024,
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
        let pids = match &r.pids {
            Some(p) if *p.get_ref() < 16 => {
                return Err(self.err(
                    K::InvalidValue,
                    p.span().start,
                    format!("pids = {} leaves no room to start", p.get_ref()),
                    "use at least 16 (the default is 1024)",
                ))
            }
            Some(p) => *p.get_ref(),
            None => base.pids,
        };
        Ok(Resources {
            memory,
            cpus,
            reserve_memory,
            reserve_cpus,
            pids,
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
