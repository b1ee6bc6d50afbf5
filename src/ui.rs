//! Output: colours (off under NO_COLOR or when not a terminal), quiet/verbose, JSON.

use crate::cli::Global;
use console::{style, Term};

pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    colors: bool,
}

impl Ui {
    pub fn new(g: &Global) -> Self {
        let colors = std::env::var_os("NO_COLOR").is_none() && Term::stderr().is_term();
        console::set_colors_enabled(colors);
        console::set_colors_enabled_stderr(colors);
        Ui {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            colors,
        }
    }

    /// Errors only, no colours: for callers of the library (tests, tools).
    pub fn silent() -> Ui {
        Ui {
            json: false,
            quiet: true,
            verbose: 0,
            colors: false,
        }
    }

    /// The same settings, printing only errors (for steps whose notes were shown already).
    pub fn clone_quiet(&self) -> Ui {
        Ui {
            json: self.json,
            quiet: true,
            verbose: 0,
            colors: self.colors,
        }
    }

    pub fn colors(&self) -> bool {
        self.colors
    }

    /// A progress or success line on stderr (suppressed by -q and --json).
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet && !self.json {
            eprintln!("{}", msg.as_ref());
        }
    }

    pub fn ok(&self, msg: impl AsRef<str>) {
        self.info(format!("{} {}", style("✓").green(), msg.as_ref()));
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{} {}", style("warning:").yellow().bold(), msg.as_ref());
        }
    }

    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbose > 0 && !self.json {
            eprintln!("  {}", style(msg.as_ref()).dim());
        }
    }

    pub fn error(&self, e: &crate::Error) {
        if self.json {
            let v = serde_json::json!({"error": {"code": e.exit_code(), "message": e.to_string()}});
            println!("{v}");
        }
        eprintln!("{} {e}", style("error:").red().bold());
    }

    pub fn print_json(&self, v: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// Ask `question` on the terminal (`? type `yes`: `) and say whether the
/// answer was `yes`. Without a terminal to ask on (stdin or stderr not a
/// terminal) it is a usage error naming the question and `refused` (how to
/// confirm without a prompt, e.g. "add --yes to confirm").
pub fn confirm(question: &str, refused: &str) -> crate::error::Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !console::Term::stderr().is_term() {
        return Err(crate::error::Error::usage(
            format!("{question}: not confirmed (no terminal to ask on)"),
            refused,
        ));
    }
    eprint!("{question}? type `yes`: ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    Ok(answer.trim() == "yes")
}
