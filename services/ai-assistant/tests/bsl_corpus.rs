//! The checker on code shaped like real released 1C code and like the
//! reference linter's (BSL Language Server) diagnostic fixtures. All inputs
//! are written for this repository (fixtures/corpus, fixtures/reference-shapes).
//!
//! * Library-style modules: zero error-level findings.
//! * Reference shapes: one fixture per rule; `// ожидается: <rule>` marks a
//!   line where a finding is expected (the reference linter's fixture of the
//!   same shape expects one there), `// ожидается выше N: <rule>` the range of
//!   the N lines above and this one (a multi-line query text), `// ожидается
//!   в строке -N: <rule>` the N-th line above (several markers separated by
//!   `;`). `// эталон, не мы: <rule> — why` records a reference expectation
//!   this checker does not follow by design (counted and printed, not in the
//!   recall). Recall per rule must be ≥ 95 %.

use std::collections::BTreeMap;
use std::time::Instant;

use ai_assistant::bsl::{check, Severity};

const LIBRARY: &str = include_str!("fixtures/corpus/library-common-module.bsl");
const OBJECT: &str = include_str!("fixtures/object-module.bsl");
const FORM: &str = include_str!("fixtures/form-module.bsl");

const SHAPES: &[(&str, &str)] = &[
    (
        "begin-transaction-before-try",
        include_str!("fixtures/reference-shapes/begin-transaction-before-try.bsl"),
    ),
    (
        "commit-transaction-outside-try",
        include_str!("fixtures/reference-shapes/commit-transaction-outside-try.bsl"),
    ),
    (
        "deprecated-current-date",
        include_str!("fixtures/reference-shapes/deprecated-current-date.bsl"),
    ),
    (
        "deprecated-message",
        include_str!("fixtures/reference-shapes/deprecated-message.bsl"),
    ),
    (
        "empty-code-block",
        include_str!("fixtures/reference-shapes/empty-code-block.bsl"),
    ),
    (
        "empty-except-block",
        include_str!("fixtures/reference-shapes/empty-except-block.bsl"),
    ),
    (
        "execute-external-code",
        include_str!("fixtures/reference-shapes/execute-external-code.bsl"),
    ),
    (
        "function-should-have-return",
        include_str!("fixtures/reference-shapes/function-should-have-return.bsl"),
    ),
    (
        "goto-statement",
        include_str!("fixtures/reference-shapes/goto-statement.bsl"),
    ),
    (
        "missing-rollback",
        include_str!("fixtures/reference-shapes/missing-rollback.bsl"),
    ),
    (
        "procedure-returns-value",
        include_str!("fixtures/reference-shapes/procedure-returns-value.bsl"),
    ),
    (
        "query-in-loop",
        include_str!("fixtures/reference-shapes/query-in-loop.bsl"),
    ),
    (
        "query-syntax-error",
        include_str!("fixtures/reference-shapes/query-syntax-error.bsl"),
    ),
    (
        "syntax-error",
        include_str!("fixtures/reference-shapes/syntax-error.bsl"),
    ),
    (
        "virtual-table-filter-in-where",
        include_str!("fixtures/reference-shapes/virtual-table-filter-in-where.bsl"),
    ),
];

/// A large module in the shape of a released library's common module: the
/// library-style module, the object and form modules, repeated with the
/// method names numbered (tens of thousands of lines).
fn large_module(copies: usize) -> String {
    let mut out = String::new();
    for i in 0..copies {
        for part in [LIBRARY, OBJECT, FORM] {
            let renamed = part
                .replace("Процедура ", &format!("Процедура Копия{i}_"))
                .replace("Функция ", &format!("Функция Копия{i}_"));
            out.push_str(&renamed);
            out.push('\n');
        }
    }
    out
}

#[test]
fn library_style_modules_have_no_error_level_findings() {
    let large = large_module(40);
    let mut failures = Vec::new();
    for (name, code) in [
        ("library-common-module.bsl", LIBRARY.to_string()),
        ("object-module.bsl", OBJECT.to_string()),
        ("form-module.bsl", FORM.to_string()),
        ("generated large module", large.clone()),
    ] {
        let errors: Vec<_> = check(&code)
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        println!(
            "{name}: {} lines, {} error-level findings",
            code.lines().count(),
            errors.len()
        );
        if !errors.is_empty() {
            failures.push(format!("{name}: {:#?}", &errors[..errors.len().min(5)]));
        }
    }
    assert!(large.lines().count() > 10_000);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Prints lines per second on the largest module (no timing assertion:
/// machines differ). `cargo test -p ai-assistant --release --test
/// bsl_corpus -- --nocapture throughput` for meaningful figures.
#[test]
fn throughput_on_the_largest_module() {
    let large = large_module(40);
    let lines = large.lines().count();
    let started = Instant::now();
    let found = check(&large);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "largest module: {lines} lines, {} KiB, checked in {:.0} ms: {:.0} lines/s ({} findings)",
        large.len() / 1024,
        secs * 1000.0,
        lines as f64 / secs,
        found.len()
    );
    assert!(lines > 10_000);
    assert!(!found.iter().any(|d| d.severity == Severity::Error));
}

struct Expectation {
    rule: String,
    from: usize,
    to: usize,
}

fn expectations(code: &str) -> (Vec<Expectation>, Vec<(usize, String)>) {
    let mut expected = Vec::new();
    let mut excluded = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let n = i + 1;
        let Some(pos) = line.find("// ") else {
            continue;
        };
        let comment = &line[pos + 3..];
        if let Some(rest) = comment.strip_prefix("эталон, не мы: ") {
            excluded.push((n, rest.to_string()));
            continue;
        }
        for marker in comment.split(';').map(str::trim) {
            let Some(rest) = marker.strip_prefix("ожидается") else {
                continue;
            };
            let (range, rule) = rest.split_once(':').expect("marker has a rule");
            let range = range.trim();
            let (from, to) = if range.is_empty() {
                (n, n)
            } else if let Some(k) = range.strip_prefix("выше ") {
                (n - k.trim().parse::<usize>().unwrap(), n)
            } else if let Some(k) = range.strip_prefix("в строке -") {
                let l = n - k.trim().parse::<usize>().unwrap();
                (l, l)
            } else {
                panic!("unknown marker {marker:?}");
            };
            expected.push(Expectation {
                rule: rule.trim().to_string(),
                from,
                to,
            });
        }
    }
    (expected, excluded)
}

#[test]
fn reference_shapes_recall_per_rule() {
    // rule → (expected, found, findings of the rule, findings matching nothing)
    let mut stats: BTreeMap<String, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut missed = Vec::new();
    let mut excluded_total = 0;
    for (rule, code) in SHAPES {
        let (expected, excluded) = expectations(code);
        assert!(
            expected.iter().any(|e| e.rule == *rule),
            "{rule}: the fixture expects nothing of its rule"
        );
        let found = check(code);
        for e in &expected {
            let s = stats.entry(e.rule.clone()).or_default();
            s.0 += 1;
            if found
                .iter()
                .any(|d| d.rule == e.rule && d.line >= e.from && d.line <= e.to)
            {
                s.1 += 1;
            } else {
                missed.push(format!(
                    "{rule}.bsl: {} at lines {}..{}",
                    e.rule, e.from, e.to
                ));
            }
        }
        let own: Vec<_> = found.iter().filter(|d| d.rule == *rule).collect();
        let unmatched = own
            .iter()
            .filter(|d| {
                !expected
                    .iter()
                    .any(|e| e.rule == d.rule && d.line >= e.from && d.line <= e.to)
            })
            .count();
        let s = stats.entry(rule.to_string()).or_default();
        s.2 += own.len();
        s.3 += unmatched;
        for (line, why) in excluded {
            excluded_total += 1;
            println!("{rule}.bsl:{line}: reference expectation not followed by design: {why}");
        }
    }
    let mut low = Vec::new();
    for (rule, (expected, found, own, unmatched)) in &stats {
        let recall = *found as f64 / *expected as f64;
        println!(
            "{rule}: recall {found}/{expected} = {:.0} %; {own} finding(s) of the rule, {unmatched} not expected by the reference",
            recall * 100.0
        );
        if recall < 0.95 {
            low.push(rule.clone());
        }
    }
    println!("reference expectations excluded by design: {excluded_total}");
    assert_eq!(stats.len(), SHAPES.len(), "every rule has expectations");
    assert!(
        low.is_empty(),
        "recall below 95 % for {low:?}; missed: {missed:#?}"
    );
}
