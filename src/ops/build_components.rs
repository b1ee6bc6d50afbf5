//! Components built from their own Dockerfile (`context = "..."`): the
//! context directory, less what its `.dockerignore` excludes, streamed to the
//! Engine API; skipped when an image with the same inputs already exists.

use super::build::{built_with, image_refs, image_size, Built};
use crate::engine::build::{self as ebuild, Context};
use crate::engine::LABEL_INPUTS;
use crate::error::{Error, Result};
use crate::model::containers::{LABEL_SERVICE, LABEL_STACK};
use crate::model::{Component, ComponentSource, Stack};
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// The components `stackctl build` makes (those with a Dockerfile), limited
/// to `names` when any are given.
pub fn selected<'s>(stack: &'s Stack, names: &[String]) -> Vec<&'s Component> {
    stack
        .components
        .iter()
        .filter(|c| matches!(c.source, ComponentSource::Dockerfile { .. }))
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .collect()
}

/// Build (or find) the image of every selected component, one after another.
pub async fn build(env: &StackEnv<'_>, comps: &[&Component], ui: &Ui) -> Result<Vec<Built>> {
    let mut out = Vec::new();
    for c in comps {
        let ComponentSource::Dockerfile {
            context,
            dockerfile,
        } = &c.source
        else {
            continue;
        };
        let t0 = Instant::now();
        let dir = env.stack.root.join(context);
        let ctx = read_context(&dir, dockerfile).map_err(|e| Error::Build {
            service: c.name.clone(),
            step: String::new(),
            message: format!("cannot read the build context {}: {e:#}", dir.display()),
            hint: "fix `context` in stack.toml or the files' permissions".into(),
        })?;
        let inputs = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(format!("{}\n{dockerfile}", ctx.hash())))
        };
        let refs = image_refs(env.stack, &c.name, &inputs);
        let newest = built_with(env, &c.name, &inputs)
            .await?
            .into_iter()
            .max_by_key(|i| i.created);
        let (id, built) = match newest {
            Some(img) => {
                for r in &refs {
                    env.engine.tag(&img.id, r).await?;
                }
                (img.id, false)
            }
            None => {
                let labels = HashMap::from([
                    (LABEL_INPUTS.to_string(), inputs.clone()),
                    (LABEL_SERVICE.to_string(), c.name.clone()),
                    (LABEL_STACK.to_string(), env.stack.name.clone()),
                ]);
                let step = |m: &str| ui.detail(format!("{}: {m}", c.name));
                let id = ebuild::build_file(
                    &env.engine,
                    &c.name,
                    &ctx,
                    dockerfile,
                    &refs,
                    labels,
                    &step,
                )
                .await?;
                (id, true)
            }
        };
        let size = image_size(env, &id).await?;
        out.push(Built {
            service: c.name.clone(),
            reference: refs[0].clone(),
            id,
            size,
            built,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// Every file under `dir` that `.dockerignore` keeps (patterns anchored at
/// the context root, `**`, `!` exceptions), plus the Dockerfile and the
/// .dockerignore themselves, as Docker sends them.
pub fn read_context(dir: &Path, dockerfile: &str) -> anyhow::Result<Context> {
    use std::os::unix::fs::PermissionsExt;
    let ignore = dockerignore(dir)?;
    let mut ctx = Context::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
            let kind = e.file_type()?;
            let always = rel == dockerfile || rel == ".dockerignore";
            if !always
                && ignore
                    .matched_path_or_any_parents(&rel, kind.is_dir())
                    .is_ignore()
            {
                continue;
            }
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let mode = e.metadata()?.permissions().mode() & 0o777;
                ctx.add(&rel, mode, std::fs::read(&path)?);
            }
        }
    }
    Ok(ctx)
}

fn dockerignore(dir: &Path) -> anyhow::Result<ignore::gitignore::Gitignore> {
    let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
    if let Ok(text) = std::fs::read_to_string(dir.join(".dockerignore")) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Docker anchors every pattern at the context root.
            let (neg, pat) = match line.strip_prefix('!') {
                Some(p) => ("!", p),
                None => ("", line),
            };
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            b.add_line(None, &format!("{neg}/{pat}"))?;
        }
    }
    Ok(b.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_excludes_anchored_patterns_and_keeps_exceptions() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("Dockerfile", "FROM scratch\n");
        w(
            ".dockerignore",
            "# build output\ntarget\n**/*.pyc\nsecrets/*\n!secrets/README\nDockerfile\n",
        );
        w("app/main.py", "print(1)\n");
        w("app/main.pyc", "x");
        w("target/big", "x");
        w("lib/target/kept", "x");
        w("secrets/key", "x");
        w("secrets/README", "x");
        let ctx = read_context(d.path(), "Dockerfile").unwrap();
        let names: Vec<String> = ctx.paths().map(str::to_string).collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app/main.py",
                "lib/target/kept",
                "secrets/README"
            ]
        );
    }
}
