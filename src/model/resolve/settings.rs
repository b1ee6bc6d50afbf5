//! The typed settings of the infrastructure (`[infra.redis]`,
//! `[infra.nginx]`, `[monitoring]`, `[logging]`): what the templates and the
//! services' connection settings read. The containers they run are presets
//! (infra.rs) over the one component type.

use super::*;

/// The network of the Docker API proxy and Filebeat, and no one else
/// (declared by stackctl, internal, unless stack.toml declares it).
pub(super) const DOCKER_API_NETWORK: &str = "docker-api";

impl Resolver<'_> {
    pub(super) fn redis(
        &self,
        f: &StackFile,
        services: &[Resolved<'_>],
        defaults: &Defaults,
        nets: &Nets,
        secrets: &mut Vec<Secret>,
    ) -> Result<Option<Redis>, ModelError> {
        let def = f.infra.redis.clone().unwrap_or_default();
        let user = services.iter().find(|(_, s, _)| s.redis.is_some());
        // A component of the stack's own with a Redis user wants it too.
        let component_user = super::components::enabled(&f.components).any(|n| {
            f.components[&n]
                .get_ref()
                .redis
                .as_ref()
                .is_some_and(|r| *r.get_ref() != schema::RedisUseDef::Switch(false))
        });
        if !def.enabled.unwrap_or(user.is_some() || component_user) {
            if let Some((sdef, s, _)) = user {
                return Err(self.err(
                    K::InvalidValue,
                    sdef.span().start,
                    format!(
                        "service `{}` uses Redis, but [infra.redis] is disabled",
                        s.name
                    ),
                    "enable [infra.redis] or set redis = false on the service",
                ));
            }
            return Ok(None);
        }
        let password_secret = spanned_or(&def.password_secret, "redis-password");
        let acl_secret = spanned_or(&def.acl_secret, "redis-acl");
        imply(
            secrets,
            &password_secret,
            SecretKind::Password,
            None,
            "password of Redis' administrator (`default`: health check, backups)",
        );
        imply(
            secrets,
            &acl_secret,
            SecretKind::RedisAcl,
            Some(&password_secret),
            "Redis ACL file: the administrator and one user per service or component using Redis, derived from stack.toml",
        );
        Ok(Some(Redis {
            name: "redis".into(),
            image: self.image(
                &def.image,
                &def.build,
                "redis:7-alpine",
                Some("stackctl/redis:7-bookworm"),
                "redis",
            )?,
            port: def.port.as_ref().map(|p| *p.get_ref()).unwrap_or(6379),
            maxmemory: def.maxmemory.unwrap_or(Memory(200 * 1024 * 1024)),
            maxmemory_policy: def
                .maxmemory_policy
                .clone()
                .unwrap_or_else(|| "noeviction".into()),
            appendonly: def.appendonly.unwrap_or(true),
            password_secret,
            acl_secret,
            resources: self.resources(
                def.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            networks: vec![nets.first("backend")],
        }))
    }

    /// The one service marked public, which Nginx fronts.
    fn public_service<'s>(
        &self,
        f: &StackFile,
        services: &'s [Resolved<'_>],
    ) -> Result<&'s Service, ModelError> {
        let public: Vec<&Resolved<'_>> = services.iter().filter(|(_, s, _)| s.public).collect();
        match public.as_slice() {
            [] => Err(self.err(
                K::MissingKey,
                f.stack.span().start,
                "Nginx is enabled but no service is marked public = true",
                "set public = true on the gateway service, or [infra.nginx] enabled = false",
            )),
            [(_, s, _)] => Ok(s),
            [(_, a, _), (sdef, b, _), ..] => Err(self.err(
                K::InvalidValue,
                sdef.span().start,
                format!(
                    "services `{}` and `{}` are both public; Nginx fronts exactly one gateway",
                    a.name, b.name
                ),
                "set public = true on the gateway only",
            )),
        }
    }

    pub(super) fn nginx(
        &self,
        f: &StackFile,
        services: &[Resolved<'_>],
        defaults: &Defaults,
        nets: &Nets,
        secrets: &mut Vec<Secret>,
    ) -> Result<Option<Nginx>, ModelError> {
        let ng = f.infra.nginx.clone().unwrap_or_default();
        if !ng.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let up = self.public_service(f, services)?;
        let cert = spanned_or(&ng.tls_cert_secret, "nginx-tls-cert");
        let key = spanned_or(&ng.tls_key_secret, "nginx-tls-key");
        imply(
            secrets,
            &cert,
            SecretKind::TlsCert,
            Some(&key),
            "self-signed TLS certificate Nginx serves",
        );
        imply(
            secrets,
            &key,
            SecretKind::TlsKey,
            None,
            "private key of that certificate",
        );
        let mut networks = Vec::new();
        for n in ng.networks.as_deref().unwrap_or_default() {
            networks.push(self.net(nets, n, "nginx")?);
        }
        if networks.is_empty() {
            networks.push(nets.first("frontend"));
        }
        Ok(Some(Nginx {
            name: "nginx".into(),
            image: self.image(
                &ng.image,
                &ng.build,
                "nginx:1.27-alpine",
                Some("stackctl/nginx:1.22-bookworm"),
                "nginx",
            )?,
            http_port: ng.http_port.as_ref().map(|p| *p.get_ref()).unwrap_or(80),
            https_port: ng.https_port.as_ref().map(|p| *p.get_ref()).unwrap_or(443),
            server_name: ng.server_name.clone().unwrap_or_else(|| "localhost".into()),
            tls_cert_secret: cert,
            tls_key_secret: key,
            rate_limit: ng.rate_limit.unwrap_or(10).max(1),
            rate_burst: ng.rate_burst.unwrap_or(20),
            client_max_body_size: ng.client_max_body_size.unwrap_or(Memory(10 * 1024 * 1024)),
            networks,
            resources: self.resources(
                ng.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            upstream: up.name.clone(),
            upstream_port: up.port,
            upstream_replicas: up.replicas,
        }))
    }

    /// A registry-image add-on (Grafana, the Elastic stack); None when switched off.
    fn addon(
        &self,
        def: Option<&schema::AddonDef>,
        name: &str,
        image: &str,
        port: u16,
        defaults: &Defaults,
    ) -> Result<Option<Addon>, ModelError> {
        let c = def.cloned().unwrap_or_default();
        if !c.enabled.unwrap_or(true) {
            return Ok(None);
        }
        Ok(Some(Addon {
            name: name.into(),
            image: ImageSource::Registry {
                image: c.image.clone().unwrap_or_else(|| image.into()),
            },
            port: c.port.as_ref().map(|p| *p.get_ref()).unwrap_or(port),
            resources: self.resources(
                c.resources.as_ref(),
                &defaults.resources,
                defaults.reservation_percent,
            )?,
            admin_password_secret: c
                .admin_password_secret
                .as_ref()
                .map(|s| s.get_ref().clone()),
        }))
    }

    pub(super) fn monitoring(
        &self,
        m: &schema::MonitoringDef,
        defaults: &Defaults,
        nets: &Nets,
        secrets: &mut Vec<Secret>,
    ) -> Result<Option<Monitoring>, ModelError> {
        if !m.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let network = match &m.network {
            Some(n) => self.net(nets, n, "monitoring")?,
            None => nets.first("monitoring"),
        };
        let p = m.prometheus.clone().unwrap_or_default();
        let mut grafana = self.addon(
            m.grafana.as_ref(),
            "grafana",
            "grafana/grafana:11.2.0",
            3001,
            defaults,
        )?;
        if let Some(g) = grafana.as_mut() {
            let s = g
                .admin_password_secret
                .get_or_insert_with(|| "grafana-admin-password".into());
            imply(
                secrets,
                s,
                SecretKind::Password,
                None,
                "Grafana admin password",
            );
        }
        let a = m.alerts.clone().unwrap_or_default();
        Ok(Some(Monitoring {
            network,
            prometheus: Addon {
                name: "prometheus".into(),
                image: self.image(
                    &p.image,
                    &p.build,
                    "prom/prometheus:v2.54.1",
                    Some("stackctl/prometheus:2-bookworm"),
                    "prometheus",
                )?,
                port: p.port.as_ref().map(|p| *p.get_ref()).unwrap_or(9090),
                resources: self.resources(
                    p.resources.as_ref(),
                    &defaults.resources,
                    defaults.reservation_percent,
                )?,
                admin_password_secret: None,
            },
            scrape_interval: p.scrape_interval.unwrap_or(Duration::from_secs(15)),
            retention: p.retention.unwrap_or(Duration::from_secs(15 * 86_400)),
            grafana,
            alerts: Alerts {
                error_rate: a.error_rate.unwrap_or(0.05),
                latency_p99: a.latency_p99.unwrap_or(Duration(1000)),
                memory_ratio: a.memory_ratio.unwrap_or(0.9),
                for_duration: a.for_duration.unwrap_or(Duration::from_secs(300)),
                down_for: a.down_for.unwrap_or(Duration::from_secs(60)),
            },
        }))
    }

    pub(super) fn logging(
        &self,
        l: &schema::LoggingDef,
        network: String,
        defaults: &Defaults,
        secrets: &mut Vec<Secret>,
    ) -> Result<Option<Logging>, ModelError> {
        if !l.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let users = [
            (
                "elasticsearch-password",
                "password of Elasticsearch's administrator `elastic` (Kibana's login)",
            ),
            (
                "kibana-es-password",
                "password of Kibana's own Elasticsearch user (role kibana_system)",
            ),
            (
                "filebeat-es-password",
                "password of Filebeat's own Elasticsearch user (writes the logs, nothing else)",
            ),
        ];
        for (name, what) in users {
            imply(secrets, name, SecretKind::Password, None, what);
        }
        // The parts of the Elastic stack are always there together.
        let part = |def: Option<&schema::AddonDef>, name: &str, image: &str, port: u16| {
            let mut d = def.cloned().unwrap_or_default();
            d.enabled = None;
            d.admin_password_secret = None;
            self.addon(Some(&d), name, image, port, defaults)
                .map(|a| a.expect("enabled"))
        };
        Ok(Some(Logging {
            network,
            elasticsearch: part(
                l.elasticsearch.as_ref(),
                "elasticsearch",
                "docker.elastic.co/elasticsearch/elasticsearch:8.15.0",
                9200,
            )?,
            kibana: part(
                l.kibana.as_ref(),
                "kibana",
                "docker.elastic.co/kibana/kibana:8.15.0",
                5601,
            )?,
            filebeat: part(
                l.filebeat.as_ref(),
                "filebeat",
                "docker.elastic.co/beats/filebeat:8.15.0",
                5066,
            )?,
            docker_api: Addon {
                name: "docker-api".into(),
                image: ImageSource::Debian {
                    image: "stackctl/docker-api-proxy:bookworm".into(),
                },
                port: 2375,
                resources: Resources {
                    memory: Memory(64 * 1024 * 1024),
                    cpus: 0.1,
                    reserve_memory: Memory(32 * 1024 * 1024),
                    reserve_cpus: 0.05,
                    pids: defaults.resources.pids,
                },
                admin_password_secret: None,
            },
            docker_api_network: DOCKER_API_NETWORK.into(),
            elastic_password_secret: users[0].0.into(),
            kibana_password_secret: users[1].0.into(),
            filebeat_password_secret: users[2].0.into(),
            retention: l.retention.unwrap_or(Duration::from_secs(7 * 86_400)),
        }))
    }
}

/// The name a spanned setting gives, or the default.
fn spanned_or(v: &Option<Spanned<String>>, default: &str) -> String {
    v.as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| default.to_string())
}
