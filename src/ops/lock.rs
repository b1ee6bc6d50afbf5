//! `stackctl lock status` and `stackctl lock release`: the deploy lock
//! ([`crate::runtime::lock`]) for the operator.

use crate::engine::Engine;
use crate::error::Result;
use crate::runtime::lock::{holder, lock_name};
use crate::ui::Ui;

/// `stackctl lock release`: show the holder, ask, remove.
pub async fn release_cmd(stack: &crate::model::Stack, yes: bool, ui: &Ui) -> Result<i32> {
    let engine = Engine::connect().await?;
    let project = crate::engine::project(stack);
    let Some(h) = holder(&engine, &project).await? else {
        ui.ok(format!("{project} is not locked"));
        return Ok(0);
    };
    let state = match h.stale() {
        Some(why) => format!("stale: {why}"),
        None => "it may still be running".to_string(),
    };
    if !yes {
        let question = format!(
            "the lock of {project} is held by {} ({state}). Release it",
            h.describe()
        );
        if !crate::ui::confirm(&question, "add --yes to release it")? {
            ui.info("kept the lock");
            return Ok(crate::error::EXIT_DECLINED);
        }
    }
    engine.remove(&lock_name(&project)).await?;
    ui.ok(format!(
        "released the lock of {project} held by {}",
        h.describe()
    ));
    Ok(0)
}

/// `stackctl lock status`.
pub async fn status_cmd(stack: &crate::model::Stack, ui: &Ui) -> Result<i32> {
    let engine = Engine::connect().await?;
    let project = crate::engine::project(stack);
    match holder(&engine, &project).await? {
        None => ui.ok(format!("{project} is not locked")),
        Some(h) => match h.stale() {
            Some(why) => ui.warn(format!(
                "{project} is locked by {}: stale ({why}); the next deploy takes it over, or `stackctl lock release`",
                h.describe()
            )),
            None => ui.info(format!("{project} is locked by {}", h.describe())),
        },
    }
    Ok(0)
}
