//! The infrastructure images against the real Docker engine: built through
//! `stackctl::images::ensure` (debootstrap + import + build on a cold cache),
//! then run the way the rendered compose file runs them (cap_drop ALL plus the
//! cap_add list, read-only root with tmpfs, a named volume, secrets as
//! read-only files, no-new-privileges) on a network the test creates.
//! Containers, volumes and networks are removed; the images stay (the cache).
//! Needs root and /var/run/docker.sock; the first run takes minutes.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig,
    NetworkCreateRequest, NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use stackctl::images::{ensure, recipe_hash, Ensured, Recipe};

async fn docker() -> Docker {
    Docker::connect_with_socket_defaults()
        .expect("docker socket (set DOCKER_HOST or start the engine)")
        .negotiate_version()
        .await
        .expect("the Docker engine answers on its socket")
}

/// The engine as stackctl drives it (what `ensure` takes).
async fn engine() -> stackctl::engine::Engine {
    stackctl::engine::Engine::connect()
        .await
        .expect("the Docker engine answers (set DOCKER_HOST or start it)")
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn printer(prefix: &'static str) -> impl Fn(&str) + Sync {
    move |line: &str| eprintln!("[{prefix}] {line}")
}

fn builtin(name: &str) -> Recipe {
    Recipe::named(name).unwrap_or_else(|| panic!("built-in recipe {name}"))
}

/// ensure() on a possibly cold cache, reported; then again, which must be instant.
async fn ensure_twice(name: &'static str) -> Ensured {
    let engine = engine().await;
    let recipe = builtin(name);
    let progress = printer(name);
    let first = tokio::time::timeout(
        Duration::from_secs(1800),
        ensure(&engine, &recipe, &progress),
    )
    .await
    .expect("ensure finishes within 30 minutes")
    .unwrap_or_else(|e| panic!("ensure {name}: {e:#}"));
    eprintln!(
        "[{}] ensure: built={} {:.1}s size={:.1} MB id={}",
        name,
        first.built,
        first.seconds,
        first.size as f64 / 1e6,
        first.image_id
    );
    assert_eq!(first.tag, recipe.tag);
    assert_eq!(first.recipe, recipe_hash(&recipe));
    assert!(
        first.size > 10_000_000,
        "a real rootfs: {} bytes",
        first.size
    );

    let t = Instant::now();
    let second = ensure(&engine, &recipe, &progress)
        .await
        .expect("cached ensure");
    let elapsed = t.elapsed();
    eprintln!(
        "[{}] cached ensure: built={} {:.3}s",
        name,
        second.built,
        elapsed.as_secs_f64()
    );
    assert!(!second.built, "the second ensure finds the image");
    assert_eq!(second.image_id, first.image_id);
    let img = engine
        .image(&recipe.tag)
        .await
        .unwrap()
        .expect("the tag ensure reported");
    let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels.get("io.stackctl.recipe"),
        Some(&recipe_hash(&recipe)),
        "the image carries its recipe label"
    );
    first
}

/// Names of what a test created, removed at the end whatever happened.
struct Created {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
}

impl Created {
    async fn cleanup(&self, docker: &Docker) {
        for c in &self.containers {
            let _ = docker
                .remove_container(
                    c,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
        for v in &self.volumes {
            let _ = docker
                .remove_volume(v, Some(RemoveVolumeOptions { force: true }))
                .await;
        }
        for n in &self.networks {
            let _ = docker.remove_network(n).await;
        }
    }
}

/// Run `body`, then clean up (also when an assertion inside it panicked),
/// then fail with the body's error or panic if any.
async fn with_cleanup<F>(docker: &Docker, created: &Created, body: F)
where
    F: Future<Output = Result<(), String>>,
{
    use futures::FutureExt;
    let guarded = std::panic::AssertUnwindSafe(body).catch_unwind();
    let result = tokio::time::timeout(Duration::from_secs(600), guarded).await;
    created.cleanup(docker).await;
    match result {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("{e}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the test body did not finish in 10 minutes"),
    }
}

async fn create_net_and_volume(docker: &Docker, created: &Created) -> Result<(), String> {
    docker
        .create_network(NetworkCreateRequest {
            name: created.networks[0].clone(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create network: {e}"))?;
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(created.volumes[0].clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create volume: {e}"))?;
    Ok(())
}

/// Run a command in a container: (exit code, stdout+stderr).
async fn exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
    env: &[&str],
) -> Result<(i64, String), String> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                env: Some(env.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("create exec {cmd:?}: {e}"))?;
    let mut out = String::new();
    match docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| format!("start exec {cmd:?}: {e}"))?
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), output.next())
                .await
                .map_err(|_| format!("exec {cmd:?} timed out"))?
            {
                out.push_str(&chunk.map_err(|e| format!("exec output: {e}"))?.to_string());
            }
        }
        StartExecResults::Detached => return Err("exec detached".into()),
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| format!("inspect exec: {e}"))?
        .exit_code
        .unwrap_or(-1);
    Ok((code, out))
}

async fn wait_healthy(docker: &Docker, container: &str, limit: Duration) -> Result<f64, String> {
    let start = Instant::now();
    loop {
        let info = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| format!("inspect {container}: {e}"))?;
        let state = info.state.unwrap_or_default();
        let health = state.health.and_then(|h| h.status);
        if health == Some(HealthStatusEnum::HEALTHY) {
            return Ok(start.elapsed().as_secs_f64());
        }
        if state.running == Some(false) || start.elapsed() > limit {
            let logs = logs(docker, container).await;
            return Err(format!(
                "{container} not healthy after {:?} (running={:?}, health={health:?}); logs:\n{logs}",
                start.elapsed(),
                state.running
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn logs(docker: &Docker, container: &str) -> String {
    let mut s = docker.logs(
        container,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        }),
    );
    let mut out = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

/// Send a signal, wait for the exit: (exit code, seconds).
async fn signal_and_wait(
    docker: &Docker,
    container: &str,
    signal: &str,
) -> Result<(i64, f64), String> {
    let start = Instant::now();
    docker
        .kill_container(
            container,
            Some(KillContainerOptions {
                signal: signal.into(),
            }),
        )
        .await
        .map_err(|e| format!("kill -{signal} {container}: {e}"))?;
    wait_exit(docker, container, start).await
}

async fn wait_exit(docker: &Docker, container: &str, start: Instant) -> Result<(i64, f64), String> {
    let mut wait = docker.wait_container(
        container,
        Some(WaitContainerOptions {
            condition: "not-running".into(),
        }),
    );
    let waited = tokio::time::timeout(Duration::from_secs(60), wait.next())
        .await
        .map_err(|_| format!("{container} did not exit within 60s"))?;
    let code = match waited {
        Some(Ok(r)) => r.status_code,
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => return Err(format!("wait {container}: {e}")),
        None => return Err(format!("wait {container}: no answer")),
    };
    Ok((code, start.elapsed().as_secs_f64()))
}

fn secret_file(dir: &Path, name: &str, contents: &str, mode: u32) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_string_lossy().to_string()
}

fn secs(s: i64) -> i64 {
    s * 1_000_000_000
}

/// The hardening every infrastructure service gets in the rendered compose file.
fn hardened(cap_add: &[&str], tmpfs: &[&str], binds: Vec<String>, network: &str) -> HostConfig {
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(cap_add.iter().map(|s| s.to_string()).collect()),
        readonly_rootfs: Some(true),
        tmpfs: Some(
            tmpfs
                .iter()
                .map(|t| (t.to_string(), String::new()))
                .collect(),
        ),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        binds: Some(binds),
        network_mode: Some(network.to_string()),
        ..Default::default()
    }
}

#[test]
fn recipe_hash_is_stable_and_tracks_the_package_list() {
    for tag in stackctl::images::builtin_tags() {
        let r = Recipe::resolve(tag, &[]).unwrap();
        assert_eq!(recipe_hash(&r), recipe_hash(&Recipe::builtin(tag).unwrap()));
        assert_eq!(r.tag, tag);
    }
    let base = builtin("postgres");
    let mut changed = base.clone();
    changed.packages.push("postgresql-contrib".into());
    assert_ne!(base.hash(), changed.hash(), "a new package is a new recipe");
    assert_ne!(
        base.rootfs_hash(),
        changed.rootfs_hash(),
        "and a new rootfs"
    );
    let mut reordered = base.clone();
    reordered.packages.reverse();
    assert_eq!(base.hash(), reordered.hash(), "order does not matter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_image_runs_like_the_compose_service() {
    let docker = docker().await;
    let ensured = ensure_twice("redis").await;
    let id = suffix();
    let created = Created {
        containers: vec![format!("stackctl-images-test-redis-{id}")],
        volumes: vec![format!("stackctl-images-test-redis-{id}")],
        networks: vec![format!("stackctl-images-test-{id}")],
    };
    let dir = tempfile::tempdir().unwrap();
    let password = format!("pw-{}", suffix());
    // As rendered: the config names the ACL file; users come from the secret.
    let conf = secret_file(
        dir.path(),
        "redis.conf",
        "bind 0.0.0.0\nport 6379\nprotected-mode yes\naclfile /run/secrets/redis-acl\ndir /data\nappendonly yes\nappendfsync always\nlogfile \"\"\n",
        0o644,
    );
    let acl = secret_file(
        dir.path(),
        "redis-acl",
        &format!("user default on >{password} ~* &* +@all\n"),
        // `stackctl setup` writes secrets root-only and compose mounts them as they are.
        0o600,
    );
    let pwfile = secret_file(dir.path(), "redis-password", &password, 0o600);

    with_cleanup(&docker, &created, async {
        create_net_and_volume(&docker, &created).await?;
        let name = &created.containers[0];
        let body = ContainerCreateBody {
            image: Some(ensured.tag.clone()),
            cmd: Some(vec![
                "redis-server".into(),
                "/usr/local/etc/redis/redis.conf".into(),
            ]),
            healthcheck: Some(HealthConfig {
                test: Some(vec![
                    "CMD-SHELL".into(),
                    "redis-cli -p 6379 --no-auth-warning -a \"$(cat /run/secrets/redis-password)\" ping | grep -q PONG".into(),
                ]),
                interval: Some(secs(1)),
                timeout: Some(secs(5)),
                retries: Some(30),
                ..Default::default()
            }),
            host_config: Some(hardened(
                &["CHOWN", "SETGID", "SETUID"],
                &["/tmp"],
                vec![
                    format!("{}:/data", created.volumes[0]),
                    format!("{conf}:/usr/local/etc/redis/redis.conf:ro"),
                    format!("{acl}:/run/secrets/redis-acl:ro"),
                    format!("{pwfile}:/run/secrets/redis-password:ro"),
                ],
                &created.networks[0],
            )),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| format!("create container: {e}"))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("start: {e}"))?;
        let healthy = wait_healthy(&docker, name, Duration::from_secs(60)).await?;
        eprintln!("[redis] healthy after {healthy:.2}s");

        let auth = ["redis-cli", "--no-auth-warning", "-a", password.as_str()];
        let (code, out) = exec(&docker, name, &[&auth[..], &["ping"]].concat(), &[]).await?;
        assert_eq!((code, out.trim()), (0, "PONG"));
        // Without the password the ACL refuses.
        let (_, out) = exec(&docker, name, &["redis-cli", "set", "k", "v"], &[]).await?;
        assert!(out.contains("NOAUTH"), "unauthenticated write refused: {out}");
        let (code, out) = exec(&docker, name, &[&auth[..], &["set", "k", "kept"]].concat(), &[]).await?;
        assert_eq!((code, out.trim()), (0, "OK"));
        // PID 1 is redis-server itself, running as the redis user.
        let (_, status) = exec(&docker, name, &["cat", "/proc/1/status"], &[]).await?;
        assert!(status.contains("Name:\tredis-server"), "{status}");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(!uid_line.split_whitespace().skip(1).any(|u| u == "0"), "redis runs as non-root: {uid_line}");
        let (_, owner) = exec(&docker, name, &["stat", "-c", "%U", "/data"], &[]).await?;
        assert_eq!(owner.trim(), "redis");

        let (code, took) = signal_and_wait(&docker, name, "SIGTERM").await?;
        let log = logs(&docker, name).await;
        eprintln!("[redis] SIGTERM -> exit {code} after {took:.2}s");
        assert_eq!(code, 0, "clean exit on SIGTERM; logs:\n{log}");
        assert!(log.contains("ready to exit"), "redis shut down cleanly:\n{log}");

        // The data is on the volume: a restart finds it.
        docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("restart: {e}"))?;
        wait_healthy(&docker, name, Duration::from_secs(60)).await?;
        let (code, out) = exec(&docker, name, &[&auth[..], &["get", "k"]].concat(), &[]).await?;
        assert_eq!((code, out.trim()), (0, "kept"));
        let (code, _) = signal_and_wait(&docker, name, "SIGTERM").await?;
        assert_eq!(code, 0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_image_runs_like_the_compose_service() {
    let docker = docker().await;
    let ensured = ensure_twice("postgres").await;
    let id = suffix();
    let created = Created {
        containers: vec![format!("stackctl-images-test-pg-{id}")],
        volumes: vec![format!("stackctl-images-test-pg-{id}")],
        networks: vec![format!("stackctl-images-test-pg-{id}")],
    };
    let dir = tempfile::tempdir().unwrap();
    let password = format!("pw-{}", suffix());
    // A root-only secret, as a careful operator writes it: the entrypoint
    // reads it as root before dropping privileges.
    let pwfile = secret_file(dir.path(), "postgres-test-password", &password, 0o600);
    let init = secret_file(
        dir.path(),
        "init.sql",
        "CREATE TABLE init_marker (id int PRIMARY KEY, note text);\n\
         INSERT INTO init_marker VALUES (42, current_user || '@' || current_database());\n",
        0o644,
    );

    with_cleanup(&docker, &created, async {
        create_net_and_volume(&docker, &created).await?;
        let name = &created.containers[0];
        let body = ContainerCreateBody {
            image: Some(ensured.tag.clone()),
            cmd: Some(
                [
                    "postgres",
                    "-c",
                    "max_connections=50",
                    "-c",
                    "shared_buffers=16384kB",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            env: Some(vec![
                "PGDATA=/var/lib/postgresql/data/pgdata".into(),
                "POSTGRES_DB=test_db".into(),
                "POSTGRES_USER=tester".into(),
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-test-password".into(),
            ]),
            healthcheck: Some(HealthConfig {
                test: Some(
                    [
                        "CMD",
                        "pg_isready",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "tester",
                        "-d",
                        "test_db",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                ),
                interval: Some(secs(1)),
                timeout: Some(secs(5)),
                retries: Some(60),
                ..Default::default()
            }),
            host_config: Some(hardened(
                &["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"],
                &["/tmp", "/var/run/postgresql"],
                vec![
                    format!("{}:/var/lib/postgresql/data", created.volumes[0]),
                    format!("{init}:/docker-entrypoint-initdb.d/10-init.sql:ro"),
                    format!("{pwfile}:/run/secrets/postgres-test-password:ro"),
                ],
                &created.networks[0],
            )),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    created.networks[0].clone(),
                    EndpointSettings {
                        aliases: Some(vec!["postgres-test".into()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| format!("create container: {e}"))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("start: {e}"))?;
        let healthy = wait_healthy(&docker, name, Duration::from_secs(120)).await?;
        eprintln!("[postgres] healthy after {healthy:.2}s (first start, initdb)");

        let pgpass = format!("PGPASSWORD={password}");
        let psql = |sql: &'static str| {
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "tester",
                "-d",
                "test_db",
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ]
        };
        // Over TCP with the password (scram-sha-256 for host connections).
        let (code, out) = exec(&docker, name, &psql("select 1"), &[&pgpass]).await?;
        assert_eq!((code, out.trim()), (0, "1"), "select 1");
        let (code, out) = exec(
            &docker,
            name,
            &psql("select id || ' ' || note from init_marker"),
            &[&pgpass],
        )
        .await?;
        assert_eq!(
            (code, out.trim()),
            (0, "42 tester@test_db"),
            "the init SQL ran as the user in the database"
        );
        let (_, out) = exec(
            &docker,
            name,
            &psql("select rolsuper::text from pg_roles where rolname = current_user"),
            &[&pgpass],
        )
        .await?;
        assert_eq!(out.trim(), "true", "POSTGRES_USER is the superuser");
        let (_, out) = exec(&docker, name, &psql("show max_connections"), &[&pgpass]).await?;
        assert_eq!(out.trim(), "50", "the compose command's -c flags apply");
        let (_, out) = exec(&docker, name, &psql("show listen_addresses"), &[&pgpass]).await?;
        assert_eq!(out.trim(), "*");
        let (_, out) = exec(
            &docker,
            name,
            &psql(
                "select auth_method from pg_hba_file_rules where type = 'host' and address = 'all'",
            ),
            &[&pgpass],
        )
        .await?;
        assert_eq!(out.trim(), "scram-sha-256");
        // A wrong password is refused.
        let (code, out) = exec(&docker, name, &psql("select 1"), &["PGPASSWORD=wrong"]).await?;
        assert_ne!(code, 0, "wrong password refused: {out}");
        assert!(out.contains("password authentication failed"), "{out}");
        // pg_isready is on PATH; PID 1 is postgres (exec), not root.
        let (code, _) = exec(&docker, name, &["pg_isready", "-h", "127.0.0.1"], &[]).await?;
        assert_eq!(code, 0);
        let (_, status) = exec(&docker, name, &["cat", "/proc/1/status"], &[]).await?;
        assert!(status.contains("Name:\tpostgres"), "{status}");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
            "postgres runs as non-root: {uid_line}"
        );
        // The temporary copy of the password is gone.
        let (code, _) = exec(
            &docker,
            name,
            &["test", "-e", "/var/run/postgresql/.initdb-password"],
            &[],
        )
        .await?;
        assert_ne!(code, 0, "the password copy was removed");

        let (code, took) = signal_and_wait(&docker, name, "SIGTERM").await?;
        let log = logs(&docker, name).await;
        eprintln!("[postgres] SIGTERM -> exit {code} after {took:.2}s");
        assert_eq!(code, 0, "clean exit on SIGTERM; logs:\n{log}");
        assert!(log.contains("database system is shut down"), "{log}");
        assert_eq!(log.matches("initialising").count(), 1);

        // Second start on the same volume: no initdb, the data is there, and a
        // `docker stop` (STOPSIGNAL SIGINT: fast shutdown) with a client
        // connected exits cleanly too.
        docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("restart: {e}"))?;
        let healthy = wait_healthy(&docker, name, Duration::from_secs(60)).await?;
        eprintln!("[postgres] healthy after {healthy:.2}s (restart)");
        let (code, out) = exec(
            &docker,
            name,
            &psql("select count(*) from init_marker"),
            &[&pgpass],
        )
        .await?;
        assert_eq!((code, out.trim()), (0, "1"), "init ran once, data kept");
        let log = logs(&docker, name).await;
        assert_eq!(
            log.matches("initialising").count(),
            1,
            "no second initdb:\n{log}"
        );
        let holder = docker
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(
                        psql("select pg_sleep(300)")
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    ),
                    env: Some(vec![pgpass.clone()]),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("create exec: {e}"))?;
        docker
            .start_exec(
                &holder.id,
                Some(bollard::exec::StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("start exec: {e}"))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    t: Some(30),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let (code, _) = wait_exit(&docker, name, start).await?;
        let took = start.elapsed().as_secs_f64();
        eprintln!("[postgres] stop with a client connected -> exit {code} after {took:.2}s");
        assert_eq!(code, 0);
        assert!(took < 10.0, "fast shutdown, not the 30s kill: {took:.1}s");
        Ok(())
    })
    .await;
}

/// A file of the repo stack's rendered artifacts: rendered once per test
/// process with the real binary into a directory of its own.
fn deploy_path(rel: &str) -> String {
    static RENDERED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = RENDERED.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("stackctl-images-test-{}", std::process::id()));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stackctl"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NO_COLOR", "1")
            .args(["render", "-q", "--out"])
            .arg(&out)
            .output()
            .expect("run stackctl render");
        assert!(
            o.status.success(),
            "stackctl render: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    });
    let p = dir.join(rel);
    assert!(p.exists(), "{} is missing from the render", p.display());
    p.to_string_lossy().to_string()
}

async fn create_and_start(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<(), String> {
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| format!("create container {name}: {e}"))?;
    docker
        .start_container(name, None)
        .await
        .map_err(|e| format!("start {name}: {e}"))
}

/// `docker stop` (the image's STOPSIGNAL, then SIGKILL after `t`): (exit code, seconds).
async fn stop(docker: &Docker, name: &str, t: i32) -> Result<(i64, f64), String> {
    let start = Instant::now();
    docker
        .stop_container(
            name,
            Some(StopContainerOptions {
                t: Some(t),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("stop {name}: {e}"))?;
    wait_exit(docker, name, start).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_image_serves_the_rendered_config() {
    let docker = docker().await;
    let ensured = ensure_twice("nginx").await;
    let conf = deploy_path("nginx/nginx.conf");
    let id = suffix();
    let created = Created {
        containers: vec![format!("stackctl-images-test-nginx-{id}")],
        volumes: vec![format!("stackctl-images-test-nginx-{id}")],
        networks: vec![format!("stackctl-images-test-nginx-{id}")],
    };
    // The rendered config terminates TLS with the two secrets: a throwaway pair.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("nginx-tls-cert");
    let key = dir.path().join("nginx-tls-key");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl) makes the test certificate");
    assert!(status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    with_cleanup(&docker, &created, async {
        create_net_and_volume(&docker, &created).await?;
        let name = &created.containers[0];
        let body = ContainerCreateBody {
            image: Some(ensured.tag.clone()),
            healthcheck: Some(HealthConfig {
                test: Some(vec![
                    "CMD-SHELL".into(),
                    "curl -fsS -o /dev/null http://127.0.0.1:80/nginx-health || wget -q -O /dev/null http://127.0.0.1:80/nginx-health".into(),
                ]),
                interval: Some(secs(1)),
                timeout: Some(secs(5)),
                retries: Some(30),
                ..Default::default()
            }),
            host_config: Some(hardened(
                &["CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"],
                &["/tmp", "/var/cache/nginx", "/var/lib/nginx", "/run"],
                vec![
                    format!("{conf}:/etc/nginx/nginx.conf:ro"),
                    format!("{}:/run/secrets/nginx-tls-cert:ro", cert.display()),
                    format!("{}:/run/secrets/nginx-tls-key:ro", key.display()),
                ],
                &created.networks[0],
            )),
            ..Default::default()
        };
        create_and_start(&docker, name, body).await?;
        let healthy = wait_healthy(&docker, name, Duration::from_secs(60)).await?;
        eprintln!("[nginx] healthy after {healthy:.2}s");
        let (code, out) = exec(&docker, name, &["wget", "-qO-", "http://127.0.0.1/nginx-health"], &[]).await?;
        assert_eq!((code, out.trim()), (0, "ok"));
        // Plain HTTP elsewhere redirects to HTTPS, as rendered.
        let (_, out) = exec(&docker, name, &["wget", "-S", "--max-redirect=0", "-qO-", "http://127.0.0.1/api/x"], &[]).await?;
        assert!(out.contains("301"), "redirect to https: {out}");
        let (_, status) = exec(&docker, name, &["cat", "/proc/1/status"], &[]).await?;
        assert!(status.contains("Name:\tnginx"), "{status}");
        let (code, took) = stop(&docker, name, 15).await?;
        eprintln!("[nginx] stop (SIGQUIT) -> exit {code} after {took:.2}s");
        assert_eq!(code, 0, "logs:\n{}", logs(&docker, name).await);
        assert!(took < 10.0);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_image_runs_the_rendered_config() {
    let docker = docker().await;
    let ensured = ensure_twice("prometheus").await;
    let conf_dir = deploy_path("prometheus");
    let id = suffix();
    let created = Created {
        containers: vec![format!("stackctl-images-test-prom-{id}")],
        volumes: vec![format!("stackctl-images-test-prom-{id}")],
        networks: vec![format!("stackctl-images-test-prom-{id}")],
    };
    with_cleanup(&docker, &created, async {
        create_net_and_volume(&docker, &created).await?;
        let name = &created.containers[0];
        let body = ContainerCreateBody {
            image: Some(ensured.tag.clone()),
            user: Some("65534:65534".into()),
            cmd: Some(
                [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=360h",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            healthcheck: Some(HealthConfig {
                test: Some(vec![
                    "CMD-SHELL".into(),
                    "curl -fsS -o /dev/null http://127.0.0.1:9090/-/ready || wget -q -O /dev/null http://127.0.0.1:9090/-/ready".into(),
                ]),
                interval: Some(secs(1)),
                timeout: Some(secs(5)),
                retries: Some(60),
                ..Default::default()
            }),
            host_config: Some(hardened(
                &[],
                &["/tmp"],
                vec![
                    format!("{}:/prometheus", created.volumes[0]),
                    format!("{conf_dir}:/etc/prometheus:ro"),
                ],
                &created.networks[0],
            )),
            ..Default::default()
        };
        create_and_start(&docker, name, body).await?;
        let healthy = wait_healthy(&docker, name, Duration::from_secs(90)).await?;
        eprintln!("[prometheus] healthy after {healthy:.2}s");
        // The rendered rules loaded.
        let (code, out) = exec(&docker, name, &["wget", "-qO-", "http://127.0.0.1:9090/api/v1/rules"], &[]).await?;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"status\":\"success\"") && out.contains("\"groups\":[{"), "rules: {out}");
        let (code, out) = exec(&docker, name, &["wget", "-qO-", "http://127.0.0.1:9090/api/v1/status/flags"], &[]).await?;
        assert_eq!(code, 0);
        // The compose flags apply (360h is printed as 15d).
        assert!(out.contains("\"storage.tsdb.retention.time\":\"15d\""), "{out}");
        // No lifecycle API: nobody on the network can POST /-/quit.
        assert!(out.contains("\"web.enable-lifecycle\":\"false\""), "{out}");
        // Runs as 65534 (compose `user:`), writing the TSDB on the volume.
        let (_, status) = exec(&docker, name, &["cat", "/proc/1/status"], &[]).await?;
        assert!(status.contains("Name:\tprometheus"), "{status}");
        assert!(status.lines().any(|l| l.starts_with("Uid:\t65534")), "{status}");
        let (code, _) = exec(&docker, name, &["test", "-d", "/prometheus/wal"], &[]).await?;
        assert_eq!(code, 0, "the TSDB is on /prometheus");
        let (code, took) = signal_and_wait(&docker, name, "SIGTERM").await?;
        eprintln!("[prometheus] SIGTERM -> exit {code} after {took:.2}s");
        assert_eq!(code, 0, "logs:\n{}", logs(&docker, name).await);
        Ok(())
    })
    .await;
}

/// A build whose step fails answers HTTP 200 with the error inside the stream:
/// it must come back as an error naming the step, with that step's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_step_is_reported_with_its_step() {
    use stackctl::engine::debian::{build_final, layer_tag};
    use stackctl::images::recipe::ContextFile;
    let docker = docker().await;
    ensure_twice("redis").await;
    let mut recipe = builtin("redis");
    recipe.files = vec![ContextFile::new(
        "Dockerfile",
        0o644,
        &b"ARG BASE\nFROM ${BASE}\nRUN echo output-of-the-broken-step && false\nCMD [\"true\"]\n"[..],
    )];
    let base = layer_tag(&recipe);
    let tag = format!("stackctl-images-test/broken:{}", suffix());
    let err = build_final(
        &engine().await,
        &recipe,
        &tag,
        &base,
        &recipe.hash(),
        &printer("broken"),
    )
    .await
    .expect_err("the RUN step fails");
    let msg = format!("{err:#}");
    eprintln!("[broken] {msg}");
    assert!(
        msg.contains(&format!("building {tag} failed at Step 3/"))
            && msg.contains(" : RUN echo output-of-the-broken-step && false: The command"),
        "{msg}"
    );
    assert!(msg.contains("returned a non-zero code: 1"), "{msg}");
    assert!(msg.contains("output-of-the-broken-step"), "{msg}");
    assert!(
        docker.inspect_image(&tag).await.is_err(),
        "no image is tagged by a failed build"
    );
}

/// The cleanup after a rebuild never removes an image a container uses
/// (even a stopped one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_a_container_uses_is_never_removed() {
    use stackctl::engine::debian::remove_if_unused;
    let docker = docker().await;
    let ensured = ensure_twice("redis").await;
    let id = suffix();
    let created = Created {
        containers: vec![format!("stackctl-images-test-keep-{id}")],
        volumes: vec![],
        networks: vec![],
    };
    with_cleanup(&docker, &created, async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(created.containers[0].clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(ensured.image_id.clone()),
                    cmd: Some(vec!["true".into()]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("create container: {e}"))?;
        let lines = std::sync::Mutex::new(Vec::<String>::new());
        let progress = |l: &str| lines.lock().unwrap().push(l.to_string());
        remove_if_unused(&engine().await, &ensured.image_id, &progress).await;
        let said = lines.lock().unwrap().join("\n");
        assert!(said.contains("keeping the previous image"), "{said}");
        assert!(
            docker.inspect_image(&ensured.image_id).await.is_ok(),
            "the image is still there"
        );
        Ok(())
    })
    .await;
    // And the tag still names it.
    let again = ensure(&engine().await, &builtin("redis"), &printer("redis"))
        .await
        .unwrap();
    assert_eq!(again.image_id, ensured.image_id);
    assert!(!again.built);
}

/// Run `image` once (entrypoint overridden when given) as a hardened
/// container: (exit code, output, the user it ran as).
async fn run_once(
    docker: &Docker,
    name: &str,
    image: &str,
    entrypoint: Option<&[&str]>,
    cmd: &[&str],
) -> Result<(i64, String), String> {
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.to_string()),
                entrypoint: entrypoint.map(|e| e.iter().map(|s| s.to_string()).collect()),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                host_config: Some(HostConfig {
                    cap_drop: Some(vec!["ALL".into()]),
                    readonly_rootfs: Some(true),
                    security_opt: Some(vec!["no-new-privileges:true".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("create {name}: {e}"))?;
    let start = Instant::now();
    docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| format!("start {name}: {e}"))?;
    let (code, _) = wait_exit(docker, name, start).await?;
    Ok((code, logs(docker, name).await))
}

/// Every built-in recipe and a component's own package list, made by
/// ensure_all (the shared base once, then in parallel), each image's binary
/// answering as the image's (non-root) user; a second ensure_all touches
/// nothing and takes well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_image_builds_in_parallel_and_runs_as_its_user() {
    use stackctl::images::{ensure_all, Display};
    let docker = docker().await;
    let engine = engine().await;
    let mut recipes = Recipe::builtins();
    let jq = Recipe::packages("stackctl-images-test/jq:bookworm", &["jq".to_string()]);
    recipes.push(jq.clone());
    let t = Instant::now();
    let first = tokio::time::timeout(
        Duration::from_secs(1800),
        ensure_all(&engine, recipes.clone(), Display::Lines),
    )
    .await
    .expect("ensure_all finishes within 30 minutes")
    .unwrap_or_else(|e| panic!("ensure_all: {e:#}"));
    eprintln!("[all] ensure_all: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(first.len(), recipes.len());
    for e in &first {
        eprintln!(
            "[all] {:<40} built={} {:>6.1}s {:>7.1} MB",
            e.tag,
            e.built,
            e.seconds,
            e.size as f64 / 1e6
        );
    }
    let t = Instant::now();
    let again = ensure_all(&engine, recipes.clone(), Display::Lines)
        .await
        .expect("cached ensure_all");
    let warm = t.elapsed();
    eprintln!("[all] cached ensure_all: {:.3}s", warm.as_secs_f64());
    assert!(again.iter().all(|e| !e.built), "nothing is rebuilt");
    // (Its time is a figure for the bench, not an assertion: it depends on the machine's load.)
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.image_id, b.image_id);
    }

    // (tag, entrypoint override, command, expected uid, text the output holds)
    type Check<'a> = (
        &'a str,
        Option<&'a [&'a str]>,
        Vec<&'a str>,
        &'a str,
        &'a str,
    );
    let checks: Vec<Check> = vec![
        (
            "stackctl/node-exporter:bookworm",
            None,
            vec!["--version"],
            "65534",
            "node_exporter",
        ),
        (
            "stackctl/postgres-exporter:bookworm",
            None,
            vec!["--version"],
            "65534",
            "postgres_exporter",
        ),
        (
            "stackctl/redis-exporter:bookworm",
            None,
            vec!["--version"],
            "65534",
            "",
        ),
        (
            "stackctl/nginx-exporter:bookworm",
            None,
            vec!["-version"],
            "65534",
            "",
        ),
        (
            "stackctl/alertmanager:bookworm",
            None,
            vec!["--version"],
            "65534",
            "alertmanager",
        ),
        (
            "stackctl/alertmanager:bookworm",
            Some(&["amtool"]),
            vec!["--version"],
            "65534",
            "amtool",
        ),
        (
            "stackctl/pgbouncer:bookworm",
            None,
            vec!["--version"],
            "70",
            "PgBouncer",
        ),
        (
            "stackctl/docker-api-proxy:bookworm",
            None,
            vec!["-v"],
            "0",
            "HAProxy version",
        ),
        (
            "stackctl-images-test/jq:bookworm",
            Some(&["jq"]),
            vec!["--version"],
            "0",
            "jq-1",
        ),
    ];
    let id = suffix();
    let names: Vec<String> = (0..checks.len() * 3)
        .map(|i| format!("stackctl-images-test-all-{id}-{i}"))
        .collect();
    let created = Created {
        containers: names.clone(),
        volumes: vec![],
        networks: vec![],
    };
    with_cleanup(&docker, &created, async {
        for (i, (tag, entrypoint, cmd, uid, text)) in checks.iter().enumerate() {
            let (code, out) = run_once(&docker, &names[3 * i], tag, *entrypoint, cmd).await?;
            eprintln!("[all] {tag} {cmd:?}: {code} {}", out.trim());
            assert_eq!(code, 0, "{tag} {cmd:?}: {out}");
            assert!(out.contains(text), "{tag}: {out}");
            let (code, out) =
                run_once(&docker, &names[3 * i + 1], tag, Some(&["id"]), &["-u"]).await?;
            assert_eq!((code, out.trim()), (0, *uid), "{tag} runs as {uid}");
            // Every HTTP service can run its health check with wget.
            let (code, out) = run_once(
                &docker,
                &names[3 * i + 2],
                tag,
                Some(&["wget"]),
                &["--version"],
            )
            .await?;
            assert_eq!(code, 0, "{tag} has wget: {out}");
        }
        let (code, out) = run_once(
            &docker,
            &format!("stackctl-images-test-all-{id}-am"),
            "stackctl/alertmanager:bookworm",
            Some(&["stat"]),
            &["-c", "%u", "/alertmanager"],
        )
        .await
        .map_err(|e| e + " (alertmanager data dir)")?;
        let _ = docker
            .remove_container(
                &format!("stackctl-images-test-all-{id}-am"),
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        assert_eq!(
            (code, out.trim()),
            (0, "65534"),
            "/alertmanager belongs to the user"
        );
        Ok(())
    })
    .await;
}
