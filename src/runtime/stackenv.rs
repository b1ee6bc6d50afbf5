//! What every engine command shares: the stack, the engine, the project's
//! names on the host, and the desired containers with their images.

use crate::engine::create::{self, Desired, Paths};
use crate::engine::models::ContainerSummary;
use crate::engine::{network_name, project, volume_name, Engine, LABEL_PROJECT};
use crate::error::{Error, Result};
use crate::model::containers::{ContainerSpec, Image, LABEL_STACK};
use crate::model::Stack;
use crate::render::{self, Artifacts, Layout};
use crate::ui::Ui;
use std::collections::HashMap;

pub struct StackEnv<'a> {
    pub stack: &'a Stack,
    pub engine: Engine,
    pub project: String,
    pub containers: Vec<ContainerSpec>,
    /// Where the containers' files are on the daemon's host: this project's
    /// `deploy/` and `.stackctl/run/` when the daemon is local, else under
    /// [`HOST_DIR`] there.
    pub paths: Paths,
    /// The rendered artifacts on this machine (deploy/ beside stack.toml).
    pub out: std::path::PathBuf,
}

/// Where stackctl keeps a project's rendered files and staged secrets on a
/// daemon's host it reaches over the network (ssh://, tcp://):
/// `/var/lib/stackctl/PROJECT/{deploy,run}`, root's.
pub const HOST_DIR: &str = "/var/lib/stackctl";

impl<'a> StackEnv<'a> {
    pub async fn connect(stack: &'a Stack) -> Result<StackEnv<'a>> {
        let engine = Engine::connect().await?;
        let project = project(stack);
        let out = stack.root.join("deploy");
        let paths = if engine.is_remote() {
            let base = std::path::Path::new(HOST_DIR).join(&project);
            Paths {
                out: base.join("deploy"),
                run: base.join("run"),
            }
        } else {
            Paths {
                out: out.clone(),
                run: stack.root.join(".stackctl").join("run").join(&project),
            }
        };
        Ok(StackEnv {
            stack,
            engine,
            paths,
            out,
            project,
            containers: crate::model::containers(stack),
        })
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_STACK.to_string(), self.stack.name.clone()),
            (LABEL_PROJECT.to_string(), self.project.clone()),
        ])
    }

    /// The artifacts the containers mount, rendered in memory.
    pub fn artifacts(&self) -> Result<Artifacts> {
        let layout = Layout::new(
            self.stack,
            Some(&self.out),
            crate::runtime::image_tag(self.stack),
        );
        render::render(self.stack, &layout)
    }

    /// Render the artifacts the containers mount (deploy/), unchanged files untouched.
    pub fn render(&self) -> Result<Artifacts> {
        let a = self.artifacts()?;
        a.write(&self.out)?;
        Ok(a)
    }

    /// The desired containers as they would be started now, without notes
    /// (for commands that only compare or report).
    pub async fn desired_quietly(&self, ui: &Ui) -> Result<Vec<Desired>> {
        let artifacts = self.artifacts()?;
        self.desired(&artifacts, &ui.clone_quiet()).await
    }

    /// Put what the containers about to be created mount where the daemon
    /// finds it: each container's secrets where only it mounts them (the
    /// Redis ACL written first when stack.toml or a password changed) and,
    /// when given, the rendered artifacts. A local daemon reads them from
    /// this disk (the artifacts are already in deploy/); a daemon on another
    /// host gets them as one archive unpacked into [`HOST_DIR`] there,
    /// through a container of the first container's image.
    pub async fn stage_files<'s>(
        &self,
        artifacts: Option<&Artifacts>,
        containers: impl IntoIterator<Item = (&'s str, &'s [String], &'s str)>,
    ) -> Result<()> {
        crate::runtime::secrets::refresh_redis_acl(self.stack)?;
        let dir = crate::runtime::secrets::secrets_dir(self.stack);
        let containers: Vec<_> = containers.into_iter().collect();
        if !self.engine.is_remote() {
            for (name, secrets, _) in containers {
                create::stage_secrets(&dir, &self.paths, name, secrets)?;
            }
            return Ok(());
        }
        let Some((_, _, image)) = containers.first() else {
            return Ok(());
        };
        let mut files = crate::engine::build::Context::default();
        for (name, secrets, _) in &containers {
            for s in secrets.iter() {
                files.add(
                    &format!("run/{name}/{s}"),
                    0o444,
                    create::read_secret(&dir, s)?,
                );
            }
        }
        for (path, bytes) in artifacts.iter().flat_map(|a| a.files.iter()) {
            files.add(&format!("deploy/{path}"), 0o644, bytes.clone());
        }
        let base = std::path::Path::new(HOST_DIR).join(&self.project);
        self.engine
            .put_host_files(
                &base.display().to_string(),
                image,
                files.tar_private("run")?,
            )
            .await
    }

    /// Create the stack's networks that are missing; their names.
    pub async fn ensure_networks(&self) -> Result<Vec<String>> {
        let mut created = Vec::new();
        for n in &self.stack.networks {
            if !self.containers.iter().any(|c| c.networks.contains(&n.name)) {
                continue;
            }
            let name = network_name(&self.project, &n.name);
            if self
                .engine
                .ensure_network(&name, n.internal, self.labels())
                .await?
            {
                created.push(name);
            }
        }
        Ok(created)
    }

    pub fn volume_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .containers
            .iter()
            .flat_map(|c| c.volumes().map(|v| volume_name(&self.project, v)))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub async fn ensure_volumes(&self) -> Result<Vec<String>> {
        let mut created = Vec::new();
        for name in self.volume_names() {
            if self.engine.ensure_volume(&name, self.labels()).await? {
                created.push(name);
            }
        }
        Ok(created)
    }

    /// Build the Debian-based infrastructure images that are missing or outdated.
    pub async fn ensure_infra_images(&self, ui: &Ui, report: bool) -> Result<Vec<String>> {
        let mut built = Vec::new();
        for recipe in crate::runtime::debian_recipes(self.stack, &self.containers)? {
            let image = &recipe.tag;
            let progress = |m: &str| ui.detail(format!("{image}: {m}"));
            let e = crate::images::ensure(&self.engine, &recipe, &progress)
                .await
                .map_err(|e| Error::Build {
                    service: image.clone(),
                    step: String::new(),
                    message: format!("{e:#}"),
                    hint: "see the message; `stackctl images -v` shows each step".into(),
                })?;
            if e.built {
                if report {
                    ui.ok(format!(
                        "built {image} ({:.0} MB) in {:.0} s",
                        e.size as f64 / 1e6,
                        e.seconds
                    ));
                }
                built.push(image.clone());
            }
        }
        Ok(built)
    }

    /// Registry images of optional parts that are not on this host.
    pub async fn missing_optional(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for c in &self.containers {
            if let Image::Infra {
                image,
                local: false,
            } = &c.image
            {
                if self.engine.image(image).await?.is_none() {
                    out.push((c.name.clone(), image.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The containers to run, skipping (with a warning) optional parts whose
    /// images are absent and everything that depends on them.
    pub async fn desired(&self, artifacts: &Artifacts, ui: &Ui) -> Result<Vec<Desired>> {
        self.desired_for(artifacts, None, ui).await
    }

    /// [`Self::desired`] for only the containers in `only` (all when None).
    pub async fn desired_for(
        &self,
        artifacts: &Artifacts,
        only: Option<&std::collections::HashSet<String>>,
        ui: &Ui,
    ) -> Result<Vec<Desired>> {
        let digests = crate::runtime::secrets::secret_digests(self.stack);
        let tag = crate::runtime::image_tag(self.stack);
        let mut skipped: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for c in &self.containers {
            if only.is_some_and(|o| !o.contains(&c.name)) {
                continue;
            }
            if let Some(d) = c.depends_on.iter().find(|d| skipped.contains(d)) {
                ui.warn(format!(
                    "skipping {}: it needs {d}, which is skipped",
                    c.name
                ));
                skipped.push(c.name.clone());
                continue;
            }
            let image = create::image_ref(c, &tag);
            let id = match self.engine.image(&image).await? {
                Some(i) => i.id.unwrap_or_default(),
                None => match &c.image {
                    Image::App { .. } => {
                        return Err(Error::MissingImage {
                            image,
                            hint: "run `stackctl build` first".into(),
                        })
                    }
                    Image::Infra { local: true, .. } => {
                        return Err(Error::MissingImage {
                            image,
                            hint: "run `stackctl setup` (it builds the Debian-based images)".into(),
                        })
                    }
                    Image::Infra { local: false, .. }
                        if matches!(c.group.as_str(), "monitoring" | "logging") =>
                    {
                        ui.warn(format!("skipping {}: image {image} is not on this host (no registry is reachable to pull it)", c.name));
                        skipped.push(c.name.clone());
                        continue;
                    }
                    Image::Infra { local: false, .. } => {
                        return Err(Error::MissingImage {
                            hint: format!(
                                "no registry is reachable from here: on a machine that has one, `docker pull {image} && docker save {image} -o image.tar`, copy image.tar here and `docker load -i image.tar`; or build {} from Debian packages (build = \"debian\"), or leave it out (enabled = false)",
                                c.name
                            ),
                            image,
                        })
                    }
                },
            };
            let inputs = mounted_inputs(c, artifacts, &digests);
            for r in 1..=c.replicas {
                out.push(create::desired(
                    c,
                    &self.project,
                    r,
                    &image,
                    &id,
                    &self.paths,
                    &inputs,
                ));
            }
        }
        Ok(out)
    }

    /// Every container of this project's stack on the host, running or not
    /// (not the revision records, the lock or one-shot jobs).
    pub async fn running(&self) -> Result<Vec<ContainerSummary>> {
        let mut all = self
            .engine
            .containers(&[(LABEL_PROJECT, &self.project)])
            .await?;
        all.retain(|c| {
            !c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(crate::runtime::revision::LABEL_ROLE))
        });
        Ok(all)
    }
}

/// The bytes of every rendered file a container mounts, in path order.
/// What a container reads besides its spec and image: its rendered files,
/// and a digest of its secrets (a changed secret is seen only by a new
/// container: the staged copy it mounts is replaced, not rewritten).
fn mounted_inputs(c: &ContainerSpec, a: &Artifacts, secrets: &HashMap<String, Vec<u8>>) -> Vec<u8> {
    let mut v = Vec::new();
    for s in &c.secrets {
        if let Some(digest) = secrets.get(s) {
            v.extend_from_slice(s.as_bytes());
            v.extend_from_slice(digest);
        }
    }
    for m in &c.mounts {
        if let crate::model::containers::Source::Rendered { path } = &m.source {
            let dir = format!("{path}/");
            for (p, bytes) in a
                .files
                .iter()
                .filter(|(p, _)| *p == path || p.starts_with(&dir))
            {
                v.extend_from_slice(p.as_bytes());
                v.extend_from_slice(bytes);
            }
        }
    }
    v
}
