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
    #[arg(short = 'f', long = "file", global = true, env = "STACKCTL_FILE")]
    pub file: Option<PathBuf>,
    /// Environment overlay from stack.toml (e.g. staging, production).
    #[arg(short = 'e', long = "env", global = true, env = "STACKCTL_ENV")]
    pub env: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check stack.toml: syntax, unknown keys, references, cycles, ports, crate paths.
    Validate,
    /// Write every artifact (Dockerfiles, compose files, configs) to a directory.
    Render(RenderArgs),
    /// Print the resolved stack (defaults applied, environment overlaid).
    Config(ConfigArgs),
    /// Draw the stack: services, networks and dependencies.
    Architecture(ArchitectureArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output directory (default: deploy/ next to stack.toml).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
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
