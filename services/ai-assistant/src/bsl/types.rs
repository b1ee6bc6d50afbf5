//! What a variable holds, decided by what it was created as (`Новый Запрос`,
//! `Новый ПостроительЗапроса`, …) rather than by its name: the checker
//! follows the assignments of a method (or of the module body) in source
//! order, including copies (`ПЗ2 = ПЗ;`, `Структура.Запрос = Запрос;`), and
//! forgets a variable when it is assigned anything else.

use std::collections::HashMap;

use tree_sitter::Node;

use super::{eq_any, norm, text};

/// Object types that run a query against the database, with the methods
/// that do it.
const QUERY_TYPES: &[(&str, &[&str])] = &[
    (
        "Запрос",
        &[
            "Выполнить",
            "ВыполнитьПакет",
            "ВыполнитьПакетСПромежуточнымиДанными",
        ],
    ),
    (
        "Query",
        &[
            "Execute",
            "ExecuteBatch",
            "ExecuteBatchWithIntermediateData",
        ],
    ),
    ("ПостроительЗапроса", &["Выполнить"]),
    ("QueryBuilder", &["Execute"]),
    ("ПостроительОтчета", &["Выполнить"]),
    ("ReportBuilder", &["Execute"]),
];

/// The canonical name of a query object type (`запрос` → `Запрос`).
pub(super) fn query_type(name: &str) -> Option<&'static str> {
    QUERY_TYPES
        .iter()
        .find(|(t, _)| eq_any(name.trim(), &[t]))
        .map(|(t, _)| *t)
}

fn runs_query(ty: &str, method: &str) -> bool {
    QUERY_TYPES
        .iter()
        .any(|(t, methods)| *t == ty && eq_any(method, methods))
}

/// The type an expression creates: `Новый Запрос`, `Новый Запрос(…)`,
/// `(Новый Запрос)`.
fn created_type(expr: Node, src: &str) -> Option<&'static str> {
    let mut n = expr;
    loop {
        match n.kind() {
            "expression" | "parenthesized_expression" => {
                let mut c = n.walk();
                let inner = n.named_children(&mut c).next();
                match inner {
                    Some(i) if n.named_child_count() == 1 => n = i,
                    _ => return None,
                }
            }
            "new_expression" | "new_expression_method" => {
                return n
                    .child_by_field_name("type")
                    .and_then(|t| query_type(text(t, src)));
            }
            _ => return None,
        }
    }
}

/// Start bytes of the method calls in the module that execute a query
/// object (`Запрос.Выполнить()`, `ПЗ.Выполнить()`, `Новый Запрос(Т).Выполнить()`).
pub(super) fn query_executions(root: Node, src: &str) -> Vec<usize> {
    let mut out = Vec::new();
    // The module body (statements outside methods) is one flow, every method
    // another.
    let mut flows = vec![root];
    let mut c = root.walk();
    for child in root.children(&mut c) {
        if matches!(child.kind(), "procedure_definition" | "function_definition") {
            flows.push(child);
        }
    }
    for flow in flows {
        scan_flow(flow, src, &mut out);
    }
    out.sort_unstable();
    out
}

fn scan_flow(flow: Node, src: &str, out: &mut Vec<usize>) {
    let mut vars: HashMap<String, &'static str> = HashMap::new();
    walk(flow, flow, src, &mut vars, out);
}

/// Source-order walk: assignments update `vars` after their right side is
/// scanned; calls are judged by the types known at that point.
fn walk<'t>(
    flow: Node<'t>,
    node: Node<'t>,
    src: &str,
    vars: &mut HashMap<String, &'static str>,
    out: &mut Vec<usize>,
) {
    if node != flow && matches!(node.kind(), "procedure_definition" | "function_definition") {
        return;
    }
    match node.kind() {
        "assignment_statement" => {
            if let Some(right) = node.child_by_field_name("right") {
                walk(flow, right, src, vars, out);
            }
            if let Some(left) = node.child_by_field_name("left") {
                let key = norm(text(left, src));
                let ty = node.child_by_field_name("right").and_then(|r| {
                    created_type(r, src).or_else(|| vars.get(&norm(text(r, src))).copied())
                });
                match ty {
                    Some(t) => {
                        vars.insert(key, t);
                    }
                    None => {
                        vars.remove(&key);
                    }
                }
            }
            return;
        }
        "method_call" => {
            if let Some(ty) = receiver_type(node, src, vars) {
                let name = node
                    .child_by_field_name("name")
                    .map(|n| text(n, src))
                    .unwrap_or("");
                if runs_query(ty, name) {
                    out.push(node.start_byte());
                }
            }
        }
        _ => {}
    }
    let mut c = node.walk();
    let children: Vec<Node> = node.children(&mut c).collect();
    for child in children {
        walk(flow, child, src, vars, out);
    }
}

/// The type of the object a `X.Метод()` call is made on, when known.
fn receiver_type(
    method_call: Node,
    src: &str,
    vars: &HashMap<String, &'static str>,
) -> Option<&'static str> {
    let dot = method_call.prev_sibling().filter(|d| d.kind() == ".")?;
    let recv = dot.prev_sibling()?;
    // `Новый Запрос(Текст).Выполнить()` puts the new_expression_method as
    // the receiver.
    if let Some(t) = created_type(recv, src) {
        return Some(t);
    }
    let mut inner = recv;
    while inner.kind() == "access" && inner.named_child_count() == 1 {
        match inner.named_child(0) {
            Some(n) if matches!(n.kind(), "new_expression" | "new_expression_method") => {
                return created_type(n, src);
            }
            Some(n) => inner = n,
            None => break,
        }
    }
    vars.get(&norm(text(recv, src))).copied()
}
