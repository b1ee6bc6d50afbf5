//! stackctl: one stack.toml, every artifact, the Docker Engine driven directly.

mod cli;
pub mod error;
pub mod model;
pub mod ops;
pub mod render;
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
        C::Validate => ops::validate(&ops::load(g)?, ui),
        C::Render(args) => ops::render(&ops::load(g)?, args.out.as_deref(), ui),
        C::Config(args) => ops::config(&ops::load(g)?, args.format, ui),
        C::Architecture(args) => ops::architecture(&ops::load(g)?, args.format, ui),
    }
}
