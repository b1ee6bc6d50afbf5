//! `logs`, `exec`, `shell`: looking into running containers.

use crate::engine::LogOutput;
use crate::error::{Error, Result};
use crate::model::containers::{Kind, LABEL_SERVICE};
use crate::model::Stack;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use futures::StreamExt;

const COLOURS: [console::Color; 6] = [
    console::Color::Cyan,
    console::Color::Green,
    console::Color::Yellow,
    console::Color::Magenta,
    console::Color::Blue,
    console::Color::Red,
];

/// Logs of the named services (all when none), interleaved by time, each
/// line prefixed with its container in a colour of its own.
pub async fn logs(
    stack: &Stack,
    names: &[String],
    follow: bool,
    since: Option<&str>,
    tail: Option<usize>,
    ui: &Ui,
) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    if !names.is_empty() {
        super::up::closure(&env.containers, names)?;
    }
    let since = match since {
        None => 0,
        Some(s) => {
            let d = crate::model::Duration::parse(s)
                .map_err(|e| Error::usage(e, "e.g. --since 10m"))?;
            (chrono::Utc::now().timestamp() - (d.millis() / 1000) as i64) as i32
        }
    };
    let mut containers: Vec<String> = env
        .running()
        .await?
        .into_iter()
        .filter(|c| {
            names.is_empty()
                || c.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE))
                    .is_some_and(|s| names.contains(s))
        })
        .map(|c| crate::engine::name_of(&c))
        .filter(|n| !n.is_empty())
        .collect();
    containers.sort();
    if containers.is_empty() {
        ui.warn("no containers of this stack are on this host (stackctl start)");
        return Ok(0);
    }
    let streams = prefixes(&containers)
        .into_iter()
        .zip(&containers)
        .map(|(prefix, name)| {
            let stream = env.engine.logs(name, follow, since, tail);
            (prefix, stream)
        })
        .collect();
    // A container removed while we read ends its stream; not an error.
    print_interleaved(streams, follow, None).await?;
    Ok(0)
}

/// `name |` prefixes padded to the longest name, each in a colour of its own.
pub(crate) fn prefixes(names: &[String]) -> Vec<String> {
    let width = names.iter().map(String::len).max().unwrap_or(0);
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            console::style(format!("{name:<width$} |"))
                .fg(COLOURS[i % COLOURS.len()])
                .to_string()
        })
        .collect()
}

/// Print log streams (read with timestamps), each line after its stream's
/// prefix: as they come when following, else all of them merged by time.
/// A read error fails with `fail_as` as its context, or is skipped (None).
pub(crate) async fn print_interleaved<S>(
    streams: Vec<(String, S)>,
    follow: bool,
    fail_as: Option<&str>,
) -> Result<()>
where
    S: futures::Stream<Item = std::result::Result<LogOutput, crate::engine::ApiError>> + Unpin,
{
    let streams = streams
        .into_iter()
        .map(|(prefix, s)| s.map(move |chunk| (prefix.clone(), chunk)));
    let mut merged = futures::stream::select_all(streams);
    let mut buffered: Vec<(String, String, String)> = Vec::new();
    while let Some((prefix, chunk)) = merged.next().await {
        let chunk = match (chunk, fail_as) {
            (Ok(c), _) => c,
            (Err(e), Some(what)) => return Err(Error::engine(what, e)),
            (Err(_), None) => continue,
        };
        for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
            let (ts, text) = line.split_once(' ').unwrap_or(("", line));
            if follow {
                println!("{prefix} {text}");
            } else {
                buffered.push((ts.to_string(), prefix.clone(), text.to_string()));
            }
        }
    }
    // RFC 3339 timestamps with nanoseconds sort as text.
    buffered.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, prefix, text) in buffered {
        println!("{prefix} {text}");
    }
    Ok(())
}

/// Run a command in a service's first container, streaming its output; the
/// command's exit code is ours. Standard input is passed through when piped.
pub async fn exec(stack: &Stack, service: &str, cmd: &[String], ui: &Ui) -> Result<i32> {
    use crate::engine::ExecSession;
    use std::io::IsTerminal;
    use tokio::io::AsyncWriteExt;
    let env = StackEnv::connect(stack).await?;
    super::up::closure(&env.containers, &[service.to_string()])?;
    let name = crate::engine::container_name(&env.project, service, 1);
    if cmd.is_empty() {
        return Err(Error::usage(
            "no command given",
            format!("e.g. stackctl exec {service} -- ls /"),
        ));
    }
    let attach_stdin = !std::io::stdin().is_terminal();
    let what = format!("in {name} (is it running? stackctl start {service})");
    let ExecSession {
        id,
        mut output,
        mut input,
    } = env
        .engine
        .exec_attach(&name, cmd.to_vec(), None, attach_stdin, &what)
        .await?;
    if attach_stdin {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    while let Some(Ok(chunk)) = output.next().await {
        match chunk {
            LogOutput::StdErr { message } => {
                let _ = err.write_all(&message).await;
            }
            other => {
                let _ = out.write_all(&other.into_bytes()).await;
            }
        }
    }
    let _ = out.flush().await;
    let code = env.engine.exec_exit_code(&id, &what).await?;
    ui.detail(format!("exit code {code}"));
    Ok(code as i32)
}

/// A shell in a service's container; for `FROM scratch` services, which have
/// none, what to run instead.
pub async fn shell(stack: &Stack, service: &str, ui: &Ui) -> Result<i32> {
    let specs = crate::model::containers(stack);
    let Some(spec) = specs.iter().find(|c| c.name == service) else {
        return Err(Error::usage(
            format!("no container `{service}` in this stack"),
            "see `stackctl architecture`",
        ));
    };
    if spec.kind == Kind::App {
        let bin = stack
            .service(service)
            .map(|s| s.binary.clone())
            .unwrap_or_default();
        return Err(Error::usage(
            format!("{service} runs FROM scratch: it has no shell, only its binary /app/{bin}"),
            format!(
                "run the binary's own diagnostics: `stackctl exec {service} -- /app/{bin} healthcheck`; see its logs: `stackctl logs {service}`; its ready report: `stackctl test-service {service}`"
            ),
        ));
    }
    ui.info(format!(
        "{service}: /bin/sh (no TTY: commands run line by line; `exit` to leave)"
    ));
    exec(stack, service, &["/bin/sh".to_string()], ui).await
}
