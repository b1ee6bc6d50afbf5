//! `[services.NAME]`: the Rust crates of the workspace, each with its own
//! PostgreSQL instance when it asks for one.

use super::*;

/// The PostgreSQL settings every instance shares (`[infra.postgres]`).
pub(super) struct PgBase {
    pub image: ImageSource,
    pub resources: Resources,
    pub max_connections: u32,
    pub shared_buffers: Memory,
    pub network: String,
}

/// What a service may name: networks, and the services and components it may depend on.
pub(super) struct ServiceNames<'a> {
    pub nets: &'a Nets,
    pub services: &'a [String],
    pub components: &'a [String],
}

impl Resolver<'_> {
    /// Disabled services are left out; nothing enabled may depend on one.
    pub(super) fn drop_disabled(
        &self,
        f: &mut StackFile,
        env: Option<&str>,
    ) -> Result<(), ModelError> {
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
        Ok(())
    }

    pub(super) fn pg_base(
        &self,
        pg: &schema::PostgresInfraDef,
        defaults: &Defaults,
        network: String,
    ) -> Result<PgBase, ModelError> {
        Ok(PgBase {
            image: self.image(
                &pg.image,
                &pg.build,
                "postgres:16-alpine",
                Some("stackctl/postgres:15-bookworm"),
                "postgres",
            )?,
            resources: self.resources(
                pg.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            max_connections: pg.max_connections.unwrap_or(100),
            shared_buffers: pg.shared_buffers.unwrap_or(Memory(128 * 1024 * 1024)),
            network,
        })
    }

    /// One service, and its PostgreSQL instance when it has one.
    pub(super) fn service<'d>(
        &self,
        sname: &str,
        sdef: &'d Spanned<schema::ServiceDef>,
        defaults: &Defaults,
        names: &ServiceNames<'_>,
        pg_base: &PgBase,
        secrets: &mut Vec<Secret>,
    ) -> Result<(Resolved<'d>, Option<Postgres>), ModelError> {
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
        let path = self.crate_path(sname, at, d)?;
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
            nets.push(self.net(names.nets, n, &format!("service `{sname}`"))?);
        }
        if nets.is_empty() {
            nets.push(names.nets.first("backend"));
        }
        let deps = self.service_deps(sname, d, names)?;
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
            Some(a) => Some(self.autoscale(sname, a, replicas)?),
        };
        let pg = match &d.postgres {
            None => None,
            Some(p) => Some(self.service_postgres(sname, p, pg_base, defaults, secrets)?),
        };
        let refs: Vec<Spanned<String>> = d.secrets.clone().unwrap_or_default();
        let package = d.package.clone().unwrap_or_else(|| sname.to_string());
        let service = Service {
            name: sname.to_string(),
            path: path.get_ref().clone(),
            binary: d.binary.clone().unwrap_or_else(|| package.clone()),
            package,
            description: d.description.clone(),
            port: *port.get_ref(),
            publish: d.publish.as_ref().map(|p| *p.get_ref()),
            networks: nets,
            depends_on: deps,
            env: d.env.clone().unwrap_or_default(),
            secrets: refs.iter().map(|s| s.get_ref().clone()).collect(),
            resources: self.resources(
                d.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            replicas,
            health_path: d
                .health_path
                .clone()
                .unwrap_or_else(|| "/health/ready".into()),
            healthcheck: self.health(d.healthcheck.as_ref(), &defaults.healthcheck),
            postgres: pg.as_ref().map(|p| p.name.clone()),
            redis: self.redis_access(
                sname,
                &format!("service `{sname}`"),
                d.redis.as_ref(),
                d.redis.as_ref().map_or(0, |r| r.span().start),
                secrets,
            )?,
            debug: d.debug.unwrap_or(false),
            public: d.public.unwrap_or(false),
            args: d.args.clone().unwrap_or_default(),
            read_only: d.read_only.unwrap_or(defaults.read_only),
            user: d.user.clone().unwrap_or_else(|| defaults.user.clone()),
            autoscale,
        };
        Ok(((sdef, service, refs), pg))
    }

    /// A service's or component's own Redis ACL user (`owner` names it):
    /// `redis = true` gives the default access (its `<owner>:` keys and the
    /// shared `revoked:` list, reads, writes and scripts), a table narrows
    /// it. Its password secret is implied.
    pub(super) fn redis_access(
        &self,
        owner: &str,
        what: &str,
        r: Option<&Spanned<schema::RedisUseDef>>,
        at: usize,
        secrets: &mut Vec<Secret>,
    ) -> Result<Option<RedisAccess>, ModelError> {
        use schema::RedisUseDef as U;
        let Some(r) = r else { return Ok(None) };
        let def = match r.get_ref() {
            U::Switch(false) => return Ok(None),
            U::Switch(true) => schema::RedisAccessDef::default(),
            U::Access(a) => a.clone(),
        };
        if owner == "default" {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: a container named `default` cannot have its own Redis user (`default` is Redis' administrator)"),
                "rename it",
            ));
        }
        let patterns = |list: Option<Vec<String>>, dflt: Vec<String>, kind: &str| {
            let list = list.unwrap_or(dflt);
            match list
                .iter()
                .find(|p| p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                Some(bad) => Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: Redis {kind} pattern `{bad}` is not valid"),
                    format!("use a glob without spaces, e.g. \"{owner}:*\""),
                )),
                None => Ok(list),
            }
        };
        let keys = patterns(
            def.keys,
            vec![format!("{owner}:*"), "revoked:*".into()],
            "key",
        )?;
        let read = patterns(def.read, vec![], "read")?;
        let write = patterns(def.write, vec![], "write")?;
        let is_command = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'|' || b == b'-' || b == b'_')
        };
        let commands = def
            .commands
            .unwrap_or_else(|| ["@read", "@write", "@scripting"].map(String::from).to_vec());
        if let Some(bad) = commands
            .iter()
            .find(|c| !is_command(c.strip_prefix('@').unwrap_or(c)))
        {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: `{bad}` is not a Redis command or @category"),
                "name commands (\"get\", \"script|load\") or categories (\"@read\"); @dangerous ones are always off",
            ));
        }
        let dangerous = def.dangerous.unwrap_or_default();
        if let Some(bad) = dangerous.iter().find(|c| !is_command(c)) {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: `{bad}` in `dangerous` is not a Redis command"),
                "name each @dangerous command it needs (\"info\", \"config|get\"); categories are not allowed there",
            ));
        }
        let password_secret = format!("redis-{owner}-password");
        imply(
            secrets,
            &password_secret,
            SecretKind::Password,
            None,
            &format!("password of {owner}'s own Redis user"),
        );
        Ok(Some(RedisAccess {
            user: owner.to_string(),
            password_secret,
            keys,
            read,
            write,
            commands,
            dangerous,
        }))
    }

    /// The crate's path, checked on disk when asked to.
    fn crate_path<'d>(
        &self,
        sname: &str,
        at: usize,
        d: &'d schema::ServiceDef,
    ) -> Result<&'d Spanned<String>, ModelError> {
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
                    format!(
                        "service `{sname}`: no crate at `{}` ({} has no Cargo.toml)",
                        path.get_ref(),
                        dir.display()
                    ),
                    "fix the path (relative to stack.toml) or create the crate with `cargo new --lib`",
                ));
            }
        }
        Ok(path)
    }

    fn service_deps(
        &self,
        sname: &str,
        d: &schema::ServiceDef,
        known: &ServiceNames<'_>,
    ) -> Result<Vec<String>, ModelError> {
        let mut deps = Vec::new();
        for dep in d.depends_on.as_deref().unwrap_or_default() {
            let n = dep.get_ref();
            if !known.services.contains(n) && !known.components.contains(n) {
                return Err(self.err(
                    K::UnknownDependency,
                    dep.span().start,
                    format!("service `{sname}` depends on `{n}`, which is not a service or component of this stack"),
                    format!(
                        "use one of: {}",
                        names(
                            known
                                .services
                                .iter()
                                .chain(known.components)
                                .filter(|x| *x != sname)
                        )
                    ),
                ));
            }
            if n == sname {
                return Err(self.err(
                    K::DependencyCycle,
                    dep.span().start,
                    format!("service `{sname}` depends on itself"),
                    "remove it from its own depends_on",
                ));
            }
            deps.push(n.clone());
        }
        Ok(deps)
    }

    fn autoscale(
        &self,
        sname: &str,
        a: &Spanned<schema::AutoscaleDef>,
        replicas: u32,
    ) -> Result<Autoscale, ModelError> {
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
                format!(
                    "service `{sname}`: autoscale cpu_percent {cpu_percent} is not a percentage"
                ),
                "use a value from 1 to 100 (share of the CPU reservation)",
            ));
        }
        Ok(Autoscale {
            min,
            max,
            cpu_percent,
        })
    }

    /// The service's own PostgreSQL instance; its password is an implied secret.
    fn service_postgres(
        &self,
        sname: &str,
        p: &Spanned<schema::PostgresDef>,
        base: &PgBase,
        defaults: &Defaults,
        secrets: &mut Vec<Secret>,
    ) -> Result<Postgres, ModelError> {
        let pd = p.get_ref();
        let Some(db) = &pd.database else {
            return Err(self.err(
                K::MissingKey,
                p.span().start,
                format!("service `{sname}`: postgres needs a `database`"),
                "add database = \"NAME_db\"",
            ));
        };
        let dbname = db.get_ref();
        if dbname.is_empty()
            || !dbname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(self.err(
                K::InvalidValue,
                db.span().start,
                format!("database name `{dbname}` is not valid"),
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
            secrets,
            &secret,
            SecretKind::Password,
            None,
            &format!("password of {inst}"),
        );
        let resources = match &pd.resources {
            Some(r) => self.resources(Some(r), &base.resources, defaults.reservation_percent)?,
            None => base.resources,
        };
        Ok(Postgres {
            name: inst,
            service: sname.to_string(),
            database: dbname.clone(),
            user: pd.user.clone().unwrap_or_else(|| sname.replace('-', "_")),
            password_secret: secret,
            image: base.image.clone(),
            resources,
            max_connections: base.max_connections,
            shared_buffers: base.shared_buffers,
            networks: vec![base.network.clone()],
        })
    }
}
