//! `backup` and `restore`: every PostgreSQL database of the stack dumped
//! through Engine API execs (`pg_dump --format=custom`, streamed to disk,
//! never held in memory), a Redis snapshot, and a manifest with each file's
//! size and sha256; `restore` checks all of it before it touches anything.
//!
//! Components with `backup` on add an archive of each named volume (see
//! [`volume`]).
//!
//! Backups live in `backups/<project>/<UTC timestamp>/` under the stack root:
//! one directory per project, so retention never deletes another project's
//! backups. A directory without `manifest.json` is incomplete and ignored.

mod volume;

use crate::engine::LogOutput;
use crate::engine::{container_name, ExecSession};
use crate::error::{Error, Result};
use crate::model::{Stack, VolumeBackup};
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;
/// Bytes of a failing command's stderr kept for the error message.
const STDERR_KEEP: usize = 8192;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stack: String,
    pub project: String,
    pub environment: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    pub git_commit: Option<String>,
    /// The deploy revision live when the backup was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    pub stackctl_version: String,
    pub files: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// File name inside the backup directory.
    pub file: String,
    pub kind: EntryKind,
    /// The container (service name) it came from, e.g. `postgres-user`.
    pub instance: String,
    /// A volume archive's stack volume name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// A volume archive's mount path in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// The services whose data it is.
    pub services: Vec<String>,
    pub size: u64,
    pub sha256: String,
}

/// What a backup file holds; stored in the manifest as the lower-case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A pg_dump custom-format archive.
    Postgres,
    /// A Redis RDB snapshot.
    Redis,
    /// A tar archive of a component's named volume.
    Volume,
    /// A kind a newer stackctl wrote: the manifest still loads, and
    /// `restore` refuses the backup with a clear message.
    #[serde(other)]
    Unknown,
}

/// What one backup run covers.
enum Part<'s> {
    Postgres(&'s crate::model::Postgres),
    Redis(&'s crate::model::Redis),
    /// The named volumes of a component with `backup` on.
    Volumes(&'s crate::model::Component),
}

impl Part<'_> {
    fn instance(&self) -> &str {
        match self {
            Part::Postgres(p) => &p.name,
            Part::Redis(r) => &r.name,
            Part::Volumes(c) => &c.name,
        }
    }
}

/// The components whose volumes `backup` archives.
fn with_backup(stack: &Stack) -> impl Iterator<Item = &crate::model::Component> {
    stack
        .components
        .iter()
        .filter(|c| c.backup != VolumeBackup::Off)
}

/// `backups/<project>/` under the stack root.
pub fn project_dir(stack: &Stack) -> PathBuf {
    stack
        .root
        .join("backups")
        .join(crate::engine::project(stack))
}

fn progress(ui: &Ui, len: Option<u64>, msg: String) -> indicatif::ProgressBar {
    let hidden = ui.quiet || ui.json || !console::Term::stderr().is_term();
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if hidden {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = match len {
        Some(_) => "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        None => "{spinner} {msg:24} {bytes} {bytes_per_sec}",
    };
    if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
        pb.set_style(s.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Whether the container of `instance` runs: `None` when there is none.
async fn state_of(env: &StackEnv<'_>, instance: &str) -> Result<(String, Option<bool>)> {
    let name = container_name(&env.project, instance, 1);
    let running = env
        .engine
        .container(&name)
        .await?
        .map(|i| i.state.and_then(|s| s.running).unwrap_or(false));
    Ok((name, running))
}

/// The container of a data service, checked to be running.
async fn running_container(env: &StackEnv<'_>, instance: &str) -> Result<String> {
    let (name, running) = state_of(env, instance).await?;
    if running != Some(true) {
        return Err(Error::NotRunning {
            container: name,
            hint: format!("start it first: `stackctl start {instance}`"),
        });
    }
    Ok(name)
}

/// The shell line running a PostgreSQL client tool as the database user,
/// with the password read inside the container from the secret file the
/// compose file and stackctl both mount (POSTGRES_PASSWORD_FILE).
fn pg_cmd(tool_and_flags: &str, user: &str, database: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("PGPASSWORD=\"$(cat \"$POSTGRES_PASSWORD_FILE\")\" exec {tool_and_flags} --no-password -h 127.0.0.1 -U \"$1\" -d \"$2\""),
        "sh".into(),
        user.into(),
        database.into(),
    ]
}

/// A fresh snapshot: BGSAVE (retried while another save or rewrite runs),
/// wait for it, check it succeeded, then stream `/data/dump.rdb` (where the
/// rendered redis.conf keeps it; Redis replaces it by rename, so `cat` reads
/// one whole snapshot). Not `redis-cli --rdb -`: with diskless replication it
/// leaves the 40-byte end marker on stdout, which Redis' AOF loader rejects.
fn redis_cmd(r: &crate::model::Redis) -> Vec<String> {
    let script = "set -e; export REDISCLI_AUTH=\"$(cat \"$2\")\"; \
        n=0; until redis-cli -p \"$1\" BGSAVE | grep -q started; do n=$((n+1)); [ $n -lt 600 ] || { echo 'BGSAVE never started' >&2; exit 1; }; sleep 0.2; done; \
        while redis-cli -p \"$1\" INFO persistence | grep -q '^rdb_bgsave_in_progress:1'; do sleep 0.1; done; \
        redis-cli -p \"$1\" INFO persistence | grep -q '^rdb_last_bgsave_status:ok' || { echo 'BGSAVE failed (see the Redis log)' >&2; exit 1; }; \
        exec cat /data/dump.rdb";
    vec![
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        r.port.to_string(),
        format!(
            "{}/{}",
            crate::model::containers::SECRETS_DIR,
            r.password_secret
        ),
    ]
}

/// Run `cmd` in `container`; its stdout streamed into `path` (created new),
/// hashed on the way. Returns (size, sha256). A non-zero exit is an error
/// carrying the command's stderr.
async fn exec_to_file(
    env: &StackEnv<'_>,
    container: &str,
    cmd: Vec<String>,
    path: &Path,
    pb: &indicatif::ProgressBar,
) -> Result<(u64, String)> {
    let what = format!("{} in {container}", cmd_name(&cmd));
    let mut session = env
        .engine
        .exec_attach(container, cmd, None, false, &what)
        .await?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stderr = Vec::new();
    while let Some(chunk) = session.output.next().await {
        match chunk? {
            LogOutput::StdOut { message } => {
                hasher.update(&message);
                size += message.len() as u64;
                pb.inc(message.len() as u64);
                out.write_all(&message)
                    .await
                    .map_err(|source| Error::Write {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
            LogOutput::StdErr { message } if stderr.len() < STDERR_KEEP => {
                stderr.extend_from_slice(&message)
            }
            _ => {}
        }
    }
    out.flush().await.map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })?;
    out.get_ref()
        .sync_all()
        .await
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    let code = env.engine.exec_exit_code(&session.id, &what).await?;
    if code != 0 {
        return Err(Error::DataCommand {
            what,
            code,
            message: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn cmd_name(cmd: &[String]) -> String {
    // The tool a `/bin/sh -c "... exec TOOL ..."` line runs.
    if cmd.get(2).is_some_and(|l| l.contains("BGSAVE")) {
        return "the Redis snapshot (BGSAVE)".into();
    }
    cmd.get(2)
        .and_then(|l| l.split("exec ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("command")
        .to_string()
}

/// Run `cmd` in `container` with the file at `path` streamed to its stdin.
async fn exec_from_file(
    env: &StackEnv<'_>,
    container: &str,
    cmd: Vec<String>,
    path: &Path,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let what = format!("{} in {container}", cmd_name(&cmd));
    let ExecSession {
        id,
        mut output,
        mut input,
    } = env
        .engine
        .exec_attach(container, cmd, None, true, &what)
        .await?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let mut messages = Vec::new();
    {
        let send = async {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(|source| Error::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                // The command may stop reading (and exit) on an error: its
                // exit code and stderr say why, not the broken pipe.
                if input.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                pb.inc(n as u64);
            }
            let _ = input.shutdown().await;
            Ok::<(), Error>(())
        };
        let receive = async {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    LogOutput::StdErr { message } | LogOutput::StdOut { message }
                        if messages.len() < STDERR_KEEP =>
                    {
                        messages.extend_from_slice(&message);
                    }
                    _ => {}
                }
            }
            Ok::<(), Error>(())
        };
        let (sent, received) = tokio::join!(send, receive);
        sent?;
        received?;
    }
    let code = env.engine.exec_exit_code(&id, &what).await?;
    if code != 0 {
        return Err(Error::DataCommand {
            what,
            code,
            message: String::from_utf8_lossy(&messages).trim().to_string(),
        });
    }
    Ok(())
}

/// The parts a backup covers: the named services' databases (a service, or
/// a PostgreSQL or Redis container named directly), or every database and
/// Redis when none is named.
fn select<'s>(stack: &'s Stack, names: &[String]) -> Result<Vec<Part<'s>>> {
    if names.is_empty() {
        let mut v: Vec<Part> = stack.postgres.iter().map(Part::Postgres).collect();
        v.extend(stack.redis.iter().map(Part::Redis));
        v.extend(with_backup(stack).map(Part::Volumes));
        return Ok(v);
    }
    let mut v: Vec<Part> = Vec::new();
    for n in names {
        let part = if let Some(p) = stack
            .postgres
            .iter()
            .find(|p| &p.name == n || &p.service == n)
        {
            Part::Postgres(p)
        } else if let Some(r) = stack.redis.as_ref().filter(|r| &r.name == n) {
            Part::Redis(r)
        } else if let Some(c) = with_backup(stack).find(|c| &c.name == n) {
            Part::Volumes(c)
        } else {
            let mut choices: Vec<&str> =
                stack.postgres.iter().map(|p| p.service.as_str()).collect();
            choices.extend(stack.redis.iter().map(|r| r.name.as_str()));
            choices.extend(with_backup(stack).map(|c| c.name.as_str()));
            let why = if stack.service(n).is_some() {
                format!("service `{n}` has no database")
            } else if stack.component(n).is_some() {
                format!("component `{n}` has backup off (set backup = true in [components.{n}] to archive its volumes)")
            } else {
                format!("no service or database `{n}` in this stack")
            };
            return Err(Error::usage(
                why,
                format!("choose from: {}", choices.join(", ")),
            ));
        };
        if !v.iter().any(|x| x.instance() == part.instance()) {
            v.push(part);
        }
    }
    Ok(v)
}

/// Whether `backup` covers the container `name` (a database, Redis, or a
/// component with `backup` on).
pub fn covers(stack: &Stack, name: &str) -> bool {
    stack.postgres.iter().any(|p| p.name == name)
        || stack.redis.as_ref().is_some_and(|r| r.name == name)
        || with_backup(stack).any(|c| c.name == name)
}

fn services_of(stack: &Stack, part: &Part) -> Vec<String> {
    match part {
        Part::Postgres(p) => stack
            .services
            .iter()
            .filter(|s| s.postgres.as_deref() == Some(p.name.as_str()))
            .map(|s| s.name.clone())
            .collect(),
        Part::Redis(_) => stack
            .services
            .iter()
            .filter(|s| s.redis.is_some())
            .map(|s| s.name.clone())
            .collect(),
        Part::Volumes(c) => vec![c.name.clone()],
    }
}

pub async fn backup(stack: &Stack, names: &[String], keep: Option<usize>, ui: &Ui) -> Result<i32> {
    // A name that is not in the stack is refused before connecting.
    select(stack, names)?;
    let env = StackEnv::connect(stack).await?;
    let made = backup_on(&env, names, keep, ui).await?;
    if ui.json {
        ui.print_json(&serde_json::json!({
            "backup": made.name,
            "dir": made.dir.display().to_string(),
            "bytes": made.bytes(),
            "seconds": made.seconds,
            "deleted": made.deleted,
            "manifest": made.manifest,
        }));
    } else {
        ui.ok(made.summary());
    }
    Ok(0)
}

/// A backup [`backup_on`] wrote.
pub(crate) struct Made {
    pub name: String,
    pub dir: PathBuf,
    pub seconds: f64,
    /// Older backups removed by the retention (`keep`).
    pub deleted: Vec<String>,
    pub manifest: Manifest,
}

impl Made {
    pub fn bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }

    pub fn summary(&self) -> String {
        format!(
            "backup {}: {} files, {:.1} MB in {:.1}s at {}",
            self.name,
            self.manifest.files.len(),
            self.bytes() as f64 / 1e6,
            self.seconds,
            self.dir.display()
        )
    }
}

/// Back up the named services' data (everything when none is named) on a
/// connected engine: the operation behind `backup`, also run by `deploy`
/// before it recreates a database. Prints progress, not the result.
pub(crate) async fn backup_on(
    env: &StackEnv<'_>,
    names: &[String],
    keep: Option<usize>,
    ui: &Ui,
) -> Result<Made> {
    let t0 = Instant::now();
    let stack = env.stack;
    let mut parts = select(stack, names)?;
    // Every container must be running before anything is written (a
    // volume can be archived from a stopped one). A backup of everything
    // leaves out what was never created (e.g. a database added since).
    let mut containers = Vec::new();
    let mut kept = Vec::new();
    for p in parts.drain(..) {
        let (name, running) = state_of(env, p.instance()).await?;
        match (running, &p) {
            (None, _) if names.is_empty() => {
                ui.info(format!(
                    "{}: not created yet, nothing to back up",
                    p.instance()
                ));
                continue;
            }
            (Some(_), Part::Volumes(_)) | (Some(true), _) => {}
            _ => {
                return Err(Error::NotRunning {
                    container: name,
                    hint: format!("start it first: `stackctl start {}`", p.instance()),
                })
            }
        }
        containers.push(name);
        kept.push(p);
    }
    let parts = kept;
    if parts.is_empty() {
        return Err(Error::NotRunning {
            container: "every database of the stack".into(),
            hint: "nothing to back up yet: `stackctl start` first".into(),
        });
    }
    let base = project_dir(stack);
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    // Dumps hold password hashes and tokens: only root reads them.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(|source| Error::Write {
            path: base.clone(),
            source,
        })?;
    let (dir, name) = (0..)
        .map(|i| {
            if i == 0 {
                stamp.clone()
            } else {
                format!("{stamp}-{i}")
            }
        })
        .map(|n| (base.join(&n), n))
        .find(|(d, _)| !d.exists())
        .expect("a free name");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
    let result = write_parts(stack, env, &parts, &containers, &dir, ui).await;
    let files = match result {
        Ok(f) => f,
        Err(e) => {
            // Nothing half-written stays behind.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let manifest = Manifest {
        format: FORMAT,
        stack: stack.name.clone(),
        project: env.project.clone(),
        environment: stack.environment.clone(),
        created: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        git_commit: crate::runtime::git_commit(&stack.root),
        revision: crate::runtime::revision::list(&env.engine, &stack.root, &env.project)
            .await
            .ok()
            .and_then(|h| h.last().map(|(r, _)| r.id)),
        stackctl_version: env!("CARGO_PKG_VERSION").to_string(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.into()))?;
    let tmp = dir.join(format!("{MANIFEST}.part"));
    std::fs::write(&tmp, json).map_err(|source| Error::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|source| Error::Write {
        path: dir.join(MANIFEST),
        source,
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let deleted = match keep {
        Some(n) => retain(&base, n, ui)?,
        None => Vec::new(),
    };
    Ok(Made {
        name,
        dir,
        seconds,
        deleted,
        manifest,
    })
}

async fn write_parts(
    stack: &Stack,
    env: &StackEnv<'_>,
    parts: &[Part<'_>],
    containers: &[String],
    dir: &Path,
    ui: &Ui,
) -> Result<Vec<Entry>> {
    let mut files = Vec::new();
    for (part, container) in parts.iter().zip(containers) {
        match part {
            Part::Volumes(c) => files.extend(write_volumes(env, c, container, dir, ui).await?),
            _ => files.push(write_dump(stack, env, part, container, dir, ui).await?),
        }
    }
    Ok(files)
}

/// A database dump or the Redis snapshot, through an exec in its container.
async fn write_dump(
    stack: &Stack,
    env: &StackEnv<'_>,
    part: &Part<'_>,
    container: &str,
    dir: &Path,
    ui: &Ui,
) -> Result<Entry> {
    let t = Instant::now();
    let (file, cmd, database, user, kind) = match part {
        Part::Postgres(p) => (
            format!("{}.dump", p.name),
            pg_cmd("pg_dump --format=custom", &p.user, &p.database),
            Some(p.database.clone()),
            Some(p.user.clone()),
            EntryKind::Postgres,
        ),
        Part::Redis(r) => (
            format!("{}.rdb", r.name),
            redis_cmd(r),
            None,
            None,
            EntryKind::Redis,
        ),
        Part::Volumes(_) => unreachable!("volumes are archived by write_volumes"),
    };
    let pb = progress(ui, None, file.clone());
    let tmp = dir.join(format!("{file}.part"));
    let written = exec_to_file(env, container, cmd, &tmp, &pb).await;
    pb.finish_and_clear();
    let (size, sha256) = written?;
    if kind == EntryKind::Redis {
        check_rdb(&tmp)?;
    }
    finish_file(&tmp, &dir.join(&file))?;
    ui.ok(format!(
        "{file}: {} ({:.1} MB) in {:.1}s",
        database.as_deref().unwrap_or("snapshot"),
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    Ok(Entry {
        file,
        kind,
        instance: part.instance().to_string(),
        volume: None,
        path: None,
        database,
        user,
        services: services_of(stack, part),
        size,
        sha256,
    })
}

/// A `.part` file renamed to its final name once it is complete.
fn finish_file(tmp: &Path, done: &Path) -> Result<()> {
    std::fs::rename(tmp, done).map_err(|source| Error::Write {
        path: done.to_path_buf(),
        source,
    })
}

/// Each named volume of a component, archived; with `backup = true` the
/// component is stopped for it (when it runs) and started again after.
async fn write_volumes(
    env: &StackEnv<'_>,
    c: &crate::model::Component,
    container: &str,
    dir: &Path,
    ui: &Ui,
) -> Result<Vec<Entry>> {
    let quiet = ui.clone_quiet();
    let stop = c.backup == VolumeBackup::Stopped && state_of(env, &c.name).await?.1 == Some(true);
    let names = std::slice::from_ref(&c.name);
    if stop {
        super::up::stop_on(env, names, &quiet).await?;
        ui.ok(format!("{} stopped for its volume archive", c.name));
    }
    let mut files = Vec::new();
    let mut result = Ok(());
    for (vol, target) in volume::of(c) {
        let t = Instant::now();
        let file = volume::file_name(&c.name, &vol);
        let pb = progress(ui, None, file.clone());
        let tmp = dir.join(format!("{file}.part"));
        let written = volume::archive(env, container, &target, &tmp, &pb).await;
        pb.finish_and_clear();
        let (size, sha256) =
            match written.and_then(|w| finish_file(&tmp, &dir.join(&file)).map(|_| w)) {
                Ok(w) => w,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
        ui.ok(format!(
            "{file}: volume {vol} ({:.1} MB) in {:.1}s",
            size as f64 / 1e6,
            t.elapsed().as_secs_f64()
        ));
        files.push(Entry {
            file,
            kind: EntryKind::Volume,
            instance: c.name.clone(),
            volume: Some(vol),
            path: Some(target),
            database: None,
            user: None,
            services: vec![c.name.clone()],
            size,
            sha256,
        });
    }
    // Started again whatever happened to the archive.
    if stop {
        super::up::start_on(env, names, 300, &quiet).await?;
        ui.ok(format!("{} started again", c.name));
    }
    result.map(|_| files)
}

/// A Redis snapshot starts with the RDB magic.
fn check_rdb(path: &Path) -> Result<()> {
    let mut head = [0u8; 5];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"REDIS";
    if ok {
        Ok(())
    } else {
        Err(Error::DataCommand {
            what: "redis-cli --rdb".into(),
            code: 0,
            message: format!("{} is not an RDB snapshot", path.display()),
        })
    }
}

/// Complete backups (with a manifest) in `base`, oldest first.
pub fn list(base: &Path) -> Vec<(String, Manifest)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(base) else {
        return v;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let Ok(bytes) = std::fs::read(p.join(MANIFEST)) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        v.push((e.file_name().to_string_lossy().into_owned(), m));
    }
    v.sort_by(|a, b| a.1.created.cmp(&b.1.created).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Delete the oldest complete backups beyond `keep`; their names.
fn retain(base: &Path, keep: usize, ui: &Ui) -> Result<Vec<String>> {
    let all = list(base);
    let excess = all.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for (name, _) in all.into_iter().take(excess) {
        let p = base.join(&name);
        std::fs::remove_dir_all(&p).map_err(|source| Error::Write {
            path: p.clone(),
            source,
        })?;
        ui.ok(format!("deleted old backup {name} (--keep {keep})"));
        deleted.push(name);
    }
    Ok(deleted)
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::BackupInvalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The backup directory a command-line argument names: a path, or a
/// backup's name under `backups/<project>/`.
fn resolve_dir(stack: &Stack, arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.is_dir() {
        return Ok(p);
    }
    let named = project_dir(stack).join(arg);
    if !arg.contains('/') && named.is_dir() {
        return Ok(named);
    }
    let have: Vec<String> = list(&project_dir(stack))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    Err(Error::usage(
        format!(
            "no backup `{arg}` (neither a directory nor a backup in {})",
            project_dir(stack).display()
        ),
        if have.is_empty() {
            "run `stackctl backup` first".to_string()
        } else {
            format!("backups of this project: {}", have.join(", "))
        },
    ))
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Read the manifest and check every file it lists: present, the size and
/// sha256 recorded. Nothing is touched before this passes.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let bytes = std::fs::read(&mpath)
        .map_err(|_| invalid(dir, format!("no {MANIFEST}: the backup is incomplete (it was interrupted, or is not a stackctl backup)")))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(&mpath, format!("not a valid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(invalid(
            &mpath,
            format!(
                "manifest format {} (this stackctl reads format {FORMAT})",
                m.format
            ),
        ));
    }
    if m.files.is_empty() {
        return Err(invalid(&mpath, "the manifest lists no files"));
    }
    for f in &m.files {
        if f.file.is_empty() || f.file.contains('/') || f.file.starts_with('.') {
            return Err(invalid(
                &mpath,
                format!(
                    "file name `{}` is not a plain name in the backup directory",
                    f.file
                ),
            ));
        }
        let p = dir.join(&f.file);
        let (size, sha) = sha256_file(&p).map_err(|e| {
            invalid(
                &p,
                format!("cannot be read: {e} (the backup is incomplete)"),
            )
        })?;
        if size != f.size {
            return Err(invalid(
                &p,
                format!(
                    "{size} bytes, the manifest says {} (truncated or changed)",
                    f.size
                ),
            ));
        }
        if sha != f.sha256 {
            return Err(invalid(
                &p,
                format!(
                    "sha256 {sha} does not match the manifest's {} (the file is corrupt)",
                    f.sha256
                ),
            ));
        }
    }
    Ok(m)
}

/// What a backup restores onto this stack: each file matched to the
/// database, Redis or component volume it holds.
struct RestorePlan<'a> {
    /// Database dumps and the running container each is restored through.
    postgres: Vec<(&'a Entry, &'a crate::model::Postgres, String)>,
    redis: Option<(&'a Entry, &'a crate::model::Redis)>,
    volumes: Vec<(&'a Entry, &'a crate::model::Component, String)>,
}

impl RestorePlan<'_> {
    /// What the restore replaces, for the confirmation question.
    fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .postgres
            .iter()
            .map(|(f, p, _)| {
                format!(
                    "{} on {}",
                    f.database.as_deref().unwrap_or(&p.database),
                    p.name
                )
            })
            .collect();
        if let Some((_, r)) = self.redis {
            out.push(format!("Redis ({})", r.name));
        }
        out.extend(
            self.volumes
                .iter()
                .map(|(_, c, v)| format!("volume {v} of {}", c.name)),
        );
        out
    }

    /// The containers to stop while it runs: the services using the
    /// restored databases (and Redis), and each restored component with
    /// what depends on it.
    fn users(&self, stack: &Stack, env: &StackEnv<'_>) -> Vec<String> {
        let mut users: Vec<String> = Vec::new();
        for s in &stack.services {
            let uses_pg = self
                .postgres
                .iter()
                .any(|(_, p, _)| s.postgres.as_deref() == Some(p.name.as_str()));
            if uses_pg || (s.redis.is_some() && self.redis.is_some()) {
                users.push(s.name.clone());
            }
        }
        for c in &env.containers {
            let restored = self
                .volumes
                .iter()
                .any(|(_, v, _)| v.name == c.name || c.depends_on.contains(&v.name));
            if restored && !users.contains(&c.name) {
                users.push(c.name.clone());
            }
        }
        users
    }
}

/// Match every file of the manifest onto this stack (a database's container
/// must be running); the backup is refused (exit 37) when one does not fit.
async fn plan_restore<'a>(
    stack: &'a Stack,
    env: &StackEnv<'_>,
    dir: &Path,
    manifest: &'a Manifest,
) -> Result<RestorePlan<'a>> {
    let mut plan = RestorePlan {
        postgres: Vec::new(),
        redis: None,
        volumes: Vec::new(),
    };
    for f in &manifest.files {
        match f.kind {
            EntryKind::Postgres => {
                let Some(p) = stack.postgres.iter().find(|p| p.name == f.instance) else {
                    return Err(invalid(
                        dir,
                        format!(
                            "{} is the database of `{}`, which this stack does not have",
                            f.file, f.instance
                        ),
                    ));
                };
                let container = running_container(env, &p.name).await?;
                plan.postgres.push((f, p, container));
            }
            EntryKind::Redis => {
                let Some(r) = stack.redis.as_ref().filter(|r| r.name == f.instance) else {
                    return Err(invalid(
                        dir,
                        format!(
                            "{} is the snapshot of `{}`, which this stack does not have",
                            f.file, f.instance
                        ),
                    ));
                };
                plan.redis = Some((f, r));
            }
            EntryKind::Volume => {
                let vol = f.volume.clone().unwrap_or_default();
                let Some(c) = stack
                    .component(&f.instance)
                    .filter(|c| volume::of(c).iter().any(|(v, _)| *v == vol))
                else {
                    return Err(invalid(
                        dir,
                        format!(
                            "{} is volume `{vol}` of `{}`, which this stack does not have",
                            f.file, f.instance
                        ),
                    ));
                };
                plan.volumes.push((f, c, vol));
            }
            EntryKind::Unknown => {
                return Err(invalid(
                    dir,
                    format!(
                        "{}: a kind of file this stackctl does not know (written by a newer one?)",
                        f.file
                    ),
                ))
            }
        }
    }
    if plan.postgres.is_empty() && plan.redis.is_none() && plan.volumes.is_empty() {
        return Err(invalid(dir, "it holds no database to restore"));
    }
    Ok(plan)
}

/// Restore each file of the plan, in order, stopping at the first failure:
/// the timings of those restored, and that failure. Redis is stopped for
/// its restore and joins `running` (started again with the others).
async fn restore_files(
    env: &StackEnv<'_>,
    stack: &Stack,
    plan: &RestorePlan<'_>,
    dir: &Path,
    running: &mut Vec<String>,
    ui: &Ui,
) -> (Vec<serde_json::Value>, Option<Error>) {
    let quiet = ui.clone_quiet();
    let mut timings = Vec::new();
    let done = |what: String, f: &Entry, t: Instant| {
        let secs = t.elapsed().as_secs_f64();
        ui.ok(format!(
            "{what} restored from {} ({:.1} MB) in {secs:.1}s",
            f.file,
            f.size as f64 / 1e6
        ));
        secs
    };
    for (f, p, container) in &plan.postgres {
        let t = Instant::now();
        let pb = progress(ui, Some(f.size), f.file.clone());
        let r = exec_from_file(
            env,
            container,
            pg_cmd(
                "pg_restore --clean --if-exists --single-transaction",
                &p.user,
                &p.database,
            ),
            &dir.join(&f.file),
            &pb,
        )
        .await;
        pb.finish_and_clear();
        if let Err(e) = r {
            return (timings, Some(e));
        }
        let secs = done(p.database.clone(), f, t);
        timings.push(serde_json::json!({"database": p.database, "instance": p.name, "file": f.file, "seconds": secs}));
    }
    if let Some((f, r)) = plan.redis {
        let t = Instant::now();
        running.insert(0, r.name.clone());
        if let Err(e) = restore_redis(env, stack, r, dir, f, &quiet).await {
            return (timings, Some(e));
        }
        let secs = done("Redis".into(), f, t);
        timings.push(serde_json::json!({"instance": r.name, "file": f.file, "seconds": secs}));
    }
    for (f, c, vol) in &plan.volumes {
        let t = Instant::now();
        if let Err(e) = volume::restore(env, c, vol, dir, f).await {
            return (timings, Some(e));
        }
        let secs = done(format!("volume {vol} of {}", c.name), f, t);
        timings.push(
            serde_json::json!({"instance": c.name, "volume": vol, "file": f.file, "seconds": secs}),
        );
    }
    (timings, None)
}

pub async fn restore(stack: &Stack, arg: &str, yes: bool, ui: &Ui) -> Result<i32> {
    let t0 = Instant::now();
    let dir = resolve_dir(stack, arg)?;
    let manifest = verify(&dir)?;
    ui.ok(format!(
        "{}: {} files, sizes and sha256 match the manifest",
        dir.display(),
        manifest.files.len()
    ));
    if manifest.stack != stack.name {
        return Err(invalid(
            &dir,
            format!(
                "it is a backup of stack `{}`, not `{}`",
                manifest.stack, stack.name
            ),
        ));
    }
    // Every file must map onto this stack, and its container must run.
    let env = StackEnv::connect(stack).await?;
    let plan = plan_restore(stack, &env, &dir, &manifest).await?;
    let question = format!(
        "replace the data of {} with backup {} (taken {})",
        plan.describe().join(", "),
        dir.display(),
        manifest.created
    );
    if !yes && !crate::ui::confirm(&question, "add --yes to confirm")? {
        ui.info("nothing restored");
        return Ok(crate::error::EXIT_DECLINED);
    }
    // Those of the users running now: stopped for the restore, started
    // again afterwards, in stack order so messages are stable.
    let mut up_now = std::collections::HashSet::new();
    for c in env.running().await? {
        if crate::engine::is_running(&c) {
            up_now.insert(
                c.labels
                    .unwrap_or_default()
                    .get(crate::model::containers::LABEL_SERVICE)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    let mut running: Vec<String> = plan
        .users(stack, &env)
        .into_iter()
        .filter(|s| up_now.contains(s))
        .collect();
    let quiet = ui.clone_quiet();
    let t_stop = Instant::now();
    if !running.is_empty() {
        super::up::stop_on(&env, &running, &quiet).await?;
        ui.ok(format!(
            "stopped {} in {:.1}s",
            running.join(", "),
            t_stop.elapsed().as_secs_f64()
        ));
    }
    let (timings, failure) = restore_files(&env, stack, &plan, &dir, &mut running, ui).await;
    // Start what was stopped, also after a failed restore (each database is
    // restored in one transaction: a failure leaves it as it was).
    let t_start = Instant::now();
    let started = if running.is_empty() {
        Ok(0)
    } else {
        super::up::start_on(&env, &running, 300, &quiet).await
    };
    if let Some(e) = failure {
        if let Err(s) = started {
            ui.warn(format!(
                "starting {} again failed too: {s}",
                running.join(", ")
            ));
        }
        return Err(e);
    }
    started?;
    if !running.is_empty() {
        ui.ok(format!(
            "started {} again in {:.1}s",
            running.join(", "),
            t_start.elapsed().as_secs_f64()
        ));
    }
    let seconds = t0.elapsed().as_secs_f64();
    if ui.json {
        ui.print_json(&serde_json::json!({
            "backup": dir.display().to_string(),
            "restored": timings,
            "restarted": running,
            "seconds": seconds,
        }));
    } else {
        ui.ok(format!(
            "restore of {} done in {seconds:.1}s",
            dir.display()
        ));
    }
    Ok(0)
}

/// Replace Redis' data with a snapshot: Redis stopped, a one-off helper
/// container (the Redis image, no network) with Redis' volume and the backup
/// directory (read-only) mounted writes the snapshot as `dump.rdb` and, with
/// `appendonly`, as the base of a fresh multi-part append-only file (Redis 7
/// loads only the AOF when it is on), swapped in whole. The caller starts
/// Redis again.
async fn restore_redis(
    env: &StackEnv<'_>,
    stack: &Stack,
    r: &crate::model::Redis,
    dir: &Path,
    f: &Entry,
    quiet: &Ui,
) -> Result<()> {
    use crate::engine::models::{ContainerCreateBody, HostConfig};
    let spec = env
        .containers
        .iter()
        .find(|c| c.name == r.name)
        .ok_or_else(|| invalid(dir, format!("no container `{}` in this stack", r.name)))?;
    let volume = spec
        .volumes()
        .next()
        .map(|v| crate::engine::volume_name(&env.project, v))
        .ok_or_else(|| invalid(dir, "Redis has no data volume"))?;
    let dir = std::fs::canonicalize(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    super::up::stop_on(env, std::slice::from_ref(&r.name), quiet).await?;
    let aof = if r.appendonly {
        "rm -rf /data/appendonlydir.new; mkdir /data/appendonlydir.new; \
         cp \"/backup/$1\" /data/appendonlydir.new/appendonly.aof.1.base.rdb; \
         : > /data/appendonlydir.new/appendonly.aof.1.incr.aof; \
         printf 'file appendonly.aof.1.base.rdb seq 1 type b\\nfile appendonly.aof.1.incr.aof seq 1 type i\\n' > /data/appendonlydir.new/appendonly.aof.manifest; \
         chown -R \"$owner\" /data/appendonlydir.new; rm -rf /data/appendonlydir; mv /data/appendonlydir.new /data/appendonlydir; "
    } else {
        "rm -rf /data/appendonlydir; "
    };
    let script = format!(
        "set -e; owner=$(stat -c %u:%g /data); cp \"/backup/$1\" /data/dump.rdb.new; chown \"$owner\" /data/dump.rdb.new; {aof}mv /data/dump.rdb.new /data/dump.rdb; sync"
    );
    let name = format!("{}-restore-{}", env.project, r.name);
    let _ = env.engine.remove(&name).await;
    let mut labels = std::collections::HashMap::new();
    labels.insert(
        crate::model::containers::LABEL_STACK.to_string(),
        stack.name.clone(),
    );
    labels.insert(
        crate::engine::LABEL_PROJECT.to_string(),
        env.project.clone(),
    );
    let body = ContainerCreateBody {
        image: Some(r.image.image().to_string()),
        entrypoint: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            script,
            "sh".into(),
            f.file.clone(),
        ]),
        user: Some("0:0".into()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{volume}:/data"),
                format!("{}:/backup:ro", dir.display()),
            ]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    env.engine.create(&name, body).await?;
    let what = format!("writing {} into {volume}", f.file);
    let result = match env
        .engine
        .run_to_exit(&name, std::time::Duration::from_secs(600))
        .await
    {
        Ok(Some(0)) => Ok(()),
        Ok(Some(code)) => Err(Error::DataCommand {
            what,
            code,
            message: env.engine.tail(&name, 20).await.trim().to_string(),
        }),
        Ok(None) => Err(Error::DataCommand {
            what,
            code: -1,
            message: "not done after 600 s".into(),
        }),
        Err(e) => Err(e),
    };
    let _ = env.engine.remove(&name).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_backup(dir: &Path) -> Manifest {
        std::fs::write(dir.join("postgres-user.dump"), b"PGDMP some archive bytes").unwrap();
        let (size, sha256) = sha256_file(&dir.join("postgres-user.dump")).unwrap();
        let m = Manifest {
            format: FORMAT,
            stack: "demo".into(),
            project: "demo".into(),
            environment: None,
            created: "2026-01-01T00:00:00Z".into(),
            git_commit: None,
            revision: Some(3),
            stackctl_version: "0".into(),
            files: vec![Entry {
                file: "postgres-user.dump".into(),
                kind: EntryKind::Postgres,
                instance: "postgres-user".into(),
                volume: None,
                path: None,
                database: Some("users_db".into()),
                user: Some("users".into()),
                services: vec!["users".into()],
                size,
                sha256,
            }],
        };
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        m
    }

    #[test]
    fn entry_kinds_are_the_manifest_words_and_unknown_ones_still_load() {
        for (kind, word) in [
            (EntryKind::Postgres, "postgres"),
            (EntryKind::Redis, "redis"),
            (EntryKind::Volume, "volume"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{word}\""));
            assert_eq!(
                serde_json::from_str::<EntryKind>(&format!("\"{word}\"")).unwrap(),
                kind
            );
        }
        assert_eq!(
            serde_json::from_str::<EntryKind>("\"mysql\"").unwrap(),
            EntryKind::Unknown
        );
    }

    #[test]
    fn verify_accepts_an_intact_backup_and_names_the_bad_file() {
        let d = tempfile::tempdir().unwrap();
        write_backup(d.path());
        assert_eq!(verify(d.path()).unwrap().files.len(), 1);
        // One flipped byte: same size, other hash.
        let p = d.path().join("postgres-user.dump");
        let mut b = std::fs::read(&p).unwrap();
        b[3] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = verify(d.path()).unwrap_err();
        assert!(
            e.to_string().contains("postgres-user.dump") && e.to_string().contains("corrupt"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 37);
        // Truncated.
        std::fs::write(&p, &b[..5]).unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // Missing file.
        std::fs::remove_file(&p).unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("incomplete"));
        // No manifest.
        std::fs::remove_file(d.path().join(MANIFEST)).unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("no manifest.json"));
    }

    #[test]
    fn verify_refuses_a_manifest_naming_files_outside_the_backup() {
        let d = tempfile::tempdir().unwrap();
        let mut m = write_backup(d.path());
        m.files[0].file = "../etc/passwd".into();
        std::fs::write(d.path().join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(verify(d.path())
            .unwrap_err()
            .to_string()
            .contains("not a plain name"));
    }

    #[test]
    fn list_keeps_only_complete_backups_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        for (name, created) in [("b", "2026-01-02T00:00:00Z"), ("a", "2026-01-03T00:00:00Z")] {
            let sub = d.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            let mut m = write_backup(&sub);
            m.created = created.into();
            std::fs::write(sub.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        }
        std::fs::create_dir(d.path().join("incomplete")).unwrap();
        let names: Vec<String> = list(d.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn the_tool_of_a_shell_line_names_errors() {
        assert_eq!(
            cmd_name(&pg_cmd("pg_dump --format=custom", "u", "d")),
            "pg_dump"
        );
    }
}
