//! The commands: each takes the resolved stack and the UI, returns an exit code.

use crate::cli::{ConfigFormat, DiagramFormat, Global, RenderTarget};
use crate::error::{Error, Result};
use crate::model::{self, Stack};
use crate::render;
use crate::ui::Ui;
use std::path::Path;

pub mod architecture;
pub mod backup;
pub mod build;
pub mod build_components;
pub mod deploy;
pub mod inspect;
pub mod lock;
pub mod logs;
pub mod preflight;
pub mod push;
pub mod setup;
pub mod up;

/// Find and resolve stack.toml per the global flags.
pub fn load(g: &Global) -> Result<Stack> {
    let file = match &g.file {
        Some(f) => f.clone(),
        None => {
            model::find_stack_file(&std::env::current_dir().map_err(|e| Error::Other(e.into()))?)?
        }
    };
    let mut stack = model::load(&file, g.env.as_deref())?;
    if let Some(p) = &g.project {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::usage(
                format!("project name `{p}` is not valid"),
                "use lower-case letters, digits and '-'",
            ));
        }
        stack.project = Some(p.clone());
    }
    if let Some(r) = &g.registry {
        stack.registry = Some(r.trim_end_matches('/').to_string()).filter(|r| !r.is_empty());
    }
    Ok(stack)
}

pub fn validate(stack: &Stack, ui: &Ui) -> Result<i32> {
    let containers = model::containers(stack);
    if ui.json {
        ui.print_json(&serde_json::json!({
            "valid": true,
            "file": stack.file.display().to_string(),
            "environment": stack.environment,
            "services": stack.services.len(),
            "containers": containers.len(),
        }));
    } else {
        ui.ok(format!(
            "{} is valid: {} services, {} containers, {} networks{}",
            stack.file.display(),
            stack.services.len(),
            containers.len(),
            stack.networks.len(),
            stack
                .environment
                .as_deref()
                .map(|e| format!(" (environment {e})"))
                .unwrap_or_default()
        ));
    }
    Ok(0)
}

pub fn render(stack: &Stack, out: Option<&Path>, target: RenderTarget, ui: &Ui) -> Result<i32> {
    let started = std::time::Instant::now();
    let layout = render::Layout::new(stack, out, crate::runtime::image_tag(stack));
    let artifacts = match target {
        RenderTarget::Compose => render::render(stack, &layout)?,
        RenderTarget::Kubernetes => render::k8s::render(stack, &layout)?,
    };
    let changed = artifacts.write(&layout.out)?;
    if ui.json {
        ui.print_json(&serde_json::json!({
            "out": layout.out.display().to_string(),
            "files": artifacts.files.keys().collect::<Vec<_>>(),
            "changed": changed,
            "config_hash": artifacts.hash(),
        }));
    } else {
        for f in artifacts.files.keys() {
            ui.detail(f);
        }
        ui.ok(format!(
            "rendered {} files to {} ({} changed) in {} ms; config hash {}",
            artifacts.files.len(),
            layout.out.display(),
            changed,
            started.elapsed().as_millis(),
            &artifacts.hash()[..12]
        ));
    }
    Ok(0)
}

pub fn config(stack: &Stack, format: ConfigFormat, ui: &Ui) -> Result<i32> {
    let json = serde_json::to_value(stack).map_err(|e| Error::Other(e.into()))?;
    if ui.json || matches!(format, ConfigFormat::Json) {
        ui.print_json(&json);
    } else {
        let text = toml::to_string_pretty(&json).map_err(|e| Error::Other(e.into()))?;
        print!("{text}");
    }
    Ok(0)
}

pub fn architecture(stack: &Stack, format: DiagramFormat, _ui: &Ui) -> Result<i32> {
    print!("{}", architecture::draw(stack, format));
    Ok(0)
}
