//! The Docker Engine API, through bollard: connecting (unix socket, tcp,
//! tcp+TLS), version gating, and the calls stackctl's commands share.
//! stackctl never runs the docker CLI or docker-compose.

pub mod build;
pub mod create;
pub mod debian;
pub mod ssh;
pub mod swarm;

use crate::error::{Error, Result};
use futures::StreamExt;
use models::{ContainerCreateBody, ContainerSummary, ImageInspect};
use std::collections::HashMap;
use std::pin::Pin;

// The Engine API's types, for code that builds requests or reads replies.
// Only `engine` and its modules talk to the engine; nothing else in
// stackctl names bollard.
pub use bollard::auth::DockerCredentials;
pub use bollard::container::LogOutput;
pub use bollard::errors::Error as ApiError;
pub use bollard::models;
pub use bollard::query_parameters as qp;
pub use bollard::{body_full, body_try_stream, Docker, API_DEFAULT_VERSION};

/// An engine `label` filter matching every `key=value` given.
fn label_filters(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

/// `repo:tag` as (repo, tag); no tag (a colon only in a registry's port)
/// is `latest`.
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (reference, "latest"),
    }
}

/// The HTTP status of an Engine API error reply (404 no such object, 409
/// conflict, 304 already in that state); `None` for any other failure.
pub fn status_of(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether a listed container runs (not created, paused, restarting, exited).
pub fn is_running(c: &ContainerSummary) -> bool {
    c.state == Some(models::ContainerSummaryStateEnum::RUNNING)
}

/// Whether a listed container has stopped, or was created and never started.
pub fn is_stopped(c: &ContainerSummary) -> bool {
    use models::ContainerSummaryStateEnum as S;
    matches!(c.state, Some(S::EXITED | S::CREATED | S::DEAD))
}

/// The config hash stackctl labelled a container with when it created it
/// ([`create::Desired::hash`]); comparing it with the desired one says
/// whether the container is current.
pub fn config_hash_of(labels: Option<&HashMap<String, String>>) -> Option<&str> {
    labels?.get(LABEL_CONFIG_HASH).map(String::as_str)
}

/// The engine answered 404: the object does not exist.
pub fn is_not_found(e: &ApiError) -> bool {
    status_of(e) == Some(404)
}

/// A command started in a container by [`Engine::exec_attach`]: its output
/// as it comes and, when asked for, its standard input. Its exit code is
/// [`Engine::exec_exit_code`] once the output has ended.
pub struct ExecSession {
    pub id: String,
    pub output: Pin<Box<dyn futures::Stream<Item = Result<LogOutput>> + Send>>,
    pub input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// The oldest Engine API stackctl drives (Docker 19.03); 20.10 speaks 1.41.
pub const MIN_API: (u32, u32) = (1, 40);
pub const LABEL_PROJECT: &str = "io.stackctl.project";
pub const LABEL_CONFIG_HASH: &str = "io.stackctl.config-hash";
pub const LABEL_INPUTS: &str = "io.stackctl.inputs";

#[derive(Clone)]
pub struct Engine {
    /// The API handle: only `engine` and its modules (the Swarm objects in
    /// `swarm`, the Debian image builder's side in `debian`) use it; all
    /// else goes through their methods.
    docker: Docker,
    pub host: String,
    pub api_version: String,
    pub server_version: String,
    /// The SSH connection an `ssh://` DOCKER_HOST goes through, open while
    /// the engine is.
    /// Shared by the copies [`Engine::with_timeout`] makes.
    _tunnel: Option<std::sync::Arc<ssh::Tunnel>>,
}

fn parse_api(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// A warning when DOCKER_HOST is plain (unencrypted, unauthenticated) TCP to
/// an address other than this machine's loopback.
pub fn plain_tcp_warning(host: &str) -> Option<String> {
    let rest = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let name = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "DOCKER_HOST={host} is plain TCP: anyone on that network can drive the daemon (root on its host) and read the secrets stackctl sends it; set DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH (client certificates), or reach the daemon through an SSH tunnel (ssh -NL 127.0.0.1:2375:/var/run/docker.sock HOST, then DOCKER_HOST=tcp://127.0.0.1:2375)"
        )
    })
}

impl Engine {
    /// This engine with another request timeout (a long import or build),
    /// over the same connection.
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Engine {
        Engine {
            docker: self.docker.clone().with_timeout(timeout),
            ..self.clone()
        }
    }

    /// An engine at a plain-HTTP address that is not contacted until a
    /// request is made (tests that only need the type).
    #[cfg(test)]
    pub(crate) fn unconnected(url: &str) -> Engine {
        Engine {
            docker: Docker::connect_with_http(url, 5, API_DEFAULT_VERSION).expect("an http URL"),
            host: url.to_string(),
            api_version: String::new(),
            server_version: String::new(),
            _tunnel: None,
        }
    }

    /// The images `names` as one `docker save` archive at `path`: written to
    /// a temporary file beside it and renamed when complete, so a failure
    /// leaves no half archive. Returns its size.
    pub async fn save_images(&self, names: &[String], path: &std::path::Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let tmp = path.with_extension("partial");
        let write_err = |source| Error::Write {
            path: tmp.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(write_err)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut stream = self.docker.export_images(&refs);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(Error::engine("save the images", e));
                }
            };
            size += chunk.len() as u64;
            if let Err(e) = file.write_all(&chunk).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(write_err(e));
            }
        }
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(size)
    }

    /// Load a `docker save` archive (`POST /images/load`), streamed from its file.
    pub async fn load_images(&self, path: &std::path::Path) -> Result<()> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let options = qp::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let body = read_stream::<_, bytes::Bytes>(file);
        let mut stream = self.docker.import_image_stream(options, body, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::engine(format!("load {}", path.display()), e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::engine(format!("load {}", path.display()), err));
            }
        }
        Ok(())
    }

    /// Connect as DOCKER_HOST says (default: the local unix socket) and check
    /// the daemon answers with a recent enough API.
    pub async fn connect() -> Result<Engine> {
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |m: String| Error::EngineUnreachable {
            host: host.clone(),
            message: m,
        };
        let timeout = 120;
        let mut tunnel = None;
        let docker = if host.starts_with("ssh://") {
            let target = ssh::parse(&host).map_err(&unreachable)?;
            let t = ssh::open(&target, std::time::Duration::from_secs(60))
                .await
                .map_err(&unreachable)?;
            let docker = Docker::connect_with_unix(
                &t.socket.display().to_string(),
                timeout,
                bollard::API_DEFAULT_VERSION,
            );
            tunnel = Some(t);
            docker
        } else if let Some(path) = host.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                return Err(unreachable(format!("{path} does not exist")));
            }
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://")
            || host.starts_with("https://")
            || host.starts_with("http://")
        {
            let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0")
                || host.starts_with("https://");
            if tls {
                let certs = std::env::var("DOCKER_CERT_PATH")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|_| {
                        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                            .join(".docker")
                    });
                Docker::connect_with_ssl(
                    &host.replacen("tcp://", "https://", 1),
                    &certs.join("key.pem"),
                    &certs.join("cert.pem"),
                    &certs.join("ca.pem"),
                    timeout,
                    bollard::API_DEFAULT_VERSION,
                )
            } else {
                if let Some(w) = plain_tcp_warning(&host) {
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    // Said even under -q: it is about who else controls the daemon.
                    ONCE.call_once(|| eprintln!("warning: {w}"));
                }
                Docker::connect_with_http(&host, timeout, bollard::API_DEFAULT_VERSION)
            }
        } else {
            return Err(unreachable(
                "unsupported DOCKER_HOST scheme (use unix://, tcp:// or ssh://)".into(),
            ));
        };
        let docker = docker.map_err(|e| unreachable(e.to_string()))?;
        // Through SSH the login worked; what fails now is the far end.
        let through = |m: String| {
            match &tunnel {
            Some(_) => format!(
                "{m} (logged in over ssh, but the daemon's socket did not answer: is Docker running there, may that user open the socket (root or the docker group can), and does its sshd allow forwarding (AllowTcpForwarding and AllowStreamLocalForwarding not `no`)?)"
            ),
            None => m,
        }
        };
        let v = tokio::time::timeout(std::time::Duration::from_secs(10), docker.version())
            .await
            .map_err(|_| unreachable(through("no answer within 10 s".into())))?
            .map_err(|e| unreachable(through(e.to_string())))?;
        let api_version = v.api_version.unwrap_or_default();
        if parse_api(&api_version) < MIN_API {
            return Err(Error::EngineTooOld {
                version: api_version,
                minimum: format!("{}.{}", MIN_API.0, MIN_API.1),
            });
        }
        Ok(Engine {
            docker,
            host,
            api_version,
            server_version: v.version.unwrap_or_default(),
            _tunnel: tunnel.map(std::sync::Arc::new),
        })
    }

    /// Pull `reference` (repo:tag) from its registry onto the daemon's
    /// host; the registry's refusal (no such image, no access) is the error's
    /// message.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<()> {
        let (repo, tag) = split_reference(reference);
        let options = qp::CreateImageOptions {
            from_image: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::engine(format!("pull {reference}"), e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::engine(format!("pull {reference}"), err));
            }
        }
        Ok(())
    }

    /// Push `reference` (`repo:tag`) to its registry; `status` hears each
    /// new progress line. An error the registry reports comes back with
    /// what to check.
    pub async fn push(
        &self,
        reference: &str,
        credentials: Option<DockerCredentials>,
        status: &mut (dyn FnMut(&str) + Send),
    ) -> Result<()> {
        let (repo, tag) = split_reference(reference);
        let mut stream = self.docker.push_image(
            repo,
            Some(qp::PushImageOptions {
                tag: Some(tag.to_string()),
                ..Default::default()
            }),
            credentials,
        );
        let mut last = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::engine(format!("push {reference}"), e))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::Engine {
                    what: format!("push {reference}"),
                    message,
                    hint: format!("check that the registry of {repo} is reachable and `docker login` credentials for it are in the docker config file"),
                });
            }
            if let Some(s) = info.status.filter(|s| *s != last) {
                status(&s);
                last = s;
            }
        }
        Ok(())
    }

    /// Whether the daemon may run on another machine (any DOCKER_HOST but
    /// a unix socket): files its containers mount must be put there through
    /// the API ([`Engine::put_host_files`]), not written to this disk.
    pub fn is_remote(&self) -> bool {
        !self.host.starts_with("unix://")
    }

    /// Unpack `tar` into the directory `dir` on the daemon's host (created
    /// when missing), through a container of `image` that binds it and is
    /// never started (removed afterwards). Works wherever the daemon runs.
    pub async fn put_host_files(&self, dir: &str, image: &str, tar: Vec<u8>) -> Result<()> {
        let name = format!(
            "stackctl-files-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["stackctl-files".into()]),
            network_disabled: Some(true),
            labels: Some(HashMap::from([(
                "io.stackctl.role".to_string(),
                "files".to_string(),
            )])),
            host_config: Some(models::HostConfig {
                network_mode: Some("none".into()),
                binds: Some(vec![format!("{dir}:/stackctl-files")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_raw(&name, body)
            .await
            .map_err(|e| Error::engine(format!("create {name} to put files in {dir}"), e))?;
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(tar)) });
        let put = self.upload(&name, "/stackctl-files", body).await;
        let removed = self.remove(&name).await;
        put.and(removed)
    }

    /// Whether the daemon speaks at least this API version.
    pub fn supports(&self, major: u32, minor: u32) -> bool {
        parse_api(&self.api_version) >= (major, minor)
    }

    /// Every running container of the engine, whoever made it.
    pub async fn running_containers(&self) -> Result<Vec<ContainerSummary>> {
        self.docker
            .list_containers(Some(qp::ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::engine("list containers", e))
    }

    /// The daemon's own facts (root directory, swarm state, CPUs, ...).
    pub async fn info(&self) -> Result<models::SystemInfo> {
        self.docker
            .info()
            .await
            .map_err(|e| Error::engine("daemon info", e))
    }

    /// One sample of a container's resource use; `None` when it has gone.
    pub async fn stats_once(&self, name: &str) -> Option<models::ContainerStatsResponse> {
        let mut s = self.docker.stats(
            name,
            Some(qp::StatsOptions {
                stream: false,
                one_shot: false,
            }),
        );
        s.next().await.and_then(|r| r.ok())
    }

    /// A container's log (stdout and stderr, each line with its timestamp),
    /// from `since` (unix seconds, 0: the start) and at most the last `tail`
    /// lines; `follow` keeps reading until the container stops.
    pub fn logs(
        &self,
        name: &str,
        follow: bool,
        since: i32,
        tail: Option<usize>,
    ) -> impl futures::Stream<Item = std::result::Result<LogOutput, ApiError>> + Unpin + use<> {
        self.docker.logs(
            name,
            Some(qp::LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                since,
                timestamps: true,
                tail: tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()),
                ..Default::default()
            }),
        )
    }

    /// Containers (running or not) carrying every given label.
    pub async fn containers(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerSummary>> {
        self.docker
            .list_containers(Some(qp::ListContainersOptions {
                all: true,
                filters: Some(label_filters(labels)),
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::engine("list containers", e))
    }

    pub async fn image(&self, reference: &str) -> Result<Option<ImageInspect>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(format!("inspect image {reference}"), e)),
        }
    }

    /// A container's inspection, or `None` when there is no container of
    /// that name.
    pub async fn container(&self, name: &str) -> Result<Option<models::ContainerInspectResponse>> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(format!("inspect {name}"), e)),
        }
    }

    /// Whether a volume of that name exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(format!("inspect volume {name}"), e)),
        }
    }

    /// Create a volume unless one of that name exists: `true` when created.
    pub async fn ensure_volume(&self, name: &str, labels: HashMap<String, String>) -> Result<bool> {
        if self.volume_exists(name).await? {
            return Ok(false);
        }
        self.docker
            .create_volume(models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::engine(format!("create volume {name}"), e))?;
        Ok(true)
    }

    /// Create a bridge network unless one of that name exists: `true` when
    /// created. An internal network has no route out of the host.
    pub async fn ensure_network(
        &self,
        name: &str,
        internal: bool,
        labels: HashMap<String, String>,
    ) -> Result<bool> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::engine(format!("inspect network {name}"), e)),
        }
        self.docker
            .create_network(models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::engine(format!("create network {name}"), e))?;
        Ok(true)
    }

    /// Start a created (or stopped) container.
    pub async fn start(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| Error::engine(format!("start {name}"), e))
    }

    /// Stop a container: SIGTERM, SIGKILL after `grace` seconds. One that
    /// is not running is fine.
    pub async fn stop(&self, name: &str, grace: u64) -> Result<()> {
        match self
            .docker
            .stop_container(
                name,
                Some(qp::StopContainerOptions {
                    t: Some(grace as i32),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: it was not running.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(Error::engine(format!("stop {name}"), e)),
        }
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.docker
            .rename_container(
                from,
                qp::RenameContainerOptions {
                    name: to.to_string(),
                },
            )
            .await
            .map_err(|e| Error::engine(format!("rename {from} to {to}"), e))
    }

    /// Create a container (on the first network its body names), connect
    /// it to `more_networks` (engine names) under `aliases`, and start it.
    pub async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
        more_networks: &[String],
        aliases: &[String],
    ) -> Result<()> {
        self.create(name, body).await?;
        for net in more_networks {
            self.docker
                .connect_network(
                    net,
                    models::NetworkConnectRequest {
                        container: name.to_string(),
                        endpoint_config: Some(models::EndpointSettings {
                            aliases: Some(aliases.to_vec()),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(|e| Error::engine(format!("connect {name} to {net}"), e))?;
        }
        self.start(name).await
    }

    /// Remove a network; `false` when there was none of that name (or a
    /// container still uses it: the engine refuses).
    pub async fn remove_network(&self, name: &str) -> bool {
        self.docker.remove_network(name).await.is_ok()
    }

    /// Tag an image (by id or reference) as `reference` (`repo:tag`; a
    /// reference without a tag gets `latest`).
    pub async fn tag(&self, image: &str, reference: &str) -> Result<()> {
        let (repo, tag) = split_reference(reference);
        self.docker
            .tag_image(
                image,
                Some(qp::TagImageOptions {
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(|e| {
                // An image id is named by its first 12 hex digits, as docker does.
                let shown = match image.strip_prefix("sha256:") {
                    Some(hex) => &hex[..hex.len().min(12)],
                    None => image,
                };
                Error::engine(format!("tag {shown} as {reference}"), e)
            })
    }

    /// The images matching engine filters (e.g. `label`, `dangling`).
    pub async fn images(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<models::ImageSummary>> {
        self.docker
            .list_images(Some(qp::ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| Error::engine("list images", e))
    }

    /// Remove an image (`noprune`: keep its untagged parents); `false` when
    /// the engine refuses (a container uses it) or it is gone.
    pub async fn remove_image(&self, reference: &str, noprune: bool) -> bool {
        self.docker
            .remove_image(
                reference,
                Some(qp::RemoveImageOptions {
                    noprune,
                    ..Default::default()
                }),
                None,
            )
            .await
            .is_ok()
    }

    /// Start `cmd` in a running container, attached to its output (and to
    /// its standard input when `stdin`). `what` names it in errors.
    pub async fn exec_attach(
        &self,
        container: &str,
        cmd: Vec<String>,
        user: Option<&str>,
        stdin: bool,
        what: &str,
    ) -> Result<ExecSession> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: user.map(str::to_string),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::engine(format!("exec {what}"), e))?;
        match self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| Error::engine(format!("exec {what}"), e))?
        {
            StartExecResults::Attached { output, input } => {
                let what = what.to_string();
                Ok(ExecSession {
                    id: created.id,
                    output: Box::pin(output.map(move |chunk| {
                        chunk.map_err(|e| Error::engine(format!("output of {what}"), e))
                    })),
                    input,
                })
            }
            StartExecResults::Detached => Err(Error::engine(
                format!("exec {what}"),
                "the engine started it detached, without its output",
            )),
        }
    }

    /// The exit code of a command [`Engine::exec_attach`] started, once it
    /// has ended: the engine sets it a moment after the output closes, so it
    /// is asked again for up to 5 s. A command that still runs then, or an
    /// engine that reports no code, is an error (never a made-up code).
    pub async fn exec_exit_code(&self, id: &str, what: &str) -> Result<i64> {
        for _ in 0..50 {
            let i = self
                .docker
                .inspect_exec(id)
                .await
                .map_err(|e| Error::engine(format!("exec {what}"), e))?;
            if i.running != Some(true) {
                return i.exit_code.ok_or_else(|| {
                    Error::engine(format!("exec {what}"), "the engine reported no exit code")
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(Error::engine(
            format!("exec {what}"),
            "still running 5 s after its output ended",
        ))
    }

    /// Run a command in a running container; its exit code and combined output.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        user: Option<&str>,
    ) -> Result<(i64, String)> {
        let what = format!("in {container}");
        let mut session = self
            .exec_attach(container, cmd.to_vec(), user, false, &what)
            .await?;
        let mut out = String::new();
        while let Some(chunk) = session.output.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
        }
        let code = self.exec_exit_code(&session.id, &what).await?;
        Ok((code, out))
    }

    /// Remove a container whatever its state; one that is already gone is fine.
    pub async fn remove(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_container(
                name,
                Some(qp::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::engine(format!("remove {name}"), e)),
        }
    }

    /// Remove a volume: `true` when it was there, `false` when it was
    /// already gone (which is fine).
    pub async fn remove_volume(&self, name: &str) -> Result<bool> {
        match self
            .docker
            .remove_volume(name, None::<qp::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(format!("remove volume {name}"), e)),
        }
    }

    /// Stop a container gracefully (SIGTERM, SIGKILL after `grace` seconds),
    /// then remove it; one that is already gone is fine.
    pub async fn stop_and_remove(&self, name: &str, grace: u64) -> Result<()> {
        // Whatever the stop says (gone, already stopped), the removal decides.
        let _ = self.stop(name, grace).await;
        self.remove(name).await
    }

    /// Create (not start) a container of this name.
    pub async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<()> {
        self.create_raw(name, body)
            .await
            .map(|_| ())
            .map_err(|e| Error::engine(format!("create {name}"), e))
    }

    async fn create_raw(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> std::result::Result<models::ContainerCreateResponse, ApiError> {
        self.docker
            .create_container(
                Some(qp::CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
    }

    /// Create a container that is never started: a record on the host (lock,
    /// revision) that also keeps `image` from being pruned. `cmd` only names
    /// it; it has no network. `Ok(false)`: a container of that name exists.
    pub async fn create_holder(
        &self,
        name: &str,
        image: &str,
        cmd: &str,
        labels: HashMap<String, String>,
    ) -> std::result::Result<bool, ApiError> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec![cmd.to_string()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(models::HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.create_raw(name, body).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait for a started container to exit: its exit code, or `None` when
    /// it still runs after `timeout` (it is left running).
    pub async fn wait_exit(&self, name: &str, timeout: std::time::Duration) -> Result<Option<i64>> {
        // One request held open for the whole wait: the client's 120 s
        // request timeout must not end it first.
        let docker = self
            .docker
            .clone()
            .with_timeout(timeout + std::time::Duration::from_secs(10));
        let mut wait = docker.wait_container(name, None::<qp::WaitContainerOptions>);
        match tokio::time::timeout(timeout, wait.next()).await {
            Err(_) => Ok(None),
            Ok(Some(Ok(r))) => Ok(Some(r.status_code)),
            // A non-zero exit arrives as an error carrying the code.
            Ok(Some(Err(ApiError::DockerContainerWaitError { code, .. }))) => Ok(Some(code)),
            Ok(Some(Err(e))) => Err(Error::engine(format!("wait for {name}"), e)),
            Ok(None) => Err(Error::engine(
                format!("wait for {name}"),
                "the engine closed the wait without an exit code",
            )),
        }
    }

    /// Start a created container and wait for it to exit: its exit code,
    /// or `None` when it still runs after `timeout` (it is left running).
    pub async fn run_to_exit(
        &self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<i64>> {
        self.start(name).await?;
        self.wait_exit(name, timeout).await
    }

    /// A tar archive of `path` in a container (running or not), streamed:
    /// its entries start with the path's last component.
    pub fn download(
        &self,
        container: &str,
        path: &str,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes>> + '_ {
        let what = format!("archive {path} of {container}");
        self.docker
            .download_from_container(
                container,
                Some(qp::DownloadFromContainerOptions { path: path.into() }),
            )
            .map(move |r| r.map_err(|e| Error::engine(what.clone(), e)))
    }

    /// Unpack a tar stream into the directory `path` of a container
    /// (created or stopped is fine); owners and modes as in the archive.
    pub async fn upload<S>(&self, container: &str, path: &str, tar: S) -> Result<()>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        self.docker
            .upload_to_container(
                container,
                Some(qp::UploadToContainerOptions {
                    path: path.into(),
                    ..Default::default()
                }),
                body_try_stream(tar),
            )
            .await
            .map_err(|e| Error::engine(format!("unpack an archive into {path} of {container}"), e))
    }

    /// The last `n` log lines of a container, for error reports.
    pub async fn tail(&self, container: &str, n: usize) -> String {
        let mut logs = self.docker.logs(
            container,
            Some(qp::LogsOptions {
                stdout: true,
                stderr: true,
                tail: n.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }
}

/// An async reader as a stream of 1 MiB chunks.
pub fn read_stream<R, B>(
    reader: R,
) -> impl futures::Stream<Item = std::io::Result<B>> + Send + 'static
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    B: From<Vec<u8>> + Send + 'static,
{
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.into()), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A listed container's name, without the engine's leading slash.
pub fn name_of(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// The name prefix of everything one stack (in one environment) owns on a host.
pub fn project(stack: &crate::model::Stack) -> String {
    if let Some(p) = &stack.project {
        return p.clone();
    }
    match &stack.environment {
        Some(e) => format!("{}-{e}", stack.name),
        None => stack.name.clone(),
    }
}

pub fn container_name(project: &str, service: &str, replica: u32) -> String {
    format!("{project}-{service}-{replica}")
}

pub fn network_name(project: &str, network: &str) -> String {
    format!("{project}-{network}")
}

pub fn volume_name(project: &str, volume: &str) -> String {
    format!("{project}-{volume}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_versions_compare_numerically() {
        assert!(super::parse_api("1.41") >= super::MIN_API);
        assert!(super::parse_api("1.9") < super::MIN_API);
        assert!(super::parse_api("1.100") > super::parse_api("1.41"));
    }

    #[test]
    fn plain_tcp_to_another_machine_is_warned_about() {
        use super::plain_tcp_warning as w;
        for quiet in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
            "tcp://[::1]:2375",
            "http://127.0.0.2:2375",
            "https://10.0.0.5:2376",
        ] {
            assert_eq!(w(quiet), None, "{quiet}");
        }
        for loud in [
            "tcp://10.0.0.5:2375",
            "tcp://[fd00::5]:2375",
            "http://prod:2375",
            "tcp://prod",
        ] {
            let msg = w(loud).unwrap_or_else(|| panic!("{loud}: no warning"));
            assert!(
                msg.contains(loud) && msg.contains("DOCKER_TLS_VERIFY"),
                "{msg}"
            );
        }
    }
}
