//! BSL (1C:Enterprise script) checks built on tree-sitter-bsl: syntax
//! errors, a set of well-known diagnostics, and validation of query texts
//! (the SDBL grammar) both standalone and inside string literals.
//!
//! Russian and English keywords and method names are recognised alike.

use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

pub mod cli;
mod suppress;
mod types;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One finding; `line` and `column` are 1-based, the column counts
/// characters (not bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub rule: String,
    pub severity: Severity,
    pub message: String,
}

/// Rule identifiers (stable, used by clients and tests).
pub mod rules {
    pub const SYNTAX_ERROR: &str = "syntax-error";
    pub const QUERY_SYNTAX_ERROR: &str = "query-syntax-error";
    pub const QUERY_IN_LOOP: &str = "query-in-loop";
    pub const DEPRECATED_CURRENT_DATE: &str = "deprecated-current-date";
    pub const DEPRECATED_MESSAGE: &str = "deprecated-message";
    pub const BEGIN_TRANSACTION_OUTSIDE_TRY: &str = "begin-transaction-before-try";
    pub const COMMIT_TRANSACTION_OUTSIDE_TRY: &str = "commit-transaction-outside-try";
    pub const EMPTY_CODE_BLOCK: &str = "empty-code-block";
    pub const EMPTY_EXCEPT_BLOCK: &str = "empty-except-block";
    pub const EXECUTE_EXTERNAL_CODE: &str = "execute-external-code";
    pub const GOTO: &str = "goto-statement";
    pub const MISSING_ROLLBACK: &str = "missing-rollback";
    pub const FUNCTION_WITHOUT_RETURN: &str = "function-should-have-return";
    pub const PROCEDURE_RETURNS_VALUE: &str = "procedure-returns-value";
    pub const VIRTUAL_TABLE_FILTER_IN_WHERE: &str = "virtual-table-filter-in-where";
}

const MAX_SYNTAX_ERRORS: usize = 20;

/// Maps byte offsets of a text to 1-based (line, character column).
struct Positions<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Positions<'a> {
    fn new(src: &'a str) -> Self {
        let mut line_starts = vec![0];
        for (i, b) in src.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
            }
        }
        Self { src, line_starts }
    }

    fn at(&self, byte: usize) -> (usize, usize) {
        let byte = byte.min(self.src.len());
        let line = match self.line_starts.binary_search(&byte) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self
            .src
            .get(start..byte)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, col + 1)
    }
}

fn parse(code: &str, sdbl: bool) -> Option<Tree> {
    let mut parser = Parser::new();
    let lang = if sdbl {
        tree_sitter_bsl::SDBL_LANGUAGE
    } else {
        tree_sitter_bsl::LANGUAGE
    };
    parser.set_language(&lang.into()).ok()?;
    parser.parse(code, None)
}

fn eq_any(name: &str, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.to_lowercase() == name.to_lowercase())
}

fn text<'s>(node: Node, src: &'s str) -> &'s str {
    src.get(node.byte_range()).unwrap_or("")
}

/// Human name of a token tree-sitter reports as missing.
fn token_name(kind: &str) -> String {
    let known = [
        ("THEN_KEYWORD", "Тогда (Then)"),
        ("DO_KEYWORD", "Цикл (Do)"),
        ("ENDDO_KEYWORD", "КонецЦикла (EndDo)"),
        ("ENDIF_KEYWORD", "КонецЕсли (EndIf)"),
        ("ENDPROCEDURE_KEYWORD", "КонецПроцедуры (EndProcedure)"),
        ("ENDFUNCTION_KEYWORD", "КонецФункции (EndFunction)"),
        ("ENDTRY_KEYWORD", "КонецПопытки (EndTry)"),
        ("EXCEPT_KEYWORD", "Исключение (Except)"),
        ("TO_KEYWORD", "По (To)"),
        ("IN_KEYWORD", "Из (In)"),
        ("FROM_KEYWORD", "ИЗ (FROM)"),
        ("BY_KEYWORD", "ПО (BY)"),
        ("AS_KEYWORD", "КАК (AS)"),
        ("identifier", "идентификатор"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| format!("«{}»", kind.trim_end_matches("_KEYWORD")))
}

fn snippet(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 40 {
        format!("{}…", one_line.chars().take(40).collect::<String>())
    } else {
        one_line
    }
}

/// Syntax errors of a parsed tree: outermost ERROR nodes and MISSING tokens.
/// `place` maps a byte offset of the parsed text to a (line, column).
fn syntax_errors(
    tree: &Tree,
    src: &str,
    rule: &str,
    place: &dyn Fn(usize) -> (usize, usize),
    out: &mut Vec<Diagnostic>,
) {
    let mut stack = vec![tree.root_node()];
    let mut found = 0;
    while let Some(node) = stack.pop() {
        if found >= MAX_SYNTAX_ERRORS {
            break;
        }
        if node.is_missing() && is_rethrow(node) {
            continue;
        }
        if node.is_missing() {
            let closer = matches!(
                node.kind(),
                "ENDDO_KEYWORD"
                    | "ENDIF_KEYWORD"
                    | "ENDTRY_KEYWORD"
                    | "ENDPROCEDURE_KEYWORD"
                    | "ENDFUNCTION_KEYWORD"
            );
            // A missing block end belongs where the next token stands (on a
            // line of its own), not at the end of the last statement.
            let at = if closer {
                let rest = src.get(node.start_byte()..).unwrap_or("");
                node.start_byte() + (rest.len() - rest.trim_start().len())
            } else {
                node.start_byte()
            };
            let (line, column) = place(at);
            let opened = match node.parent() {
                Some(p) if closer => {
                    format!(" (блок начат в строке {})", place(p.start_byte()).0)
                }
                _ => String::new(),
            };
            out.push(Diagnostic {
                line,
                column,
                rule: rule.to_string(),
                severity: Severity::Error,
                message: format!(
                    "Синтаксическая ошибка: пропущено {}{opened}",
                    token_name(node.kind())
                ),
            });
            found += 1;
            continue;
        }
        if node.is_error() {
            // Point at the first token inside the error: that is where the
            // parser could no longer continue.
            let (line, column) = place(node.start_byte());
            out.push(Diagnostic {
                line,
                column,
                rule: rule.to_string(),
                severity: Severity::Error,
                message: format!(
                    "Синтаксическая ошибка: не удалось разобрать «{}»",
                    snippet(text(node, src))
                ),
            });
            found += 1;
            continue;
        }
        if !node.has_error() {
            continue;
        }
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        for child in children.into_iter().rev() {
            stack.push(child);
        }
    }
}

/// `ВызватьИсключение;` without an argument re-raises the exception being
/// handled: valid anywhere inside an `Исключение` block (the grammar only
/// accepts it directly there, and reports a missing expression elsewhere,
/// e.g. inside `Если` within the handler).
fn is_rethrow(missing: Node) -> bool {
    let Some(expr) = missing.parent().filter(|p| p.kind() == "expression") else {
        return false;
    };
    let Some(raise) = expr.parent().filter(|p| p.kind() == "rise_error_statement") else {
        return false;
    };
    if expr.start_byte() != expr.end_byte() {
        return false;
    }
    let mut up = raise.parent();
    while let Some(p) = up {
        match p.kind() {
            "procedure_definition" | "function_definition" => return false,
            "try_statement" => {
                let mut c = p.walk();
                let except = p
                    .children(&mut c)
                    .find(|n| n.kind() == "EXCEPT_KEYWORD")
                    .filter(|n| !n.is_missing());
                if except.is_some_and(|e| raise.start_byte() >= e.end_byte()) {
                    return true;
                }
            }
            _ => {}
        }
        up = p.parent();
    }
    false
}

/// Checks a BSL module (or a fragment of one).
pub fn check(code: &str) -> Vec<Diagnostic> {
    let Some(tree) = parse(code, false) else {
        return vec![Diagnostic {
            line: 1,
            column: 1,
            rule: rules::SYNTAX_ERROR.into(),
            severity: Severity::Error,
            message: "Не удалось разобрать текст модуля".into(),
        }];
    };
    let pos = Positions::new(code);
    let mut out = Vec::new();
    syntax_errors(&tree, code, rules::SYNTAX_ERROR, &|b| pos.at(b), &mut out);
    let query_runs = types::query_executions(tree.root_node(), code);
    let mut ctx = Ctx {
        src: code,
        pos: &pos,
        out: &mut out,
        query_runs,
    };
    ctx.visit(tree.root_node(), &Scope::default());
    suppress::apply(&tree, code, &mut out);
    out.sort_by(|a, b| (a.line, a.column, &a.rule).cmp(&(b.line, b.column, &b.rule)));
    out.dedup();
    out
}

/// Checks a standalone query text (1C query language).
pub fn check_query(query: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let pos = Positions::new(query);
    check_query_text(query, &|b| pos.at(b), &mut out);
    out
}

/// Statements of a query batch: byte ranges between top-level `;` (outside
/// string literals, comments and parentheses), empty ones left out.
fn batch_statements(query: &str) -> Vec<(usize, usize)> {
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut depth, mut i) = (0usize, 0i32, 0usize);
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if b == b'(' {
            depth += 1;
        } else if b == b')' {
            depth -= 1;
        } else if b == b';' && depth <= 0 {
            out.push((start, i));
            start = i + 1;
        }
        i += 1;
    }
    out.push((start, bytes.len()));
    out.retain(|(a, b)| {
        query[*a..*b]
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
    });
    out
}

/// Works around a tokenizer quirk of the SDBL grammar: a bare identifier
/// starting with «Тип» (`ТипЦен = &ТипЦен`) is split by the `ТИПЗНАЧЕНИЯ`
/// token. Its first letter is swapped for another two-byte letter, so byte
/// positions are unchanged (messages quote the original text).
fn mask_type_prefixed_identifiers(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut prev: Option<char> = None;
    for (i, c) in q.char_indices() {
        let starts_word =
            !prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '.' || p == '&');
        if starts_word && (c == 'Т' || c == 'т') {
            let word: String = q[i..]
                .chars()
                .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
                .collect();
            let lower = word.to_lowercase();
            if lower.starts_with("тип") && lower != "тип" && lower != "типзначения"
            {
                out.push(if c == 'Т' { 'Ъ' } else { 'ъ' });
                prev = Some(c);
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

/// Virtual tables whose parameter lists may leave parameters out.
const VIRTUAL_TABLE_FUNCTIONS: &[&str] = &[
    "Остатки",
    "Обороты",
    "ОстаткиИОбороты",
    "СрезПоследних",
    "СрезПервых",
    "ДвиженияССубконто",
    "ОборотыДтКт",
    "ДанныеГрафика",
    "ФактическийПериодДействия",
    "БазаНачислений",
    "Balance",
    "Turnovers",
    "BalanceAndTurnovers",
    "SliceLast",
    "SliceFirst",
    "RecordsWithExtDimensions",
    "DrCrTurnovers",
];

/// Works around the SDBL grammar rejecting an omitted parameter after the
/// second one of a virtual table (`Обороты(&Начало, &Конец, , Условие)`):
/// the blank before the `,`/`)` that closes an empty parameter becomes `0`
/// (same byte length), only inside virtual-table parameter lists.
fn mask_omitted_virtual_table_parameters(q: &str) -> String {
    let mut bytes = q.as_bytes().to_vec();
    // For each open parenthesis: is it a virtual table's parameter list?
    let mut stack: Vec<bool> = Vec::new();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'(' {
            let head = q[..i].trim_end();
            let word_start = head
                .char_indices()
                .rev()
                .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
                .last()
                .map(|(j, _)| j)
                .unwrap_or(head.len());
            stack.push(eq_any(&head[word_start..], VIRTUAL_TABLE_FUNCTIONS));
        } else if b == b')' {
            stack.pop();
        } else if b == b',' && stack.last() == Some(&true) {
            // Blanks up to the next `,` or `)`: an omitted parameter.
            let mut j = i + 1;
            while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b'\r' | b'\n') {
                j += 1;
            }
            if j > i + 1 && j < bytes.len() && matches!(bytes[j], b',' | b')') {
                bytes[j - 1] = b'0';
            }
        }
        i += 1;
    }
    String::from_utf8(bytes).unwrap_or_else(|_| q.to_string())
}

/// Syntax and semantic checks of a query text (a batch is checked one
/// statement at a time: the grammar has no `УНИЧТОЖИТЬ` inside a batch).
/// `place` maps a byte offset of `query` to a (line, column).
fn check_query_text(
    query: &str,
    place: &dyn Fn(usize) -> (usize, usize),
    out: &mut Vec<Diagnostic>,
) {
    for (from, to) in batch_statements(query) {
        let piece = &query[from..to];
        let masked = mask_omitted_virtual_table_parameters(&mask_type_prefixed_identifiers(piece));
        let Some(tree) = parse(&masked, true) else {
            continue;
        };
        let at = |b: usize| place(from + b);
        syntax_errors(&tree, piece, rules::QUERY_SYNTAX_ERROR, &at, out);
        query_rules(&tree, piece, &at, out);
    }
}

/// Does a string look like a query text? Its first word is ВЫБРАТЬ/SELECT
/// (or УНИЧТОЖИТЬ/DROP) and it has the shape of a query: several lines, or
/// another query keyword (ИЗ, КАК, ПОМЕСТИТЬ, ГДЕ, …) as a whole word, or
/// `УНИЧТОЖИТЬ <таблица>`. A phrase such as "ВЫБРАТЬ значение?" is not.
pub fn looks_like_query(s: &str) -> bool {
    let body = s.trim_start_matches(|c: char| c.is_whitespace() || c == '|');
    let mut words = body
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("");
    if !body
        .get(..first.len())
        .is_some_and(|head| eq_any(head, &[first]))
    {
        return false;
    }
    if eq_any(first, &["УНИЧТОЖИТЬ", "DROP"]) {
        let rest: Vec<&str> = words.collect();
        return rest.len() == 1 && !body.trim_end().contains(['?', '!']);
    }
    if !eq_any(first, &["ВЫБРАТЬ", "SELECT"]) {
        return false;
    }
    if body.trim_end().contains('\n') {
        return true;
    }
    const KEYWORDS: &[&str] = &[
        "ИЗ",
        "FROM",
        "КАК",
        "AS",
        "ПОМЕСТИТЬ",
        "INTO",
        "ГДЕ",
        "WHERE",
        "ОБЪЕДИНИТЬ",
        "UNION",
        "РАЗРЕШЕННЫЕ",
        "ALLOWED",
        "РАЗЛИЧНЫЕ",
        "DISTINCT",
        "ПЕРВЫЕ",
        "TOP",
    ];
    words.any(|w| {
        KEYWORDS
            .iter()
            .any(|k| k.to_lowercase() == w.to_lowercase())
    })
}

#[derive(Default, Clone)]
struct Scope {
    /// Byte range of the innermost enclosing loop body (the part run on
    /// every iteration), within the current method.
    loop_body: Option<(usize, usize)>,
}

struct Ctx<'a, 'o> {
    src: &'a str,
    pos: &'a Positions<'a>,
    out: &'o mut Vec<Diagnostic>,
    /// Start bytes of `X.Выполнить()`-like calls whose receiver is known to
    /// be a query object (by what it was created as), for the whole module.
    query_runs: Vec<usize>,
}

const LOOPS: &[&str] = &["for_statement", "for_each_statement", "while_statement"];

impl Ctx<'_, '_> {
    fn push(&mut self, byte: usize, rule: &str, severity: Severity, message: String) {
        let (line, column) = self.pos.at(byte);
        self.out.push(Diagnostic {
            line,
            column,
            rule: rule.to_string(),
            severity,
            message,
        });
    }

    fn visit(&mut self, node: Node, scope: &Scope) {
        let kind = node.kind();
        let mut scope = scope.clone();
        match kind {
            "procedure_definition" | "function_definition" => {
                scope = Scope::default();
                self.check_returns(node);
            }
            k if LOOPS.contains(&k) => {
                self.check_block_between(node, &["DO_KEYWORD"], &["ENDDO_KEYWORD"], "цикла");
                // The collection of Для Каждого and the bounds of Для are
                // evaluated once, before the first iteration; the condition
                // of Пока on every iteration.
                let mut cursor = node.walk();
                let body_from = if k == "while_statement" {
                    node.start_byte()
                } else {
                    node.children(&mut cursor)
                        .find(|c| c.kind() == "DO_KEYWORD")
                        .map(|c| c.end_byte())
                        .unwrap_or(node.end_byte())
                };
                let body = (body_from, node.end_byte());
                let mut cursor = node.walk();
                let children: Vec<Node> = node.children(&mut cursor).collect();
                for child in children {
                    let mut inner = scope.clone();
                    if child.start_byte() >= body.0 {
                        inner.loop_body = Some(body);
                    }
                    self.visit(child, &inner);
                }
                return;
            }
            "if_statement" => self.check_if(node),
            "try_statement" => self.check_try(node),
            "new_expression" | "new_expression_method" => self.check_new(node, &scope),
            "method_call" => self.check_call(node, &scope),
            "call_statement" => self.check_transaction_call(node),
            "execute_statement" => self.push(
                node.start_byte(),
                rules::EXECUTE_EXTERNAL_CODE,
                Severity::Warning,
                "Выполнить() исполняет произвольный код из строки: риск внедрения кода, \
                 код не проверяется статически. Вызовите метод напрямую или через \
                 ОбщегоНазначения.ВыполнитьМетодКонфигурации"
                    .into(),
            ),
            "goto_statement" => self.push(
                node.start_byte(),
                rules::GOTO,
                Severity::Info,
                "Оператор Перейти (Goto) затрудняет чтение кода: используйте циклы, \
                 Прервать/Продолжить или выделите метод"
                    .into(),
            ),
            "string" => self.check_string(node),
            _ => {}
        }
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        for child in children {
            self.visit(child, &scope);
        }
    }

    /// A Функция must return a value; a Процедура must not.
    fn check_returns(&mut self, method: Node) {
        let returns = descendants(method, "return_statement", &[]);
        let name = method
            .child_by_field_name("name")
            .map(|n| text(n, self.src))
            .unwrap_or("");
        if method.kind() == "function_definition" {
            if method.has_error() {
                return;
            }
            if !returns
                .iter()
                .any(|r| r.child_by_field_name("result").is_some())
            {
                self.push(
                    method.start_byte(),
                    rules::FUNCTION_WITHOUT_RETURN,
                    Severity::Error,
                    format!(
                        "Функция {name} не возвращает значение: добавьте Возврат <значение> \
                         или сделайте её процедурой"
                    ),
                );
            }
        } else {
            for r in returns {
                if r.child_by_field_name("result").is_some() {
                    self.push(
                        r.start_byte(),
                        rules::PROCEDURE_RETURNS_VALUE,
                        Severity::Error,
                        format!(
                            "Процедура {name} не может возвращать значение: используйте \
                             Функция или Возврат без значения"
                        ),
                    );
                }
            }
        }
    }

    fn check_new(&mut self, node: Node, scope: &Scope) {
        let Some(body) = scope.loop_body else {
            return;
        };
        let Some(ty) = node.child_by_field_name("type") else {
            return;
        };
        let Some(kind) = types::query_type(text(ty, self.src)) else {
            return;
        };
        // When a query is also executed inside the loop, that call is
        // reported instead (one finding per mistake).
        if self.query_runs.iter().any(|&b| b >= body.0 && b < body.1) {
            return;
        }
        self.push(
            node.start_byte(),
            rules::QUERY_IN_LOOP,
            Severity::Warning,
            format!(
                "Создание объекта запроса (Новый {kind}) в цикле: вынесите запрос из цикла, \
                 соберите параметры в массив или временную таблицу и выполните один запрос"
            ),
        );
    }

    fn check_call(&mut self, node: Node, scope: &Scope) {
        let Some(name_node) = node.child_by_field_name("name") else {
            return;
        };
        let name = text(name_node, self.src);
        let global = is_global_call(node);
        if global && eq_any(name, &["ТекущаяДата", "CurrentDate"]) {
            self.push(
                node.start_byte(),
                rules::DEPRECATED_CURRENT_DATE,
                Severity::Warning,
                "ТекущаяДата() возвращает время компьютера без учёта часового пояса сеанса: \
                 используйте ТекущаяДатаСеанса() (CurrentSessionDate)"
                    .into(),
            );
        } else if global && eq_any(name, &["Сообщить", "Message"]) {
            self.push(
                node.start_byte(),
                rules::DEPRECATED_MESSAGE,
                Severity::Warning,
                "Сообщить() (Message) устарел: используйте объект СообщениеПользователю \
                 или ОбщегоНазначения.СообщитьПользователю()"
                    .into(),
            );
        } else if global && eq_any(name, &["Вычислить", "Eval"]) {
            self.push(
                node.start_byte(),
                rules::EXECUTE_EXTERNAL_CODE,
                Severity::Warning,
                "Вычислить() (Eval) исполняет произвольное выражение из строки: \
                 риск внедрения кода"
                    .into(),
            );
        } else if !global
            && scope
                .loop_body
                .is_some_and(|(from, to)| node.start_byte() >= from && node.start_byte() < to)
            && self.query_runs.contains(&node.start_byte())
        {
            self.push(
                node.start_byte(),
                rules::QUERY_IN_LOOP,
                Severity::Warning,
                format!(
                    "Выполнение запроса ({name}) в цикле: каждая итерация обращается к СУБД. \
                     Выполните один запрос до цикла (условие В (&Массив) или временная таблица)"
                ),
            );
        }
    }

    fn check_transaction_call(&mut self, stmt: Node) {
        let Some(call) = stmt.named_child(0) else {
            return;
        };
        if call.kind() != "method_call" {
            return;
        }
        let Some(name_node) = call.child_by_field_name("name") else {
            return;
        };
        let name = text(name_node, self.src);
        if eq_any(name, &["НачатьТранзакцию", "BeginTransaction"]) {
            let mut next = stmt.next_named_sibling();
            while let Some(n) = next {
                if n.kind() == "line_comment" || n.kind() == "preprocessor" {
                    next = n.next_named_sibling();
                } else {
                    break;
                }
            }
            if next.map(|n| n.kind()) != Some("try_statement") {
                self.push(
                    stmt.start_byte(),
                    rules::BEGIN_TRANSACTION_OUTSIDE_TRY,
                    Severity::Error,
                    "НачатьТранзакцию() должен стоять непосредственно перед Попытка, \
                     а в блоке Исключение — ОтменитьТранзакцию(): иначе при ошибке \
                     транзакция останется открытой"
                        .into(),
                );
            }
        } else if eq_any(name, &["ЗафиксироватьТранзакцию", "CommitTransaction"])
        {
            let except = stmt
                .parent()
                .filter(|p| p.kind() == "try_statement")
                .and_then(|p| {
                    let mut c = p.walk();
                    let e = p
                        .children(&mut c)
                        .find(|n| n.kind() == "EXCEPT_KEYWORD")
                        .map(|n| n.start_byte());
                    e
                });
            let problem = match except {
                Some(e) if stmt.start_byte() < e => {
                    // In the Попытка body: nothing but comments may follow.
                    let mut next = stmt.next_named_sibling();
                    let mut after = None;
                    while let Some(n) = next {
                        if n.start_byte() >= e {
                            break;
                        }
                        if !matches!(n.kind(), "line_comment" | "preprocessor") {
                            after = Some(n);
                            break;
                        }
                        next = n.next_named_sibling();
                    }
                    after.map(|n| {
                        format!(
                            "ЗафиксироватьТранзакцию() должен быть последним оператором блока \
                             Попытка: после него выполняется «{}», и ошибка в нём не отменит \
                             уже зафиксированную транзакцию",
                            snippet(text(n, self.src))
                        )
                    })
                }
                _ => Some(
                    "ЗафиксироватьТранзакцию() должен быть последним оператором блока Попытка \
                     (НачатьТранзакцию(); Попытка … ЗафиксироватьТранзакцию(); Исключение \
                     ОтменитьТранзакцию(); … КонецПопытки)"
                        .to_string(),
                ),
            };
            if let Some(message) = problem {
                self.push(
                    stmt.start_byte(),
                    rules::COMMIT_TRANSACTION_OUTSIDE_TRY,
                    Severity::Error,
                    message,
                );
            }
        }
    }

    /// Reports an empty block between an opener token and a closer token
    /// (only whitespace and `;` between them).
    fn check_block_between(&mut self, node: Node, openers: &[&str], closers: &[&str], what: &str) {
        let mut cursor = node.walk();
        let toks: Vec<Node> = node.children(&mut cursor).collect();
        let Some(open) = toks.iter().find(|n| openers.contains(&n.kind())) else {
            return;
        };
        let Some(close) = toks
            .iter()
            .find(|n| closers.contains(&n.kind()) && n.start_byte() >= open.end_byte())
        else {
            return;
        };
        if close.is_missing() {
            return;
        }
        self.report_if_empty(node, open.end_byte(), close.start_byte(), what);
    }

    fn report_if_empty(&mut self, at: Node, from: usize, to: usize, what: &str) {
        let between = self.src.get(from..to).unwrap_or("x");
        if between.chars().all(|c| c.is_whitespace() || c == ';') {
            self.push(
                at.start_byte(),
                rules::EMPTY_CODE_BLOCK,
                Severity::Warning,
                format!(
                    "Пустой блок {what}: удалите его или поясните комментарием, \
                     почему действие не требуется"
                ),
            );
        }
    }

    fn check_if(&mut self, node: Node) {
        // Boundary tokens in order: Тогда, ИначеЕсли … Тогда, Иначе, КонецЕсли.
        let mut bounds: Vec<Node> = Vec::new();
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            match child.kind() {
                "THEN_KEYWORD" | "ENDIF_KEYWORD" => bounds.push(child),
                "elseif_clause" | "else_clause" => {
                    let mut c2 = child.walk();
                    for t in child.children(&mut c2) {
                        if matches!(t.kind(), "ELSIF_KEYWORD" | "ELSE_KEYWORD" | "THEN_KEYWORD") {
                            bounds.push(t);
                        }
                    }
                }
                _ => {}
            }
        }
        if bounds.iter().any(|b| b.is_missing()) {
            return;
        }
        for pair in bounds.windows(2) {
            let (open, close) = (pair[0], pair[1]);
            let what = match open.kind() {
                "THEN_KEYWORD" => "Если … Тогда",
                "ELSE_KEYWORD" => "Иначе",
                _ => continue,
            };
            let at = match open.parent() {
                Some(p) if p.kind() == "elseif_clause" => p,
                _ if open.kind() == "THEN_KEYWORD" => node,
                _ => open,
            };
            self.report_if_empty(at, open.end_byte(), close.start_byte(), what);
        }
    }

    fn check_try(&mut self, node: Node) {
        let mut cursor = node.walk();
        let toks: Vec<Node> = node.children(&mut cursor).collect();
        let find = |k: &str| toks.iter().find(|n| n.kind() == k).copied();
        let (Some(t), Some(e), Some(end)) = (
            find("TRY_KEYWORD"),
            find("EXCEPT_KEYWORD"),
            find("ENDTRY_KEYWORD"),
        ) else {
            return;
        };
        if e.is_missing() || end.is_missing() {
            return;
        }
        self.report_if_empty(node, t.end_byte(), e.start_byte(), "Попытка");
        if follows_begin_transaction(node, self.src)
            && !calls_any(
                node,
                self.src,
                e.end_byte(),
                end.start_byte(),
                &["ОтменитьТранзакцию", "RollbackTransaction"],
            )
        {
            self.push(
                e.start_byte(),
                rules::MISSING_ROLLBACK,
                Severity::Error,
                "В блоке Исключение после НачатьТранзакцию() нет ОтменитьТранзакцию(): \
                 при ошибке транзакция останется открытой"
                    .into(),
            );
        }
        // A comment alone does not handle the error (the reference linter's
        // MissingCodeTryCatchEx by default): only statements count.
        let handled = toks.iter().any(|n| {
            n.start_byte() >= e.end_byte()
                && n.end_byte() <= end.start_byte()
                && n.is_named()
                && n.kind() != "line_comment"
        });
        if !handled {
            let commented = toks.iter().any(|n| {
                n.start_byte() >= e.end_byte()
                    && n.end_byte() <= end.start_byte()
                    && n.kind() == "line_comment"
            });
            self.push(
                e.start_byte(),
                rules::EMPTY_EXCEPT_BLOCK,
                Severity::Warning,
                format!(
                    "Пустой блок Исключение{} скрывает ошибку: запишите её в журнал регистрации \
                     (ЗаписьЖурналаРегистрации с ПодробноеПредставлениеОшибки) или вызовите \
                     исключение повторно",
                    if commented {
                        " (в нём только комментарий)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }

    /// Query texts inside string literals: validated with the SDBL grammar
    /// when the literal is a whole query text, not a fragment or a template:
    /// the whole right side of an assignment or the argument of
    /// `Новый Запрос(…)`, not concatenated, not later edited (the variable is
    /// concatenated or passed to СтрЗаменить/СтрШаблон), with no run-time
    /// placeholders (`#Таблица`, `%1`), and looking like a query (see
    /// [`looks_like_query`]).
    fn check_string(&mut self, node: Node) {
        let mut up = node.parent();
        let mut context = None;
        while let Some(p) = up {
            match p.kind() {
                "const_expression" | "expression" | "parenthesized_expression" => up = p.parent(),
                // Part of a concatenation: the query is assembled at run time.
                "binary_expression" => return,
                _ => {
                    context = Some(p);
                    break;
                }
            }
        }
        let Some(context) = context else {
            return;
        };
        match context.kind() {
            "assignment_statement" => {
                let Some(left) = context.child_by_field_name("left") else {
                    return;
                };
                let var = norm(text(left, self.src));
                if is_edited_later(context, &var, self.src) {
                    return;
                }
            }
            "arguments" => {
                // Only `Новый Запрос("…")`: any other call takes a fragment
                // (СтрЗаменить(Текст, "ВЫБРАТЬ РАЗРЕШЕННЫЕ", "ВЫБРАТЬ")).
                let is_new_query = context.parent().is_some_and(|n| {
                    matches!(n.kind(), "new_expression" | "new_expression_method")
                        && n.child_by_field_name("type")
                            .is_some_and(|t| eq_any(text(t, self.src), &["Запрос", "Query"]))
                });
                if !is_new_query {
                    return;
                }
            }
            _ => return,
        }
        let raw = text(node, self.src);
        let (query, map) = unquote_with_map(raw, node.start_byte());
        if !looks_like_query(&query) || query.contains('{') || has_placeholders(&query) {
            // `{…}` are data-composition extensions, not plain query syntax.
            return;
        }
        let pos = self.pos;
        let place = |b: usize| {
            let src_byte = map
                .iter()
                .rev()
                .find(|(qb, _)| *qb <= b)
                .map(|(qb, sb)| sb + (b - qb))
                .unwrap_or(node.start_byte());
            pos.at(src_byte)
        };
        let mut found = Vec::new();
        check_query_text(&query, &place, &mut found);
        for d in &mut found {
            d.message = format!("Текст запроса: {}", d.message);
        }
        self.out.extend(found);
    }
}

/// Lower-cased text without whitespace: the key of a variable or a member
/// path (`Запрос.Текст` → `запрос.текст`).
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Is the variable assigned at `assignment` edited afterwards in the same
/// method: concatenated (`Текст + …`, `… + Текст`) or passed as the text to
/// СтрЗаменить/СтрШаблон/ПодставитьПараметрыВСтроку? Then the literal is a
/// template or the first part of a query, not a whole query.
fn is_edited_later(assignment: Node, var: &str, src: &str) -> bool {
    let mut scope = assignment;
    while let Some(p) = scope.parent() {
        scope = p;
        if matches!(p.kind(), "procedure_definition" | "function_definition") {
            break;
        }
    }
    let mut stack = vec![scope];
    while let Some(n) = stack.pop() {
        if n.end_byte() <= assignment.end_byte() {
            continue;
        }
        match n.kind() {
            "binary_expression" => {
                let mut c = n.walk();
                let hit = n.children(&mut c).any(|k| {
                    k.is_named() && k.start_byte() >= assignment.end_byte() && {
                        let t = text(k, src);
                        norm(t) == var
                    }
                });
                if hit && text(n, src).contains('+') {
                    return true;
                }
            }
            "method_call" => {
                let name = n
                    .child_by_field_name("name")
                    .map(|x| text(x, src))
                    .unwrap_or("");
                if eq_any(
                    name,
                    &[
                        "СтрЗаменить",
                        "StrReplace",
                        "СтрШаблон",
                        "StrTemplate",
                        "ПодставитьПараметрыВСтроку",
                        "SubstituteParametersToString",
                    ],
                ) && n.start_byte() >= assignment.end_byte()
                {
                    let first = n
                        .child_by_field_name("arguments")
                        .or_else(|| {
                            let mut c = n.walk();
                            let a = n.children(&mut c).find(|k| k.kind() == "arguments");
                            a
                        })
                        .and_then(|a| a.named_child(0));
                    if first.is_some_and(|f| norm(text(f, src)) == var) {
                        return true;
                    }
                }
            }
            _ => {}
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    false
}

/// Run-time placeholders that are no part of the query language:
/// `#Имя` (substituted by the code) and `%1` (СтрШаблон).
fn has_placeholders(query: &str) -> bool {
    let chars: Vec<char> = query.chars().collect();
    let mut in_string = false;
    for (i, c) in chars.iter().enumerate() {
        match c {
            '"' => in_string = !in_string,
            '#' | '%'
                if !in_string
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_alphanumeric() || *n == '_') =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

/// The text of a BSL string literal as the runtime sees it: quotes removed,
/// `""` → `"`, the `|` that continues a line dropped. Returns the text and
/// a list of (text byte, source byte) anchors for mapping positions back.
fn unquote_with_map(raw: &str, base: usize) -> (String, Vec<(usize, usize)>) {
    let mut out = String::new();
    let mut map = Vec::new();
    let inner_start = 1usize;
    let inner_end = raw
        .len()
        .saturating_sub(if raw.ends_with('"') && raw.len() > 1 {
            1
        } else {
            0
        });
    let inner = raw.get(inner_start..inner_end).unwrap_or("");
    let mut offset = inner_start;
    for (i, line) in inner.split('\n').enumerate() {
        let mut content = line;
        let mut skip = 0;
        if i > 0 {
            let trimmed = line.trim_start();
            skip = line.len() - trimmed.len();
            content = trimmed;
            if let Some(rest) = content.strip_prefix('|') {
                content = rest;
                skip += 1;
            }
            out.push('\n');
        }
        // Segments between doubled quotes keep a 1:1 byte mapping.
        let mut seg_src = offset + skip;
        for (j, seg) in content.split("\"\"").enumerate() {
            if j > 0 {
                map.push((out.len(), base + seg_src - 2));
                out.push('"');
            }
            map.push((out.len(), base + seg_src));
            out.push_str(seg);
            seg_src += seg.len() + 2;
        }
        offset += line.len() + 1;
    }
    (out, map)
}

fn is_global_call(method_call: Node) -> bool {
    // `Объект.Метод()` puts the method_call after a `.` inside access /
    // call_expression; a global call has no preceding `.` sibling.
    match method_call.prev_sibling() {
        Some(prev) => prev.kind() != ".",
        None => true,
    }
}

/// Is the statement before this `Попытка` a `НачатьТранзакцию()` call?
fn follows_begin_transaction(try_node: Node, src: &str) -> bool {
    let mut prev = try_node.prev_named_sibling();
    while let Some(p) = prev {
        if p.kind() == "line_comment" || p.kind() == "preprocessor" {
            prev = p.prev_named_sibling();
        } else {
            break;
        }
    }
    let Some(stmt) = prev.filter(|p| p.kind() == "call_statement") else {
        return false;
    };
    stmt.named_child(0)
        .filter(|c| c.kind() == "method_call")
        .and_then(|c| c.child_by_field_name("name"))
        .is_some_and(|n| eq_any(text(n, src), &["НачатьТранзакцию", "BeginTransaction"]))
}

/// Does `node` contain, within bytes `from..to`, a call of one of `names`?
fn calls_any(node: Node, src: &str, from: usize, to: usize, names: &[&str]) -> bool {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if n.end_byte() <= from || n.start_byte() >= to {
            continue;
        }
        if n.kind() == "method_call" {
            if let Some(name) = n.child_by_field_name("name") {
                if n.start_byte() >= from && eq_any(text(name, src), names) {
                    return true;
                }
            }
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    false
}

/// Virtual tables of accumulation registers: their resources are named
/// `<Ресурс>Остаток/Оборот/Приход/Расход`, every other field is a dimension
/// (or the period/recorder). Information-register slices are not checked:
/// without the metadata a dimension cannot be told from a resource there.
const VIRTUAL_TABLES: &[&str] = &[
    "Остатки",
    "Обороты",
    "ОстаткиИОбороты",
    "Balance",
    "Turnovers",
    "BalanceAndTurnovers",
];

/// Resource fields of virtual tables may (and must) be filtered in ГДЕ.
fn is_resource_field(field: &str) -> bool {
    let f = field.to_lowercase();
    if [
        "период",
        "регистратор",
        "period",
        "recorder",
        "моментвремени",
        "pointintime",
    ]
    .iter()
    .any(|p| f.starts_with(p))
    {
        return true;
    }
    [
        "остаток",
        "оборот",
        "приход",
        "расход",
        "balance",
        "turnover",
        "receipt",
        "expense",
    ]
    .iter()
    .any(|suffix| f.ends_with(suffix))
}

fn descendants<'t>(node: Node<'t>, kind: &str, stop_at: &[&str]) -> Vec<Node<'t>> {
    let mut out = Vec::new();
    let mut stack: Vec<Node> = {
        let mut c = node.walk();
        node.children(&mut c).collect()
    };
    while let Some(n) = stack.pop() {
        if n.kind() == kind {
            out.push(n);
        }
        if stop_at.contains(&n.kind()) {
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    out
}

/// Semantic rules on a parsed query: conditions on virtual-table
/// dimensions belong in the table's parameters, not in ГДЕ.
fn query_rules(
    tree: &Tree,
    query: &str,
    place: &dyn Fn(usize) -> (usize, usize),
    out: &mut Vec<Diagnostic>,
) {
    for section in descendants(tree.root_node(), "select_section", &[]) {
        // Aliases of virtual tables in this section's ИЗ.
        let mut aliases: Vec<(String, String)> = Vec::new();
        for from in descendants(section, "from_clause", &["select_section"]) {
            for ts in descendants(from, "table_source", &["select_section"]) {
                let mut c = ts.walk();
                let kids: Vec<Node> = ts.children(&mut c).collect();
                // `Рег.Остатки(&Момент, …)` or `Рег.Остатки` without parameters.
                let Some(mut name) = ts.child_by_field_name("name") else {
                    continue;
                };
                if name.kind() == "virtual_table_source" {
                    match name.child_by_field_name("name") {
                        Some(n) => name = n,
                        None => continue,
                    }
                }
                let full = text(name, query);
                let table = full.rsplit('.').next().unwrap_or("");
                if !eq_any(table, VIRTUAL_TABLES) {
                    continue;
                }
                let alias = kids
                    .iter()
                    .find(|k| k.kind() == "source_alias")
                    .and_then(|a| a.named_child(a.named_child_count().saturating_sub(1)))
                    .map(|a| text(a, query).to_string());
                if let Some(alias) = alias {
                    aliases.push((alias, full.to_string()));
                }
            }
        }
        if aliases.is_empty() {
            continue;
        }
        let mut c = section.walk();
        let wheres: Vec<Node> = section
            .children(&mut c)
            .filter(|n| n.kind() == "where_clause")
            .collect();
        for w in wheres {
            for d in descendants(w, "dotted_identifier", &["select_section"]) {
                let mut dc = d.walk();
                let parts: Vec<&str> = d
                    .children(&mut dc)
                    .filter(|n| n.kind() == "identifier")
                    .map(|n| text(n, query))
                    .collect();
                let [alias, field] = parts.as_slice() else {
                    continue;
                };
                let Some((_, table)) = aliases.iter().find(|(a, _)| eq_any(alias, &[a.as_str()]))
                else {
                    continue;
                };
                if is_resource_field(field) {
                    continue;
                }
                let (line, column) = place(d.start_byte());
                out.push(Diagnostic {
                    line,
                    column,
                    rule: rules::VIRTUAL_TABLE_FILTER_IN_WHERE.into(),
                    severity: Severity::Warning,
                    message: format!(
                        "Условие на {alias}.{field} в секции ГДЕ: перенесите его в параметры \
                         виртуальной таблицы {table}(…, {field} = &{field}), иначе таблица \
                         вычисляется целиком и только потом фильтруется"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquote_maps_continuation_lines() {
        let raw = "\"ВЫБРАТЬ\n\t\t|\tТ.Ссылка\n\t\t|ИЗ \"\"x\"\"\"";
        let (q, map) = unquote_with_map(raw, 100);
        assert_eq!(q, "ВЫБРАТЬ\n\tТ.Ссылка\nИЗ \"x\"");
        assert_eq!(map[0], (0, 101));
    }

    #[test]
    fn positions_count_characters() {
        let p = Positions::new("аб\nвгд");
        assert_eq!(p.at(0), (1, 1));
        assert_eq!(p.at(2), (1, 2));
        assert_eq!(p.at(5), (2, 1));
        assert_eq!(p.at(7), (2, 2));
    }
}
