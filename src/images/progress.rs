//! How [`super::ensure_all`] shows its progress: a line per image with the
//! current step and the elapsed time (indicatif bars on a terminal), plain
//! lines otherwise, nothing under `--json`/`--quiet`.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// One live line per image on stderr (a terminal).
    Bars,
    /// A plain line on stderr per step (stderr is not a terminal).
    Lines,
    /// Nothing (`--json`, `--quiet`); errors still come back as errors.
    Silent,
}

impl Display {
    /// Bars on a terminal, lines otherwise, nothing for `--json`/`--quiet`.
    pub fn for_output(json: bool, quiet: bool) -> Display {
        if json || quiet {
            Display::Silent
        } else if console::Term::stderr().is_term() {
            Display::Bars
        } else {
            Display::Lines
        }
    }

    /// [`Display::for_output`] with the CLI's settings.
    pub fn from_ui(ui: &crate::ui::Ui) -> Display {
        Display::for_output(ui.json, ui.quiet)
    }
}

pub(crate) struct Reporter {
    display: Display,
    multi: Option<MultiProgress>,
    width: usize,
}

impl Reporter {
    pub(crate) fn new(display: Display) -> Reporter {
        Reporter {
            display,
            multi: (display == Display::Bars)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            width: 36,
        }
    }

    pub(crate) fn line(&self, label: &str) -> Line {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} {prefix:<W} [{elapsed:>4}] {wide_msg}"
                        .replace('W', &self.width.to_string())
                        .as_str(),
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Line {
            display: self.display,
            label: label.to_string(),
            start: Instant::now(),
            bar,
        }
    }

    pub(crate) fn done(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

pub(crate) struct Line {
    display: Display,
    label: String,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Line {
    pub(crate) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub(crate) fn say(&self, msg: &str) {
        match self.display {
            Display::Bars => {
                if let Some(b) = &self.bar {
                    b.set_message(msg.to_string());
                }
            }
            Display::Lines if !is_noise(msg) => {
                eprintln!("[{:>5.1}s] {}: {msg}", self.elapsed(), self.label);
            }
            _ => {}
        }
    }

    pub(crate) fn finish(&self, msg: &str) {
        match self.display {
            Display::Bars => {
                if let Some(b) = &self.bar {
                    b.set_style(
                        ProgressStyle::with_template("✓ {prefix:<36} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.finish_with_message(msg.to_string());
                }
            }
            Display::Lines => eprintln!("[{:>5.1}s] {}: {msg}", self.elapsed(), self.label),
            Display::Silent => {}
        }
    }

    pub(crate) fn fail(&self, msg: &str) {
        let first = msg.lines().next().unwrap_or(msg);
        match self.display {
            Display::Bars => {
                if let Some(b) = &self.bar {
                    b.set_style(
                        ProgressStyle::with_template("✗ {prefix:<36} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.abandon_with_message(format!("failed: {first}"));
                }
            }
            Display::Lines => {
                eprintln!("[{:>5.1}s] {}: failed: {first}", self.elapsed(), self.label)
            }
            Display::Silent => {}
        }
    }
}

/// Per-package lines: live on a bar, too many as plain lines.
fn is_noise(msg: &str) -> bool {
    const NOISE: [&str; 9] = [
        "layer: Unpacking ",
        "layer: Setting up ",
        "base: Unpacking ",
        "base: I: Retrieving ",
        "base: I: Validating ",
        "base: I: Extracting ",
        "base: I: Unpacking ",
        "base: I: Configuring ",
        "base: I: Checking component",
    ];
    NOISE.iter().any(|n| msg.starts_with(n))
        && !msg.contains("Release")
        && !msg.contains("required packages")
        && !msg.contains("the base system")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_and_json_are_silent() {
        assert_eq!(Display::for_output(true, false), Display::Silent);
        assert_eq!(Display::for_output(false, true), Display::Silent);
    }

    #[test]
    fn per_package_lines_are_noise() {
        assert!(is_noise("layer: Unpacking redis-server (5:7.0.15-1) ..."));
        assert!(is_noise("base: I: Retrieving libc6 2.36"));
        assert!(!is_noise("base: I: Retrieving Release"));
        assert!(!is_noise("base: I: Unpacking required packages..."));
        assert!(!is_noise("layer: apt-get install redis-server"));
        assert!(!is_noise("Step 3/9 : RUN set -eu"));
    }
}
