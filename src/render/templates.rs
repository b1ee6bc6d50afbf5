//! Tera templates: built into the binary from templates/, and overridable
//! file by file by a `templates/` directory next to the project's stack.toml.

use super::Layout;
use crate::error::{Error, Result};
use crate::model::Stack;
use include_dir::{include_dir, Dir};
use std::path::Path;

static BUILTIN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// The Rust target the static service binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Templates {
    tera: tera::Tera,
}

impl Templates {
    /// The built-in templates, each replaced by `<root>/templates/<name>` when that exists.
    pub fn load(root: &Path) -> Result<Templates> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        let mut files: Vec<(String, String)> = Vec::new();
        for f in BUILTIN.files() {
            let name = f.path().to_string_lossy().into_owned();
            let own = root.join("templates").join(&name);
            let text = if own.is_file() {
                std::fs::read_to_string(&own).map_err(|source| Error::Read {
                    path: own.clone(),
                    source,
                })?
            } else {
                f.contents_utf8().unwrap_or_default().to_string()
            };
            files.push((name, text));
        }
        // The project's own templates (for components' files) beside the built-in ones.
        let own_dir = root.join("templates");
        if let Ok(entries) = std::fs::read_dir(&own_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.path().is_file() || files.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let text = std::fs::read_to_string(e.path()).map_err(|source| Error::Read {
                    path: e.path(),
                    source,
                })?;
                files.push((name, text));
            }
        }
        tera.add_raw_templates(files).map_err(|e| Error::Template {
            name: "templates/".into(),
            message: chain(&e),
        })?;
        Ok(Templates { tera })
    }

    pub fn render(&self, name: &str, ctx: &tera::Context) -> Result<String> {
        self.tera.render(name, ctx).map_err(|e| Error::Template {
            name: name.into(),
            message: chain(&e),
        })
    }

    pub fn names() -> Vec<String> {
        BUILTIN
            .files()
            .map(|f| f.path().to_string_lossy().into_owned())
            .collect()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The context every template sees: the whole resolved stack plus layout facts.
pub fn context(stack: &Stack, layout: &Layout) -> Result<tera::Context> {
    let mut c = tera::Context::from_serialize(stack).map_err(|e| Error::Template {
        name: "context".into(),
        message: chain(&e),
    })?;
    c.insert("out_from_root", &layout.out_from_root);
    c.insert("target", TARGET);
    c.insert("secrets_dir", crate::model::containers::SECRETS_DIR);
    c.insert("app_dir", crate::model::containers::APP_DIR);
    if let Some(m) = &stack.monitoring {
        c.insert(
            "latency_p99_seconds",
            &(m.alerts.latency_p99.millis() as f64 / 1000.0),
        );
    }
    if let Some(a) = stack.preset("alertmanager") {
        c.insert("alertmanager", a);
    }
    if stack.preset("nginx-exporter").is_some() {
        c.insert(
            "nginx_status_port",
            &crate::model::presets::NGINX_STATUS_PORT,
        );
    }
    if let Some(l) = &stack.logging {
        c.insert(
            "log_retention_days",
            &(l.retention.millis() / 86_400_000).max(1),
        );
        c.insert("filebeat_es_user", crate::model::ES_FILEBEAT_USER);
        c.insert("logs_writer_role", crate::model::LOGS_WRITER_ROLE);
        c.insert(
            "docker_api_url",
            &format!("tcp://{}:{}", l.docker_api.name, l.docker_api.port),
        );
    }
    Ok(c)
}
