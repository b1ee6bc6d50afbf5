//! Suppression comments.
//!
//! * `// @skip-check <rule>[, <rule>…]` (1C:EDT's form, also `//@skip-check`)
//!   at the end of a line suppresses those rules on that line; on a line of
//!   its own (possibly among other comment lines) it suppresses them on the
//!   statement that follows (all of its lines: a multi-line query text
//!   included).
//! * `// BSLLS:<Key>-off` … `// BSLLS:<Key>-on` (the reference linter's form;
//!   `BSLLS-off`/`BSLLS-on` for every rule): a region, or one line when the
//!   comment ends a line of code.
//!
//! Rule names are this checker's ids (`query-in-loop`), 1C:EDT's check ids
//! (`use-non-recommended-method`, also with a `-check` suffix) and the
//! reference linter's keys (`CreateQueryInCycle`), case-insensitive.

use tree_sitter::{Node, Tree};

use super::{rules, text, Diagnostic};

/// Aliases → our rule ids.
const ALIASES: &[(&str, &[&str])] = &[
    // 1C:EDT check ids.
    (
        "use-non-recommended-method",
        &[rules::DEPRECATED_CURRENT_DATE, rules::DEPRECATED_MESSAGE],
    ),
    ("begin-transaction", &[rules::BEGIN_TRANSACTION_OUTSIDE_TRY]),
    (
        "commit-transaction",
        &[rules::COMMIT_TRANSACTION_OUTSIDE_TRY],
    ),
    ("rollback-transaction", &[rules::MISSING_ROLLBACK]),
    ("empty-except-statement", &[rules::EMPTY_EXCEPT_BLOCK]),
    (
        "server-execution-safe-mode",
        &[rules::EXECUTE_EXTERNAL_CODE],
    ),
    // BSL Language Server diagnostic keys.
    ("CreateQueryInCycle", &[rules::QUERY_IN_LOOP]),
    ("DeprecatedCurrentDate", &[rules::DEPRECATED_CURRENT_DATE]),
    ("DeprecatedMessage", &[rules::DEPRECATED_MESSAGE]),
    (
        "BeginTransactionBeforeTryCatch",
        &[rules::BEGIN_TRANSACTION_OUTSIDE_TRY],
    ),
    (
        "CommitTransactionOutsideTryCatch",
        &[rules::COMMIT_TRANSACTION_OUTSIDE_TRY],
    ),
    ("EmptyCodeBlock", &[rules::EMPTY_CODE_BLOCK]),
    ("MissingCodeTryCatchEx", &[rules::EMPTY_EXCEPT_BLOCK]),
    ("ExecuteExternalCode", &[rules::EXECUTE_EXTERNAL_CODE]),
    (
        "ExecuteExternalCodeInCommonModule",
        &[rules::EXECUTE_EXTERNAL_CODE],
    ),
    ("UsingGoto", &[rules::GOTO]),
    (
        "FunctionShouldHaveReturn",
        &[rules::FUNCTION_WITHOUT_RETURN],
    ),
    ("ProcedureReturnsValue", &[rules::PROCEDURE_RETURNS_VALUE]),
    ("QueryParseError", &[rules::QUERY_SYNTAX_ERROR]),
    ("PairingBrokenTransaction", &[rules::MISSING_ROLLBACK]),
];

const ALL: &str = "*";

/// The rule ids a name stands for (`*` = every rule).
fn resolve(name: &str) -> Vec<&'static str> {
    let n = name.trim().to_lowercase();
    let n = n.strip_suffix("-check").unwrap_or(&n);
    if let Some((_, ids)) = ALIASES.iter().find(|(a, _)| a.to_lowercase() == n) {
        return ids.to_vec();
    }
    ALL_RULES.iter().copied().filter(|r| *r == n).collect()
}

const ALL_RULES: &[&str] = &[
    rules::SYNTAX_ERROR,
    rules::QUERY_SYNTAX_ERROR,
    rules::QUERY_IN_LOOP,
    rules::DEPRECATED_CURRENT_DATE,
    rules::DEPRECATED_MESSAGE,
    rules::BEGIN_TRANSACTION_OUTSIDE_TRY,
    rules::COMMIT_TRANSACTION_OUTSIDE_TRY,
    rules::EMPTY_CODE_BLOCK,
    rules::EMPTY_EXCEPT_BLOCK,
    rules::EXECUTE_EXTERNAL_CODE,
    rules::GOTO,
    rules::MISSING_ROLLBACK,
    rules::FUNCTION_WITHOUT_RETURN,
    rules::PROCEDURE_RETURNS_VALUE,
    rules::VIRTUAL_TABLE_FILTER_IN_WHERE,
];

/// Lines (1-based, inclusive) where a rule is suppressed.
struct Span {
    rule: &'static str,
    from: usize,
    to: usize,
}

/// Drops the diagnostics suppressed by comments in `src`.
pub(super) fn apply(tree: &Tree, src: &str, out: &mut Vec<Diagnostic>) {
    let spans = spans(tree, src);
    if spans.is_empty() {
        return;
    }
    out.retain(|d| {
        !spans
            .iter()
            .any(|s| (s.rule == ALL || s.rule == d.rule) && d.line >= s.from && d.line <= s.to)
    });
}

fn comments<'t>(tree: &'t Tree) -> Vec<Node<'t>> {
    let mut out = Vec::new();
    let mut stack = vec![tree.root_node()];
    while let Some(n) = stack.pop() {
        if n.kind() == "line_comment" {
            out.push(n);
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    out.sort_by_key(|n| n.start_byte());
    out
}

/// Does code precede the comment on its line?
fn trails_code(comment: Node, src: &str) -> bool {
    let start = comment.start_byte();
    let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    !src[line_start..start].trim().is_empty()
}

/// The 1-based line range of the statement that follows a comment (the
/// first line after it that is neither blank nor a comment).
fn next_statement(tree: &Tree, comment: Node, src: &str) -> Option<(usize, usize)> {
    let mut at = comment.end_byte();
    loop {
        let rest = src.get(at..)?;
        let line_end = rest.find('\n').map(|i| at + i + 1).unwrap_or(src.len());
        let line = &src[at..line_end];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            if line_end >= src.len() {
                return None;
            }
            at = line_end;
            continue;
        }
        let first = at + (line.len() - trimmed.len());
        let mut node = tree
            .root_node()
            .descendant_for_byte_range(first, first + 1)?;
        while let Some(p) = node.parent() {
            if p.start_byte() != first || p.kind() == "source_file" {
                break;
            }
            node = p;
        }
        // A method: only its heading line (a @skip-check above `Функция`
        // is about the declaration, not every line of the body).
        let end_row = if matches!(node.kind(), "procedure_definition" | "function_definition") {
            node.start_position().row
        } else {
            node.end_position().row
        };
        return Some((node.start_position().row + 1, end_row + 1));
    }
}

fn spans(tree: &Tree, src: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    // Open BSLLS regions: (rule, from line).
    let mut open: Vec<(&'static str, usize)> = Vec::new();
    for c in comments(tree) {
        let body = text(c, src).trim_start_matches('/').trim();
        let line = c.start_position().row + 1;
        if let Some(rest) = body.strip_prefix("@skip-check") {
            let ids: Vec<&'static str> = rest
                .split(|ch: char| ch == ',' || ch.is_whitespace())
                .filter(|w| !w.is_empty())
                .flat_map(resolve)
                .collect();
            let range = if trails_code(c, src) {
                Some((line, line))
            } else {
                next_statement(tree, c, src)
            };
            if let Some((from, to)) = range {
                spans.extend(ids.into_iter().map(|rule| Span { rule, from, to }));
            }
            continue;
        }
        let Some(rest) = body
            .strip_prefix("BSLLS")
            .or_else(|| body.strip_prefix("bslls"))
        else {
            continue;
        };
        let directive = rest.split_whitespace().next().unwrap_or("");
        let (key, on) = if let Some(k) = directive.strip_suffix("-off") {
            (k, false)
        } else if let Some(k) = directive.strip_suffix("-выкл") {
            (k, false)
        } else if let Some(k) = directive.strip_suffix("-on") {
            (k, true)
        } else if let Some(k) = directive.strip_suffix("-вкл") {
            (k, true)
        } else {
            continue;
        };
        let ids: Vec<&'static str> = match key.strip_prefix(':') {
            Some(k) => resolve(k),
            None if key.is_empty() => vec![ALL],
            None => continue,
        };
        if trails_code(c, src) && !on {
            spans.extend(ids.into_iter().map(|rule| Span {
                rule,
                from: line,
                to: line,
            }));
            continue;
        }
        for rule in ids {
            if on {
                open.retain(|(r, from)| {
                    if *r == rule {
                        spans.push(Span {
                            rule,
                            from: *from,
                            to: line,
                        });
                        false
                    } else {
                        true
                    }
                });
            } else {
                open.push((rule, line));
            }
        }
    }
    for (rule, from) in open {
        spans.push(Span {
            rule,
            from,
            to: usize::MAX,
        });
    }
    spans
}
