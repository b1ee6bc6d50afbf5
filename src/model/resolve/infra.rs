//! The infrastructure as presets: PostgreSQL, Redis, Nginx, Prometheus,
//! Grafana and the Elastic stack are components like any other. Their
//! settings stay in `[infra.*]`, `[monitoring]` and `[logging]` (the
//! templates and the services' connection settings read them); the
//! container each one runs is the `ComponentDef` written here, and a
//! `[components.NAME]` table of the same name is merged over it.

use super::super::containers::{Kind, SECRETS_DIR};
use super::super::schema::{ComponentDef, ComponentHealthDef, ResourcesDef};
use super::super::{
    Addon, ImageSource, Logging, Monitoring, Nginx, Postgres, Redis, Resources, ES_FILEBEAT_USER,
    ES_KIBANA_USER, LOGS_WRITER_ROLE,
};
use super::presets::{sp, spanned, strings};

/// One infrastructure container: its name, kind and definition.
pub struct InfraContainer {
    pub name: String,
    pub kind: Kind,
    pub def: ComponentDef,
}

/// The typed settings the infrastructure presets are made from.
pub struct Infra<'a> {
    pub postgres: &'a [Postgres],
    pub redis: Option<&'a Redis>,
    pub nginx: Option<&'a Nginx>,
    pub monitoring: Option<&'a Monitoring>,
    pub logging: Option<&'a Logging>,
}

/// Every infrastructure container, data stores first.
pub fn infra(i: &Infra<'_>) -> Vec<InfraContainer> {
    let mut out = Vec::new();
    let mut push = |name: &str, kind: Kind, def: ComponentDef| {
        out.push(InfraContainer {
            name: name.to_string(),
            kind,
            def,
        })
    };
    if let Some(r) = i.redis {
        push(&r.name, Kind::Redis, redis(r));
    }
    for p in i.postgres {
        push(&p.name, Kind::Postgres, postgres(p));
    }
    if let Some(n) = i.nginx {
        push(&n.name, Kind::Nginx, nginx(n));
    }
    if let Some(m) = i.monitoring {
        push(&m.prometheus.name, Kind::Prometheus, prometheus(m));
        if let Some(g) = &m.grafana {
            push(
                &g.name,
                Kind::Grafana,
                grafana(g, &m.prometheus.name, &m.network),
            );
        }
    }
    if let Some(l) = i.logging {
        push(&l.elasticsearch.name, Kind::Elasticsearch, elasticsearch(l));
        push(&l.kibana.name, Kind::Kibana, kibana(l));
        push(&l.docker_api.name, Kind::DockerApi, docker_api(l));
        push(&l.filebeat.name, Kind::Filebeat, filebeat(l));
    }
    out
}

/// What every infrastructure container has: its image, limits and networks.
fn base(image: &ImageSource, r: &Resources, networks: &[String]) -> ComponentDef {
    ComponentDef {
        image: Some(sp(image.image().to_string())),
        build: matches!(image, ImageSource::Debian { .. }).then(|| sp("debian".to_string())),
        resources: Some(ResourcesDef {
            memory: Some(r.memory),
            cpus: Some(sp(r.cpus)),
            reserve_memory: Some(r.reserve_memory),
            reserve_cpus: Some(sp(r.reserve_cpus)),
            pids: Some(sp(r.pids)),
        }),
        networks: Some(spanned(networks)),
        ..Default::default()
    }
}

fn http(path: &str, port: u16) -> Option<ComponentHealthDef> {
    Some(ComponentHealthDef {
        http: Some(path.into()),
        port: Some(port),
        ..Default::default()
    })
}

fn shell(line: String) -> Option<ComponentHealthDef> {
    Some(ComponentHealthDef {
        shell: Some(line),
        ..Default::default()
    })
}

fn command(cmd: Vec<String>) -> Option<ComponentHealthDef> {
    Some(ComponentHealthDef {
        command: Some(cmd),
        ..Default::default()
    })
}

/// Files the stack renderer writes (relative to the output directory),
/// mounted read-only at the target.
fn rendered(v: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        v.iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect(),
    )
}

fn redis(r: &Redis) -> ComponentDef {
    ComponentDef {
        description: Some("Redis: sessions, caches, revocations".into()),
        command: Some(strings(&[
            "redis-server",
            "/usr/local/etc/redis/redis.conf",
        ])),
        port: Some(sp(r.port)),
        volumes: Some(spanned(&strings(&["redis-data:/data"]))),
        rendered: rendered(&[("redis/redis.conf", "/usr/local/etc/redis/redis.conf")]),
        secrets: Some(spanned(&[r.acl_secret.clone(), r.password_secret.clone()])),
        cap_add: Some(strings(&["CHOWN", "SETGID", "SETUID"])),
        healthcheck: shell(format!(
            "redis-cli -p {} --no-auth-warning -a \"$(cat {SECRETS_DIR}/{})\" ping | grep -q PONG",
            r.port, r.password_secret
        )),
        ..base(&r.image, &r.resources, &r.networks)
    }
}

fn postgres(p: &Postgres) -> ComponentDef {
    let env = [
        ("POSTGRES_DB", p.database.clone()),
        ("POSTGRES_USER", p.user.clone()),
        (
            "POSTGRES_PASSWORD_FILE",
            format!("{SECRETS_DIR}/{}", p.password_secret),
        ),
        ("PGDATA", "/var/lib/postgresql/data/pgdata".into()),
    ];
    // One process per connection, and its helpers.
    let resources = Resources {
        pids: p.resources.pids.max(p.max_connections + 64),
        ..p.resources
    };
    ComponentDef {
        description: Some(format!("PostgreSQL of {}", p.service)),
        env: Some(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        command: Some(vec![
            "postgres".into(),
            "-c".into(),
            format!("max_connections={}", p.max_connections),
            "-c".into(),
            format!("shared_buffers={}kB", p.shared_buffers.bytes() / 1024),
        ]),
        port: Some(sp(5432)),
        volumes: Some(spanned(&[format!(
            "{}-data:/var/lib/postgresql/data",
            p.name
        )])),
        rendered: Some(vec![(
            format!("postgres/{}/init.sql", p.name),
            "/docker-entrypoint-initdb.d/10-init.sql".into(),
        )]),
        secrets: Some(spanned(std::slice::from_ref(&p.password_secret))),
        tmpfs: Some(strings(&["/tmp", "/var/run/postgresql"])),
        // The entrypoint initialises the data directory as root, then drops to `postgres`.
        cap_add: Some(strings(&[
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "SETGID",
            "SETUID",
        ])),
        healthcheck: command(vec![
            "pg_isready".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-U".into(),
            p.user.clone(),
            "-d".into(),
            p.database.clone(),
        ]),
        ..base(&p.image, &resources, &p.networks)
    }
}

fn nginx(n: &Nginx) -> ComponentDef {
    ComponentDef {
        description: Some("the one public entry: TLS, rate limits, proxy to the gateway".into()),
        // Every interface: the only container reachable from outside.
        ports: Some(spanned(&[
            format!("*:{}:80", n.http_port),
            format!("*:{}:443", n.https_port),
        ])),
        rendered: rendered(&[("nginx/nginx.conf", "/etc/nginx/nginx.conf")]),
        secrets: Some(spanned(&[
            n.tls_cert_secret.clone(),
            n.tls_key_secret.clone(),
        ])),
        tmpfs: Some(strings(&[
            "/tmp",
            "/var/cache/nginx",
            "/var/lib/nginx",
            "/run",
        ])),
        cap_add: Some(strings(&["CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"])),
        depends_on: Some(spanned(std::slice::from_ref(&n.upstream))),
        healthcheck: http("/nginx-health", 80),
        ..base(&n.image, &n.resources, &n.networks)
    }
}

fn prometheus(m: &Monitoring) -> ComponentDef {
    let p = &m.prometheus;
    ComponentDef {
        description: Some("metrics and alert rules".into()),
        command: Some(vec![
            "--config.file=/etc/prometheus/prometheus.yml".into(),
            "--storage.tsdb.path=/prometheus".into(),
            format!("--storage.tsdb.retention.time={}", m.retention),
        ]),
        ports: Some(spanned(&[format!("{}:9090", p.port)])),
        volumes: Some(spanned(&strings(&["prometheus-data:/prometheus"]))),
        rendered: rendered(&[("prometheus", "/etc/prometheus")]),
        user: Some(sp("65534:65534".into())),
        healthcheck: http("/-/ready", 9090),
        ..base(&p.image, &p.resources, std::slice::from_ref(&m.network))
    }
}

fn grafana(g: &Addon, prometheus: &str, network: &str) -> ComponentDef {
    let mut env = std::collections::BTreeMap::new();
    let mut secrets = Vec::new();
    if let Some(s) = &g.admin_password_secret {
        env.insert(
            "GF_SECURITY_ADMIN_PASSWORD__FILE".to_string(),
            format!("{SECRETS_DIR}/{s}"),
        );
        secrets.push(s.clone());
    }
    env.insert("GF_USERS_ALLOW_SIGN_UP".into(), "false".into());
    env.insert(
        "GF_PATHS_PROVISIONING".into(),
        "/etc/grafana/provisioning".into(),
    );
    ComponentDef {
        description: Some("dashboards over Prometheus".into()),
        env: Some(env),
        secrets: Some(spanned(&secrets)),
        ports: Some(spanned(&[format!("{}:3000", g.port)])),
        volumes: Some(spanned(&strings(&["grafana-data:/var/lib/grafana"]))),
        rendered: rendered(&[
            ("grafana/provisioning", "/etc/grafana/provisioning"),
            ("grafana/dashboards", "/var/lib/grafana-dashboards"),
        ]),
        user: Some(sp("472:0".into())),
        depends_on: Some(vec![sp(prometheus.to_string())]),
        healthcheck: http("/api/health", 3000),
        ..base(&g.image, &g.resources, &[network.to_string()])
    }
}

/// Security on, always: every request needs a user. `elastic` (the
/// administrator, for people) gets its password from its secret file; at
/// each start, before Elasticsearch itself, its own tool writes Kibana's and
/// Filebeat's users into the file realm from their password secrets (the
/// hashes are Elasticsearch's own), with Filebeat's write-only role from
/// the rendered roles.yml. HTTP stays plain on the stack's network.
fn elasticsearch(l: &Logging) -> ComponentDef {
    let es = &l.elasticsearch;
    let heap = (es.resources.memory.mib() / 2).max(256);
    let env = [
        ("discovery.type", "single-node".to_string()),
        ("xpack.security.enabled", "true".into()),
        ("xpack.security.http.ssl.enabled", "false".into()),
        ("xpack.security.transport.ssl.enabled", "false".into()),
        (
            "ELASTIC_PASSWORD_FILE",
            format!("{SECRETS_DIR}/{}", l.elastic_password_secret),
        ),
        ("ES_JAVA_OPTS", format!("-Xms{heap}m -Xmx{heap}m")),
    ];
    let user = |name: &str, secret: &str, role: &str| {
        format!(
            "bin/elasticsearch-users userdel {name} >/dev/null 2>&1 || true; \
             bin/elasticsearch-users useradd {name} -p \"$(cat {SECRETS_DIR}/{secret})\" -r {role}; "
        )
    };
    let start = format!(
        "set -e; cd /usr/share/elasticsearch; {}{}exec /bin/tini -- /usr/local/bin/docker-entrypoint.sh eswrapper",
        user(ES_KIBANA_USER, &l.kibana_password_secret, "kibana_system"),
        user(ES_FILEBEAT_USER, &l.filebeat_password_secret, LOGS_WRITER_ROLE),
    );
    ComponentDef {
        description: Some("log store (security on: every request needs a user)".into()),
        env: Some(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![start]),
        secrets: Some(spanned(&[
            l.elastic_password_secret.clone(),
            l.kibana_password_secret.clone(),
            l.filebeat_password_secret.clone(),
        ])),
        ports: Some(spanned(&[format!("{}:9200", es.port)])),
        volumes: Some(spanned(&strings(&[
            "elasticsearch-data:/usr/share/elasticsearch/data",
        ]))),
        rendered: rendered(&[(
            "elasticsearch/roles.yml",
            "/usr/share/elasticsearch/config/roles.yml",
        )]),
        read_only: Some(false),
        user: Some(sp("1000:0".into())),
        healthcheck: shell(format!(
            "curl -fsS -o /dev/null -u \"elastic:$(cat {SECRETS_DIR}/{})\" 'http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=5s'",
            l.elastic_password_secret
        )),
        ..base(&es.image, &es.resources, std::slice::from_ref(&l.network))
    }
}

/// Logs in to Elasticsearch as its own user (role kibana_system), the
/// password read from its file at start; people log in as `elastic`.
fn kibana(l: &Logging) -> ComponentDef {
    let k = &l.kibana;
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "ELASTICSEARCH_HOSTS".to_string(),
        format!("http://{}:9200", l.elasticsearch.name),
    );
    env.insert("ELASTICSEARCH_USERNAME".into(), ES_KIBANA_USER.into());
    ComponentDef {
        description: Some("log search UI (log in as elastic)".into()),
        env: Some(env),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![format!(
            "ELASTICSEARCH_PASSWORD=\"$(cat {SECRETS_DIR}/{})\" exec /bin/tini -- /usr/local/bin/kibana-docker",
            l.kibana_password_secret
        )]),
        secrets: Some(spanned(std::slice::from_ref(&l.kibana_password_secret))),
        ports: Some(spanned(&[format!("{}:5601", k.port)])),
        read_only: Some(false),
        user: Some(sp("1000:0".into())),
        depends_on: Some(vec![sp(l.elasticsearch.name.clone())]),
        // Ready when it answers at all: 200, or 401 (it asks for a login).
        healthcheck: shell(
            "code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5601/api/status); [ \"$code\" = 200 ] || [ \"$code\" = 401 ]".into(),
        ),
        ..base(&k.image, &k.resources, std::slice::from_ref(&l.network))
    }
}

/// The Docker socket behind HAProxy, passing on only GETs of the engine's
/// version, the container list, one container's inspection and the event
/// stream (the metadata Filebeat adds to each line); 403 for anything else.
/// Only Filebeat shares its network. It connects to the socket as root,
/// without any capability.
fn docker_api(l: &Logging) -> ComponentDef {
    let d = &l.docker_api;
    let mut files = indexmap::IndexMap::new();
    files.insert(
        "/usr/local/etc/haproxy/haproxy.cfg".to_string(),
        sp("docker-api-haproxy.cfg.tera".to_string()),
    );
    ComponentDef {
        description: Some("the Docker API, read-only, for Filebeat's container metadata".into()),
        port: Some(sp(d.port)),
        volumes: Some(spanned(&strings(&[
            "/var/run/docker.sock:/var/run/docker.sock:ro",
        ]))),
        files: Some(files),
        user: Some(sp("0:0".into())),
        healthcheck: shell(format!(
            "wget -q -O /dev/null http://127.0.0.1:{}/_ping",
            d.port
        )),
        ..base(
            &d.image,
            &d.resources,
            std::slice::from_ref(&l.docker_api_network),
        )
    }
}

/// Reads the containers' log files from a read-only mount (root: they are
/// root's) and asks the Docker API proxy, not the socket, who wrote them.
fn filebeat(l: &Logging) -> ComponentDef {
    let f = &l.filebeat;
    // Its own Elasticsearch user's password, read from its file (filebeat.yml names ${ES_PASSWORD}).
    let password = format!(
        "ES_PASSWORD=\"$(cat {SECRETS_DIR}/{})\"",
        l.filebeat_password_secret
    );
    ComponentDef {
        description: Some("ships the containers' logs to Elasticsearch".into()),
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        command: Some(vec![format!(
            "{password} exec /usr/bin/tini -s -- filebeat -e --strict.perms=false"
        )]),
        secrets: Some(spanned(std::slice::from_ref(&l.filebeat_password_secret))),
        volumes: Some(spanned(&strings(&[
            "/var/lib/docker/containers:/var/lib/docker/containers:ro",
            "filebeat-data:/usr/share/filebeat/data",
        ]))),
        rendered: rendered(&[
            ("filebeat/filebeat.yml", "/usr/share/filebeat/filebeat.yml"),
            (
                "filebeat/ilm-policy.json",
                "/usr/share/filebeat/ilm-policy.json",
            ),
        ]),
        // Reading other containers' log files needs root; it keeps no capabilities.
        user: Some(sp("0:0".into())),
        depends_on: Some(vec![
            sp(l.elasticsearch.name.clone()),
            sp(l.docker_api.name.clone()),
        ]),
        healthcheck: shell(format!("{password} filebeat test output")),
        ..base(
            &f.image,
            &f.resources,
            &[l.network.clone(), l.docker_api_network.clone()],
        )
    }
}
