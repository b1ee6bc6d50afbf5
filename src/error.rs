//! The one error type at the CLI boundary. Every variant says what went wrong,
//! where, and how to fix it, and maps to its own exit code.

use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of problem a stack.toml has; each kind exits with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelErrorKind {
    Syntax,
    UnknownKey,
    BadDuration,
    BadMemory,
    InvalidValue,
    MissingKey,
    UnknownDependency,
    DependencyCycle,
    DuplicatePort,
    UndefinedNetwork,
    MissingCratePath,
    UnknownEnvironment,
    UnknownSecret,
    DuplicateName,
}

impl ModelErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ModelErrorKind::Syntax => 10,
            ModelErrorKind::UnknownKey => 11,
            ModelErrorKind::BadDuration => 12,
            ModelErrorKind::BadMemory => 13,
            ModelErrorKind::InvalidValue => 14,
            ModelErrorKind::MissingKey => 15,
            ModelErrorKind::UnknownDependency => 16,
            ModelErrorKind::DependencyCycle => 17,
            ModelErrorKind::DuplicatePort => 18,
            ModelErrorKind::UndefinedNetwork => 19,
            ModelErrorKind::MissingCratePath => 20,
            ModelErrorKind::UnknownEnvironment => 21,
            ModelErrorKind::UnknownSecret => 22,
            ModelErrorKind::DuplicateName => 23,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ModelErrorKind::Syntax => "syntax error",
            ModelErrorKind::UnknownKey => "unknown key",
            ModelErrorKind::BadDuration => "bad duration",
            ModelErrorKind::BadMemory => "bad memory size",
            ModelErrorKind::InvalidValue => "invalid value",
            ModelErrorKind::MissingKey => "missing key",
            ModelErrorKind::UnknownDependency => "unknown dependency",
            ModelErrorKind::DependencyCycle => "dependency cycle",
            ModelErrorKind::DuplicatePort => "port used twice",
            ModelErrorKind::UndefinedNetwork => "undefined network",
            ModelErrorKind::MissingCratePath => "missing crate path",
            ModelErrorKind::UnknownEnvironment => "unknown environment",
            ModelErrorKind::UnknownSecret => "unknown secret",
            ModelErrorKind::DuplicateName => "duplicate name",
        }
    }
}

/// A problem in a stack file, located at file:line:column.
#[derive(Debug, Clone)]
pub struct ModelError {
    pub kind: ModelErrorKind,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl ModelError {
    /// Locate a byte span of `src` (1-based line and column, in characters).
    pub fn at(
        kind: ModelErrorKind,
        file: &Path,
        src: &str,
        offset: usize,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(src, offset);
        ModelError {
            kind,
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = src[line_start..offset].chars().count() + 1;
    (line, column)
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.kind.label(),
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Model(Box<ModelError>),
    #[error("no stack.toml found in {searched} or any parent directory\n  hint: run stackctl inside the project, or pass -f path/to/stack.toml")]
    StackNotFound { searched: PathBuf },
    #[error("cannot read {path}: {source}\n  hint: check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}\n  hint: check that the directory is writable and the disk is not full")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {name}: {message}\n  hint: fix the template (a project's own templates/ overrides the built-in one of the same name)")]
    Template { name: String, message: String },
    #[error("{message}\n  hint: {hint}")]
    Usage { message: String, hint: String },
    #[error("cannot reach the Docker daemon at {host}: {message}\n  hint: start it (systemctl start docker), or point DOCKER_HOST at it (unix:///var/run/docker.sock, tcp://HOST:2376 with DOCKER_CERT_PATH for TLS)")]
    EngineUnreachable { host: String, message: String },
    #[error("the Docker daemon speaks API {version}; stackctl needs {minimum} or newer\n  hint: upgrade Docker Engine (20.10 or newer)")]
    EngineTooOld { version: String, minimum: String },
    #[error("Docker Engine: {what}: {message}\n  hint: {hint}")]
    Engine {
        what: String,
        message: String,
        hint: String,
    },
    #[error("building {service} failed{step}: {message}\n  hint: {hint}")]
    Build {
        service: String,
        step: String,
        message: String,
        hint: String,
    },
    #[error("{container} did not become ready: {reason}{logs}\n  hint: {hint}")]
    NotReady {
        container: String,
        reason: String,
        logs: String,
        hint: String,
    },
    #[error("{unhealthy} of {total} containers are not healthy\n  hint: see the table above; `stackctl logs SERVICE` shows why")]
    Unhealthy { unhealthy: usize, total: usize },
    #[error("image {image} is missing\n  hint: {hint}")]
    MissingImage { image: String, hint: String },
    #[error("backup {path}: {reason}\n  hint: nothing was changed; use another backup (`ls backups/PROJECT/`), or take a new one with `stackctl backup`")]
    BackupInvalid { path: PathBuf, reason: String },
    #[error("{container} is not running\n  hint: {hint}")]
    NotRunning { container: String, hint: String },
    #[error("{what} failed (exit code {code}): {message}\n  hint: see the message above; `stackctl logs SERVICE` shows the container's side")]
    DataCommand {
        what: String,
        code: i64,
        message: String,
    },
    #[error("deploy failed: {reason}{logs}\n  {outcome}\n  hint: {hint}")]
    DeployFailed {
        reason: String,
        logs: String,
        /// What now runs: rolled back, or the previous revision kept serving.
        outcome: String,
        hint: String,
    },
    #[error("another deploy holds the lock of {project}: {holder}\n  hint: {hint}")]
    Locked {
        project: String,
        holder: String,
        hint: String,
    },
    #[error("revision {revision}: {reason}\n  hint: {hint}")]
    Revision {
        revision: String,
        reason: String,
        hint: String,
    },
    #[error("job {job} failed: {reason}{logs}\n  hint: {hint}")]
    JobFailed {
        job: String,
        reason: String,
        logs: String,
        hint: String,
    },
    #[error("the engine cannot run this plan: {problems}\n  hint: {hint}")]
    Preflight { problems: String, hint: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        Error::Model(Box::new(e))
    }
}

/// An operator answered no at a confirmation prompt: nothing was changed.
pub const EXIT_DECLINED: i32 = 7;
/// `status`: what runs differs from stack.toml (its table says how).
pub const EXIT_DRIFT: i32 = 45;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Model(e) => e.kind.exit_code(),
            Error::StackNotFound { .. } => 3,
            Error::Read { .. } => 4,
            Error::Write { .. } => 5,
            Error::Template { .. } => 6,
            Error::Usage { .. } => 2,
            Error::EngineUnreachable { .. } => 30,
            Error::EngineTooOld { .. } => 31,
            Error::Engine { .. } => 32,
            Error::Build { .. } => 33,
            Error::NotReady { .. } => 34,
            Error::Unhealthy { .. } => 35,
            Error::MissingImage { .. } => 36,
            Error::BackupInvalid { .. } => 37,
            Error::NotRunning { .. } => 38,
            Error::DataCommand { .. } => 39,
            Error::DeployFailed { .. } => 40,
            Error::Locked { .. } => 41,
            Error::Revision { .. } => 42,
            Error::JobFailed { .. } => 43,
            Error::Preflight { .. } => 44,
            Error::Other(_) => 1,
        }
    }

    /// An engine call that failed: what was attempted, and the daemon's answer.
    pub fn engine(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Engine {
            what: what.into(),
            message: e.to_string(),
            hint: "check `stackctl health` and the daemon's log (journalctl -u docker)".into(),
        }
    }

    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
