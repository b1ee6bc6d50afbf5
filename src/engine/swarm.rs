//! Swarm objects through the engine: services, tasks, nodes, secrets,
//! configs and overlay networks. `swarm/` decides what they should be;
//! this is the only code that asks the engine for them.

use super::{is_not_found, label_filters, models, qp, ApiError, Engine, LogOutput};
use crate::error::{Error, Result};
use base64::Engine as _;
use models::{
    ConfigSpec, Network, NetworkInspect, Node, SecretSpec, Service, ServiceSpec, SwarmInfo, Task,
};
use std::collections::HashMap;

/// A secret or config as the engine lists it: name, id and (for configs)
/// the content, decoded.
#[derive(Debug, Clone)]
pub struct SwarmObject {
    pub id: String,
    pub name: String,
    pub data: Vec<u8>,
}

impl Engine {
    /// The swarm part of the daemon's facts (node state, whether it is a
    /// manager).
    pub async fn swarm_info(&self) -> Result<SwarmInfo> {
        Ok(self.info().await?.swarm.unwrap_or_default())
    }

    /// Services carrying every given label.
    pub async fn services(&self, labels: &[(&str, &str)]) -> Result<Vec<Service>> {
        self.docker
            .list_services(Some(qp::ListServicesOptions {
                filters: Some(label_filters(labels)),
                status: Some(true),
            }))
            .await
            .map_err(|e| Error::engine("list Swarm services", e))
    }

    /// A service's tasks (running, finished and failed); none when there
    /// is no such service.
    pub async fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        match self
            .docker
            .list_tasks(Some(qp::ListTasksOptions {
                filters: Some(HashMap::from([(
                    "service".to_string(),
                    vec![service.to_string()],
                )])),
            }))
            .await
        {
            Ok(t) => Ok(t),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(Error::engine(format!("list tasks of {service}"), e)),
        }
    }

    /// The swarm's nodes (needs a manager).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.docker
            .list_nodes(None::<qp::ListNodesOptions>)
            .await
            .map_err(|e| Error::engine("list Swarm nodes", e))
    }

    /// Set labels on a node (kept: its other labels, role, availability).
    /// Read and written at the node's version: a concurrent change is refused
    /// by the engine rather than lost.
    pub async fn label_node(&self, node_id: &str, labels: &[(&str, &str)]) -> Result<()> {
        let node = self
            .docker
            .inspect_node(node_id)
            .await
            .map_err(|e| Error::engine(format!("inspect node {node_id}"), e))?;
        let mut spec = node.spec.unwrap_or_default();
        let map = spec.labels.get_or_insert_with(HashMap::new);
        for (k, v) in labels {
            map.insert(k.to_string(), v.to_string());
        }
        let version = node.version.and_then(|v| v.index).unwrap_or(0);
        self.docker
            .update_node(
                node_id,
                spec,
                qp::UpdateNodeOptions {
                    version: version as i64,
                },
            )
            .await
            .map_err(|e| Error::engine(format!("label node {node_id}"), e))
    }

    pub async fn create_service(&self, spec: ServiceSpec) -> Result<()> {
        let name = spec.name.clone().unwrap_or_default();
        self.docker
            .create_service(spec, None)
            .await
            .map(|_| ())
            .map_err(|e| Error::engine(format!("create service {name}"), e))
    }

    /// Replace a service's spec; `version` is the one it was read at (the
    /// engine refuses an update based on a stale read). `what` names the
    /// change in errors ("update service x", "scale x").
    pub async fn update_service(
        &self,
        name: &str,
        spec: ServiceSpec,
        version: u64,
        what: &str,
    ) -> Result<()> {
        self.docker
            .update_service(
                name,
                spec,
                qp::UpdateServiceOptionsBuilder::new()
                    .version(version as i32)
                    .build(),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| Error::engine(what, e))
    }

    /// Remove a service: `false` when there was none of that name.
    pub async fn remove_service(&self, name: &str) -> Result<bool> {
        match self.docker.delete_service(name).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(format!("remove service {name}"), e)),
        }
    }

    /// Secrets carrying every given label (their content is never returned).
    pub async fn secrets(&self, labels: &[(&str, &str)]) -> Result<Vec<SwarmObject>> {
        let list = self
            .docker
            .list_secrets(Some(qp::ListSecretsOptions {
                filters: Some(label_filters(labels)),
            }))
            .await
            .map_err(|e| Error::engine("list Swarm secrets", e))?;
        Ok(list
            .into_iter()
            .map(|s| SwarmObject {
                name: s.spec.and_then(|s| s.name).unwrap_or_default(),
                id: s.id.unwrap_or_default(),
                data: Vec::new(),
            })
            .collect())
    }

    /// Create a secret; its id.
    pub async fn create_secret(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        data: &[u8],
    ) -> Result<String> {
        self.docker
            .create_secret(SecretSpec {
                name: Some(name.to_string()),
                labels: Some(labels),
                data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
                ..Default::default()
            })
            .await
            .map(|r| r.id)
            .map_err(|e| Error::engine(format!("create Swarm secret {name}"), e))
    }

    pub async fn remove_secret(&self, id: &str) -> Result<()> {
        self.docker
            .delete_secret(id)
            .await
            .map_err(|e| Error::engine(format!("remove Swarm secret {id}"), e))
    }

    /// Configs carrying every given label, with their content.
    pub async fn configs(&self, labels: &[(&str, &str)]) -> Result<Vec<SwarmObject>> {
        let list = self
            .docker
            .list_configs(Some(qp::ListConfigsOptions {
                filters: Some(label_filters(labels)),
            }))
            .await
            .map_err(|e| Error::engine("list Swarm configs", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let spec = c.spec.unwrap_or_default();
                SwarmObject {
                    id: c.id.unwrap_or_default(),
                    name: spec.name.unwrap_or_default(),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(spec.data.unwrap_or_default().as_bytes())
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Create a config; its id.
    pub async fn create_config(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        data: &[u8],
    ) -> Result<String> {
        self.docker
            .create_config(ConfigSpec {
                name: Some(name.to_string()),
                labels: Some(labels),
                data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
                ..Default::default()
            })
            .await
            .map(|r| r.id)
            .map_err(|e| Error::engine(format!("create Swarm config {name}"), e))
    }

    pub async fn remove_config(&self, id: &str) -> Result<()> {
        self.docker
            .delete_config(id)
            .await
            .map_err(|e| Error::engine(format!("remove Swarm config {id}"), e))
    }

    /// A network's inspection, or `None` when there is none of that name.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkInspect>> {
        match self.docker.inspect_network(name, None).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(format!("inspect network {name}"), e)),
        }
    }

    /// Networks carrying every given label.
    pub async fn networks(&self, labels: &[(&str, &str)]) -> Result<Vec<Network>> {
        self.docker
            .list_networks(Some(qp::ListNetworksOptions {
                filters: Some(label_filters(labels)),
            }))
            .await
            .map_err(|e| Error::engine("list networks", e))
    }

    /// Create an attachable overlay network (swarm scope).
    pub async fn create_overlay_network(
        &self,
        name: &str,
        internal: bool,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.docker
            .create_network(models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("overlay".into()),
                scope: Some("swarm".into()),
                internal: Some(internal),
                attachable: Some(true),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| Error::engine(format!("create overlay network {name}"), e))
    }

    /// Remove a network: `Ok(false)` when there is none of that name; an
    /// error when the engine refuses (a container still uses it).
    pub async fn try_remove_network(&self, name: &str) -> Result<bool> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(format!("remove network {name}"), e)),
        }
    }

    /// A service's log, every task's lines with timestamps; `tail` lines
    /// per task (all when `None`); `follow` keeps reading.
    pub fn service_logs(
        &self,
        service: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl futures::Stream<Item = std::result::Result<LogOutput, ApiError>> + Unpin + use<> {
        self.docker.service_logs(
            service,
            Some(qp::LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                timestamps: true,
                tail: tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()),
                ..Default::default()
            }),
        )
    }

    /// The last `tail` lines of one task's log (no timestamps).
    pub fn task_logs(
        &self,
        task: &str,
        tail: usize,
    ) -> impl futures::Stream<Item = std::result::Result<LogOutput, ApiError>> + Unpin + use<> {
        self.docker.task_logs(
            task,
            Some(qp::LogsOptions {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        )
    }
}
