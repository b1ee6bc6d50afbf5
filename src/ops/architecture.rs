//! The stack drawn as text for a terminal, or as Mermaid or Graphviz source.

use crate::cli::DiagramFormat;
use crate::model::containers::{containers, ContainerSpec};
use crate::model::Stack;
use console::style;
use std::fmt::Write;

pub fn draw(stack: &Stack, format: DiagramFormat) -> String {
    let cs = containers(stack);
    match format {
        DiagramFormat::Text => text(stack, &cs),
        DiagramFormat::Mermaid => mermaid(stack, &cs),
        DiagramFormat::Dot => dot(stack, &cs),
    }
}

fn id(name: &str) -> String {
    name.replace('-', "_")
}

fn ports(c: &ContainerSpec) -> String {
    let mut p: Vec<String> = c
        .ports
        .iter()
        .map(|p| {
            let (h, i) = (p.host, p.container);
            if h == i {
                format!(":{h}")
            } else {
                format!(":{h}->{i}")
            }
        })
        .collect();
    if p.is_empty() {
        p = c.expose.iter().map(|e| format!(":{e}")).collect();
    }
    p.join(" ")
}

fn text(stack: &Stack, cs: &[ContainerSpec]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}{}  {} containers, {} networks",
        style(&stack.name).bold(),
        stack
            .environment
            .as_deref()
            .map(|e| format!(" [{e}]"))
            .unwrap_or_default(),
        cs.len(),
        stack.networks.len()
    );
    if let Some(n) = &stack.nginx {
        let _ = writeln!(
            s,
            "\n  clients ──▶ {} :{}/:{} ──▶ {} :{}",
            n.name, n.http_port, n.https_port, n.upstream, n.upstream_port
        );
    }
    for group in ["edge", "services", "data", "monitoring", "logging"] {
        let members: Vec<&ContainerSpec> = cs.iter().filter(|c| c.group == group).collect();
        if members.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{}", style(group).underlined());
        let w = members.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in members {
            let deps = if c.depends_on.is_empty() {
                String::new()
            } else {
                format!("──▶ {}", c.depends_on.join(", "))
            };
            let replicas = if c.replicas > 1 {
                format!(" x{}", c.replicas)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:w$}  {:<12} [{}]{replicas}  {deps}",
                c.name,
                ports(c),
                c.networks.join(", ")
            );
        }
    }
    let _ = writeln!(s, "\n{}", style("networks").underlined());
    for n in &stack.networks {
        let members: Vec<&str> = cs
            .iter()
            .filter(|c| c.networks.contains(&n.name))
            .map(|c| c.name.as_str())
            .collect();
        let _ = writeln!(
            s,
            "  {}{}: {}",
            n.name,
            if n.internal { " (internal)" } else { "" },
            members.join(", ")
        );
    }
    s
}

fn mermaid(stack: &Stack, cs: &[ContainerSpec]) -> String {
    let mut s = String::from("flowchart LR\n");
    if let Some(n) = &stack.nginx {
        let _ = writeln!(
            s,
            "  clients((clients)) -->|:{} / :{}| {}",
            n.http_port,
            n.https_port,
            id(&n.name)
        );
    }
    for net in &stack.networks {
        let _ = writeln!(
            s,
            "  subgraph {}[\"{}{}\"]",
            id(&format!("net-{}", net.name)),
            net.name,
            if net.internal { " (internal)" } else { "" }
        );
        for c in cs.iter().filter(|c| c.networks.first() == Some(&net.name)) {
            let _ = writeln!(s, "    {}[\"{} {}\"]", id(&c.name), c.name, ports(c));
        }
        let _ = writeln!(s, "  end");
    }
    for c in cs {
        for d in &c.depends_on {
            let _ = writeln!(s, "  {} --> {}", id(&c.name), id(d));
        }
    }
    s
}

fn dot(stack: &Stack, cs: &[ContainerSpec]) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        stack.name
    );
    if let Some(n) = &stack.nginx {
        let _ = writeln!(
            s,
            "  clients [shape=ellipse];\n  clients -> \"{}\";",
            n.name
        );
    }
    for net in &stack.networks {
        let _ = writeln!(
            s,
            "  subgraph \"cluster_{}\" {{\n    label=\"{}{}\";",
            net.name,
            net.name,
            if net.internal { " (internal)" } else { "" }
        );
        for c in cs.iter().filter(|c| c.networks.first() == Some(&net.name)) {
            let _ = writeln!(
                s,
                "    \"{}\" [label=\"{}\\n{}\"];",
                c.name,
                c.name,
                ports(c)
            );
        }
        let _ = writeln!(s, "  }}");
    }
    for c in cs {
        for d in &c.depends_on {
            let _ = writeln!(s, "  \"{}\" -> \"{}\";", c.name, d);
        }
    }
    s.push_str("}\n");
    s
}
