//! `ai-assistant check [--format text|json] [--query] FILE|DIR…`: the BSL
//! checker without the service (no database, no network), for CI.
//!
//! * A directory is searched recursively for `*.bsl` and `*.os` files.
//! * A file is read as UTF-8 (a leading BOM is dropped); `--query` checks
//!   every file as a standalone query text (`*.sdbl`, `*.qry` are always
//!   checked as queries).
//! * Text output, one line per finding, in the reference linter's style:
//!   `path:line:column: severity: message [rule]`, then a summary line on
//!   stderr.
//! * JSON output: `{"files": [{"path", "lines", "diagnostics": [{line,
//!   column, rule, severity, message}]}], "unreadable": [{"path", "error"}],
//!   "summary": {"files", "lines", "errors", "warnings", "infos",
//!   "elapsed_ms"}}`.
//!
//! Exit codes: [`EXIT_CLEAN`] 0 — no findings or only info-level ones;
//! [`EXIT_WARNINGS`] 1 — warnings, no errors; [`EXIT_ERRORS`] 2 — at least
//! one error-level finding; [`EXIT_UNREADABLE`] 3 — a file or directory
//! could not be read (takes precedence: the check is incomplete);
//! [`EXIT_USAGE`] 64 — bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use super::{check, check_query, Diagnostic, Severity};

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_WARNINGS: u8 = 1;
pub const EXIT_ERRORS: u8 = 2;
pub const EXIT_UNREADABLE: u8 = 3;
pub const EXIT_USAGE: u8 = 64;

const USAGE: &str = "usage: ai-assistant check [--format text|json] [--query] FILE|DIR…\n\
exit codes: 0 clean (or info only), 1 warnings, 2 errors, 3 unreadable file, 64 usage";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One checked file.
pub struct FileReport {
    pub path: PathBuf,
    pub lines: usize,
    pub diagnostics: Vec<Diagnostic>,
}

/// The outcome of a run, before printing.
pub struct Report {
    pub files: Vec<FileReport>,
    pub unreadable: Vec<(PathBuf, String)>,
    pub elapsed_ms: u128,
}

impl Report {
    fn count(&self, s: Severity) -> usize {
        self.files
            .iter()
            .flat_map(|f| &f.diagnostics)
            .filter(|d| d.severity == s)
            .count()
    }

    /// The exit code, by the most severe finding (see the module docs).
    pub fn exit_code(&self) -> u8 {
        if !self.unreadable.is_empty() {
            EXIT_UNREADABLE
        } else if self.count(Severity::Error) > 0 {
            EXIT_ERRORS
        } else if self.count(Severity::Warning) > 0 {
            EXIT_WARNINGS
        } else {
            EXIT_CLEAN
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            for d in &f.diagnostics {
                let sev = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                    Severity::Info => "info",
                };
                out.push_str(&format!(
                    "{}:{}:{}: {sev}: {} [{}]\n",
                    f.path.display(),
                    d.line,
                    d.column,
                    d.message,
                    d.rule
                ));
            }
        }
        for (p, e) in &self.unreadable {
            out.push_str(&format!("{}: error: cannot read: {e}\n", p.display()));
        }
        out
    }

    pub fn summary(&self) -> String {
        format!(
            "{} file(s), {} line(s): {} error(s), {} warning(s), {} info, {} unreadable, {} ms",
            self.files.len(),
            self.files.iter().map(|f| f.lines).sum::<usize>(),
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.count(Severity::Info),
            self.unreadable.len(),
            self.elapsed_ms
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "files": self.files.iter().map(|f| json!({
                "path": f.path.display().to_string(),
                "lines": f.lines,
                "diagnostics": f.diagnostics,
            })).collect::<Vec<_>>(),
            "unreadable": self.unreadable.iter().map(|(p, e)| json!({
                "path": p.display().to_string(),
                "error": e,
            })).collect::<Vec<_>>(),
            "summary": {
                "files": self.files.len(),
                "lines": self.files.iter().map(|f| f.lines).sum::<usize>(),
                "errors": self.count(Severity::Error),
                "warnings": self.count(Severity::Warning),
                "infos": self.count(Severity::Info),
                "elapsed_ms": self.elapsed_ms,
            },
        })
    }
}

fn is_query_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("sdbl") || e.eq_ignore_ascii_case("qry"))
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, unreadable: &mut Vec<(PathBuf, String)>) {
    if !path.is_dir() {
        files.push(path.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            unreadable.push((path.to_path_buf(), e.to_string()));
            return;
        }
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        if child.is_dir() {
            collect(&child, files, unreadable);
        } else if child.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            e.eq_ignore_ascii_case("bsl") || e.eq_ignore_ascii_case("os") || is_query_file(&child)
        }) {
            files.push(child);
        }
    }
}

/// Checks the given files and directories.
pub fn run_paths(paths: &[PathBuf], all_queries: bool) -> Report {
    let started = Instant::now();
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut unreadable);
    }
    let mut reports = Vec::new();
    for path in files {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
                    let diagnostics = if all_queries || is_query_file(&path) {
                        check_query(text)
                    } else {
                        check(text)
                    };
                    reports.push(FileReport {
                        lines: text.lines().count(),
                        path,
                        diagnostics,
                    });
                }
                Err(e) => unreadable.push((path, format!("not UTF-8: {e}"))),
            },
            Err(e) => unreadable.push((path, e.to_string())),
        }
    }
    Report {
        files: reports,
        unreadable,
        elapsed_ms: started.elapsed().as_millis(),
    }
}

/// The `check` subcommand; `args` are the arguments after `check`.
pub fn main(args: &[String]) -> ExitCode {
    let mut format = Format::Text;
    let mut queries = false;
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--format" | "-f" => match it.next().map(String::as_str) {
                Some("text") => format = Format::Text,
                Some("json") => format = Format::Json,
                other => {
                    eprintln!("--format must be text or json, got {other:?}\n{USAGE}");
                    return ExitCode::from(EXIT_USAGE);
                }
            },
            "--format=text" => format = Format::Text,
            "--format=json" => format = Format::Json,
            "--query" => queries = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::from(EXIT_CLEAN);
            }
            "--" => paths.extend(it.by_ref().map(PathBuf::from)),
            s if s.starts_with('-') && s.len() > 1 => {
                eprintln!("unknown option {s}\n{USAGE}");
                return ExitCode::from(EXIT_USAGE);
            }
            s => paths.push(PathBuf::from(s)),
        }
    }
    if paths.is_empty() {
        eprintln!("no files given\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    }
    let report = run_paths(&paths, queries);
    match format {
        Format::Text => {
            print!("{}", report.to_text());
            eprintln!("{}", report.summary());
        }
        Format::Json => println!("{}", report.to_json()),
    }
    ExitCode::from(report.exit_code())
}
