//! stackctl: one stack.toml, every artifact, the Docker Engine driven directly.

mod cli;
pub mod engine;
pub mod error;
pub mod images;
pub mod model;
pub mod ops;
pub mod render;
pub mod runtime;
pub mod swarm;
pub mod ui;

use clap::{CommandFactory, Parser};
pub use error::{Error, Result};

/// Parse the command line, run the command, print any error; the exit code.
pub fn main_exit_code() -> i32 {
    let cli = cli::Cli::parse();
    let ui = ui::Ui::new(&cli.global);
    match run(cli, &ui) {
        Ok(code) => code,
        Err(e) => {
            ui.error(&e);
            e.exit_code()
        }
    }
}

fn run(cli: cli::Cli, ui: &ui::Ui) -> Result<i32> {
    use cli::Command as C;
    let g = &cli.global;
    match cli.command {
        C::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut cli::Cli::command(),
                "stackctl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        C::Validate {
            against_engine: false,
        } => ops::validate(&ops::load(g)?, ui),
        C::Render(args) => {
            let what = match g.target {
                cli::Target::Kubernetes => cli::RenderTarget::Kubernetes,
                cli::Target::Local | cli::Target::Swarm => cli::RenderTarget::Compose,
            };
            ops::render(&ops::load(g)?, args.out.as_deref(), what, ui)
        }
        C::Config(args) => ops::config(&ops::load(g)?, args.format, ui),
        C::Architecture(args) => ops::architecture(&ops::load(g)?, args.format, ui),
        engine_cmd => {
            let stack = ops::load(g)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Error::Other(e.into()))?;
            rt.block_on(async {
                use ops::*;
                if g.target == cli::Target::Kubernetes {
                    return Err(Error::usage(
                        "--target kubernetes only renders manifests: stackctl does not drive a cluster",
                        "run `stackctl render --target kubernetes`, then `kubectl apply -k kubernetes/overlays/ENV`",
                    ));
                }
                if g.target == cli::Target::Swarm {
                    return match engine_cmd {
                        C::Deploy(a) if a.dry_run || a.backup || a.watch.is_some() || a.ready_timeout.is_some() => {
                            Err(Error::usage(
                                "--dry-run, --backup, --watch and --ready-timeout apply to the local engine",
                                "with --target swarm, Swarm's update_config watches and rolls back; drop those flags",
                            ))
                        }
                        C::Deploy(_) => swarm::deploy(&stack, ui).await,
                        C::Rollback { to } => swarm::rollback(&stack, to.as_deref(), ui).await,
                        C::History => swarm::history(&stack, ui).await,
                        C::Status => swarm::status(&stack, ui).await,
                        C::Health { .. } => swarm::health(&stack, ui).await,
                        C::Logs {
                            services,
                            follow,
                            tail,
                            ..
                        } => swarm::logs(&stack, &services, follow, tail, ui).await,
                        C::Scale { assignments } => swarm::scale(&stack, &assignments, ui).await,
                        C::Down { volumes, yes } => swarm::down(&stack, volumes, yes, ui).await,
                        other => Err(swarm::unsupported(&other)),
                    };
                }
                match engine_cmd {
                    C::Setup => setup::setup(&stack, ui).await,
                    C::Images { command: None } => setup::images(&stack, ui).await,
                    C::Images {
                        command: Some(cli::ImagesCommand::Save { file }),
                    } => setup::save_images(&stack, &file, ui).await,
                    C::Images {
                        command: Some(cli::ImagesCommand::Load { file }),
                    } => setup::load_images(&stack, &file, ui).await,
                    C::Build {
                        services,
                        push,
                        no_cargo,
                    } => build::build(&stack, &services, push, no_cargo, ui).await,
                    C::Start(a) => up::start(&stack, &a.services, a.wait_timeout, ui).await,
                    C::Stop { services } => up::stop(&stack, &services, ui).await,
                    C::Restart(a) => {
                        up::stop(&stack, &a.services, ui).await?;
                        up::start(&stack, &a.services, a.wait_timeout, ui).await
                    }
                    C::Down { volumes, yes } => up::down(&stack, volumes, yes, ui).await,
                    C::Health { watch } => inspect::health(&stack, watch, ui).await,
                    C::Status => inspect::status(&stack, ui).await,
                    C::Logs {
                        services,
                        follow,
                        since,
                        tail,
                    } => logs::logs(&stack, &services, follow, since.as_deref(), tail, ui).await,
                    C::Shell { service } => logs::shell(&stack, &service, ui).await,
                    C::Exec { service, cmd } => logs::exec(&stack, &service, &cmd, ui).await,
                    C::TestService { service } => inspect::test_service(&stack, &service, ui).await,
                    C::Resources { watch } => inspect::resources(&stack, watch, ui).await,
                    C::Monitor { open } => inspect::monitor(&stack, open, ui).await,
                    C::Clean => up::clean(&stack, ui).await,
                    C::Backup { services, keep } => {
                        backup::backup(&stack, &services, keep.map(|k| k as usize), ui).await
                    }
                    C::Restore { backup, yes } => backup::restore(&stack, &backup, yes, ui).await,
                    C::Validate {
                        against_engine: true,
                    } => {
                        ops::validate(&stack, ui)?;
                        preflight::preflight(&stack, ui).await
                    }
                    C::Deploy(a) => {
                        let opts = deploy::DeployOpts {
                            dry_run: a.dry_run,
                            backup: a.backup,
                            no_build: a.no_build,
                            watch: a.watch,
                            ready_timeout: a.ready_timeout,
                        };
                        deploy::deploy(&stack, &opts, ui).await
                    }
                    C::Rollback { to } => deploy::rollback(&stack, to.as_deref(), ui).await,
                    C::History => deploy::history(&stack, ui).await,
                    C::Diff { revision } => deploy::diff(&stack, revision.as_deref(), ui).await,
                    C::Lock { command } => match command {
                        cli::LockCommand::Release { yes } => {
                            lock::release_cmd(&stack, yes, ui).await
                        }
                        cli::LockCommand::Status => lock::status_cmd(&stack, ui).await,
                    },
                    C::Scale { .. } => Err(Error::usage(
                        "scale works with --target swarm only",
                        "on the local engine set `replicas` for the service in stack.toml and run `stackctl start`; or use `stackctl --target swarm scale SERVICE=N`",
                    )),
                    C::Validate { .. }
                    | C::Render(_)
                    | C::Config(_)
                    | C::Architecture(_)
                    | C::Completions { .. } => unreachable!("handled above"),
                }
            })
        }
    }
}
