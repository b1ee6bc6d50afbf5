//! Every command-line definition of stackctl, and nothing else.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "stackctl",
    version,
    about = "Run a multi-service Docker stack from one stack.toml",
    long_about = "stackctl reads stack.toml, the single source of truth of a stack, renders \
                  every artifact from it (Dockerfiles, compose files, Nginx, Prometheus, Grafana, \
                  Redis, Filebeat and PostgreSQL configuration) and drives the Docker Engine API."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The stack file (default: stack.toml in the current directory or a parent).
    /// Given before the command, as `logs -f` means follow.
    #[arg(short = 'f', long = "file", env = "STACKCTL_FILE")]
    pub file: Option<PathBuf>,
    /// Environment overlay from stack.toml (e.g. staging, production).
    #[arg(short = 'e', long = "env", global = true, env = "STACKCTL_ENV")]
    pub env: Option<String>,
    /// Name prefix of the containers, networks and volumes on the host
    /// (default: the stack name, plus `-ENV` for an environment).
    #[arg(short = 'p', long = "project", global = true, env = "STACKCTL_PROJECT")]
    pub project: Option<String>,
    /// Registry prefix for images, overriding stack.toml's `registry` (e.g. 127.0.0.1:5000/team).
    #[arg(long, global = true, env = "STACKCTL_REGISTRY")]
    pub registry: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Where the stack runs: the local engine's containers, or Docker Swarm services.
    /// `render` also takes `kubernetes` (manifests in kubernetes/); `local` and
    /// `swarm` render compose files and configs (`compose` is `local`).
    #[arg(long, global = true, value_enum, default_value_t = Target::Local, env = "STACKCTL_TARGET")]
    pub target: Target,
}

/// One `--target` for every command: a subcommand may not define its own
/// `--target` beside a global one (clap would mix their values up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    #[value(alias = "compose")]
    Local,
    Swarm,
    /// Render only: stackctl writes the manifests, kubectl applies them.
    Kubernetes,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check stack.toml: syntax, unknown keys, references, cycles, ports, crate paths.
    Validate {
        /// Also check the Docker Engine can run the plan: images present or buildable, host ports free, volumes.
        #[arg(long)]
        against_engine: bool,
    },
    /// Write every artifact (Dockerfiles, compose files, configs) to a directory.
    Render(RenderArgs),
    /// Print the resolved stack (defaults applied, environment overlaid).
    Config(ConfigArgs),
    /// Draw the stack: services, networks and dependencies.
    Architecture(ArchitectureArgs),
    /// Check the daemon and disk; create secrets, networks, volumes and infrastructure images.
    Setup,
    /// Build (or find cached) the infrastructure images made from Debian packages and list every image the stack needs; `save`/`load` move them as one file.
    Images {
        #[command(subcommand)]
        command: Option<ImagesCommand>,
    },
    /// Build the service images: one static cargo build, then each image through the Engine API.
    Build {
        /// Services to build (default: all).
        services: Vec<String>,
        /// Push the images to the stack's registry afterwards.
        #[arg(long)]
        push: bool,
        /// Use the binaries already built instead of running cargo.
        #[arg(long)]
        no_cargo: bool,
    },
    /// Start the stack (or the named services and what they need), each when its dependencies are ready.
    Start(StartArgs),
    /// Stop containers (dependents first), keeping them and their data.
    Stop { services: Vec<String> },
    /// Stop, then start again.
    Restart(StartArgs),
    /// Remove the stack's containers and networks; volumes too with --volumes.
    Down {
        /// Also delete the volumes and all their data (asks, or needs --yes).
        #[arg(long)]
        volumes: bool,
        #[arg(short, long)]
        yes: bool,
    },
    /// Health of every container and each service's ready report; exit 0 only when all are healthy.
    Health {
        #[arg(long)]
        watch: bool,
    },
    /// Desired (stack.toml) against running: missing, outdated, extra.
    Status,
    /// Logs of the stack's containers, interleaved and coloured by container.
    Logs {
        services: Vec<String>,
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this (e.g. 10m).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines of each container.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// A shell in a container (services FROM scratch have none: it says what to run instead).
    Shell { service: String },
    /// Run a command in a service's container: stackctl exec SERVICE -- CMD...
    Exec {
        service: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Smoke-check a running service: liveness, readiness, metrics, its healthcheck command.
    TestService { service: String },
    /// CPU, memory against limit, network and block I/O per container.
    Resources {
        #[arg(long)]
        watch: bool,
    },
    /// The monitoring and logging URLs, checked.
    Monitor {
        /// Open the ones that answer in a browser.
        #[arg(long)]
        open: bool,
    },
    /// Remove this stack's stopped containers and dangling images (never volumes).
    Clean,
    /// Dump every PostgreSQL database (pg_dump, custom format) and a Redis snapshot to backups/PROJECT/TIMESTAMP/, with a checksummed manifest.
    Backup {
        /// Only these (a service's database, a PostgreSQL or Redis container, or a component with `backup` on; default: all of them).
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// Afterwards keep only the newest N backups of this project.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        keep: Option<u64>,
    },
    /// Restore the databases of a backup (a directory, or a backup name under backups/PROJECT/); checks every checksum first.
    Restore {
        backup: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(short, long)]
        yes: bool,
    },
    /// Roll out what changed (jobs first, then each service beside its old container, health-gated), recorded as a revision.
    Deploy(DeployArgs),
    /// Put the previous (or a named) revision back, the same rolling way, by image id; no rebuild.
    Rollback {
        /// The revision to go back to (default: the one before the live one).
        #[arg(long, value_name = "REV")]
        to: Option<String>,
    },
    /// The revisions deployed on this host, the live one marked.
    History,
    /// What a deploy would change (against what runs), or the changes since a revision.
    Diff {
        /// Compare the current stack.toml and images with this revision.
        revision: Option<String>,
    },
    /// The deploy lock on the Docker host.
    Lock {
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Set the number of replicas of services (Swarm target): stackctl --target swarm scale api-gateway=3
    Scale {
        /// SERVICE=N assignments.
        #[arg(required = true, value_name = "SERVICE=N")]
        assignments: Vec<String>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Write every image the stack needs that this host has into one archive (for a host without a registry).
    Save {
        /// The archive to write (replaced only when complete).
        file: std::path::PathBuf,
    },
    /// Load an archive `images save` wrote, then list the stack's images.
    Load { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the lock, and whether it is stale.
    Status,
    /// Remove the lock (asks first, or needs --yes): for a deploy that died on another host.
    Release {
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Back up every database and Redis first.
    #[arg(long)]
    pub backup: bool,
    /// Fail instead of building images that are missing.
    #[arg(long)]
    pub no_build: bool,
    /// How long to watch health after cutover (e.g. 30s; 0 turns it off; default: stack.toml's deploy.watch).
    #[arg(long, value_parser = parse_duration)]
    pub watch: Option<std::time::Duration>,
    /// How long each new container may take to become ready (default: deploy.ready_timeout).
    #[arg(long, value_parser = parse_duration)]
    pub ready_timeout: Option<std::time::Duration>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    crate::model::Duration::parse(s).map(|d| d.as_std())
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Services to start with their dependencies (default: all).
    pub services: Vec<String>,
    /// Seconds to wait for each container to become ready.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output directory (default: deploy/ next to stack.toml).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    // What to render comes from the global --target: compose files and
    // configs (local, swarm), or Kubernetes manifests (kubernetes).
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderTarget {
    Compose,
    Kubernetes,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(long, value_enum, default_value_t = ConfigFormat::Toml)]
    pub format: ConfigFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConfigFormat {
    Toml,
    Json,
}

#[derive(Debug, Args)]
pub struct ArchitectureArgs {
    #[arg(long, value_enum, default_value_t = DiagramFormat::Text)]
    pub format: DiagramFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagramFormat {
    Text,
    Mermaid,
    Dot,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
