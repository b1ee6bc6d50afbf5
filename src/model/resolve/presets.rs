//! Built-in presets: what a well-known component needs (image, command,
//! ports, networks, files, health check, metrics), written as the same
//! `ComponentDef` a stack.toml holds. The stack's own definition is merged
//! over the preset, so any field can be overridden.

use super::super::schema::{
    ComponentDef, ComponentHealthDef, MetricsDef, RedisAccessDef, RedisUseDef, ResourcesDef,
};
use super::super::units::Memory;
use super::super::{Nginx, Postgres, Redis};
use crate::model::containers::SECRETS_DIR;
use toml::Spanned;

pub const NAMES: &[&str] = &[
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
    "nginx-exporter",
    "alertmanager",
    "pgbouncer",
];

/// The port Nginx serves `stub_status` on, inside the stack's networks only.
pub const NGINX_STATUS_PORT: u16 = 8081;

/// What presets may refer to: the stack's infrastructure, resolved.
pub struct PresetCx<'a> {
    pub postgres: &'a [Postgres],
    pub redis: Option<&'a Redis>,
    pub nginx: Option<&'a Nginx>,
    /// The monitoring network (where Prometheus scrapes).
    pub monitoring: String,
    /// The network the databases are on.
    pub backend: String,
}

/// The preset's definition, or None when there is no such preset. `own` is
/// the stack's definition (its `settings` may choose what the preset fronts).
pub fn preset(name: &str, cx: &PresetCx<'_>, own: &ComponentDef) -> Option<ComponentDef> {
    Some(match name {
        "node-exporter" => node_exporter(cx),
        "postgres-exporter" => postgres_exporter(cx),
        "redis-exporter" => redis_exporter(cx),
        "nginx-exporter" => nginx_exporter(cx),
        "alertmanager" => alertmanager(cx),
        "pgbouncer" => pgbouncer(cx, own),
        _ => return None,
    })
}

/// The group a preset's container belongs to.
pub fn group(name: &str) -> &'static str {
    match name {
        "pgbouncer" => "data",
        _ => "monitoring",
    }
}

pub(super) fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

/// Limits of a small sidecar: memory in MiB and CPUs (reservations follow the defaults).
fn limits(mib: u64, cpus: f64) -> ResourcesDef {
    ResourcesDef {
        memory: Some(Memory(mib * 1024 * 1024)),
        cpus: Some(sp(cpus)),
        ..Default::default()
    }
}

pub(super) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(super) fn spanned(v: &[String]) -> Vec<Spanned<String>> {
    v.iter().cloned().map(sp).collect()
}

/// An exporter: a Debian-built image, its port scraped as metrics, a small limit.
fn exporter(image: &str, port: u16, networks: Vec<String>) -> ComponentDef {
    ComponentDef {
        image: Some(sp(image.to_string())),
        build: Some(sp("debian".into())),
        port: Some(sp(port)),
        networks: Some(spanned(&networks)),
        user: Some(sp("65534:65534".into())),
        metrics: Some(MetricsDef {
            port: Some(port),
            path: Some("/metrics".into()),
        }),
        healthcheck: Some(ComponentHealthDef {
            http: Some("/metrics".into()),
            ..Default::default()
        }),
        resources: Some(limits(64, 0.1)),
        ..Default::default()
    }
}

fn node_exporter(cx: &PresetCx<'_>) -> ComponentDef {
    ComponentDef {
        description: Some("host metrics: CPU, memory, disks, network".into()),
        command: Some(strings(&[
            "--path.procfs=/host/proc",
            "--path.sysfs=/host/sys",
            "--web.listen-address=:9100",
        ])),
        volumes: Some(spanned(&strings(&[
            "/proc:/host/proc:ro",
            "/sys:/host/sys:ro",
        ]))),
        ..exporter(
            "stackctl/node-exporter:bookworm",
            9100,
            vec![cx.monitoring.clone()],
        )
    }
}

/// One exporter for every database: the connection strings are assembled
/// from the password files at start, so no password is in its environment
/// as Docker records it. The per-server collectors `database` and
/// `bgwriter` of Debian's 0.11 report duplicates with several servers, so
/// they are off; `pg_up` and `pg_stat_*` come from the default queries.
fn postgres_exporter(cx: &PresetCx<'_>) -> ComponentDef {
    let dsns: Vec<String> = cx
        .postgres
        .iter()
        .map(|p| {
            format!(
                "postgresql://{}:$(cat {SECRETS_DIR}/{})@{}:5432/{}?sslmode=disable",
                p.user, p.password_secret, p.name, p.database
            )
        })
        .collect();
    let script = format!(
        "DATA_SOURCE_NAME=\"{}\" exec /usr/bin/prometheus-postgres-exporter --web.listen-address=:9187 --no-collector.database --no-collector.bgwriter",
        dsns.join(",")
    );
    ComponentDef {
        description: Some("PostgreSQL metrics of every database of the stack".into()),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![script]),
        secrets: Some(spanned(
            &cx.postgres
                .iter()
                .map(|p| p.password_secret.clone())
                .collect::<Vec<_>>(),
        )),
        depends_on: Some(spanned(
            &cx.postgres
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>(),
        )),
        ..exporter(
            "stackctl/postgres-exporter:bookworm",
            9187,
            vec![cx.backend.clone(), cx.monitoring.clone()],
        )
    }
}

/// Its own Redis user (no keys; INFO, CONFIG GET, SLOWLOG and LATENCY
/// reads: the @dangerous commands an exporter needs, and nothing else), not
/// the administrator's. The password is read from its file at start.
fn redis_exporter(cx: &PresetCx<'_>) -> ComponentDef {
    let (redis, script) = match cx.redis {
        Some(r) => (
            Some(sp(RedisUseDef::Access(RedisAccessDef {
                keys: Some(vec![]),
                commands: Some(strings(&["ping", "select", "dbsize"])),
                dangerous: Some(strings(&[
                    "info",
                    "config|get",
                    "slowlog|get",
                    "slowlog|len",
                    "latency|latest",
                ])),
                ..Default::default()
            }))),
            format!(
                "REDIS_PASSWORD=\"$(cat \"$REDIS_PASSWORD_FILE\")\" exec /usr/bin/prometheus-redis-exporter -redis.addr=redis://{}:{} -redis.user=\"$REDIS_USERNAME\" -web.listen-address=:9121",
                r.name, r.port
            ),
        ),
        None => (
            None,
            "exec /usr/bin/prometheus-redis-exporter -web.listen-address=:9121".into(),
        ),
    };
    ComponentDef {
        description: Some("Redis metrics".into()),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![script]),
        redis,
        ..exporter(
            "stackctl/redis-exporter:bookworm",
            9121,
            vec![cx.backend.clone(), cx.monitoring.clone()],
        )
    }
}

fn nginx_exporter(cx: &PresetCx<'_>) -> ComponentDef {
    let (mut networks, depends, uri) = match cx.nginx {
        Some(n) => (
            n.networks.clone(),
            vec![n.name.clone()],
            format!("http://{}:{NGINX_STATUS_PORT}/stub_status", n.name),
        ),
        None => (vec![], vec![], String::new()),
    };
    networks.push(cx.monitoring.clone());
    networks.dedup();
    ComponentDef {
        description: Some("Nginx connection and request metrics (stub_status)".into()),
        command: Some(vec![
            format!("-nginx.scrape-uri={uri}"),
            "-web.listen-address=:9113".into(),
        ]),
        depends_on: Some(spanned(&depends)),
        ..exporter("stackctl/nginx-exporter:bookworm", 9113, networks)
    }
}

fn alertmanager(cx: &PresetCx<'_>) -> ComponentDef {
    let mut files = indexmap::IndexMap::new();
    files.insert(
        "/etc/alertmanager/alertmanager.yml".to_string(),
        sp("alertmanager.yml.tera".to_string()),
    );
    ComponentDef {
        description: Some("receives Prometheus' alerts, groups them and notifies".into()),
        command: Some(strings(&[
            "--config.file=/etc/alertmanager/alertmanager.yml",
            "--storage.path=/alertmanager",
            "--web.listen-address=:9093",
            // One instance: no gossip port, no peers to look for.
            "--cluster.listen-address=",
        ])),
        volumes: Some(spanned(&strings(&["alertmanager-data:/alertmanager"]))),
        files: Some(files),
        healthcheck: Some(ComponentHealthDef {
            http: Some("/-/ready".into()),
            ..Default::default()
        }),
        resources: Some(limits(128, 0.1)),
        ..exporter(
            "stackctl/alertmanager:bookworm",
            9093,
            vec![cx.monitoring.clone()],
        )
    }
}

/// A connection pooler in front of one PostgreSQL instance
/// (`settings.postgres`, default the first): clients connect to it as they
/// would to the database, with the same user and password.
fn pgbouncer(cx: &PresetCx<'_>, own: &ComponentDef) -> ComponentDef {
    let wanted = own
        .settings
        .as_ref()
        .and_then(|s| s.get("postgres"))
        .and_then(|v| v.as_str());
    let pg = match wanted {
        Some(w) => cx.postgres.iter().find(|p| p.name == w),
        None => cx.postgres.first(),
    };
    let mut files = indexmap::IndexMap::new();
    files.insert(
        "/etc/pgbouncer/pgbouncer.ini".to_string(),
        sp("pgbouncer.ini.tera".to_string()),
    );
    let mut settings = toml::Table::new();
    let (secrets, depends, script) = match pg {
        Some(p) => {
            settings.insert("postgres".into(), p.name.clone().into());
            settings.insert("database".into(), p.database.clone().into());
            settings.insert("user".into(), p.user.clone().into());
            (
                vec![p.password_secret.clone()],
                vec![p.name.clone()],
                // The auth file is written at start from the password file, in tmpfs.
                format!(
                    "printf '\"%s\" \"%s\"\\n' '{}' \"$(cat {SECRETS_DIR}/{})\" > /tmp/userlist.txt && exec /usr/sbin/pgbouncer /etc/pgbouncer/pgbouncer.ini",
                    p.user, p.password_secret
                ),
            )
        }
        None => (
            vec![],
            vec![],
            "exec /usr/sbin/pgbouncer /etc/pgbouncer/pgbouncer.ini".into(),
        ),
    };
    settings.insert("pool_mode".into(), "session".into());
    settings.insert("max_client_conn".into(), 200.into());
    settings.insert("default_pool_size".into(), 20.into());
    ComponentDef {
        description: Some("PostgreSQL connection pooler".into()),
        image: Some(sp("stackctl/pgbouncer:bookworm".into())),
        build: Some(sp("debian".into())),
        port: Some(sp(6432)),
        networks: Some(spanned(std::slice::from_ref(&cx.backend))),
        user: Some(sp("70:70".into())),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![script]),
        secrets: Some(spanned(&secrets)),
        depends_on: Some(spanned(&depends)),
        files: Some(files),
        settings: Some(settings),
        healthcheck: Some(ComponentHealthDef {
            shell: Some("bash -c 'exec 3<>/dev/tcp/127.0.0.1/6432'".into()),
            ..Default::default()
        }),
        resources: Some(limits(64, 0.25)),
        ..Default::default()
    }
}
