//! `[components.NAME]`: any container of the stack, from a registry image or
//! Debian packages, optionally over a built-in preset. Each field is checked
//! here, with its location, so the engine never refuses it later.

use super::presets::{self, PresetCx};
use super::*;
use crate::model::containers::{HealthSpec, Kind, Mount, Source};
use crate::model::{Component, ComponentFile, ComponentSource, Metrics, Publish, VolumeBackup};
use schema::ComponentDef;

/// What every component may name: networks, and the containers it may depend on.
pub(super) struct Names<'a> {
    pub networks: &'a [String],
    pub containers: &'a [String],
    pub secrets: &'a [String],
    /// Whether the stack runs Redis (a component may have its own user).
    pub redis: bool,
}

/// The names of the components not switched off.
pub(super) fn enabled(
    defs: &IndexMap<String, Spanned<ComponentDef>>,
) -> impl Iterator<Item = String> + '_ {
    defs.iter()
        .filter(|(_, d)| d.get_ref().enabled != Some(false))
        .map(|(n, _)| n.clone())
}

impl Resolver<'_> {
    /// Every enabled component, presets applied.
    pub(super) fn components(
        &self,
        defs: &IndexMap<String, Spanned<ComponentDef>>,
        cx: &PresetCx<'_>,
        defaults: &Defaults,
        names: &Names<'_>,
        secrets: &mut Vec<Secret>,
    ) -> Result<Vec<Component>, ModelError> {
        let mut out = Vec::new();
        for name in enabled(defs) {
            let def = &defs[&name];
            let at = def.span().start;
            if !valid_name(&name) {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("component name `{name}` is not valid"),
                    "use lower-case letters, digits and '-' (it becomes a host name)",
                ));
            }
            let (d, preset) = self.with_preset(&name, def, cx)?;
            let kind = (Kind::Component, preset);
            out.push(self.component(&name, at, &d, kind, (defaults, names), secrets)?);
        }
        Ok(out)
    }

    /// The infrastructure's containers: each preset, with a
    /// `[components.NAME]` table of the same name merged over it (taken
    /// out of `defs`, so it is not a component of its own).
    pub(super) fn infra_components(
        &self,
        infra: Vec<super::infra::InfraContainer>,
        defs: &mut IndexMap<String, Spanned<ComponentDef>>,
        defaults: &Defaults,
        names: &Names<'_>,
        secrets: &mut Vec<Secret>,
    ) -> Result<Vec<Component>, ModelError> {
        let mut out = Vec::new();
        for i in infra {
            let mut d = i.def;
            let mut at = header_offset(self.cx.src, &format!("infra.{}", i.kind.as_str()));
            if let Some(own) = defs.shift_remove(&i.name) {
                at = own.span().start;
                let o = own.get_ref();
                if let Some(p) = &o.preset {
                    return Err(self.err(
                        K::InvalidValue,
                        p.span().start,
                        format!("[components.{}] changes the stack's own {} container; it takes no preset", i.name, i.kind.as_str()),
                        format!("remove `preset`, or give the component another name than `{}`", i.name),
                    ));
                }
                if o.enabled == Some(false) || o.context.is_some() {
                    return Err(self.err(
                        K::InvalidValue,
                        at,
                        format!("[components.{}] cannot switch off or rebuild the stack's {} container", i.name, i.kind.as_str()),
                        "switch it off where it is configured ([infra.*] enabled = false, [monitoring] or [logging]; a database goes with its service's postgres table)",
                    ));
                }
                if o.image.is_some() && o.build.is_none() && o.packages.is_none() {
                    d.build = None;
                }
                d.merge(o);
            }
            let preset = Some(i.kind.as_str().to_string());
            let kind = (i.kind, preset);
            out.push(self.component(&i.name, at, &d, kind, (defaults, names), secrets)?);
        }
        Ok(out)
    }

    /// The definition with its preset underneath (the stack's fields win).
    fn with_preset(
        &self,
        name: &str,
        def: &Spanned<ComponentDef>,
        cx: &PresetCx<'_>,
    ) -> Result<(ComponentDef, Option<String>), ModelError> {
        let own = def.get_ref();
        let Some(p) = &own.preset else {
            return Ok((own.clone(), None));
        };
        let Some(mut base) = presets::preset(p.get_ref(), cx, own) else {
            return Err(self.err(
                K::InvalidValue,
                p.span().start,
                format!("component `{name}`: unknown preset `{}`", p.get_ref()),
                format!(
                    "use one of: {}, or leave `preset` out and give the component's image and command",
                    presets::NAMES.join(", ")
                ),
            ));
        };
        // An image of the stack's own, without `build`, is a registry image.
        if own.image.is_some() && own.build.is_none() && own.packages.is_none() {
            base.build = None;
        }
        base.merge(own);
        Ok((base, Some(p.get_ref().clone())))
    }

    fn component(
        &self,
        name: &str,
        at: usize,
        d: &ComponentDef,
        (kind, preset): (Kind, Option<String>),
        (defaults, names): (&Defaults, &Names<'_>),
        implied: &mut Vec<Secret>,
    ) -> Result<Component, ModelError> {
        // Values a preset supplied carry no location: point at the table.
        let pos = |s: &std::ops::Range<usize>| if s.end == 0 { at } else { s.start };
        let what = format!("component `{name}`");
        let source = self.component_source(&what, at, d, pos)?;
        let port = match &d.port {
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.err(
                    K::InvalidValue,
                    pos(&p.span()),
                    format!("{what}: port 0 is not a valid port"),
                    "use a port between 1 and 65535",
                ))
            }
            p => p.as_ref().map(|p| *p.get_ref()),
        };
        let mut publish = Vec::new();
        for p in d.ports.as_deref().unwrap_or_default() {
            publish.push(self.publish(&what, p, pos(&p.span()))?);
        }
        let (networks, aliases) = self.component_networks(name, &what, d, names, pos)?;
        let (mounts, tmpfs) = self.component_mounts(&what, at, d, pos)?;
        let backup = self.volume_backup(&what, d, kind, &mounts, pos)?;
        let files = self.component_files(name, &what, d, pos)?;
        let (secrets, depends_on) = self.component_refs(name, &what, d, names, pos)?;
        let redis_at = d.redis.as_ref().map_or(at, |r| pos(&r.span()));
        let redis = self.redis_access(name, &what, d.redis.as_ref(), redis_at, implied)?;
        if redis.is_some() && !names.redis {
            return Err(self.err(
                K::InvalidValue,
                redis_at,
                format!("{what} uses Redis, but [infra.redis] is disabled"),
                "enable [infra.redis] or remove `redis` from the component",
            ));
        }
        let user = match &d.user {
            Some(u) => Some(self.user(&what, u, pos(&u.span()))?),
            None => None,
        };
        let restart = match &d.restart {
            Some(r) if !RESTARTS.contains(&r.get_ref().as_str()) => {
                return Err(self.err(
                    K::InvalidValue,
                    pos(&r.span()),
                    format!("{what}: unknown restart policy `{}`", r.get_ref()),
                    format!("use one of: {}", RESTARTS.join(", ")),
                ))
            }
            Some(r) => r.get_ref().clone(),
            None => defaults.restart.clone(),
        };
        let replicas = match &d.replicas {
            Some(r) if *r.get_ref() == 0 => {
                return Err(self.err(
                    K::InvalidValue,
                    pos(&r.span()),
                    format!("{what}: replicas must be at least 1"),
                    "leave the component out with enabled = false instead",
                ))
            }
            Some(r) => *r.get_ref(),
            None => 1,
        };
        if crate::model::containers::has_volume(&mounts) && replicas > 1 {
            return Err(self.err(
                K::InvalidValue,
                d.replicas.as_ref().map(|r| pos(&r.span())).unwrap_or(at),
                format!("{what} has a named volume and {replicas} replicas: they would share one data directory"),
                "use replicas = 1, or drop the named volume",
            ));
        }
        let metrics = d.metrics.as_ref().map(|m| Metrics {
            port: m.port.or(port).unwrap_or(0),
            path: m.path.clone().unwrap_or_else(|| "/metrics".into()),
        });
        if metrics.as_ref().is_some_and(|m| m.port == 0) {
            return Err(self.err(
                K::MissingKey,
                at,
                format!("{what}: metrics has no port"),
                "add metrics = { port = NUMBER } or the component's `port`",
            ));
        }
        let healthcheck = self.component_health(&what, at, d, port, defaults)?;
        Ok(Component {
            name: name.to_string(),
            group: match (kind, preset.as_deref()) {
                (Kind::Component, Some(p)) => presets::group(p),
                (k, _) => k.group(),
            }
            .to_string(),
            kind,
            preset,
            description: d.description.clone(),
            source,
            entrypoint: d.entrypoint.clone(),
            command: d.command.clone().unwrap_or_default(),
            env: d.env.clone().unwrap_or_default(),
            secrets,
            port,
            publish,
            networks,
            aliases,
            mounts,
            tmpfs,
            backup,
            files,
            healthcheck,
            user,
            read_only: d.read_only.unwrap_or(defaults.read_only),
            resources: self.resources(
                d.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            restart,
            replicas,
            depends_on,
            labels: d.labels.clone().unwrap_or_default(),
            cap_add: d.cap_add.clone().unwrap_or_default(),
            metrics,
            settings: d.settings.clone().unwrap_or_default(),
            redis,
        })
    }

    /// Its networks (the stack's first when it names none) and its aliases.
    fn component_networks(
        &self,
        name: &str,
        what: &str,
        d: &ComponentDef,
        names: &Names<'_>,
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<(Vec<String>, Vec<String>), ModelError> {
        let mut networks = Vec::new();
        for n in d.networks.as_deref().unwrap_or_default() {
            if !names.networks.contains(n.get_ref()) {
                return Err(self.err(
                    K::UndefinedNetwork,
                    pos(&n.span()),
                    format!(
                        "{what} is on network `{}`, which is not defined",
                        n.get_ref()
                    ),
                    format!(
                        "add [networks.{}] or use one of: {}",
                        n.get_ref(),
                        names_of(names.networks)
                    ),
                ));
            }
            if !networks.contains(n.get_ref()) {
                networks.push(n.get_ref().clone());
            }
        }
        if networks.is_empty() {
            networks.push(names.networks[0].clone());
        }
        let mut aliases: Vec<String> = Vec::new();
        for a in d.aliases.as_deref().unwrap_or_default() {
            let alias = a.get_ref();
            if !valid_name(alias) || alias == name {
                return Err(self.err(
                    K::InvalidValue,
                    pos(&a.span()),
                    format!("{what}: alias `{alias}` is not a usable host name"),
                    "use lower-case letters, digits and '-', other than the component's own name",
                ));
            }
            if !aliases.contains(alias) {
                aliases.push(alias.clone());
            }
        }
        Ok((networks, aliases))
    }

    /// Whether `backup` archives its named volumes.
    fn volume_backup(
        &self,
        what: &str,
        d: &ComponentDef,
        kind: Kind,
        mounts: &[Mount],
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<VolumeBackup, ModelError> {
        use schema::BackupDef;
        let Some(b) = &d.backup else {
            return Ok(VolumeBackup::Off);
        };
        let at = pos(&b.span());
        let mode = match b.get_ref() {
            BackupDef::Switch(false) => return Ok(VolumeBackup::Off),
            BackupDef::Switch(true) => VolumeBackup::Stopped,
            BackupDef::Mode(m) if m == "live" => VolumeBackup::Live,
            BackupDef::Mode(m) => {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: backup = \"{m}\" is not a backup mode"),
                    "use backup = true (archived with the component stopped), \"live\" (while it runs) or false",
                ))
            }
        };
        if matches!(kind, Kind::Postgres | Kind::Redis) {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: its data is already in every backup (a database dump or a Redis snapshot)"),
                "remove `backup` here",
            ));
        }
        if !crate::model::containers::has_volume(mounts) {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: backup is on, but it has no named volume to archive"),
                "add a volume (volumes = [\"NAME:/path\"]) or remove `backup`",
            ));
        }
        Ok(mode)
    }

    /// Its volumes and rendered files, and its tmpfs mounts.
    fn component_mounts(
        &self,
        what: &str,
        at: usize,
        d: &ComponentDef,
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<(Vec<Mount>, Vec<String>), ModelError> {
        let mut mounts = Vec::new();
        for v in d.volumes.as_deref().unwrap_or_default() {
            mounts.push(self.volume(what, v, pos(&v.span()))?);
        }
        mounts.extend(d.rendered.iter().flatten().map(|(path, target)| Mount {
            source: Source::Rendered { path: path.clone() },
            target: target.clone(),
            read_only: true,
        }));
        let tmpfs = d.tmpfs.clone().unwrap_or_else(|| vec!["/tmp".into()]);
        for t in &tmpfs {
            if !t.starts_with('/') {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: tmpfs `{t}` is not an absolute path"),
                    "write the path inside the container, e.g. \"/tmp\"",
                ));
            }
        }
        Ok((mounts, tmpfs))
    }

    /// The secrets it reads and the containers it waits for, each checked.
    fn component_refs(
        &self,
        name: &str,
        what: &str,
        d: &ComponentDef,
        names: &Names<'_>,
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<(Vec<String>, Vec<String>), ModelError> {
        let mut secrets = Vec::new();
        for s in d.secrets.as_deref().unwrap_or_default() {
            if !names.secrets.contains(s.get_ref()) {
                return Err(self.unknown_secret(pos(&s.span()), what, s.get_ref()));
            }
            secrets.push(s.get_ref().clone());
        }
        let mut depends_on = Vec::new();
        for dep in d.depends_on.as_deref().unwrap_or_default() {
            if dep.get_ref() == name || !names.containers.contains(dep.get_ref()) {
                return Err(self.err(
                    K::UnknownDependency,
                    pos(&dep.span()),
                    format!(
                        "{what} depends on `{}`, which is not another container of this stack",
                        dep.get_ref()
                    ),
                    format!("use one of: {}", names_of(names.containers)),
                ));
            }
            depends_on.push(dep.get_ref().clone());
        }
        Ok((secrets, depends_on))
    }

    fn component_source(
        &self,
        what: &str,
        at: usize,
        d: &ComponentDef,
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<ComponentSource, ModelError> {
        if let Some(c) = &d.context {
            return self.dockerfile_source(what, c, d, pos(&c.span()));
        }
        let image = d.image.as_ref();
        match (&d.build, image) {
            (Some(b), Some(img)) if b.get_ref() == "debian" => {
                let packages = d.packages.clone().unwrap_or_default();
                if let Err(e) = crate::images::Recipe::resolve(img.get_ref(), &packages) {
                    return Err(self.err(
                        K::InvalidValue,
                        pos(&img.span()),
                        format!("{what}: {e}"),
                        "list its Debian packages: packages = [\"...\"]",
                    ));
                }
                Ok(ComponentSource::Debian {
                    image: img.get_ref().clone(),
                    packages,
                })
            }
            (Some(b), None) if b.get_ref() == "debian" => Err(self.err(
                K::MissingKey,
                pos(&b.span()),
                format!("{what}: build = \"debian\" needs the `image` tag to build"),
                "add image = \"stackctl/NAME:bookworm\" and its packages = [\"...\"]",
            )),
            (Some(b), _) => Err(self.err(
                K::InvalidValue,
                pos(&b.span()),
                format!("{what}: unknown build source `{}`", b.get_ref()),
                "use build = \"debian\" (built locally from Debian packages) or remove it to pull `image`",
            )),
            (None, Some(img)) if d.packages.is_some() => Err(self.err(
                K::InvalidValue,
                pos(&img.span()),
                format!("{what}: `packages` are only used with build = \"debian\""),
                "add build = \"debian\", or remove `packages` to pull the registry image",
            )),
            (None, Some(img)) if img.get_ref().trim().is_empty() => Err(self.err(
                K::InvalidValue,
                pos(&img.span()),
                format!("{what}: the image is empty"),
                "give a registry image such as \"redis:7\"",
            )),
            (None, Some(img)) => Ok(ComponentSource::Registry {
                image: img.get_ref().clone(),
            }),
            (None, None) => Err(self.err(
                K::MissingKey,
                at,
                format!("{what} has no image"),
                format!(
                    "add image = \"REGISTRY/IMAGE:TAG\", or build = \"debian\" with image and packages, or a preset ({})",
                    presets::NAMES.join(", ")
                ),
            )),
        }
    }

    /// A Dockerfile build: the context must be a directory under the stack's
    /// root holding the Dockerfile; `image`/`build` would be a second source.
    fn dockerfile_source(
        &self,
        what: &str,
        c: &Spanned<String>,
        d: &ComponentDef,
        at: usize,
    ) -> Result<ComponentSource, ModelError> {
        if d.image.is_some() || d.build.is_some() || d.packages.is_some() {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what} has both a Dockerfile `context` and an `image`/`build`"),
                "keep one source: context (built by `stackctl build`), image (a registry), or build = \"debian\"",
            ));
        }
        let context = c.get_ref().trim_end_matches('/').to_string();
        let dockerfile = d.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
        let bad = context.is_empty()
            || context.starts_with('/')
            || dockerfile.starts_with('/')
            || dockerfile.split('/').any(|p| p == "..");
        if bad {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: context `{context}` / dockerfile `{dockerfile}` must be relative paths"),
                "give the context relative to stack.toml (e.g. \"workers/report\") and the Dockerfile relative to the context",
            ));
        }
        if self.check_paths {
            let file = self.root.join(&context).join(&dockerfile);
            if !file.is_file() {
                return Err(self.err(
                    K::MissingCratePath,
                    at,
                    format!("{what}: no Dockerfile at {}", file.display()),
                    "fix `context` (relative to stack.toml) or `dockerfile` (relative to the context)",
                ));
            }
        }
        Ok(ComponentSource::Dockerfile {
            context,
            dockerfile,
        })
    }

    /// "HOST:CONTAINER" (loopback) or "IP:HOST:CONTAINER".
    fn publish(&self, what: &str, p: &Spanned<String>, at: usize) -> Result<Publish, ModelError> {
        let text = p.get_ref();
        let bad = |why: &str| {
            self.err(
                K::InvalidValue,
                at,
                format!("{what}: published port `{text}` {why}"),
                "write \"HOST:CONTAINER\" (bound to 127.0.0.1), \"IP:HOST:CONTAINER\" or \"*:HOST:CONTAINER\" (every interface), e.g. \"127.0.0.1:9093:9093\" or \"0.0.0.0:8080:80\"",
            )
        };
        let parts: Vec<&str> = text.rsplitn(3, ':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c, h] => (Some("127.0.0.1".to_string()), *h, *c),
            // Every interface, IPv4 and IPv6.
            [c, h, "*"] => (None, *h, *c),
            [c, h, ip] => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                if ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(bad("has no valid IP address"));
                }
                (Some(ip.to_string()), *h, *c)
            }
            _ => return Err(bad("is not HOST:CONTAINER")),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
        match (port(host), port(container)) {
            (Some(host), Some(container)) => Ok(Publish {
                ip,
                host,
                container,
            }),
            _ => Err(bad("needs ports between 1 and 65535")),
        }
    }

    /// "VOLUME:/path" or "/host/path:/path", each optionally ":ro".
    fn volume(&self, what: &str, v: &Spanned<String>, at: usize) -> Result<Mount, ModelError> {
        let text = v.get_ref();
        let hint = "write \"NAME:/path/in/container\" (a named volume) or \"/host/path:/path/in/container\", optionally followed by \":ro\"";
        let parts: Vec<&str> = text.split(':').collect();
        let (src, target, read_only) = match parts.as_slice() {
            [s, t] => (*s, *t, false),
            [s, t, "ro"] => (*s, *t, true),
            [s, t, "rw"] => (*s, *t, false),
            _ => {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: volume `{text}` is not SOURCE:TARGET[:ro]"),
                    hint,
                ))
            }
        };
        if !target.starts_with('/') {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: volume target `{target}` is not an absolute path"),
                hint,
            ));
        }
        let source = if src.starts_with('/') {
            Source::Host { path: src.into() }
        } else if valid_name(src) {
            Source::Volume { name: src.into() }
        } else {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: `{src}` is neither a volume name nor an absolute host path"),
                hint,
            ));
        };
        Ok(Mount {
            source,
            target: target.into(),
            read_only,
        })
    }

    /// `uid[:gid]`, each a number or a user/group name: what the engine accepts.
    fn user(&self, what: &str, u: &Spanned<String>, at: usize) -> Result<String, ModelError> {
        let text = u.get_ref();
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && (p.bytes().all(|b| b.is_ascii_digit())
                    || (p.as_bytes()[0].is_ascii_lowercase() || p.as_bytes()[0] == b'_')
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b)
                        }))
        };
        let ok = match text.split_once(':') {
            None => part(text),
            Some((a, b)) => part(a) && part(b),
        };
        if !ok {
            return Err(self.err(
                K::InvalidValue,
                at,
                format!("{what}: user `{text}` is not USER or USER:GROUP"),
                "use numeric ids such as \"65534:65534\", or names such as \"nobody:nogroup\"",
            ));
        }
        Ok(text.clone())
    }

    fn component_files(
        &self,
        name: &str,
        what: &str,
        d: &ComponentDef,
        pos: impl Fn(&std::ops::Range<usize>) -> usize,
    ) -> Result<Vec<ComponentFile>, ModelError> {
        let known = crate::render::templates::Templates::names();
        let mut files = Vec::new();
        for (target, template) in d.files.iter().flatten() {
            let at = pos(&template.span());
            if !target.starts_with('/') || target.ends_with('/') {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: file `{target}` is not an absolute file path"),
                    "key each file by its path inside the container, e.g. \"/etc/app/app.yml\" = \"app.yml.tera\"",
                ));
            }
            let t = template.get_ref();
            let own = self.root.join("templates").join(t);
            if !known.contains(t) && self.check_paths && !own.is_file() {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!(
                        "{what}: no template `{t}` (neither built in nor {})",
                        own.display()
                    ),
                    format!("create {} or use a built-in template", own.display()),
                ));
            }
            let base = target.rsplit('/').next().unwrap_or(target);
            files.push(ComponentFile {
                target: target.clone(),
                template: t.clone(),
                rendered: format!("components/{name}/{base}"),
            });
        }
        Ok(files)
    }

    fn component_health(
        &self,
        what: &str,
        at: usize,
        d: &ComponentDef,
        port: Option<u16>,
        defaults: &Defaults,
    ) -> Result<Option<HealthSpec>, ModelError> {
        let Some(h) = &d.healthcheck else {
            return Ok(None);
        };
        if h.disabled == Some(true) {
            return Ok(None);
        }
        let timing = self.health(
            Some(&schema::HealthDef {
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            }),
            &defaults.healthcheck,
        );
        let test = match (&h.http, &h.command, &h.shell) {
            (Some(path), None, None) => {
                let Some(p) = h.port.or(port) else {
                    return Err(self.err(
                        K::MissingKey,
                        at,
                        format!("{what}: an HTTP health check needs a port"),
                        "add the component's `port`, or healthcheck.port",
                    ));
                };
                if !path.starts_with('/') {
                    return Err(self.err(
                        K::InvalidValue,
                        at,
                        format!("{what}: health check path `{path}` does not start with '/'"),
                        "write the path part of the URL, e.g. \"/health\"",
                    ));
                }
                crate::model::containers::http_probe(&format!("http://127.0.0.1:{p}{path}"))
            }
            (None, Some(cmd), None) if !cmd.is_empty() => {
                let mut t = vec!["CMD".to_string()];
                t.extend(cmd.iter().cloned());
                t
            }
            (None, None, Some(sh)) if !sh.trim().is_empty() => {
                vec!["CMD-SHELL".to_string(), sh.clone()]
            }
            _ => {
                return Err(self.err(
                    K::InvalidValue,
                    at,
                    format!("{what}: a health check needs exactly one of http, command or shell"),
                    "e.g. healthcheck = { http = \"/health\" } or healthcheck = { command = [\"app\", \"check\"] }",
                ))
            }
        };
        Ok(Some(HealthSpec { test, timing }))
    }
}

fn names_of(v: &[String]) -> String {
    names(v.iter())
}

impl Resolver<'_> {
    /// `[monitoring.node_exporter]`, the older form, becomes the
    /// node-exporter preset with its registry image (unless a component
    /// already is the node exporter).
    pub(super) fn legacy_node_exporter(
        &self,
        comps: &mut IndexMap<String, Spanned<ComponentDef>>,
        legacy: Option<&schema::AddonDef>,
    ) -> Result<(), ModelError> {
        let existing = comps.iter().find(|(n, d)| {
            *n == "node-exporter"
                || d.get_ref()
                    .preset
                    .as_ref()
                    .is_some_and(|p| p.get_ref() == "node-exporter")
        });
        if let Some((name, d)) = existing {
            if legacy.is_some() {
                return Err(self.err(
                    K::DuplicateName,
                    d.span().start,
                    format!("both [monitoring.node_exporter] and [components.{name}] define the node exporter"),
                    "keep [components.node-exporter] (preset = \"node-exporter\") and remove [monitoring.node_exporter]",
                ));
            }
            return Ok(());
        }
        let def = legacy.cloned().unwrap_or_default();
        if def.enabled == Some(false) {
            return Ok(());
        }
        let port = def.port.as_ref().map(|p| *p.get_ref()).unwrap_or(9100);
        let sp = |v: String| Spanned::new(0..0, v);
        comps.insert(
            "node-exporter".into(),
            Spanned::new(
                0..0,
                ComponentDef {
                    preset: Some(sp("node-exporter".into())),
                    image: Some(sp(def
                        .image
                        .clone()
                        .unwrap_or_else(|| "prom/node-exporter:v1.8.2".into()))),
                    port: Some(Spanned::new(0..0, port)),
                    command: Some(vec![
                        "--path.procfs=/host/proc".into(),
                        "--path.sysfs=/host/sys".into(),
                        format!("--web.listen-address=:{port}"),
                    ]),
                    metrics: Some(schema::MetricsDef {
                        port: Some(port),
                        path: None,
                    }),
                    resources: def.resources.clone(),
                    ..Default::default()
                },
            ),
        );
        Ok(())
    }

    /// Services and components may depend on each other; no cycle among them.
    pub(super) fn check_cycles(
        &self,
        services: &[Resolved<'_>],
        components: &[Component],
        defs: &IndexMap<String, Spanned<ComponentDef>>,
    ) -> Result<(), ModelError> {
        let edges: Vec<(&String, &Vec<String>)> = services
            .iter()
            .map(|(_, s, _)| (&s.name, &s.depends_on))
            .chain(components.iter().map(|c| (&c.name, &c.depends_on)))
            .collect();
        let deps = |n: &str| edges.iter().find(|(m, _)| *m == n).map(|(_, d)| *d);
        for c in components {
            // Depth-first from the component: reaching it again is a cycle.
            let mut stack: Vec<Vec<String>> = vec![vec![c.name.clone()]];
            let mut seen: Vec<String> = Vec::new();
            while let Some(path) = stack.pop() {
                let last = path.last().expect("non-empty").clone();
                for d in deps(&last).into_iter().flatten() {
                    if *d == c.name {
                        let mut cycle = path.clone();
                        cycle.push(d.clone());
                        return Err(self.err(
                            K::DependencyCycle,
                            defs.get(&c.name).map(|d| d.span().start).unwrap_or(0),
                            format!(
                                "containers depend on each other in a cycle: {}",
                                cycle.join(" -> ")
                            ),
                            "remove one of these depends_on entries so they can start in order",
                        ));
                    }
                    if !seen.contains(d) {
                        seen.push(d.clone());
                        let mut p = path.clone();
                        p.push(d.clone());
                        stack.push(p);
                    }
                }
            }
        }
        Ok(())
    }
}
